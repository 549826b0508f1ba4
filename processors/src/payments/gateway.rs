//! The [`PaymentGateway`] trait and its answers. Idempotency key = order id: a gateway charges an
//! order at most once however often it is asked, and answers a repeated request with the first
//! answer, so a retry, a redelivered event or a restarted processor never charges twice.

use std::time::Duration;

use futures::future::BoxFuture;
use orderpipe_schemas::PaymentRef;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A payment gateway: charge an order, refund an order. Object-safe (`Arc<dyn PaymentGateway>`).
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges `amount_minor` of `currency` for `order_id` (the idempotency key). A repeated call
    /// for the same order returns the first call's [`Charge`] and moves no money.
    fn charge<'a>(
        &'a self,
        order_id: Uuid,
        amount_minor: i64,
        currency: &'a str,
        payment: &'a PaymentRef,
    ) -> BoxFuture<'a, Result<Charge, GatewayError>>;

    /// Refunds the charge of `order_id`, if any (idempotent: a second refund returns the first).
    /// With no charge yet, the order is voided: a later charge for it is declined, so a charge
    /// request still in flight when the order was given up cannot take money afterwards.
    fn refund(&self, order_id: Uuid) -> BoxFuture<'_, Result<Refund, GatewayError>>;
}

/// The gateway's answer to a charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// Gateway id of the charge attempt (stable for an order).
    pub charge_id: String,
    /// Settled or declined.
    pub outcome: ChargeOutcome,
}

/// Whether money moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChargeOutcome {
    /// The amount was charged.
    Settled,
    /// The gateway refused (insufficient funds, fraud rules, a voided order...).
    Declined {
        /// The gateway's reason, for humans.
        reason: String,
    },
}

/// The gateway's answer to a refund.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Refund {
    /// The order's charge is (now, or already) refunded.
    Refunded {
        /// Gateway id of the refund (stable for an order).
        refund_id: String,
        /// Amount given back, in minor units.
        amount_minor: i64,
        /// ISO 4217 code.
        currency: String,
    },
    /// The order had no settled charge: nothing to give back (the order is voided).
    NoCharge,
}

/// Why a gateway call failed; [`GatewayError::is_retryable`] says whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No answer within the request timeout: retry (the gateway may or may not have acted).
    #[error("gateway did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection failed or the gateway answered 5xx/429/409: retry.
    #[error("gateway unavailable: {0}")]
    Unavailable(String),
    /// The circuit breaker is open (the gateway failed repeatedly): fail fast, do not retry now.
    #[error("gateway circuit breaker is open")]
    CircuitOpen,
    /// The gateway refused the request itself (4xx): retrying the same request cannot help.
    #[error("gateway refused the request ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Response body or reason.
        message: String,
    },
    /// The gateway answered something this client does not understand: do not retry.
    #[error("invalid gateway response: {0}")]
    InvalidResponse(String),
}

impl GatewayError {
    /// True for transient failures (timeouts, unreachable, overloaded).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unavailable(_))
    }

    /// True when the gateway could not be reached in a useful way (the payments stage turns
    /// these into `payment_declined{reason: "gateway_timeout"}`).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            Self::Timeout(_) | Self::Unavailable(_) | Self::CircuitOpen
        )
    }
}
