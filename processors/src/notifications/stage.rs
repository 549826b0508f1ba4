//! The notifications stage: consumes the orders topic; on a terminal event (`order_confirmed`,
//! `order_rejected`), a cancellation or a refund, records `notification_requested`, delivers to
//! the sink with bounded retries, and records `notification_sent` or `notification_failed`.
//!
//! State per order (memory + `notifications.changelog`, key `order_id`, JSON [`NotifyState`]):
//! the customer id (from `order_placed`, since terminal events do not carry it) and the ids of
//! the source events already handled, so a redelivered terminal event is not sent twice.
//!
//! At-least-once: the dedup record commits with the batch. A crash after a delivery and before the
//! commit resends on restart; the resend carries the same `event_id`, by which receivers
//! deduplicate. A delivery that fails after its retries is recorded as `notification_failed`
//! (not lost: it is on the topic, with the reason, for a redrive).

use std::collections::HashMap;
use std::sync::Arc;

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
use crate::payments::{ConfigError, RetryPolicy};
use crate::runner::{Effects, Input, Stage};

/// What the stage keeps per order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyState {
    /// The customer, once `order_placed` was seen.
    pub customer_id: Option<String>,
    /// `event_id`s of the orders-topic events already notified (the dedup set).
    pub handled: Vec<Uuid>,
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
pub struct Plan {
    /// The order's new state when it changed.
    pub new_state: Option<NotifyState>,
    /// A notification to deliver.
    pub notice: Option<Notice>,
    /// The event was notified before (a redelivery): nothing to do.
    pub duplicate: bool,
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

/// Decides what `event` does, given the order's state (pure).
pub fn plan(state: Option<&NotifyState>, event: &OrderEnvelope) -> Plan {
    let nothing = Plan {
        new_state: None,
        notice: None,
        duplicate: false,
    };
    if let OrderEvent::OrderPlaced(placed) = &event.event {
        if state.is_some_and(|s| s.customer_id.is_some()) {
            return nothing;
        }
        let mut new_state = state.cloned().unwrap_or_default();
        new_state.customer_id = Some(placed.customer_id.clone());
        return Plan {
            new_state: Some(new_state),
            ..nothing
        };
    }
    let Some(notice) = notice_for(&event.event) else {
        return nothing;
    };
    if state.is_some_and(|s| s.handled.contains(&event.event_id)) {
        return Plan {
            duplicate: true,
            ..nothing
        };
    }
    let mut new_state = state.cloned().unwrap_or_default();
    new_state.handled.push(event.event_id);
    Plan {
        new_state: Some(new_state),
        notice: Some(notice),
        duplicate: false,
    }
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
    partitions: HashMap<i32, HashMap<Uuid, NotifyState>>,
}

impl std::fmt::Debug for NotificationsStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationsStage")
            .field("topics", &self.topics)
            .field("retry", &self.retry)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// One delivery to make.
struct Job {
    request: NotificationEnvelope,
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
        crate::payments::stage::warn_if_current_thread(&handle, Self::NAME);
        Self {
            topics,
            sink,
            handle,
            retry,
            concurrency: 32,
            partitions: HashMap::new(),
        }
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
        Ok(
            Self::new(topics, args.sink()?, handle, args.retry())
                .with_concurrency(args.concurrency),
        )
    }

    /// State of `order_id` if this instance holds it.
    pub fn order(&self, order_id: Uuid) -> Option<&NotifyState> {
        self.partitions.values().find_map(|p| p.get(&order_id))
    }
}

impl Stage for NotificationsStage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn input_topic(&self) -> String {
        self.topics.orders.clone()
    }

    fn restore(&mut self, partition: i32, key: &str, value: Option<&[u8]>) {
        let Ok(order_id) = key.parse::<Uuid>() else {
            tracing::warn!(
                partition,
                key,
                "notifications changelog: key is not an order id"
            );
            return;
        };
        let orders = self.partitions.entry(partition).or_default();
        match value.map(serde_json::from_slice::<NotifyState>) {
            None => {
                orders.remove(&order_id);
            }
            Some(Ok(state)) => {
                orders.insert(order_id, state);
            }
            Some(Err(err)) => {
                tracing::warn!(partition, %order_id, error = %err,
                    "notifications changelog: unreadable state; skipped");
            }
        }
    }

    fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        // Pass 1, in offset order: state and dedup decisions (nothing here can fail later).
        let mut jobs: Vec<Vec<Job>> = Vec::new();
        let mut job_group: HashMap<Uuid, usize> = HashMap::new();
        let mut changed: Vec<(i32, Uuid)> = Vec::new();
        for input in batch {
            let event = match OrderEnvelope::decode(input.bytes()) {
                Ok(event) => event,
                Err(err) => {
                    out.dead_letter_decode(input, &err);
                    continue;
                }
            };
            let orders = self.partitions.entry(input.partition).or_default();
            let plan = plan(orders.get(&event.order_id), &event);
            if plan.duplicate {
                tracing::debug!(order_id = %event.order_id, event_id = %event.event_id,
                    "already notified; skipped");
            }
            let Some(new_state) = plan.new_state else {
                continue;
            };
            let customer_id = new_state
                .customer_id
                .clone()
                .unwrap_or_else(|| "unknown".to_owned());
            orders.insert(event.order_id, new_state);
            if !changed.contains(&(input.partition, event.order_id)) {
                changed.push((input.partition, event.order_id));
            }
            let Some(notice) = plan.notice else {
                continue;
            };
            let request = NotificationEnvelope::new(
                event.order_id,
                NotificationEvent::NotificationRequested(NotificationRequested {
                    customer_id: customer_id.clone(),
                    kind: notice.kind,
                }),
                Some(event.event_id),
                event.correlation_id,
            );
            let notification = Notification {
                event_id: event.event_id,
                request_id: request.event_id,
                order_id: event.order_id,
                customer_id,
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
                request,
                notification,
            });
        }
        for (partition, order_id) in changed {
            if let Some(state) = self
                .partitions
                .get(&partition)
                .and_then(|p| p.get(&order_id))
            {
                let value = serde_json::to_vec(state).expect("notify state always serializes");
                out.put(partition, order_id.to_string(), value);
            }
        }
        if jobs.is_empty() {
            return;
        }
        // Pass 2: deliver, orders concurrently, one order's notifications in order.
        let sink = &self.sink;
        let retry = self.retry;
        let results: Vec<Vec<(Job, NotificationEvent)>> = self.handle.block_on(
            stream::iter(jobs)
                .map(|group| {
                    let sink = Arc::clone(sink);
                    async move {
                        let mut done = Vec::with_capacity(group.len());
                        for job in group {
                            let delivery =
                                deliver_with_retry(sink.as_ref(), &job.notification, &retry).await;
                            let request_id = job.request.event_id;
                            let outcome = match delivery.result {
                                Ok(()) => NotificationEvent::NotificationSent(NotificationSent {
                                    request_id,
                                    attempts: delivery.attempts,
                                }),
                                Err(err) => {
                                    tracing::warn!(order_id = %job.notification.order_id,
                                        event_id = %job.notification.event_id, error = %err,
                                        attempts = delivery.attempts, "notification failed");
                                    NotificationEvent::NotificationFailed(NotificationFailed {
                                        request_id,
                                        reason: err.message,
                                        attempts: delivery.attempts,
                                    })
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
        let topic = &self.topics.notifications;
        for (job, outcome) in results.into_iter().flatten() {
            out.emit_notification(topic, &job.request);
            let record = NotificationEnvelope::new(
                job.request.order_id,
                outcome,
                Some(job.request.event_id),
                job.request.correlation_id,
            );
            out.emit_notification(topic, &record);
        }
    }
}
