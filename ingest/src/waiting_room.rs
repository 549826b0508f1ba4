//! The virtual waiting room (`--ingest-waiting-room-rate N`, off by default): a fleet-wide
//! admission rate for `POST /v1/orders`, in front of checkout. Past it an order is not refused
//! with a bare 429 but answered with a signed queue ticket; a client that comes back with its
//! ticket is admitted in ticket order, whichever instance it reaches.
//!
//! # Design
//! - **One sequence for the fleet.** Every ingest instance takes numbers from one row of the
//!   `waiting_room` table in the CQL keyspace (`--ingest-cql-keyspace`), keyed by the room's name
//!   (`--ingest-waiting-room-name`): `next_ticket` (numbers issued so far) and `admitted_up_to`
//!   (the watermark: every number up to it is admitted). The row moves only by compare-and-set
//!   (LWT), so numbers are unique and ordered across instances. A CQL row rather than a Kafka
//!   topic's offsets: the watermark must live beside the sequence and move with it atomically.
//! - **Everyone takes a number.** An order without a ticket takes the next number; when the
//!   watermark already covers it (the room is under its rate) it goes straight through, otherwise
//!   it gets the ticket. So a newcomer can never overtake a waiting ticket: admission is exactly
//!   watermark order.
//! - **The watermark advances at the rate**: by `rate` numbers per second of wall-clock time, and
//!   at most `--ingest-waiting-room-burst` numbers ahead of the last one issued (an idle room saves
//!   up that many admissions, like a full token bucket). Any instance may advance it; whichever
//!   does, the others see it on their next refresh.
//! - **Bounded CQL per request.** One task per instance collects the orders waiting for a number
//!   and takes them in one compare-and-set for the whole batch (one LWT in flight per instance, not
//!   one per request): the LWT rate is set by the instances, not by the burst, so the single hot
//!   row is a bounded cost (the design's "no LWT on a hot partition" is about per-request Paxos).
//!   A returning ticket costs no CQL at all: it is compared with this instance's cached
//!   watermark, refreshed every `--ingest-waiting-room-refresh` (100 ms), moving it when due.
//! - **Tickets are signed, not stored**: `(number, issued at, expires at, client, order)` plus
//!   HMAC-SHA256 with the fleet's shared secret ([`ticket`]). A ticket admits only its client,
//!   and, when issued to an order with an Idempotency-Key, only that order (a retry of it is
//!   idempotent anyway); without a key it admits any order of its client until it expires. It
//!   expires at its expected turn plus `--ingest-waiting-room-grace` (60 s).
//!
//! # Answers
//! - waiting: **429** `urn:orderpipe:problem:waiting-room` with `ticket`, `ticket_number`,
//!   `position` (numbers still ahead of it, itself included), `expected_wait_ms`, the ticket also
//!   in the `Waiting-Room-Ticket` header, and `Retry-After`. 429 rather than 503: the service is
//!   healthy and the client is asked to come back later, and 503 already means "outcome unknown"
//!   for ingest. Coming back early with the ticket gets the same ticket and a new estimate.
//! - a ticket that is not ours, for another client or order: **403**
//!   `waiting-room-ticket-invalid` (do not retry with it); an expired one: **410**
//!   `waiting-room-ticket-expired` (send the order again without it to queue anew).
//! - the sequence cannot be reached: **503** `waiting-room-unavailable` with `Retry-After`
//!   (nothing was produced).
//!
//! # Limits
//! Tickets whose holders never come back still use their turn (as in any ticket queue), so the
//! rate of orders admitted is at most the configured rate. The accrual reads each instance's
//! wall clock: clocks must agree to well under a second (NTP). Cancellations are not queued.

pub mod sequence;
pub mod ticket;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::error::{ApiError, ServerError, StoreError};
use crate::metrics;
use sequence::{RoomState, Sequence, SequenceSettings};
use ticket::{Refusal, Signer, Ticket};

/// Header carrying a ticket, in the 429 answer and in the request that comes back with it.
pub const TICKET_HEADER: &str = "waiting-room-ticket";

/// Most orders numbered in one compare-and-set.
const MAX_BATCH: usize = 4096;

/// Orders waiting for a number on this instance; past it they get 503 at once.
const QUEUE_CAPACITY: usize = 65_536;

/// Pause between connection attempts while the CQL nodes are unreachable.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(2);

/// A number handed to one waiting order, with the row it was taken in.
type Numbered = Result<(i64, RoomState), ()>;

/// The waiting room of one ingest instance (see the module documentation).
pub struct WaitingRoom {
    rate: u32,
    grace: Duration,
    refresh: Duration,
    timeout: Duration,
    signer: Signer,
    settings: OwnedSettings,
    sequence: tokio::sync::OnceCell<Sequence>,
    /// The latest row seen (from this instance's own updates and its refreshes).
    cached: Mutex<Option<RoomState>>,
    waiting: mpsc::Sender<oneshot::Sender<Numbered>>,
    numbering: Mutex<Option<mpsc::Receiver<oneshot::Sender<Numbered>>>>,
}

struct OwnedSettings {
    nodes: Vec<String>,
    credentials: Option<orderpipe_runtime::cql::Credentials>,
    keyspace: String,
    replication_factor: u32,
    room: String,
    burst: u32,
}

impl WaitingRoom {
    /// The room of `config` with `secret`, or `None` when the waiting room is off. Not
    /// connected yet: [`WaitingRoom::run`] connects and keeps the watermark fresh.
    pub fn new(config: &Config, secret: &[u8]) -> Option<Arc<Self>> {
        let rate = std::num::NonZeroU32::new(config.waiting_room_rate)?.get();
        let (waiting, numbering) = mpsc::channel(QUEUE_CAPACITY);
        Some(Arc::new(Self {
            rate,
            grace: config.waiting_room_grace,
            refresh: config.waiting_room_refresh,
            timeout: config.ack_deadline,
            signer: Signer::new(secret, &config.waiting_room_name),
            settings: OwnedSettings {
                nodes: config.cql_node_list(),
                credentials: config.cql_credentials.clone(),
                keyspace: config.cql_keyspace.clone(),
                replication_factor: config.cql_replication_factor,
                room: config.waiting_room_name.clone(),
                burst: config.waiting_room_burst(),
            },
            sequence: tokio::sync::OnceCell::new(),
            cached: Mutex::new(None),
            waiting,
            numbering: Mutex::new(Some(numbering)),
        }))
    }

    /// Connects (retrying until it succeeds), then numbers waiting orders and refreshes the
    /// watermark until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let Some(mut numbering) = self.numbering.lock().expect("not poisoned").take() else {
            return;
        };
        loop {
            let attempt = tokio::select! {
                _ = stop.cancelled() => return,
                attempt = self.connect() => attempt,
            };
            match attempt {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "waiting room unreachable; orders get 503"
                    );
                    // Orders waiting meanwhile are answered (503) rather than left to time out.
                    while let Ok(waiter) = numbering.try_recv() {
                        let _ = waiter.send(Err(()));
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(RECONNECT_INTERVAL) => {}
                    }
                }
            }
        }
        let mut refresh = tokio::time::interval(self.refresh);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = refresh.tick() => self.refresh_watermark().await,
                first = numbering.recv() => {
                    let Some(first) = first else { return };
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match numbering.try_recv() {
                            Ok(waiter) => batch.push(waiter),
                            Err(_) => break,
                        }
                    }
                    self.number(batch).await;
                }
            }
        }
    }

    /// Connects to the sequence (creating keyspace, table and row when missing) and reads the
    /// row; does nothing more once connected.
    pub async fn connect(&self) -> Result<(), StoreError> {
        let s = &self.settings;
        let sequence = self
            .sequence
            .get_or_try_init(|| {
                Sequence::connect(SequenceSettings {
                    nodes: &s.nodes,
                    credentials: s.credentials.as_ref(),
                    keyspace: &s.keyspace,
                    replication_factor: s.replication_factor,
                    room: &s.room,
                    rate: self.rate,
                    burst: s.burst,
                    timeout: self.timeout,
                })
            })
            .await?;
        let state = sequence.read().await?;
        self.remember(state);
        Ok(())
    }

    /// Gives each waiting order of `batch` the next number, in the order they arrived.
    async fn number(&self, batch: Vec<oneshot::Sender<Numbered>>) {
        let taken = match (self.sequence.get(), self.cached_state()) {
            (Some(sequence), Some(known)) => {
                let count = batch.len() as i64;
                tokio::time::timeout(self.timeout, sequence.take(count, known))
                    .await
                    .unwrap_or(Err(StoreError::TimedOut("waiting room numbering")))
            }
            _ => Err(StoreError::NotConnected("waiting room")),
        };
        match taken {
            Ok((first, state)) => {
                self.remember(state);
                for (i, waiter) in batch.into_iter().enumerate() {
                    let _ = waiter.send(Ok((first + i as i64, state)));
                }
            }
            Err(err) => {
                tracing::debug!(error = format!("{err:#}"), "waiting room numbering failed");
                for waiter in batch {
                    let _ = waiter.send(Err(()));
                }
            }
        }
    }

    /// Moves the watermark when it is due (or just re-reads the row), so returning tickets are
    /// judged against a fresh watermark.
    async fn refresh_watermark(&self) {
        let (Some(sequence), Some(known)) = (self.sequence.get(), self.cached_state()) else {
            return;
        };
        let refreshed = tokio::time::timeout(self.timeout, async {
            let (_, state) = sequence.take(0, known).await?;
            // Nothing was due here: another instance may have moved the row meanwhile.
            if state == known {
                sequence.read().await
            } else {
                Ok(state)
            }
        })
        .await;
        match refreshed {
            Ok(Ok(state)) => self.remember(state),
            Ok(Err(err)) => {
                tracing::debug!(error = format!("{err:#}"), "waiting room refresh failed")
            }
            Err(_) => tracing::debug!("waiting room refresh timed out"),
        }
    }

    fn cached_state(&self) -> Option<RoomState> {
        *self.cached.lock().expect("not poisoned")
    }

    /// Keeps `state` unless a later one is already known (answers can arrive out of order).
    fn remember(&self, state: RoomState) {
        let mut cached = self.cached.lock().expect("not poisoned");
        if cached.is_none_or(|known| known.is_behind(&state)) {
            *cached = Some(state);
        }
    }

    /// Admits an order of `client` (for `order`, the id of its Idempotency-Key, when sent), or
    /// says why not: a ticket to wait with, a refused ticket, or 503.
    pub async fn admit(
        &self,
        client: &str,
        order: Option<Uuid>,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let now_ms = now_ms();
        if let Some(text) = headers.get(TICKET_HEADER) {
            let text = text.to_str().map_err(|_| ApiError::TicketInvalid)?;
            return self.admit_ticket(text, client, order, now_ms);
        }
        let (tx, rx) = oneshot::channel();
        let unavailable = || ApiError::WaitingRoomUnavailable {
            retry_after: Duration::from_secs(1),
        };
        self.waiting.try_send(tx).map_err(|_| unavailable())?;
        let (seq, state) = tokio::time::timeout(self.timeout, rx)
            .await
            .ok()
            .and_then(|answer| answer.ok())
            .and_then(|numbered| numbered.ok())
            .ok_or_else(|| {
                metrics::waiting_room("unavailable");
                unavailable()
            })?;
        if seq <= state.admitted {
            metrics::waiting_room("admitted");
            return Ok(());
        }
        let position = seq - state.admitted;
        let wait = self.expected_wait(position);
        let ticket = Ticket {
            seq: seq as u64,
            issued_at_ms: now_ms,
            expires_at_ms: now_ms + wait.as_millis() as u64 + self.grace.as_millis() as u64,
            client: client.to_owned(),
            order,
        };
        metrics::waiting_room("ticketed");
        Err(ApiError::WaitingRoom {
            ticket: self.signer.sign(&ticket),
            number: seq as u64,
            position: position as u64,
            expected_wait: wait,
        })
    }

    fn admit_ticket(
        &self,
        text: &str,
        client: &str,
        order: Option<Uuid>,
        now_ms: u64,
    ) -> Result<(), ApiError> {
        let ticket = match self.signer.verify(text, now_ms) {
            Ok(ticket) => ticket,
            Err(Refusal::Invalid) => {
                metrics::waiting_room("ticket-invalid");
                return Err(ApiError::TicketInvalid);
            }
            Err(Refusal::Expired) => {
                metrics::waiting_room("ticket-expired");
                return Err(ApiError::TicketExpired);
            }
        };
        // A genuine ticket of another client, or of another order of this client: not yours.
        if ticket.client != client || ticket.order.is_some_and(|o| Some(o) != order) {
            metrics::waiting_room("ticket-invalid");
            return Err(ApiError::TicketInvalid);
        }
        let Some(state) = self.cached_state() else {
            return Err(ApiError::WaitingRoomUnavailable {
                retry_after: Duration::from_secs(1),
            });
        };
        let seq = ticket.seq as i64;
        if seq <= state.admitted {
            metrics::waiting_room("ticket-admitted");
            return Ok(());
        }
        let position = seq - state.admitted;
        metrics::waiting_room("ticket-early");
        Err(ApiError::WaitingRoom {
            ticket: text.to_owned(),
            number: ticket.seq,
            position: position as u64,
            expected_wait: self.expected_wait(position),
        })
    }

    /// Time until the watermark reaches a number `position` ahead of it.
    fn expected_wait(&self, position: i64) -> Duration {
        Duration::from_millis((position.max(0) as u64).saturating_mul(1000) / u64::from(self.rate))
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    (sequence::now_us() / 1000) as u64
}

/// Reads the waiting room's secret: the file's content without its trailing newline, or the
/// value given. At least 32 bytes (a 256-bit HMAC key).
pub fn load_secret(config: &Config) -> Result<Option<Vec<u8>>, ServerError> {
    if config.waiting_room_rate == 0 {
        return Ok(None);
    }
    let secret = match (&config.waiting_room_secret_file, &config.waiting_room_secret) {
        (Some(path), _) => {
            let text = std::fs::read(path).map_err(|err| ServerError::SecretFile(path.clone(), err))?;
            let end = text
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(0, |i| i + 1);
            text[..end].to_vec()
        }
        (None, Some(secret)) => secret.expose().as_bytes().to_vec(),
        (None, None) => return Err(ServerError::Config(
            "the waiting room needs a secret (--ingest-waiting-room-secret-file or ORDERPIPE_INGEST_WAITING_ROOM_SECRET)".into(),
        )),
    };
    if secret.len() < 32 {
        return Err(ServerError::Config(
            "the waiting room secret must be at least 32 bytes".into(),
        ));
    }
    Ok(Some(secret))
}
