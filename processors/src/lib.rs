//! orderpipe stream processors: consume-transform-produce stages with exactly-once semantics.
//!
//! Layout:
//! - [`runner`]: the [`Stage`] trait, [`Effects`], [`Config`] and the loop that drives a stage.
#![warn(missing_docs)]

pub mod runner;

pub use runner::{
    ChangelogRecord, Config, DeadLetter, Effects, Input, OutputRecord, ProcessingMode, Stage,
};
