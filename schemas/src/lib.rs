//! Event schemas of orderpipe: the JSON contract between every stage and every consumer.
//!
//! Layout:
//! - [`envelope`]: the envelope around every event (`event_id`, `event_type`, `schema_version`,
//!   key, `occurred_at`, `causation_id`, `correlation_id`, payload), one per topic
//!   ([`OrderEnvelope`], [`StockEnvelope`], [`NotificationEnvelope`]), encoding and decoding.
//! - [`orders`], [`stock`], [`notifications`]: one event enum per topic and its payloads.
//! - [`versions`]: current schema version of every event type and the upcasters of old versions.
//! - [`error`]: [`DecodeError`], every variant of which means "dead-letter this event".
//! - [`new_order`]: the `POST /v1/orders` body, its validation and fingerprint.
//! - [`topics`]: topic names (defaults, prefix, changelog and dead-letter topics) and the topic
//!   plan (partitions, replication, compaction of each), as data.
//! - [`json_schema`]: JSON Schema export, committed under `schemas/json/`.
//!
//! Pure: no IO, no async. Decoding goes bytes -> `serde_json::Value` -> upcast -> typed.
#![warn(missing_docs)]

pub mod envelope;
pub mod error;
pub mod json_schema;
pub mod new_order;
pub mod notifications;
pub mod orders;
pub mod stock;
pub mod topics;
pub mod versions;

pub use envelope::{decode, encode, Envelope, NotificationEnvelope, OrderEnvelope, StockEnvelope};
pub use error::DecodeError;
pub use json_schema::json_schemas;
pub use new_order::{is_active_currency, FieldError, NewOrder};
pub use notifications::{
    NotificationEvent, NotificationFailed, NotificationKind, NotificationRequested,
    NotificationSent,
};
pub use orders::{
    CancellationRequested, DeclineReason, OrderCancelled, OrderConfirmed, OrderEvent, OrderLine,
    OrderPlaced, OrderRejected, PaymentDeclined, PaymentRef, PaymentRequested, PaymentSettled,
    Refunded, RejectReason, StockLineRejected, StockLineReserved, StockRejected, StockReserved,
};
pub use stock::{
    ReleaseRequested, ReservationRequested, SaleRequested, StockAdjusted, StockAdjustment,
    StockEvent, StockLevels, StockRejectReason,
};
pub use topics::{TopicKind, TopicSpec, Topics, CHANGELOG_STAGES, DLQ_STAGES};
pub use versions::{current_version, EventType, EVENT_TYPES};
