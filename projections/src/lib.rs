//! orderpipe projections: consumers that build query views in ScyllaDB (or Cassandra) from the
//! event topics, and the HTTP query API over those views.
//!
//! Layout:
//! - [`config`]: [`Config`] (clap `Args`, flattened into `orderpipe run`): keyspace, replication,
//!   consistency, projector and query settings.
//! - [`schema`]: [`connect`] (session with the configured execution profile), versioned
//!   idempotent [`migrate`]ions, the table list ([`view_columns`]: their columns).
//! - `model` (private, pure): write timestamps and the views' types; `model/plan.rs`: which
//!   writes an event becomes.
//! - `store` (private): `store/writer.rs` (prepared writes, per-partition unlogged batches),
//!   `store/reader.rs` (the query API's reads), `store/dump.rs` (the public [`dump_views`] for
//!   comparisons).
//! - [`projector`]: the live consumers ([`run_projectors`], [`start_projectors`]), lag,
//!   [`Progress`]; `projector/applier.rs` (decode, plan and write a batch; replays use it too),
//!   `live.rs` (one projector's loop), `dead_letter.rs`, `clients.rs` (Kafka client setup).
//! - [`rebuild`](mod@rebuild): [`rebuild()`] every view from offset 0 into another keyspace;
//!   [`Replay`] chosen projections from the beginning or a time, resumable (`replay_positions`);
//!   `rebuild/replay.rs` (plan, then read, apply and record batch by batch),
//!   `topic_reader.rs` (the replay's consumer), `target_keyspace.rs` (the position record).
//! - [`switch`]: which keyspace the query APIs serve (`active_views`), switched without downtime.
//! - [`api`]: the query API ([`QueryApi`], [`serve`], [`run_query`]); `api/` holds a file per
//!   route family and `problems.rs` (answers, RFC 7807 problems, parameters).
//! - [`stock_stream`]: live stock over server-sent events (one shared watcher per watched SKU)
//!   and the write notices that wake watchers and long-polls when a projector of this process
//!   wrote ([`stock_stream::subscribe_writes`]).
//! - `control_room` (private): the live page at `/` and its event stream
//!   ([`ControlRoomConfig`]: where its figures come from).
//! - `metrics` (private): every metric name, documented in one table.
//!
//! # Views (CQL tables)
//! - `orders` — partition per order: static columns hold the order (placement, first time of each
//!   stage, first terminal outcome); clustering rows `(occurred_at, event_id)` are its timeline.
//! - `order_lines (order_id, line_index)`; `orders_by_customer (customer_id, placed_at DESC,
//!   order_id DESC)`; `stock_by_sku (sku)`; `sales_by_minute ((hour), minute, order_id)` and
//!   `sales_by_sku_minute ((sku, hour), minute, order_id, line_index)`: one row per confirmed
//!   order (line), summed by the query API (no counters, no aggregates in Cassandra 2.1).
//!
//! # Idempotency: why replays and rebuilds change nothing
//! Every write carries `USING TIMESTAMP` derived from the event's Kafka offset, never a clock.
//! An order's events share a partition (key `order_id`), as do a SKU's snapshots (key `sku`), so
//! offsets order them. Cells where the latest event wins (stock levels) use `offset + 1`; cells
//! where the first event wins (placement, each stage's time, the terminal outcome, sales rows)
//! use `ANCHOR - offset`, mirrored around a fixed instant in the past (2020-01-01 in
//! microseconds), so every write timestamp lies in the past: ScyllaDB refuses timestamps more
//! than 3 days ahead. Re-applying an event rewrites the same value with the same timestamp
//! (a no-op); applying an old event after a newer one loses on timestamp. Each stage has its own
//! column, so events may land in any order; the status is derived at read time: the first
//! terminal outcome if any (a late `payment_settled` after `order_rejected` leaves it rejected),
//! else the furthest stage. Rows whose key depends on an event's data (a customer's list is keyed
//! by placement time, sales by confirmation minute) are written only for the first placement /
//! first outcome: the orders projector reads the order's placement and outcome (cached, read from
//! the views on a miss) before planning `order_placed`, `order_confirmed` and `order_rejected`.
//! A duplicated `order_placed` only adds its timeline row. A rebuild from offset 0 sees the same
//! offsets, hence writes the same cells with the same write timestamps.
//!
//! Offsets compare only within a partition: adding partitions to a topic moves keys, so it calls
//! for a rebuild into a fresh keyspace (as does recreating a topic).
//!
//! # Delivery
//! Offsets are committed only after a batch's writes (and dead letters) are acknowledged:
//! at-least-once delivery plus idempotent writes gives effectively-once views. Consistency is
//! set in the session's default execution profile (`--cql-consistency`, default LOCAL_QUORUM:
//! a LOCAL_QUORUM read sees a LOCAL_QUORUM write, which the read-before-write and the query API
//! need; one replica on a one-node development cluster).
//!
//! CQL stays inside what Cassandra 2.1 and ScyllaDB both accept: text, uuid, int, bigint,
//! timestamp, static columns, `IF NOT EXISTS`, `USING TIMESTAMP`, unlogged batches.
//!
//! Because write timestamps are offsets, only the projectors may write these tables (a manual
//! write stamped with the clock would shadow them for good): fix a view by rebuilding it. Keep
//! the default compaction (no time-window compaction: the timestamps are not times).
//!
//! # Entry points (for the `orderpipe` binary)
//! - `orderpipe run --components projections`: [`run_projectors`]`(config, bootstrap, nodes,
//!   topics, readiness, shutdown)`; it migrates the schema first and registers its lag checks
//!   in `readiness` (serve them with the query API's `/readyz`, or the binary's own).
//! - `orderpipe run --components query`: [`run_query`]`(config, nodes, listen, readiness,
//!   shutdown)`; in tests, [`QueryApi::new`] + [`serve`] on a port-0 listener.
//! - `orderpipe replay`/`rebuild`: [`Replay::prepare`] + [`Replay::run`] (or [`rebuild()`]),
//!   then `orderpipe switch` points the running query APIs at the new keyspace (`active_views`).
//! - schema only: [`connect`] + [`migrate`]; comparisons: [`dump_views`].
//!
//! # Not covered
//! - Sales count confirmations; a later `order_cancelled` or `refunded` is shown on the order
//!   but not subtracted from sales.
//! - Adding partitions to (or recreating) a topic needs a rebuild (offsets restart).
//! - Long-polls and stock streams are woken at once only by projectors of their own process;
//!   writes of other processes are seen by polling (`--query-poll-interval`,
//!   `--query-stream-poll-interval`).
#![warn(missing_docs)]

pub mod api;
pub mod config;
mod control_room;
mod error;
mod event_schemas;
mod metrics;
mod model;
pub mod projector;
pub mod rebuild;
pub mod schema;
pub mod stock_stream;
mod store;
pub mod switch;

pub use api::{run_query, serve, QueryApi};
pub use config::{Config, ConsistencyLevel, CqlConfig, ProjectorConfig, QueryConfig, Replication};
pub use control_room::ControlRoomConfig;
pub use error::Error;
pub use model::Status;
pub use projector::{
    run_projectors, start_projectors, PartitionProgress, Progress, ProjectorKind, Projectors,
    DLQ_STAGE_NAME,
};
pub use rebuild::{
    rebuild, PartitionPlan, RebuildProgress, RebuildReport, Replay, ReplayFrom, ReplayPlan,
    ReplaySpec, StartOrigin,
};
pub use schema::{
    connect, migrate, parse_nodes, view_columns, Migration, MigrationReport, MIGRATIONS,
    VIEW_TABLES,
};
pub use store::dump_views;
pub use switch::{active_keyspace, switch_active_keyspace};
