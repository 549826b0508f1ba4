//! orderpipe ingest: the HTTP API every checkout frontend talks to during a sale. It validates an
//! order, authenticates and rate-limits its sender, and answers `202 Accepted` only once the
//! broker has acknowledged its `order_placed` event (idempotent producer, `acks=all`).
//!
//! Layout:
//! - [`config`]: [`Config`], the `--ingest-*` flags and `ORDERPIPE_INGEST_*` variables.
//! - [`server`]: [`Server`]: start-up, serving with its background tasks, graceful shutdown.
//! - `router`: the routes, their middleware (body limit, timeout, problem+json, metrics), the
//!   OpenAPI document ([`openapi`]) and the health routes.
//! - [`handlers`]: placing and cancelling an order, each request's checks cheapest first.
//! - [`error`]: [`ApiError`], every refusal as RFC 7807 `application/problem+json`;
//!   [`ServerError`] and [`KeysError`] at start-up; [`StoreError`] of the shared CQL state.
//! - [`auth`]: API keys per client, stored as SHA-256 digests.
//! - [`ratelimit`]: per-client request rate limit.
//! - [`idempotency`]: Idempotency-Key validation, derived order ids, body fingerprints seen.
//! - [`idempotency_store`]: the optional shared Idempotency-Key store in ScyllaDB/Cassandra.
//! - `kafka`: the producer and its acknowledgement deadline, broker probe (client presets and
//!   topic creation are `orderpipe_runtime::kafka`'s).
//! - [`waiting_room`]: the optional fleet-wide admission rate with signed queue tickets.
//! - [`metrics`]: names and meaning of every metric this crate records.
//!
//! # Contract
//! - `POST /v1/orders` with a JSON order ([`orderpipe_schemas::NewOrder`]) and
//!   `Content-Type: application/json`: `202 {"order_id": ..., "status": "accepted"}` once
//!   `order_placed` is durable on the orders topic, keyed by order id. 400 malformed JSON or
//!   Idempotency-Key; 401/403 API key; 413 body over the limit; 415 content type; 422 JSON that
//!   is not a valid order (missing, unknown or mistyped fields, broken rules; `errors` lists JSON
//!   pointers) or an Idempotency-Key reused with another body; 429 rate limit; 503 when the
//!   broker did not acknowledge within the deadline, the producer queue is full, or the shared
//!   idempotency store could not check the key. 429 and 503 carry `Retry-After`. With the
//!   waiting room on (`--ingest-waiting-room-rate`), also 429 `waiting-room` with a queue ticket,
//!   403/410 for an invalid/expired ticket, 503 when its sequence cannot be reached.
//! - `/healthz` (alive), `/readyz` (the broker answered the last probe, within about a second),
//!   `/metrics` (Prometheus).
//!
//! # Idempotency
//! With an `Idempotency-Key` header the order id is UUID v5 of (client id, key) in a fixed
//! namespace: a retry to any instance, after any restart, gets the same order id, and a
//! re-produced `order_placed` is a duplicate that downstream stages drop by order id (they must
//! deduplicate `order_placed` by `order_id`, not by `event_id`). So one key never creates two
//! orders. A retry with the same body is answered 202 with the same id (and re-produced). A
//! different body under a known key is refused with 422. Where the fingerprints of keys seen
//! (SHA-256 of the canonical order) are kept is `--ingest-idempotency-store`:
//! - `memory` (default): this instance's bounded map ([`idempotency::RecentKeys`]: at most
//!   `--ingest-idempotency-capacity` keys, each for `--ingest-idempotency-ttl`). The check holds
//!   only on this instance and until it restarts: another instance, or this one restarted,
//!   accepts another body under a used key (still as the same order id).
//! - `cql`: a table in ScyllaDB/Cassandra shared by every instance ([`idempotency_store`]),
//!   `idempotency_keys` in `--ingest-cql-keyspace` on `--ingest-cql-nodes`, one partition per
//!   (client, key), written with `INSERT ... IF NOT EXISTS USING TTL` (a lightweight
//!   transaction; rows live `--ingest-idempotency-ttl`). The first body recorded for a key wins,
//!   on every instance and across restarts. The memory map stays in front as a fast path: a key
//!   this instance already confirmed with this body skips the store. The store is never
//!   bypassed: when it is unreachable, failing, or slower than `--ingest-ack-deadline`, a keyed
//!   order is answered 503 with Retry-After and nothing is produced. Orders without a key do
//!   not touch the store. Keyspace (SimpleStrategy with `--ingest-cql-replication-factor` when
//!   missing) and table are created at start; an unreachable store at start does not stop the
//!   server, which keeps connecting in the background.
//!
//! Without the header every request is a new order (UUID v7): a client retrying after a 503
//! without a key may create a second order.

#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod error;
pub mod handlers;
pub mod idempotency;
pub mod idempotency_store;
mod kafka;
pub mod metrics;
pub mod ratelimit;
mod request;
mod router;
mod serve;
pub mod server;
pub mod waiting_room;

use std::net::SocketAddr;

use orderpipe_schemas::Topics;
use tokio_util::sync::CancellationToken;

pub use config::{Config, IdempotencyStore};
pub use error::{ApiError, KeysError, Problem, ServerError, StoreError};
pub use handlers::Accepted;
pub use kafka::producer_config;
pub use router::openapi;
pub use server::Server;

/// Runs the ingest API on `listen` until `shutdown` is cancelled: creates missing topics (unless
/// disabled), serves, then answers what is in flight and flushes the producer.
pub async fn run(
    config: Config,
    kafka_bootstrap: &str,
    topics: Topics,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    Server::bind(config, kafka_bootstrap, topics, listen)
        .await?
        .serve(shutdown)
        .await
}
