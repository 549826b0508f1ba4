//! The notifications stage: consumes the orders topic; on a terminal event (`order_confirmed`,
//! `order_rejected`), a cancellation or a refund, records `notification_requested`, delivers to
//! the sink with bounded retries, and records `notification_sent` or `notification_failed`.
//!
//! State per order (memory + `notifications.changelog`, key `order_id`, JSON [`NotifyState`]):
//! the customer id (from `order_placed`, since terminal events do not carry it) and the source
//! events already handled with their outcome, so a redelivered terminal event is not sent twice:
//! its records are repeated (same event ids, derived from the source event) instead.
//!
//! At-least-once delivery: the dedup record is written with the batch, after the delivery. A crash
//! after a delivery and before that write resends on restart; the resend carries the same
//! `event_id` (and `request_id`), by which receivers deduplicate. A delivery that fails after its
//! retries is recorded as `notification_failed` (not lost: it is on the topic, with the reason,
//! for a redrive).
//!
//! Retention: an order's state is tombstoned in `notifications.changelog` once its last event
//! (the `order_placed` it learnt the customer from, or the last event it notified) happened more
//! than `--notifications-retention` (7 days) ago, so the changelog's live key count stays bounded
//! by the orders of one retention. A notification-worthy event that is not in the dedup set and
//! happened more than about the retention ago may be a late duplicate of a forgotten one: it is
//! dead-lettered (`stale_event`), never delivered afresh.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::{stream, StreamExt};
use orderpipe_schemas::{
    NotificationEnvelope, NotificationEvent, NotificationFailed, NotificationKind,
    NotificationRequested, NotificationSent, OrderEnvelope, OrderEvent, Topics,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use uuid::Uuid;

use super::config::NotificationsArgs;
use super::sink::{deliver_with_retry, Notification, NotificationSink};
use crate::metrics;
use crate::runner::{Effects, Input, Stage};
use crate::shared::derived_event_id;
use crate::shared::{warn_if_current_thread, ConfigError, RetryPolicy};

/// What the stage keeps per order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyState {
    /// The customer, once `order_placed` was seen.
    pub customer_id: Option<String>,
    /// Orders-topic events already notified, with the outcome (the dedup set).
    pub handled: Vec<Handled>,
    /// `occurred_at` of the latest event that changed this state (`order_placed` or a notified
    /// event): the state is tombstoned once this is older than the retention. State written
    /// before this field existed: `None`, and the retention counts from its restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<DateTime<Utc>>,
}

impl NotifyState {
    /// Records that an event of `at` changed this state.
    fn touch(&mut self, at: DateTime<Utc>) {
        self.last_event_at = Some(self.last_event_at.map_or(at, |last| last.max(at)));
    }
}

/// Default time an order's notification state is kept after its last event.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often state past the retention is looked for.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// An orders-topic event that was notified, and how that went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handled {
    /// `event_id` of the orders-topic event.
    pub event_id: Uuid,
    /// What was notified.
    pub kind: NotificationKind,
    /// Delivered or given up.
    pub outcome: Outcome,
    /// When the delivery ended: the `occurred_at` of `notification_sent` / `_failed`, kept so
    /// that a repeat is byte-identical (state written before this field existed: `None`, and the
    /// source event's time is used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<DateTime<Utc>>,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Delivered after `attempts` attempts.
    Sent {
        /// Attempts it took.
        attempts: u32,
    },
    /// Given up after `attempts` attempts.
    Failed {
        /// Last error.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
}

/// What to tell the customer about one event (before ids are assigned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// What happened.
    pub kind: NotificationKind,
    /// Reject reason, snake_case.
    pub reason: Option<String>,
    /// Refunds: amount.
    pub amount_minor: Option<i64>,
    /// Refunds: currency.
    pub currency: Option<String>,
}

/// What one event means for notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do.
    Nothing,
    /// Remember the order's customer (`order_placed`): the new state.
    Remember(NotifyState),
    /// A new notification to deliver.
    Notify(Notice),
    /// Notified before (a redelivery): repeat its records, do not deliver again.
    Repeat(Handled),
}

/// The notice an orders-topic event calls for, if any.
pub fn notice_for(event: &OrderEvent) -> Option<Notice> {
    let notice = |kind| Notice {
        kind,
        reason: None,
        amount_minor: None,
        currency: None,
    };
    match event {
        OrderEvent::OrderConfirmed(_) => Some(notice(NotificationKind::OrderConfirmed)),
        OrderEvent::OrderRejected(r) => Some(Notice {
            reason: serde_json::to_value(r.reason)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned)),
            ..notice(NotificationKind::OrderRejected)
        }),
        OrderEvent::OrderCancelled(_) => Some(notice(NotificationKind::OrderCancelled)),
        OrderEvent::Refunded(r) => Some(Notice {
            amount_minor: Some(r.amount_minor),
            currency: Some(r.currency.clone()),
            ..notice(NotificationKind::Refunded)
        }),
        _ => None,
    }
}

/// Decides what `event` means, given the order's state (pure).
pub fn plan(state: Option<&NotifyState>, event: &OrderEnvelope) -> Plan {
    if let OrderEvent::OrderPlaced(placed) = &event.event {
        if state.is_some_and(|s| s.customer_id.is_some()) {
            return Plan::Nothing;
        }
        let mut new_state = state.cloned().unwrap_or_default();
        new_state.customer_id = Some(placed.customer_id.clone());
        new_state.touch(event.occurred_at);
        return Plan::Remember(new_state);
    }
    let Some(notice) = notice_for(&event.event) else {
        return Plan::Nothing;
    };
    let handled = state.and_then(|s| s.handled.iter().find(|h| h.event_id == event.event_id));
    match handled {
        Some(handled) => Plan::Repeat(handled.clone()),
        None => Plan::Notify(notice),
    }
}

/// The records of a notification: `notification_requested` (at the source event's time) and its
/// outcome (at `handled.at`), with event ids derived from the source event: a repeat emits
/// byte-identical records.
fn records(
    source: &OrderEnvelope,
    customer_id: &str,
    handled: &Handled,
) -> [NotificationEnvelope; 2] {
    let kind = handled.kind;
    let outcome = &handled.outcome;
    let id = |index| derived_event_id(NotificationsStage::NAME, source.event_id, index);
    let mut request = NotificationEnvelope::new(
        source.order_id,
        NotificationEvent::NotificationRequested(NotificationRequested {
            customer_id: customer_id.to_owned(),
            kind,
        }),
        Some(source.event_id),
        source.correlation_id,
    );
    request.event_id = id(0);
    request.occurred_at = source.occurred_at;
    let result = match outcome {
        Outcome::Sent { attempts } => NotificationEvent::NotificationSent(NotificationSent {
            request_id: request.event_id,
            attempts: *attempts,
        }),
        Outcome::Failed { reason, attempts } => {
            NotificationEvent::NotificationFailed(NotificationFailed {
                request_id: request.event_id,
                reason: reason.clone(),
                attempts: *attempts,
            })
        }
    };
    let mut result = NotificationEnvelope::new(
        source.order_id,
        result,
        Some(request.event_id),
        source.correlation_id,
    );
    result.event_id = id(1);
    result.occurred_at = handled.at.unwrap_or(source.occurred_at);
    [request, result]
}

/// Status word of a kind, for the notification body.
fn status(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::OrderConfirmed => "confirmed",
        NotificationKind::OrderRejected => "rejected",
        NotificationKind::OrderCancelled => "cancelled",
        NotificationKind::Refunded => "refunded",
    }
}

/// The notifications stage.
pub struct NotificationsStage {
    topics: Topics,
    sink: Arc<dyn NotificationSink>,
    handle: Handle,
    retry: RetryPolicy,
    concurrency: usize,
    retention: Duration,
    partitions: HashMap<i32, HashMap<Uuid, NotifyState>>,
    /// The `now` of the last tick (the runner ticks after every batch); the wall clock before.
    clock: Option<SystemTime>,
    last_prune: Option<SystemTime>,
}

impl std::fmt::Debug for NotificationsStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationsStage")
            .field("topics", &self.topics)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// One delivery to make.
struct Job {
    partition: i32,
    source: OrderEnvelope,
    notification: Notification,
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
            concurrency: 32,
            retention: DEFAULT_RETENTION,
            partitions: HashMap::new(),
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

    /// At most `n` deliveries in flight per batch.
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
            .with_retention(args.retention))
    }

    /// State of `order_id` if this instance holds it.
    pub fn order(&self, order_id: Uuid) -> Option<&NotifyState> {
        self.partitions.values().find_map(|p| p.get(&order_id))
    }

    /// Orders whose state this instance holds.
    pub fn order_count(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
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
        match value.map(serde_json::from_slice::<NotifyState>) {
            None => {
                orders.remove(&order_id);
            }
            Some(Ok(mut state)) => {
                if state.last_event_at.is_none() {
                    // Written before the field existed: count the retention from now.
                    state.last_event_at = Some(Utc::now());
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
    }

    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        // Pass 1, in offset order: decisions. One order's jobs stay in order.
        let mut jobs: Vec<Vec<Job>> = Vec::new();
        let mut job_group: HashMap<Uuid, usize> = HashMap::new();
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
                    for record in records(&event, &customer_id, &handled) {
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
                    let g = *job_group.entry(event.order_id).or_insert_with(|| {
                        jobs.push(Vec::new());
                        jobs.len() - 1
                    });
                    jobs[g].push(Job {
                        partition: input.partition,
                        source: event,
                        notification,
                    });
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        // Pass 2: deliver, orders concurrently, one order's notifications in order.
        let sink = &self.sink;
        let retry = self.retry;
        let results: Vec<Vec<(Job, Outcome)>> = self.handle.block_on(
            stream::iter(jobs)
                .map(|group| {
                    let sink = Arc::clone(sink);
                    async move {
                        let mut done = Vec::with_capacity(group.len());
                        for job in group {
                            let delivery =
                                deliver_with_retry(sink.as_ref(), &job.notification, &retry).await;
                            metrics::notification_delivery(
                                delivery.result.is_ok(),
                                delivery.attempts,
                            );
                            let outcome = match delivery.result {
                                Ok(()) => Outcome::Sent {
                                    attempts: delivery.attempts,
                                },
                                Err(err) => {
                                    tracing::warn!(order_id = %job.notification.order_id,
                                        event_id = %job.notification.event_id, error = %err,
                                        attempts = delivery.attempts, "notification failed");
                                    Outcome::Failed {
                                        reason: err.message,
                                        attempts: delivery.attempts,
                                    }
                                }
                            };
                            done.push((job, outcome));
                        }
                        done
                    }
                })
                .buffered(self.concurrency)
                .collect(),
        );
        // Pass 3: record outcomes and the dedup state.
        let mut changed: Vec<(i32, Uuid)> = Vec::new();
        for (job, outcome) in results.into_iter().flatten() {
            let n = &job.notification;
            let handled = Handled {
                event_id: n.event_id,
                kind: n.kind,
                outcome,
                at: Some(Utc::now()),
            };
            for record in records(&job.source, &n.customer_id, &handled) {
                out.emit_notification(&self.topics.notifications, &record);
            }
            let state = self
                .partitions
                .entry(job.partition)
                .or_default()
                .entry(n.order_id)
                .or_default();
            state.handled.push(handled);
            state.touch(job.source.occurred_at);
            if !changed.contains(&(job.partition, n.order_id)) {
                changed.push((job.partition, n.order_id));
            }
        }
        for (partition, order_id) in changed {
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

    fn tick(&mut self, now: SystemTime, out: &mut Effects) {
        self.clock = Some(now);
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
                let keep = state.last_event_at.is_none_or(|last| last >= cutoff);
                if !keep {
                    out.delete(partition, order_id.to_string());
                }
                keep
            });
        }
    }
}
