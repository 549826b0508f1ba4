//! The HTTP contract between [`super::HttpGateway`] and a gateway (the simulator of the
//! `orderpipe-gateway-sim` crate speaks it). JSON bodies; every mutating call carries
//! `Idempotency-Key: <order_id>`, and the key, not the body, decides what a repeat returns.
//!
//! - `POST /v1/charges`, body [`ChargeRequest`] -> `200` [`ChargeResponse`]
//!   (`{"charge_id": "...", "status": "settled"|"declined", "reason": null|"..."}`).
//! - `POST /v1/refunds`, body [`RefundRequest`] -> `200` [`RefundResponse`]
//!   (`{"status": "refunded"|"no_charge", "refund_id", "amount_minor", "currency"}`).
//! - `GET /v1/charges/stats` -> `200` [`StatsResponse`] (simulator only; for tests).
//! - `POST /v1/faults`, body [`FaultsRequest`] -> `204` (simulator only: the next `fail_next`
//!   charge/refund requests, and all of them for `fail_for_ms`, answer `status` without reaching
//!   the gateway).
//! - Errors: `400` missing or malformed key/body, `422` key differs from the body's order id,
//!   `409` the same key is being processed (retry), `5xx` retry.

use std::collections::HashMap;

use orderpipe_schemas::PaymentRef;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::gateway::{Charge, ChargeOutcome, Refund};
use super::simulated::{OrderStats, Totals};

/// Name of the idempotency header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Path of charges.
pub const CHARGES_PATH: &str = "/v1/charges";
/// Path of refunds.
pub const REFUNDS_PATH: &str = "/v1/refunds";
/// Path of the simulator's statistics.
pub const STATS_PATH: &str = "/v1/charges/stats";
/// Path of the simulator's fault injection.
pub const FAULTS_PATH: &str = "/v1/faults";

/// Body of `POST /v1/charges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// Order to charge (must equal the Idempotency-Key).
    pub order_id: Uuid,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Instrument (token redacted in `Debug`).
    pub payment: PaymentRef,
}

/// Answer of `POST /v1/charges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeResponse {
    /// Gateway id of the charge.
    pub charge_id: String,
    /// `settled` or `declined`.
    pub status: String,
    /// Decline reason (`null` when settled).
    pub reason: Option<String>,
}

impl From<Charge> for ChargeResponse {
    fn from(charge: Charge) -> Self {
        let (status, reason) = match charge.outcome {
            ChargeOutcome::Settled => ("settled", None),
            ChargeOutcome::Declined { reason } => ("declined", Some(reason)),
        };
        Self {
            charge_id: charge.charge_id,
            status: status.to_owned(),
            reason,
        }
    }
}

impl TryFrom<ChargeResponse> for Charge {
    type Error = String;

    fn try_from(r: ChargeResponse) -> Result<Self, String> {
        let outcome = match r.status.as_str() {
            "settled" => ChargeOutcome::Settled,
            "declined" => ChargeOutcome::Declined {
                reason: r.reason.unwrap_or_else(|| "declined".to_owned()),
            },
            other => return Err(format!("unknown charge status {other:?}")),
        };
        Ok(Charge {
            charge_id: r.charge_id,
            outcome,
        })
    }
}

/// Body of `POST /v1/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRequest {
    /// Order whose charge to refund (must equal the Idempotency-Key).
    pub order_id: Uuid,
}

/// Answer of `POST /v1/refunds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundResponse {
    /// `refunded` or `no_charge`.
    pub status: String,
    /// Gateway id of the refund (when refunded).
    pub refund_id: Option<String>,
    /// Amount given back (when refunded).
    pub amount_minor: Option<i64>,
    /// ISO 4217 code (when refunded).
    pub currency: Option<String>,
}

impl From<Refund> for RefundResponse {
    fn from(refund: Refund) -> Self {
        match refund {
            Refund::Refunded {
                refund_id,
                amount_minor,
                currency,
            } => Self {
                status: "refunded".to_owned(),
                refund_id: Some(refund_id),
                amount_minor: Some(amount_minor),
                currency: Some(currency),
            },
            Refund::NoCharge => Self {
                status: "no_charge".to_owned(),
                refund_id: None,
                amount_minor: None,
                currency: None,
            },
        }
    }
}

impl TryFrom<RefundResponse> for Refund {
    type Error = String;

    fn try_from(r: RefundResponse) -> Result<Self, String> {
        match (r.status.as_str(), r.refund_id, r.amount_minor, r.currency) {
            ("refunded", Some(refund_id), Some(amount_minor), Some(currency)) => {
                Ok(Refund::Refunded {
                    refund_id,
                    amount_minor,
                    currency,
                })
            }
            ("no_charge", ..) => Ok(Refund::NoCharge),
            (status, ..) => Err(format!("unexpected refund answer (status {status:?})")),
        }
    }
}

/// Answer of `GET /v1/charges/stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsResponse {
    /// Sums over all orders.
    pub totals: Totals,
    /// Per order.
    pub orders: HashMap<Uuid, OrderStats>,
    /// Requests answered by fault injection (never reached the gateway).
    pub faults_served: u64,
}

/// Body of `POST /v1/faults`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultsRequest {
    /// How many of the next charge/refund requests fail.
    #[serde(default)]
    pub fail_next: u32,
    /// Besides: every charge/refund request fails for this many milliseconds from now (an outage).
    #[serde(default)]
    pub fail_for_ms: u64,
    /// Status they fail with (default 503).
    #[serde(default = "default_fault_status")]
    pub status: u16,
}

fn default_fault_status() -> u16 {
    503
}

/// Error body of the simulator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What was wrong.
    pub error: String,
}
