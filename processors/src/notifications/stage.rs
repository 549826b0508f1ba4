//! The notifications stage: consumes the orders topic; on a terminal event (`order_confirmed`,
//! `order_rejected`), a cancellation or a refund, delivers to the sink and records
//! `notification_requested` with `notification_sent` or `notification_failed`.
//!
//! State per order (memory + `notifications.changelog`, key `order_id`, JSON [`NotifyState`]):
//! the customer id (from `order_placed`, since terminal events do not carry it), the source
//! events already handled with their outcome, so a redelivered terminal event is not sent twice
//! (its records are repeated instead: same event ids, derived from the source event), and the
//! notifications still waiting for a receiver that failed.
//!
//! Delivery: up to `--notifications-attempts` attempts within the batch. A receiver that still
//! fails transiently (timeout, 5xx, 429) does not lose the notification: it waits in the order's
//! state and is retried from [`Stage::tick`] with backoff (1 s doubling to 30 s) until
//! `--notifications-retry-for` (15 minutes) has passed since it first failed; only then is it
//! recorded as `notification_failed` (on the topic, with the reason, for a redrive). A permanent
//! failure (another 4xx) is recorded at once. Later notifications of the same order wait behind
//! it, so a customer hears about an order in the order things happened.
//!
//! At-least-once delivery: the dedup record is written with the batch, after the delivery. A crash
//! after a delivery and before that write resends on restart; the resend carries the same
//! `event_id` (and `request_id`), by which receivers deduplicate.
//!
//! Retention: an order's state is tombstoned in `notifications.changelog` once its last event
//! (the `order_placed` it learnt the customer from, or the last event it notified) happened more
//! than `--notifications-retention` (7 days) ago and nothing of it is waiting, so the changelog's
//! live key count stays bounded by the orders of one retention. A notification-worthy event that
//! is not in the dedup set and happened more than about the retention ago may be a late duplicate
//! of a forgotten one: it is dead-lettered (`stale_event`), never delivered afresh.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::{stream, StreamExt};
use orderpipe_schemas::{OrderEnvelope, Topics};
use tokio::runtime::Handle;
use uuid::Uuid;

use super::config::NotificationsArgs;
use super::plan::{plan, records, status, Handled, NotifyState, Outcome, Plan, Source, Waiting};
use super::sink::{deliver_with_retry, Notification, NotificationSink};
use crate::metrics;
use crate::runner::{Effects, Input, Stage};
use crate::shared::derived_event_id;
use crate::shared::{warn_if_current_thread, ConfigError, RetryPolicy};

/// Default time an order's notification state is kept after its last event.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Default time a notification is retried after its first failed delivery.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(15 * 60);

/// How often state past the retention is looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The notifications stage.
pub struct NotificationsStage {
    pub(super) topics: Topics,
    pub(super) sink: Arc<dyn NotificationSink>,
    pub(super) handle: Handle,
    pub(super) retry: RetryPolicy,
    pub(super) retry_for: Duration,
    pub(super) concurrency: usize,
    pub(super) retention: Duration,
    pub(super) partitions: HashMap<i32, HashMap<Uuid, NotifyState>>,
    /// Orders with waiting notifications, per partition, and when to try them next.
    pub(super) retry_at: HashMap<i32, HashMap<Uuid, SystemTime>>,
    /// The `now` of the last tick (the runner ticks after every batch); the wall clock before.
    pub(super) clock: Option<SystemTime>,
    pub(super) last_prune: Option<SystemTime>,
}

impl std::fmt::Debug for NotificationsStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationsStage")
            .field("topics", &self.topics)
            .field("retry", &self.retry)
            .field("retry_for", &self.retry_for)
            .field("concurrency", &self.concurrency)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// One delivery to make.
struct Job {
    partition: i32,
    source: Source,
    notification: Notification,
}

/// One order's deliveries of a batch, in offset order.
struct OrderJobs {
    /// The order already has waiting notifications: these queue behind them.
    behind_waiting: bool,
    jobs: Vec<Job>,
}

/// How a delivery within a batch ended.
enum Delivered {
    /// Sent, or given up for good.
    Done(Outcome),
    /// Not delivered yet: to be retried from `tick`.
    Wait { attempts: u32, error: String },
}

impl NotificationsStage {
    /// Stage name: group `orderpipe-notifications`, topics `notifications.changelog` and `.dlq`.
    pub const NAME: &'static str = "notifications";

    /// A stage delivering to `sink` with `retry`; deliveries run on `handle`'s runtime, which
    /// must be a multi-thread one (the stage thread waits with `Handle::block_on`, which cannot
    /// drive a current-thread runtime's timers and IO).
    pub fn new(
        topics: Topics,
        sink: Arc<dyn NotificationSink>,
        handle: Handle,
        retry: RetryPolicy,
    ) -> Self {
        warn_if_current_thread(&handle, Self::NAME);
        metrics::register_notifications();
        Self {
            topics,
            sink,
            handle,
            retry,
            retry_for: DEFAULT_RETRY_FOR,
            concurrency: 32,
            retention: DEFAULT_RETENTION,
            partitions: HashMap::new(),
            retry_at: HashMap::new(),
            clock: None,
            last_prune: None,
        }
    }

    /// Keep an order's state for `retention` after its last event (default 7 days), then
    /// tombstone it. An event to notify that is not in the dedup set and happened more than
    /// about `retention` ago is dead-lettered (`stale_event`), never delivered afresh: keep the
    /// retention above the longest time an event may take to reach this stage (outages, lag).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Retry a notification the receiver failed transiently for `retry_for` after its first
    /// failure (default 15 minutes), from `tick`, before recording `notification_failed`.
    /// `Duration::ZERO`: give up after the attempts within the batch.
    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// At most `n` deliveries in flight at once (per batch, and orders retried per tick).
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The stage as `args` configure it.
    pub fn from_args(
        args: &NotificationsArgs,
        topics: Topics,
        handle: Handle,
    ) -> Result<Self, ConfigError> {
        Ok(Self::new(topics, args.sink()?, handle, args.retry())
            .with_concurrency(args.concurrency)
            .with_retention(args.retention)
            .with_retry_for(args.retry_for))
    }

    /// State of `order_id` if this instance holds it.
    pub fn order(&self, order_id: Uuid) -> Option<&NotifyState> {
        self.partitions.values().find_map(|p| p.get(&order_id))
    }

    /// Orders whose state this instance holds.
    pub fn order_count(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }

    /// Notifications waiting for a retry.
    pub fn waiting_count(&self) -> usize {
        // Only orders with a retry scheduled have any: cheaper than visiting every order.
        self.retry_at
            .iter()
            .flat_map(|(partition, orders)| orders.keys().map(move |id| (partition, id)))
            .filter_map(|(partition, id)| self.partitions.get(partition)?.get(id))
            .map(|state| state.waiting.len())
            .sum()
    }

    fn now(&self) -> DateTime<Utc> {
        DateTime::<Utc>::from(self.clock.unwrap_or_else(SystemTime::now))
    }

    /// Events to notify that happened before this are refused unless already handled: state is
    /// tombstoned once its last event is older than the retention, so a duplicate of a forgotten
    /// event always happened before `now - retention`. The margin (a tenth of the retention, at
    /// most an hour) absorbs clock differences between instances.
    fn stale_before(&self) -> DateTime<Utc> {
        let retention = chrono::Duration::from_std(self.retention).unwrap_or(chrono::Duration::MAX);
        let margin = (retention / 10).min(chrono::Duration::hours(1));
        self.now()
            .checked_sub_signed(retention)
            .map_or(DateTime::<Utc>::MIN_UTC, |t| t + margin)
    }

    /// Writes the state of each of `changed` to the changelog.
    pub(super) fn put_states(&self, changed: &[(i32, Uuid)], out: &mut Effects) {
        for &(partition, order_id) in changed {
            if let Some(state) = self
                .partitions
                .get(&partition)
                .and_then(|p| p.get(&order_id))
            {
                let value = serde_json::to_vec(state).expect("state serializes");
                out.put(partition, order_id.to_string(), value);
            }
        }
    }

    /// Tombstones state whose last event is older than the retention (at most every minute).
    fn prune(&mut self, now: SystemTime, out: &mut Effects) {
        // At least twice per retention, so a short retention (tests) prunes in time.
        let every = PRUNE_EVERY.min(self.retention / 2);
        if self
            .last_prune
            .is_some_and(|last| now.duration_since(last).unwrap_or_default() < every)
        {
            return;
        }
        self.last_prune = Some(now);
        let Some(cutoff) = now.checked_sub(self.retention).map(DateTime::<Utc>::from) else {
            return;
        };
        for (&partition, orders) in &mut self.partitions {
            orders.retain(|order_id, state| {
                let keep = !state.waiting.is_empty()
                    || state.last_event_at.is_none_or(|last| last >= cutoff);
                if !keep {
                    out.delete(partition, order_id.to_string());
                }
                keep
            });
        }
    }
}

/// Counts a delivery that ended (sent or given up) and logs a failure.
pub(super) fn record_delivery(n: &Notification, outcome: &Outcome) {
    match outcome {
        Outcome::Sent { attempts } => metrics::notification_delivery(true, *attempts),
        Outcome::Failed { reason, attempts } => {
            tracing::warn!(order_id = %n.order_id, event_id = %n.event_id, error = %reason,
                attempts, "notification failed");
            metrics::notification_delivery(false, *attempts);
        }
    }
}

impl Stage for NotificationsStage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn input_topic(&self) -> String {
        self.topics.orders.clone()
    }

    fn restore(&mut self, partition: i32, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Ok(order_id) = key.parse::<Uuid>() else {
            return Err("notifications changelog: key is not an order id".to_owned());
        };
        let orders = self.partitions.entry(partition).or_default();
        let retry_at = self.retry_at.entry(partition).or_default();
        match value.map(serde_json::from_slice::<NotifyState>) {
            None => {
                orders.remove(&order_id);
                retry_at.remove(&order_id);
            }
            Some(Ok(mut state)) => {
                if state.last_event_at.is_none() {
                    // Written before the field existed: count the retention from now.
                    state.last_event_at = Some(Utc::now());
                }
                if state.waiting.is_empty() {
                    retry_at.remove(&order_id);
                } else {
                    // Due at the first tick.
                    retry_at.insert(order_id, SystemTime::UNIX_EPOCH);
                }
                orders.insert(order_id, state);
            }
            Some(Err(err)) => {
                return Err(format!("notifications changelog: unreadable state: {err}"));
            }
        }
        Ok(())
    }

    fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.retry_at.remove(&partition);
    }

    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        // Pass 1, in offset order: decisions. One order's jobs stay in order.
        let mut groups: Vec<OrderJobs> = Vec::new();
        let mut group_of: HashMap<Uuid, usize> = HashMap::new();
        let mut scheduled: HashSet<Uuid> = HashSet::new();
        let stale_before = self.stale_before();
        for input in batch {
            let event = match OrderEnvelope::decode(input.bytes()) {
                Ok(event) => event,
                Err(err) => {
                    out.dead_letter_decode(input, &err);
                    continue;
                }
            };
            let orders = self.partitions.entry(input.partition).or_default();
            let state = orders.get(&event.order_id);
            let customer_id = state
                .and_then(|s| s.customer_id.clone())
                .unwrap_or_else(|| "unknown".to_owned());
            let stale = event.occurred_at < stale_before;
            match plan(state, &event) {
                Plan::Nothing => {}
                // A stale order_placed of a forgotten order: remembering it would only be pruned.
                Plan::Remember(_) if stale && state.is_none() => {}
                Plan::Remember(new_state) => {
                    let value = serde_json::to_vec(&new_state).expect("state serializes");
                    out.put(input.partition, event.order_id.to_string(), value);
                    orders.insert(event.order_id, new_state);
                }
                Plan::Repeat(handled) => {
                    tracing::debug!(order_id = %event.order_id, event_id = %event.event_id,
                        "already notified; repeating its records");
                    for record in records(Source::of(&event), &customer_id, &handled) {
                        out.emit_notification(&self.topics.notifications, &record);
                    }
                }
                Plan::Notify(_) if stale => {
                    out.dead_letter(
                        input,
                        "stale_event",
                        format!(
                            "{} of {} is older than the notifications retention ({:?}) and not \
                             in the dedup set: a late duplicate of a forgotten notification is \
                             never delivered afresh",
                            event.event.event_type(),
                            event.occurred_at,
                            self.retention
                        ),
                    );
                }
                Plan::Notify(notice) => {
                    // The same event twice in one batch: deliver once.
                    if !scheduled.insert(event.event_id) {
                        continue;
                    }
                    let behind_waiting = state.is_some_and(|s| !s.waiting.is_empty());
                    let notification = Notification {
                        event_id: event.event_id,
                        request_id: derived_event_id(Self::NAME, event.event_id, 0),
                        order_id: event.order_id,
                        customer_id: customer_id.clone(),
                        kind: notice.kind,
                        status: status(notice.kind).to_owned(),
                        reason: notice.reason,
                        amount_minor: notice.amount_minor,
                        currency: notice.currency,
                        occurred_at: event.occurred_at,
                    };
                    let g = *group_of.entry(event.order_id).or_insert_with(|| {
                        groups.push(OrderJobs {
                            behind_waiting,
                            jobs: Vec::new(),
                        });
                        groups.len() - 1
                    });
                    groups[g].jobs.push(Job {
                        partition: input.partition,
                        source: Source::of(&event),
                        notification,
                    });
                }
            }
        }
        if groups.is_empty() {
            return;
        }
        // Pass 2: deliver, orders concurrently, one order's notifications in order; after one
        // that must wait, the rest of that order's wait too.
        let sink = &self.sink;
        let retry = self.retry;
        let may_wait = !self.retry_for.is_zero();
        let results: Vec<Vec<(Job, Delivered)>> = self.handle.block_on(
            stream::iter(groups)
                .map(|group| {
                    let sink = Arc::clone(sink);
                    async move {
                        let mut waiting = group.behind_waiting;
                        let mut done = Vec::with_capacity(group.jobs.len());
                        for job in group.jobs {
                            if waiting {
                                let error = "queued behind an earlier notification".to_owned();
                                done.push((job, Delivered::Wait { attempts: 0, error }));
                                continue;
                            }
                            let delivery =
                                deliver_with_retry(sink.as_ref(), &job.notification, &retry).await;
                            let attempts = delivery.attempts;
                            let delivered = match delivery.result {
                                Ok(()) => Delivered::Done(Outcome::Sent { attempts }),
                                Err(err) if err.retryable && may_wait => {
                                    tracing::warn!(order_id = %job.notification.order_id,
                                        event_id = %job.notification.event_id, error = %err,
                                        attempts, "notification not delivered; retrying later");
                                    waiting = true;
                                    Delivered::Wait {
                                        attempts,
                                        error: err.message,
                                    }
                                }
                                Err(err) => Delivered::Done(Outcome::Failed {
                                    reason: err.message,
                                    attempts,
                                }),
                            };
                            done.push((job, delivered));
                        }
                        done
                    }
                })
                .buffered(self.concurrency)
                .collect(),
        );
        // Pass 3: record outcomes, waiting notifications and the dedup state.
        let now = self.now();
        let give_up_at = self.give_up_at(now);
        let mut changed: Vec<(i32, Uuid)> = Vec::new();
        for (job, delivered) in results.into_iter().flatten() {
            let n = job.notification;
            let state = self
                .partitions
                .entry(job.partition)
                .or_default()
                .entry(n.order_id)
                .or_default();
            let order_id = n.order_id;
            match delivered {
                Delivered::Done(outcome) => {
                    record_delivery(&n, &outcome);
                    let handled = Handled {
                        event_id: n.event_id,
                        kind: n.kind,
                        outcome,
                        at: Some(Utc::now()),
                    };
                    for record in records(job.source, &n.customer_id, &handled) {
                        out.emit_notification(&self.topics.notifications, &record);
                    }
                    state.handled.push(handled);
                }
                Delivered::Wait { attempts, error } => {
                    state.waiting.push(Waiting {
                        notification: n,
                        correlation_id: job.source.correlation_id,
                        attempts,
                        last_error: error,
                        give_up_at,
                    });
                }
            }
            state.touch(job.source.occurred_at);
            if !changed.contains(&(job.partition, order_id)) {
                changed.push((job.partition, order_id));
            }
        }
        let now = SystemTime::from(now);
        for &(partition, order_id) in &changed {
            let scheduled = self
                .retry_at
                .get(&partition)
                .is_some_and(|orders| orders.contains_key(&order_id));
            if !scheduled {
                self.schedule_retry(partition, order_id, now);
            }
        }
        self.put_states(&changed, out);
    }

    fn tick(&mut self, now: SystemTime, out: &mut Effects) {
        self.clock = Some(now);
        self.retry_waiting(now, out);
        self.prune(now, out);
        metrics::notifications_waiting(self.waiting_count());
    }
}
