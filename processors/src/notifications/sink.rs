//! Where notifications go: the [`NotificationSink`] trait, the [`Notification`] every sink gets
//! (also the webhook body), the [`LogSink`], and delivery with bounded retries.

use std::sync::atomic::{AtomicU32, Ordering};

use backon::Retryable as _;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use orderpipe_schemas::NotificationKind;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::shared::RetryPolicy;

/// One notification, as delivered (the webhook's JSON body). Receivers deduplicate by `event_id`:
/// delivery is at-least-once, and a redelivery carries the same `event_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// `event_id` of the orders-topic event this is about (the dedup key; stable across resends).
    pub event_id: Uuid,
    /// `event_id` of the `notification_requested` record of this delivery.
    pub request_id: Uuid,
    /// The order.
    pub order_id: Uuid,
    /// The customer (`unknown` if the stage never saw the order placed).
    pub customer_id: String,
    /// What happened, e.g. `order_rejected`.
    pub kind: NotificationKind,
    /// Short status: `confirmed`, `rejected`, `cancelled` or `refunded`.
    pub status: String,
    /// Why (rejections: the reject reason, e.g. `out_of_stock`), else `null`.
    pub reason: Option<String>,
    /// Refunds: amount given back, in minor units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<i64>,
    /// Refunds: ISO 4217 code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
}

/// Why one delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    /// Whether another attempt may succeed (timeouts, 5xx, 429); else give up at once (4xx).
    pub retryable: bool,
    /// What went wrong, for humans.
    pub message: String,
}

impl DeliveryError {
    /// A transient failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

/// A destination for notifications. Object-safe (`Arc<dyn NotificationSink>`).
pub trait NotificationSink: Send + Sync + 'static {
    /// Delivers once (no retries: [`deliver_with_retry`] does those).
    fn deliver<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<(), DeliveryError>>;
}

/// Writes notifications to the log (`tracing`, target `orderpipe::notifications`). Notifications
/// carry no payment data, so nothing secret is logged.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSink;

impl NotificationSink for LogSink {
    fn deliver<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<(), DeliveryError>> {
        tracing::info!(target: "orderpipe::notifications", event_id = %n.event_id,
            order_id = %n.order_id, customer_id = %n.customer_id, status = %n.status,
            reason = n.reason.as_deref().unwrap_or(""), "notification");
        futures::future::ready(Ok(())).boxed()
    }
}

/// Outcome of a delivery with retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Attempts made, at least 1.
    pub attempts: u32,
    /// Success, or the last error.
    pub result: Result<(), DeliveryError>,
}

/// Delivers with up to `policy.max_attempts` attempts, backing off between transient failures.
pub async fn deliver_with_retry(
    sink: &dyn NotificationSink,
    notification: &Notification,
    policy: &RetryPolicy,
) -> Delivery {
    let attempts = AtomicU32::new(0);
    let result = (|| {
        attempts.fetch_add(1, Ordering::Relaxed);
        sink.deliver(notification)
    })
    .retry(policy.backoff())
    .when(|e: &DeliveryError| e.retryable)
    .notify(|err, after| {
        tracing::debug!(event_id = %notification.event_id, error = %err, retry_in = ?after,
            "notification delivery failed; retrying");
    })
    .await;
    Delivery {
        attempts: attempts.load(Ordering::Relaxed),
        result,
    }
}
