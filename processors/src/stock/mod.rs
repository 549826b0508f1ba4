//! Per-SKU stock reservation: one writer per SKU partition, decisions in memory, written in
//! batches (one transaction and one `stock_levels` per touched SKU per batch).
//!
//! Layout:
//! - [`core`]: the pure decisions of one SKU (reserve, release, sell, adjust, prune).
//! - [`changelog`]: changelog keys and records of the stage's state.
//! - [`stage`]: [`StockStage`], the [`crate::Stage`] implementation.
//! - [`admin`]: [`set_stock`], the operator's `orderpipe stock set|adjust`.

pub mod admin;
pub mod changelog;
pub mod core;
pub mod stage;

pub use admin::set_stock;
pub use stage::{StockStage, DEFAULT_LINE_RETENTION, STAGE_NAME};
