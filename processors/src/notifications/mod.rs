//! Notifications: tells customers about terminal order events (and refunds) through a sink,
//! recording every request and its outcome on the notifications topic.
//!
//! Layout:
//! - [`sink`]: [`NotificationSink`], the [`Notification`] body, [`LogSink`], delivery with retries.
//! - [`webhook`]: [`WebhookSink`] (HMAC-SHA256 signed), and [`webhook::verify`] for receivers.
//! - [`config`]: [`NotificationsArgs`] (clap/env) and [`Secret`].
//! - [`plan`](mod@plan): what an event means ([`plan()`]), the per-order [`NotifyState`], the records.
//! - [`stage`]: [`NotificationsStage`], dedup by source event id, at-least-once delivery,
//!   retries from `tick` while a receiver is down (in `retry`).

pub mod config;
pub mod plan;
mod retry;
pub mod sink;
pub mod stage;
pub mod webhook;

pub use config::{NotificationsArgs, Secret, SinkKind};
pub use plan::{notice_for, plan, Handled, Notice, NotifyState, Outcome, Plan, Waiting};
pub use sink::{
    deliver_with_retry, Delivery, DeliveryError, LogSink, Notification, NotificationSink,
};
pub use stage::{NotificationsStage, DEFAULT_RETENTION, DEFAULT_RETRY_FOR};
pub use webhook::{sign, verify, WebhookConfig, WebhookSink, EVENT_ID_HEADER, SIGNATURE_HEADER};
