//! The saga's deadlines: how long an order may stay reserving or paying, and the decision when
//! that time has passed (`stock_timeout` / `payment_timeout`), made from the state alone, so it
//! is the same whenever and however often it is decided.

use chrono::{DateTime, Utc};
use orderpipe_schemas::RejectReason;
use uuid::Uuid;

use super::decide::{outputs_of, Decision, Verdict};
use super::state::{OrderState, Phase, Transition, TransitionKind};
use crate::shared::derived_event_id;

/// How long an order may stay in each open phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// From `order_placed` to the last line answer.
    pub stock: std::time::Duration,
    /// From the last line answer (all reserved) to the payment outcome.
    pub payment: std::time::Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            stock: std::time::Duration::from_secs(30),
            payment: std::time::Duration::from_secs(60),
        }
    }
}

/// `at + d`, saturating.
pub fn after(at: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// The deadline of an open order's phase (`None` for a terminal one): a fixed time after the
/// input that moved it there happened, so every instance and every repeat agrees on it.
pub fn deadline(state: &OrderState, timeouts: &Timeouts) -> Option<DateTime<Utc>> {
    let since = state.since?;
    match state.phase {
        Phase::Reserving => Some(after(since, timeouts.stock)),
        Phase::Paying => Some(after(since, timeouts.payment)),
        Phase::Confirmed { .. } | Phase::Rejected { .. } | Phase::Cancelled => None,
    }
}

/// A deadline's decision: its (derived) cause id and time, and the decision itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// Id standing for the deadline as the cause of the outputs (derived from the input that
    /// opened the phase, so it is the same whenever and however often it is decided).
    pub cause: Uuid,
    /// The deadline (the outputs' `occurred_at`).
    pub at: DateTime<Utc>,
    /// The new state and outputs.
    pub decision: Decision,
}

/// What `now` does to an order in `state`: once its phase's deadline has passed, rejects it with
/// `stock_timeout` (releasing the reserved lines) or `payment_timeout` (releasing every line);
/// else nothing.
pub fn decide_timeout(
    state: &OrderState,
    order_id: Uuid,
    now: DateTime<Utc>,
    timeouts: &Timeouts,
) -> Option<TimedOut> {
    let at = deadline(state, timeouts)?;
    if now < at {
        return None;
    }
    let (kind, reason, code) = match state.phase {
        Phase::Reserving => (TransitionKind::StockTimeout, RejectReason::StockTimeout, 0),
        Phase::Paying => (
            TransitionKind::PaymentTimeout,
            RejectReason::PaymentTimeout,
            1,
        ),
        Phase::Confirmed { .. } | Phase::Rejected { .. } | Phase::Cancelled => return None,
    };
    let opened_by = state.transitions.last().map_or(order_id, |t| t.cause);
    let cause = derived_event_id("saga-deadline", opened_by, code);
    let mut state = state.clone();
    state.phase = Phase::Rejected { reason };
    state.since = Some(at);
    state.terminal_offset = None;
    state.transitions.push(Transition { cause, kind });
    let outputs = state
        .details
        .as_ref()
        .map(|details| outputs_of(kind, order_id, details, &state.phase))
        .unwrap_or_default();
    Some(TimedOut {
        cause,
        at,
        decision: Decision {
            new_state: Some(state),
            outputs,
            verdict: Verdict::Applied,
        },
    })
}

/// The outputs of the deadline decision that made `state` terminal, if one did and the state
/// still has its details: the very envelopes [`decide_timeout`] had the stage emit (same cause,
/// same time, same index, so the same ids and bytes). A restored stage emits them again, because
/// in at-least-once mode the state record of a deadline decision is written before its outputs,
/// and no input will be redelivered to repeat them after a crash in between.
pub fn deadline_outputs(state: &OrderState, order_id: Uuid) -> Option<TimedOut> {
    let details = state.details.as_ref()?;
    let transition = state.transitions.iter().find(|t| {
        matches!(
            t.kind,
            TransitionKind::StockTimeout | TransitionKind::PaymentTimeout
        )
    })?;
    // `since` is the deadline: a timeout sets it, and nothing after it changes the phase.
    let at = state.since?;
    Some(TimedOut {
        cause: transition.cause,
        at,
        decision: Decision {
            new_state: None,
            outputs: outputs_of(transition.kind, order_id, details, &state.phase),
            verdict: Verdict::Repeated,
        },
    })
}
