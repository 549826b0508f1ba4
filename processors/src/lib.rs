//! orderpipe stream processors: consume-transform-produce stages with exactly-once semantics.
//!
//! Layout:
//! - [`runner`]: the [`Stage`] trait, [`Effects`], [`Config`], [`spawn_stage`] and the loop that
//!   drives a stage on its own thread (Kafka transactions, changelog restore, dead letters).
//! - [`kafka`]: client settings every stage shares, [`ensure_topics`] for changelog/dlq topics.
//! - [`metrics`]: every metric the processors record, with their names.
//! - [`stock`]: per-SKU stock reservation (pure decisions in [`stock::core`], the stage, admin).
#![warn(missing_docs)]

pub mod kafka;
pub mod metrics;
pub mod runner;
pub mod stock;

pub use kafka::ensure_topics;
pub use runner::{
    spawn_stage, ChangelogRecord, Config, DeadLetter, Effects, Error, Input, OutputRecord,
    ProcessingMode, Stage, StageHandle, DLQ_HEADERS,
};
