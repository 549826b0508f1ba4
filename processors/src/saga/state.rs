//! The saga's state of one order, as kept in memory and in the `saga.changelog` topic (JSON,
//! keyed by `order_id`).
//!
//! While an order is open, and for a short while after its terminal event, the state keeps the
//! order's details and the inputs that moved it ([`Transition`]s), so that a redelivered input
//! repeats its outputs (at-least-once: the runner writes state before outputs, so a crash in
//! between leaves outputs to repeat). Once no input of the order can be redelivered any more, the
//! stage compacts a terminal order to a small record (phase and reason or charge id) so that
//! late duplicates are still recognised and ignored.

use chrono::{DateTime, Utc};
use orderpipe_schemas::{PaymentRef, RejectReason, StockRejectReason};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where one order stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    /// Correlation id of the order (from `order_placed`), stamped on everything the saga emits.
    pub correlation_id: Uuid,
    /// The phase.
    #[serde(flatten)]
    pub phase: Phase,
    /// The order itself; `None` once a terminal order is compacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<OrderDetails>,
    /// The inputs that moved the order, oldest first; emptied by compaction.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transitions: Vec<Transition>,
    /// When the order entered its phase: the `occurred_at` of the input that moved it there
    /// (for a timeout, the deadline). An open phase times out a fixed time after it, terminal
    /// state is forgotten the retention after it: both deterministic, whenever they are decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    /// Input offset (in the order's partition) of the event that made the order terminal; the
    /// stage compacts the order only once the group's committed offset is past it, so a
    /// redelivery of that input still finds the details it needs to repeat its outputs.
    /// `None` when a timeout (no input) made it terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal_offset: Option<i64>,
}

/// The phases of the order state machine: reserving -> paying -> confirmed, or rejected, or
/// cancelled (on a client's request, before it is confirmed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Reservation requests are out; waiting for one answer per line.
    Reserving,
    /// Every line is reserved and `payment_requested` is out; waiting for the payment outcome.
    Paying,
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
    /// Terminal: `order_cancelled` was emitted (a `cancellation_requested` arrived while the
    /// order was reserving or paying).
    Cancelled,
}

/// An input that moved the order, and what it did (its outputs follow from it and the details).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// `event_id` of the input.
    pub cause: Uuid,
    /// What it did.
    pub kind: TransitionKind,
}

/// The transitions that emit something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransitionKind {
    /// `order_placed` opened the order: a reservation request per line (or, without lines, the
    /// rejection as invalid).
    Placed,
    /// The last line answer, all reserved: `stock_reserved` + `payment_requested`.
    StockReserved,
    /// The last line answer, some rejected: releases of the reserved lines, `stock_rejected`,
    /// `order_rejected`.
    StockRejected,
    /// `payment_settled`: `order_confirmed` + a sale request per line.
    Confirmed,
    /// `payment_declined`: a release per line + `order_rejected`.
    PaymentRejected,
    /// The stock deadline passed with lines unanswered: releases of the reserved lines +
    /// `order_rejected` (`stock_timeout`).
    StockTimeout,
    /// The payment deadline passed: a release per line + `order_rejected` (`payment_timeout`).
    PaymentTimeout,
    /// `cancellation_requested` while reserving or paying: releases of the reserved lines +
    /// `order_cancelled` (the payments stage refunds or voids any charge on `order_cancelled`).
    Cancelled,
    /// A line reserved after the order timed out or was cancelled: its release.
    LateReservationReleased {
        /// The line.
        line_index: u32,
    },
}

impl OrderState {
    /// True once the order's one terminal event was emitted.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.phase,
            Phase::Confirmed { .. } | Phase::Rejected { .. } | Phase::Cancelled
        )
    }

    /// True for a terminal order that still keeps its details (not compacted yet) and expects
    /// no late stock answer that it would have to release.
    pub fn is_compactable(&self) -> bool {
        self.is_terminal()
            && (self.details.is_some() || !self.transitions.is_empty())
            && !self.awaits_late_answers()
    }

    /// True for an order rejected by its stock deadline, or cancelled, with lines still
    /// unanswered: a late reservation of such a line must be released, so its details are kept.
    pub fn awaits_late_answers(&self) -> bool {
        matches!(
            self.phase,
            Phase::Rejected {
                reason: RejectReason::StockTimeout
            } | Phase::Cancelled
        ) && self
            .details
            .as_ref()
            .is_some_and(|d| d.lines.iter().any(|l| l.answer == LineAnswer::Pending))
    }

    /// Drops what only redeliveries need; a terminal order keeps its phase and `since` (for
    /// the retention).
    pub fn compact(&mut self) {
        self.details = None;
        self.transitions.clear();
        self.terminal_offset = None;
    }

    /// Short name of the phase (`reserving`, `paying`, `confirmed`, `rejected`, `cancelled`),
    /// for logs and tests.
    pub fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Reserving => "reserving",
            Phase::Paying => "paying",
            Phase::Confirmed { .. } => "confirmed",
            Phase::Rejected { .. } => "rejected",
            Phase::Cancelled => "cancelled",
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

/// The order as the saga needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderDetails {
    /// Customer (reservation, release and sale requests carry it for per-customer limits).
    pub customer_id: String,
    /// ISO 4217 code of the total.
    pub currency: String,
    /// Amount to charge, in minor units.
    pub total_minor: i64,
    /// Instrument to charge (token redacted in `Debug`).
    pub payment: PaymentRef,
    /// The lines, in `order_placed` order (`line_index` = position).
    pub lines: Vec<LineState>,
}

/// One line of an order and the stock stage's answer to it.
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
    /// Reserved after the order had timed out or was cancelled: released at once.
    ReleasedLate,
}
