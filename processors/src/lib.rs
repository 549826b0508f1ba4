//! orderpipe stream processors: consume-transform-produce stages with exactly-once semantics.
//!
//! Layout:
//! - [`runner`]: the [`Stage`] trait, [`Effects`], [`Config`], [`spawn_stage`] and the loop that
//!   drives a stage on its own thread (Kafka transactions, changelog restore, dead letters).
//! - [`kafka`]: the stages' clients from the `orderpipe_runtime::kafka` presets, [`ensure_topics`]
//!   for a stage's own changelog and dead-letter topics.
//! - [`metrics`]: every metric the processors record, with their names.
//! - [`stock`]: per-SKU stock reservation (pure decisions in [`stock::core`], the stage, admin).
//! - [`saga`]: the per-order state machine (pure [`saga::decide()`]) and its stage.
//! - [`payments`]: the payment gateway trait, simulated and HTTP gateways, and the payments stage
//!   (the simulator's HTTP server is the `orderpipe-gateway-sim` crate: no web server here).
//! - [`notifications`]: sinks (log, signed webhook) and the notifications stage.
//! - [`shared`]: what several stages use: outbound HTTP and [`RetryPolicy`], derived event ids,
//!   [`ConfigError`].
#![warn(missing_docs)]

pub mod kafka;
pub mod metrics;
pub mod notifications;
pub mod payments;
pub mod runner;
pub mod saga;
pub mod shared;
pub mod stock;

pub use kafka::ensure_topics;
pub use runner::{
    spawn_stage, ChangelogRecord, Config, DeadLetter, Effects, Error, Input, OutputRecord,
    ProcessingMode, Stage, StageHandle, DLQ_HEADERS, STUCK_EXIT_CODE,
};
pub use shared::{ConfigError, RetryPolicy};
