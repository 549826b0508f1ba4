//! Events of the `notifications` topic (key: `order_id`): a request to tell the customer
//! something and the outcome of delivering it. Delivery is at-least-once; receivers deduplicate
//! by the request's `event_id`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One event of the `notifications` topic; the serde tag `event_type` names the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event_type", rename_all = "snake_case")]
pub enum NotificationEvent {
    /// Something about the order should be told to the customer.
    NotificationRequested(NotificationRequested),
    /// The request was delivered to the sink.
    NotificationSent(NotificationSent),
    /// Delivery gave up after bounded retries.
    NotificationFailed(NotificationFailed),
}

impl NotificationEvent {
    /// The `event_type` tag of this event, as written on the wire.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::NotificationRequested(_) => "notification_requested",
            Self::NotificationSent(_) => "notification_sent",
            Self::NotificationFailed(_) => "notification_failed",
        }
    }
}

/// What a notification is about (closed set, snake_case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// The order is confirmed.
    OrderConfirmed,
    /// The order is rejected.
    OrderRejected,
    /// The order was cancelled.
    OrderCancelled,
    /// Money was refunded.
    Refunded,
}

/// Payload of `notification_requested`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationRequested {
    /// Customer to notify.
    pub customer_id: String,
    /// What to tell them.
    pub kind: NotificationKind,
}

/// Payload of `notification_sent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationSent {
    /// `event_id` of the `notification_requested` that was delivered (the dedup key).
    pub request_id: Uuid,
    /// Delivery attempts it took, at least 1.
    pub attempts: u32,
}

/// Payload of `notification_failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationFailed {
    /// `event_id` of the `notification_requested` that could not be delivered.
    pub request_id: Uuid,
    /// Last delivery error, for humans.
    pub reason: String,
    /// Delivery attempts made before giving up.
    pub attempts: u32,
}
