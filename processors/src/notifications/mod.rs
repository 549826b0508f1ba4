//! Notifications: tells customers about terminal order events (and refunds) through a sink,
//! recording every request and its outcome on the notifications topic.
//!
//! Layout:
//! - [`sink`]: [`NotificationSink`], the [`Notification`] body, [`LogSink`], delivery with retries.
//! - [`webhook`]: [`WebhookSink`] (HMAC-SHA256 signed), and [`webhook::verify`] for receivers.
//! - [`config`]: [`NotificationsArgs`] (clap/env) and [`Secret`].
//! - [`stage`]: [`NotificationsStage`], dedup by source event id, at-least-once delivery.

pub mod config;
pub mod sink;
pub mod stage;
pub mod webhook;

pub use config::{NotificationsArgs, Secret, SinkKind};
pub use sink::{
    deliver_with_retry, Delivery, DeliveryError, LogSink, Notification, NotificationSink,
};
pub use stage::{
    notice_for, plan, Handled, Notice, NotificationsStage, NotifyState, Outcome, Plan,
    DEFAULT_RETENTION,
};
pub use webhook::{sign, verify, WebhookConfig, WebhookSink, EVENT_ID_HEADER, SIGNATURE_HEADER};
