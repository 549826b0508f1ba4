//! The stage runner: exactly-once (or at-least-once) consume-transform-produce on a dedicated
//! thread per stage, state restored from changelog topics on partition assignment.

mod config;
mod stage;

pub use config::{Config, ProcessingMode};
pub use stage::{ChangelogRecord, DeadLetter, Effects, Input, OutputRecord, Stage};
