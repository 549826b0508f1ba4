//! Process plumbing every orderpipe service shares, kept in one place.
//!
//! Layout:
//! - [`kafka`]: the one Kafka layer (client presets, operator options, topic creation from the
//!   topic plan, dead-letter headers, lag from statistics).
//! - [`cql`]: the CQL login (user name, password from a file) every session opens with.
//! - [`telemetry`]: structured logging setup.
//! - [`metrics`]: the process-wide Prometheus recorder and its `/metrics` rendering.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` routes, with readiness checks components register.
//! - [`auth`]: bearer keys compared by digest, and the admin key guarding the admin endpoints.
//! - [`problem`]: the RFC 7807 problem document every HTTP API answers errors with.
//! - [`openapi`]: `/openapi.json`, and schemas of `schemas` types (from schemars) for OpenAPI documents.
//! - [`shutdown`]: a `CancellationToken` cancelled on SIGINT or SIGTERM.

pub mod auth;
pub mod cql;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod openapi;
pub mod problem;
pub mod shutdown;
pub mod telemetry;
