//! Payments: the [`PaymentGateway`] trait, its simulated and HTTP implementations, and the payments
//! stage. The simulator's HTTP server is the `orderpipe-gateway-sim` crate (ops/gateway-sim).
//!
//! Layout:
//! - [`gateway`]: the trait, [`Charge`], [`Refund`], [`GatewayError`].
//! - [`simulated`]: [`SimulatedGateway`] (latency, seeded declines, per-order counters).
//! - [`contract`]: the HTTP contract (`POST /v1/charges`, `POST /v1/refunds`, stats, faults).
//! - [`http_gateway`]: [`HttpGateway`], the client (timeout, retries with backoff, breaker).
//! - [`breaker`]: [`CircuitBreaker`], a small state machine.
//! - [`config`]: [`PaymentsArgs`] (clap/env).
//! - [`pending`]: unfinished gateway work ([`PendingOp`], the changelog value) and its backoff.
//! - [`stage`]: the stage, [`PaymentsStage`].
//!
//! No double charge: every gateway call carries the order id as its idempotency key, and the
//! gateway answers a repeated key with the first answer without moving money. So an event
//! redelivered after a crash (at-least-once), re-processed after an aborted transaction
//! (exactly-once), or a client retry after a lost answer, all meet the first charge. Calls of one
//! order run in offset order; orders of a batch run concurrently.
//!
//! Unreachable gateway (timeouts, 5xx, open circuit breaker): the charge is not declined; it
//! stays pending in `payments.changelog` and is retried from the stage's tick with backoff until
//! `payment_requested.occurred_at + --payments-charge-retry-for`, and only then declined with
//! `gateway_timeout` (the saga rejects the order with `payment_timeout`, or has done so by its own
//! deadline). Only the gateway's own decline (or refusal) declines a payment at once.
//!
//! Compensation: on `order_rejected` with reason `payment_declined` or `payment_timeout`, the
//! stage drops any pending charge of the order and asks the gateway to refund it; if there was a
//! charge it emits `refunded`. Any charge of such an order happened while handling its
//! `payment_requested`, which precedes the rejection in the partition, so the refund comes after
//! it (a `payment_settled` the saga sees after the rejection is refunded this way). A refund of
//! an order with no charge voids it at the gateway, so a charge request still in flight cannot
//! take money later. A refund that fails (gateway down, breaker open, anything) stays pending in
//! the changelog and is retried with backoff until the gateway confirms it, across restarts;
//! it is never dead-lettered.
//!
//! Not covered: TLS to the gateway (plain `http://`; terminate TLS in a sidecar).

pub mod breaker;
pub mod config;
pub mod contract;
pub mod gateway;
pub mod http_gateway;
pub mod pending;
pub mod simulated;
pub mod stage;

pub use breaker::{BreakerConfig, BreakerState, CircuitBreaker};
pub use config::{GatewayKind, PaymentsArgs};
pub use gateway::{Charge, ChargeOutcome, GatewayError, PaymentGateway, Refund};
pub use http_gateway::{HttpGateway, HttpGatewayConfig};
pub use pending::{Cause, PendingOp, RetrySchedule};
pub use simulated::{
    LedgerCharge, LedgerRequest, OrderLedger, OrderStats, RequestOutcome, SimConfig,
    SimulatedGateway, Totals,
};
pub use stage::{is_for_payments, PaymentsStage};
