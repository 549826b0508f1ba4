//! What an orders-topic event means for notifications (pure): the state kept per order, the
//! decision ([`plan`]), and the records a notification leaves on the notifications topic.

use chrono::{DateTime, Utc};
use orderpipe_schemas::{
    NotificationEnvelope, NotificationEvent, NotificationFailed, NotificationKind,
    NotificationRequested, NotificationSent, OrderEnvelope, OrderEvent,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::sink::Notification;
use super::stage::NotificationsStage;
use crate::shared::derived_event_id;

/// What the stage keeps per order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyState {
    /// The customer, once `order_placed` was seen.
    pub customer_id: Option<String>,
    /// Orders-topic events already notified, with the outcome (the dedup set).
    pub handled: Vec<Handled>,
    /// Notifications not delivered yet (the receiver failed transiently), in the order they are
    /// to be delivered; retried from the stage's tick until their retry window ends. Part of
    /// the dedup set too: a redelivered source event does not start a second delivery.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting: Vec<Waiting>,
    /// `occurred_at` of the latest event that changed this state (`order_placed` or a notified
    /// event): the state is tombstoned once this is older than the retention. State written
    /// before this field existed: `None`, and the retention counts from its restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_at: Option<DateTime<Utc>>,
}

impl NotifyState {
    /// Records that an event of `at` changed this state.
    pub(crate) fn touch(&mut self, at: DateTime<Utc>) {
        self.last_event_at = Some(self.last_event_at.map_or(at, |last| last.max(at)));
    }
}

/// A notification whose delivery failed transiently and is retried later. Nothing is on the
/// notifications topic for it yet: its `notification_requested` and outcome are emitted
/// together once it is sent or given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// What to deliver (the same body, and so the same `event_id`, on every attempt).
    pub notification: Notification,
    /// `correlation_id` of the source event, for the records.
    pub correlation_id: Uuid,
    /// Attempts made so far (0: queued behind an earlier notification of the same order).
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: String,
    /// After this instant the next failed attempt records `notification_failed`.
    pub give_up_at: DateTime<Utc>,
}

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
    /// Nothing to do (also: a redelivery of a notification that is waiting to be retried).
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
    let is_waiting = state.is_some_and(|s| {
        s.waiting
            .iter()
            .any(|w| w.notification.event_id == event.event_id)
    });
    if is_waiting {
        return Plan::Nothing;
    }
    let handled = state.and_then(|s| s.handled.iter().find(|h| h.event_id == event.event_id));
    match handled {
        Some(handled) => Plan::Repeat(handled.clone()),
        None => Plan::Notify(notice),
    }
}

/// The orders-topic event a notification is about: what its records derive from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source {
    pub order_id: Uuid,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub correlation_id: Uuid,
}

impl Source {
    pub(crate) fn of(event: &OrderEnvelope) -> Self {
        Self {
            order_id: event.order_id,
            event_id: event.event_id,
            occurred_at: event.occurred_at,
            correlation_id: event.correlation_id,
        }
    }

    pub(crate) fn of_waiting(waiting: &Waiting) -> Self {
        let n = &waiting.notification;
        Self {
            order_id: n.order_id,
            event_id: n.event_id,
            occurred_at: n.occurred_at,
            correlation_id: waiting.correlation_id,
        }
    }
}

/// The records of a notification: `notification_requested` (at the source event's time) and its
/// outcome (at `handled.at`), with event ids derived from the source event: a repeat emits
/// byte-identical records.
pub(crate) fn records(
    source: Source,
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
pub(crate) fn status(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::OrderConfirmed => "confirmed",
        NotificationKind::OrderRejected => "rejected",
        NotificationKind::OrderCancelled => "cancelled",
        NotificationKind::Refunded => "refunded",
    }
}
