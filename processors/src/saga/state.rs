//! The saga's state of one order, as kept in memory and in the `saga.changelog` topic (JSON,
//! keyed by `order_id`). Open orders keep what the saga still needs (lines, payment); terminal
//! orders shrink to a small record so that late duplicates are recognised and ignored.

use orderpipe_schemas::{PaymentRef, RejectReason, StockRejectReason};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where one order stands, plus the ids every event of the order carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// Correlation id of the order (from `order_placed`), stamped on everything the saga emits.
    pub correlation_id: Uuid,
    /// The phase and the data it needs.
    pub phase: Phase,
}

/// The phases of the order state machine: reserving -> paying -> confirmed, or rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Reservation requests are out; waiting for one answer per line.
    Reserving {
        /// The order's lines and their answers so far.
        order: OpenOrder,
        /// Instrument to charge once every line is reserved (dropped after `payment_requested`).
        payment: PaymentRef,
    },
    /// Every line is reserved and `payment_requested` is out; waiting for the payment outcome.
    Paying {
        /// The order's lines (all reserved).
        order: OpenOrder,
    },
    /// Terminal: `order_confirmed` was emitted.
    Confirmed {
        /// Gateway charge of the order.
        charge_id: String,
    },
    /// Terminal: `order_rejected` was emitted.
    Rejected {
        /// The reason it carried.
        reason: RejectReason,
    },
}

impl OrderState {
    /// True once the order's one terminal event was emitted.
    pub fn is_terminal(&self) -> bool {
        matches!(self.phase, Phase::Confirmed { .. } | Phase::Rejected { .. })
    }

    /// Short name of the phase (`reserving`, `paying`, `confirmed`, `rejected`), for logs and tests.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Reserving { .. } => "reserving",
            Phase::Paying { .. } => "paying",
            Phase::Confirmed { .. } => "confirmed",
            Phase::Rejected { .. } => "rejected",
        }
    }

    /// Changelog value (JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("order state always serializes")
    }

    /// Parses a changelog value.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What the saga keeps of an order that is not terminal yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenOrder {
    /// Customer (reservation, release and sale requests carry it for per-customer limits).
    pub customer_id: String,
    /// ISO 4217 code of the total.
    pub currency: String,
    /// Amount to charge, in minor units.
    pub total_minor: i64,
    /// The lines, in `order_placed` order (`line_index` = position).
    pub lines: Vec<LineState>,
}

/// One line of an open order and the stock stage's answer to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineState {
    /// SKU of the line.
    pub sku: String,
    /// Units ordered.
    pub quantity: u32,
    /// The answer so far.
    pub answer: LineAnswer,
}

/// The stock stage's answer to one reservation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum LineAnswer {
    /// No answer yet.
    Pending,
    /// The units are held for this order.
    Reserved,
    /// The line was refused.
    Rejected {
        /// Why.
        reason: StockRejectReason,
    },
}
