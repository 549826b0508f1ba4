//! Process plumbing every orderpipe service shares, kept in one place.
//!
//! Layout:
//! - [`telemetry`]: structured logging setup.
//! - [`metrics`]: the process-wide Prometheus recorder and its `/metrics` rendering.
//! - [`health`]: `/healthz`, `/readyz` and `/metrics` routes, with readiness checks components register.
//! - [`shutdown`]: a `CancellationToken` cancelled on SIGINT or SIGTERM.

pub mod health;
pub mod metrics;
pub mod shutdown;
pub mod telemetry;
