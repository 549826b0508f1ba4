//! orderpipe ingest: the HTTP API every checkout frontend talks to during a sale. It validates an
//! order, authenticates and rate-limits its sender, and answers `202 Accepted` only once the
//! broker has acknowledged its `order_placed` event (idempotent producer, `acks=all`).
//!
//! Layout:
//! - [`config`]: [`Config`], the `--ingest-*` flags and `ORDERPIPE_INGEST_*` variables.
//! - [`server`]: [`Server`] (bind, serve, graceful shutdown), the routes and the request flow.
//! - [`error`]: [`ApiError`], every refusal as RFC 7807 `application/problem+json`.
//! - [`auth`]: API keys per client, stored as SHA-256 digests.
//! - [`ratelimit`]: per-client request rate limit.
//! - [`idempotency`]: Idempotency-Key validation, derived order ids, body fingerprints seen.
//! - [`kafka`]: the producer and its acknowledgement deadline, broker probe, topic creation.
//! - [`metrics`]: names and meaning of every metric this crate records.
//!
//! # Contract
//! - `POST /v1/orders` with a JSON order ([`orderpipe_schemas::NewOrder`]) and
//!   `Content-Type: application/json`: `202 {"order_id": ..., "status": "accepted"}` once
//!   `order_placed` is durable on the orders topic, keyed by order id. 400 malformed JSON or
//!   Idempotency-Key; 401/403 API key; 413 body over the limit; 415 content type; 422 JSON that
//!   is not a valid order (missing, unknown or mistyped fields, broken rules; `errors` lists JSON
//!   pointers) or an Idempotency-Key reused with another body; 429 rate limit; 503 when the
//!   broker did not acknowledge within the deadline or the producer queue is full. 429 and 503
//!   carry `Retry-After`.
//! - `/healthz` (alive), `/readyz` (the broker answered the last probe, within about a second),
//!   `/metrics` (Prometheus).
//!
//! # Idempotency
//! With an `Idempotency-Key` header the order id is UUID v5 of (client id, key) in a fixed
//! namespace: a retry to any instance, after any restart, gets the same order id, and a
//! re-produced `order_placed` is a duplicate that downstream stages drop by order id (they must
//! deduplicate `order_placed` by `order_id`, not by `event_id`). So one key never creates two
//! orders. A retry with the same body is answered 202 with the same id. A different body under a
//! known key is refused with 422 when this instance still remembers the key (bounded memory,
//! TTL); across instances and restarts that check needs a shared store (planned: ScyllaDB
//! `INSERT ... IF NOT EXISTS`). Without the header every request is a new order (UUID v7): a
//! client retrying after a 503 without a key may create a second order.

#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod error;
pub mod idempotency;
pub mod kafka;
pub mod metrics;
pub mod ratelimit;
pub mod server;

use std::net::SocketAddr;

use orderpipe_schemas::Topics;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use error::{ApiError, Problem};
pub use server::{Accepted, Server};

/// Runs the ingest API on `listen` until `shutdown` is cancelled: creates missing topics (unless
/// disabled), serves, then answers what is in flight and flushes the producer.
pub async fn run(
    config: Config,
    kafka_bootstrap: &str,
    topics: Topics,
    listen: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    Server::bind(config, kafka_bootstrap, topics, listen)
        .await?
        .serve(shutdown)
        .await
}
