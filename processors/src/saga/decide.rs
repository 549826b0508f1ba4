//! The saga's decision function: `(state, event) -> (new state, outputs)`, pure and total.
//!
//! Rules (one order; every event of an order arrives on one partition, in log order):
//! - `order_placed`: the first one opens the order and requests a reservation per line; a later
//!   one with another event id (an idempotent client retry re-produced it) is ignored.
//! - `stock_line_reserved` / `stock_line_rejected`: recorded per line, the first answer of a line
//!   wins (duplicates ignored). Once every line has answered: all reserved -> `stock_reserved` +
//!   `payment_requested`; otherwise `release_requested` for exactly the reserved lines,
//!   `stock_rejected` and `order_rejected`. Waiting for every answer is what lets a reservation
//!   that lands after a rejection be released too.
//! - `payment_settled` while paying -> `order_confirmed` + `sale_requested` per line.
//! - `payment_declined` while paying -> `release_requested` per line + `order_rejected`
//!   (`payment_timeout` when the reason is [`DeclineReason::GatewayTimeout`], else `payment_declined`).
//! - `cancellation_requested` while reserving or paying -> `release_requested` for the lines
//!   reserved so far + `order_cancelled` (terminal `cancelled`); a line reserved later is
//!   released when its answer comes, and the payments stage refunds (or voids) any charge of a
//!   cancelled order. A cancellation of a terminal order (or a repeated request) is ignored.
//! - Anything after the terminal event is ignored: the terminal event is decided once. A
//!   `payment_settled` for an order already rejected needs a refund; the payments stage owns
//!   money and refunds every charge of an order rejected for a payment reason (see
//!   [`crate::payments`]), so the saga has nothing to add.
//! - The saga's own outputs and the payments stage's `refunded` come back on the orders topic and
//!   are ignored.
//! - The same input again (same `event_id`: a redelivery) that moved the order repeats its
//!   outputs, identically (same content; the stage derives the same event ids), because the
//!   runner's at-least-once mode writes state before outputs and a crash in between must not
//!   lose them. Consumers deduplicate the repeats by event id.

use chrono::{DateTime, Utc};
use orderpipe_schemas::{
    DeclineReason, OrderCancelled, OrderConfirmed, OrderEnvelope, OrderEvent, OrderPlaced,
    OrderRejected, PaymentRequested, RejectReason, ReleaseRequested, ReservationRequested,
    SaleRequested, StockEnvelope, StockEvent, StockRejectReason, StockRejected, StockReserved,
};
use uuid::Uuid;

use super::state::{
    LineAnswer, LineState, OrderDetails, OrderState, Phase, Transition, TransitionKind,
};
use crate::shared::derived_event_id;

/// What the saga does with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The order's new state when it changed (write it to memory and the changelog), else `None`.
    pub new_state: Option<OrderState>,
    /// Events to emit, in order.
    pub outputs: Vec<Output>,
    /// Whether the event was applied, repeated, ignored (and why) or is invalid (dead-letter it).
    pub verdict: Verdict,
}

/// How an event was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The event moved the order on.
    Applied,
    /// The event had moved the order before (a redelivery): its outputs are repeated.
    Repeated,
    /// Nothing to do (duplicate, late or not the saga's business); the label says which.
    Ignored(Ignored),
    /// The event contradicts the order (e.g. an answer for a line it does not have): dead-letter it.
    Invalid(String),
}

/// Why an event was ignored (a metric/log label each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// A second `order_placed` for a known order.
    DuplicateOrderPlaced,
    /// An event for an order the saga never saw placed.
    UnknownOrder,
    /// A second answer for an already answered line.
    DuplicateLineAnswer,
    /// A line answer after every line had answered (order paying or terminal).
    LateLineAnswer,
    /// A payment outcome while the order was not waiting for one (duplicate, late, or early).
    UnexpectedPayment,
    /// A `cancellation_requested` for an order already terminal (confirmed, rejected or
    /// cancelled by an earlier request).
    LateCancellation,
    /// An event the saga emits itself, or one it has no rule for.
    NotForSaga,
}

impl Ignored {
    /// Snake-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DuplicateOrderPlaced => "duplicate_order_placed",
            Self::UnknownOrder => "unknown_order",
            Self::DuplicateLineAnswer => "duplicate_line_answer",
            Self::LateLineAnswer => "late_line_answer",
            Self::UnexpectedPayment => "unexpected_payment",
            Self::LateCancellation => "late_cancellation",
            Self::NotForSaga => "not_for_saga",
        }
    }
}

/// One event to emit, before it gets its envelope (see [`Output::into_envelope`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// An event of the orders topic, keyed by the order.
    Order(OrderEvent),
    /// An event of the stock topic, keyed by `sku`.
    Stock {
        /// The SKU (message key).
        sku: String,
        /// The event.
        event: StockEvent,
    },
}

/// An output with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputEnvelope {
    /// For the orders topic.
    Order(OrderEnvelope),
    /// For the stock topic.
    Stock(StockEnvelope),
}

impl Output {
    /// Wraps output number `index` of the decision on `cause`: `causation_id` = the cause,
    /// `correlation_id` = the order's, `event_id` derived from (cause, index), so a repeated
    /// decision emits the same ids.
    pub fn into_envelope(
        self,
        order_id: Uuid,
        cause: &OrderEnvelope,
        correlation_id: Uuid,
        index: u32,
    ) -> OutputEnvelope {
        self.into_envelope_at(
            order_id,
            cause.event_id,
            cause.occurred_at,
            correlation_id,
            index,
        )
    }

    /// Like [`Output::into_envelope`] for a cause known by its id and time (e.g. a deadline,
    /// [`TimedOut`](super::TimedOut)): `event_id` derived from (`cause_id`, index), `occurred_at` = `cause_at`.
    pub fn into_envelope_at(
        self,
        order_id: Uuid,
        cause_id: Uuid,
        cause_at: DateTime<Utc>,
        correlation_id: Uuid,
        index: u32,
    ) -> OutputEnvelope {
        // Id and time come from the cause only, so a repeat is byte-identical to the first.
        let event_id = derived_event_id("saga", cause_id, index);
        match self {
            Self::Order(event) => {
                let mut e = OrderEnvelope::new(order_id, event, Some(cause_id), correlation_id);
                e.event_id = event_id;
                e.occurred_at = cause_at;
                OutputEnvelope::Order(e)
            }
            Self::Stock { sku, event } => {
                let mut e = StockEnvelope::new(sku, event, Some(cause_id), correlation_id);
                e.event_id = event_id;
                e.occurred_at = cause_at;
                OutputEnvelope::Stock(e)
            }
        }
    }
}

impl Decision {
    fn ignore(why: Ignored) -> Self {
        Self {
            new_state: None,
            outputs: Vec::new(),
            verdict: Verdict::Ignored(why),
        }
    }

    fn invalid(detail: String) -> Self {
        Self {
            new_state: None,
            outputs: Vec::new(),
            verdict: Verdict::Invalid(detail),
        }
    }
}

/// Decides what one orders-topic event does to an order in `state` (`None`: never seen).
pub fn decide(state: Option<&OrderState>, event: &OrderEnvelope) -> Decision {
    let order_id = event.order_id;
    if let Some(state) = state {
        let earlier = state.transitions.iter().find(|t| t.cause == event.event_id);
        if let (Some(transition), Some(details)) = (earlier, &state.details) {
            return Decision {
                new_state: None,
                outputs: outputs_of(transition.kind, order_id, details, &state.phase),
                verdict: Verdict::Repeated,
            };
        }
    }
    match (&event.event, state) {
        (OrderEvent::OrderPlaced(_), Some(_)) => Decision::ignore(Ignored::DuplicateOrderPlaced),
        (OrderEvent::OrderPlaced(placed), None) => place(event, placed),
        (
            OrderEvent::StockLineReserved(_)
            | OrderEvent::StockLineRejected(_)
            | OrderEvent::PaymentSettled(_)
            | OrderEvent::PaymentDeclined(_)
            | OrderEvent::CancellationRequested(_),
            None,
        ) => Decision::ignore(Ignored::UnknownOrder),
        (OrderEvent::CancellationRequested(_), Some(state)) => match state.phase {
            Phase::Reserving | Phase::Paying => moved(
                event,
                state.clone(),
                Phase::Cancelled,
                Some(TransitionKind::Cancelled),
            ),
            Phase::Confirmed { .. } | Phase::Rejected { .. } | Phase::Cancelled => {
                Decision::ignore(Ignored::LateCancellation)
            }
        },
        (OrderEvent::StockLineReserved(line), Some(state)) => line_answered(
            event,
            state,
            line.line_index,
            &line.sku,
            line.quantity,
            LineAnswer::Reserved,
        ),
        (OrderEvent::StockLineRejected(line), Some(state)) => line_answered(
            event,
            state,
            line.line_index,
            &line.sku,
            line.quantity,
            LineAnswer::Rejected {
                reason: line.reason,
            },
        ),
        (OrderEvent::PaymentSettled(settled), Some(state)) => match state.phase {
            Phase::Paying => {
                let phase = Phase::Confirmed {
                    charge_id: settled.charge_id.clone(),
                };
                moved(event, state.clone(), phase, Some(TransitionKind::Confirmed))
            }
            _ => Decision::ignore(Ignored::UnexpectedPayment),
        },
        (OrderEvent::PaymentDeclined(declined), Some(state)) => match state.phase {
            Phase::Paying => {
                let reason = if declined.reason == DeclineReason::GatewayTimeout {
                    RejectReason::PaymentTimeout
                } else {
                    RejectReason::PaymentDeclined
                };
                let phase = Phase::Rejected { reason };
                moved(
                    event,
                    state.clone(),
                    phase,
                    Some(TransitionKind::PaymentRejected),
                )
            }
            _ => Decision::ignore(Ignored::UnexpectedPayment),
        },
        (
            OrderEvent::StockReserved(_)
            | OrderEvent::StockRejected(_)
            | OrderEvent::PaymentRequested(_)
            | OrderEvent::OrderConfirmed(_)
            | OrderEvent::OrderRejected(_)
            | OrderEvent::OrderCancelled(_)
            | OrderEvent::Refunded(_),
            _,
        ) => Decision::ignore(Ignored::NotForSaga),
    }
}

/// The order moves to `phase`; a transition that emits records its cause, and its outputs follow
/// from the new state (so that a repeat computes the very same outputs).
fn moved(
    cause: &OrderEnvelope,
    mut state: OrderState,
    phase: Phase,
    kind: Option<TransitionKind>,
) -> Decision {
    if std::mem::discriminant(&state.phase) != std::mem::discriminant(&phase)
        || state.since.is_none()
    {
        state.since = Some(cause.occurred_at);
    }
    state.phase = phase;
    let mut outputs = Vec::new();
    if let Some(kind) = kind {
        state.transitions.push(Transition {
            cause: cause.event_id,
            kind,
        });
        if let Some(details) = &state.details {
            outputs = outputs_of(kind, cause.order_id, details, &state.phase);
        }
    }
    Decision {
        new_state: Some(state),
        outputs,
        verdict: Verdict::Applied,
    }
}

/// A new order (an order without lines cannot be reserved: rejected as invalid right away, so
/// it still ends in a terminal event).
fn place(event: &OrderEnvelope, placed: &OrderPlaced) -> Decision {
    let details = OrderDetails {
        customer_id: placed.customer_id.clone(),
        currency: placed.currency.clone(),
        total_minor: placed.total_minor,
        payment: placed.payment.clone(),
        lines: placed
            .lines
            .iter()
            .map(|line| LineState {
                sku: line.sku.clone(),
                quantity: line.quantity,
                answer: LineAnswer::Pending,
            })
            .collect(),
    };
    let phase = if details.lines.is_empty() {
        Phase::Rejected {
            reason: RejectReason::Invalid,
        }
    } else {
        Phase::Reserving
    };
    let state = OrderState {
        correlation_id: event.correlation_id,
        phase: phase.clone(),
        details: Some(details),
        transitions: Vec::new(),
        since: Some(event.occurred_at),
        terminal_offset: None,
    };
    moved(event, state, phase, Some(TransitionKind::Placed))
}

/// The stock stage answered for one line (reserved or rejected): record it, and once every line
/// has answered, decide the order.
fn line_answered(
    event: &OrderEnvelope,
    state: &OrderState,
    line_index: u32,
    sku: &str,
    quantity: u32,
    answer: LineAnswer,
) -> Decision {
    let timed_out = state.awaits_late_answers();
    let details = match (&state.phase, &state.details) {
        (Phase::Reserving, Some(details)) => details,
        (Phase::Rejected { .. } | Phase::Cancelled, Some(details)) if timed_out => details,
        _ => return Decision::ignore(Ignored::LateLineAnswer),
    };
    let Some(line) = usize::try_from(line_index)
        .ok()
        .and_then(|i| details.lines.get(i))
    else {
        return Decision::invalid(format!(
            "line_index {line_index} out of range: the order has {} lines",
            details.lines.len()
        ));
    };
    if line.sku != sku || line.quantity != quantity {
        return Decision::invalid(format!(
            "line {line_index} is {} x {:?}, the answer says {quantity} x {sku:?}",
            line.quantity, line.sku
        ));
    }
    if line.answer != LineAnswer::Pending {
        return Decision::ignore(Ignored::DuplicateLineAnswer);
    }
    let mut state = state.clone();
    let details = state.details.as_mut().expect("checked above");
    if timed_out {
        // The order was rejected at its stock deadline, or cancelled, with this line unanswered:
        // a late reservation is released at once.
        let phase = state.phase.clone();
        return if answer == LineAnswer::Reserved {
            details.lines[line_index as usize].answer = LineAnswer::ReleasedLate;
            moved(
                event,
                state,
                phase,
                Some(TransitionKind::LateReservationReleased { line_index }),
            )
        } else {
            details.lines[line_index as usize].answer = answer;
            moved(event, state, phase, None)
        };
    }
    details.lines[line_index as usize].answer = answer;
    if details
        .lines
        .iter()
        .any(|l| l.answer == LineAnswer::Pending)
    {
        return moved(event, state, Phase::Reserving, None);
    }
    // Every line has answered.
    match first_rejected(details) {
        None => moved(
            event,
            state,
            Phase::Paying,
            Some(TransitionKind::StockReserved),
        ),
        Some((_, stock_reason)) => {
            let phase = Phase::Rejected {
                reason: order_reason(stock_reason),
            };
            moved(event, state, phase, Some(TransitionKind::StockRejected))
        }
    }
}

/// The first (by position) rejected line: its SKU and reason.
fn first_rejected(details: &OrderDetails) -> Option<(String, StockRejectReason)> {
    details.lines.iter().find_map(|l| match l.answer {
        LineAnswer::Rejected { reason } => Some((l.sku.clone(), reason)),
        LineAnswer::Pending | LineAnswer::Reserved | LineAnswer::ReleasedLate => None,
    })
}

fn order_reason(stock_reason: StockRejectReason) -> RejectReason {
    match stock_reason {
        StockRejectReason::OutOfStock | StockRejectReason::UnknownSku => RejectReason::OutOfStock,
        StockRejectReason::LimitExceeded => RejectReason::LimitExceeded,
    }
}

/// The outputs of a transition, from the order's details and phase after it.
pub fn outputs_of(
    kind: TransitionKind,
    order_id: Uuid,
    details: &OrderDetails,
    phase: &Phase,
) -> Vec<Output> {
    let stock = |i: usize, event: StockEvent| Output::Stock {
        sku: details.lines[i].sku.clone(),
        event,
    };
    let release = |i: usize| {
        stock(
            i,
            StockEvent::ReleaseRequested(ReleaseRequested {
                order_id,
                customer_id: details.customer_id.clone(),
                line_index: index(i),
                quantity: details.lines[i].quantity,
            }),
        )
    };
    let rejected = |reason| Output::Order(OrderEvent::OrderRejected(OrderRejected { reason }));
    let lines = 0..details.lines.len();
    match kind {
        TransitionKind::Placed if details.lines.is_empty() => vec![rejected(RejectReason::Invalid)],
        TransitionKind::Placed => lines
            .map(|i| {
                stock(
                    i,
                    StockEvent::ReservationRequested(ReservationRequested {
                        order_id,
                        customer_id: details.customer_id.clone(),
                        line_index: index(i),
                        line_count: index(details.lines.len()),
                        quantity: details.lines[i].quantity,
                    }),
                )
            })
            .collect(),
        TransitionKind::StockReserved => vec![
            Output::Order(OrderEvent::StockReserved(StockReserved {})),
            Output::Order(OrderEvent::PaymentRequested(PaymentRequested {
                amount_minor: details.total_minor,
                currency: details.currency.clone(),
                payment: details.payment.clone(),
            })),
        ],
        TransitionKind::StockRejected => {
            let mut outputs: Vec<Output> = lines
                .filter(|i| details.lines[*i].answer == LineAnswer::Reserved)
                .map(release)
                .collect();
            if let Some((sku, reason)) = first_rejected(details) {
                outputs.push(Output::Order(OrderEvent::StockRejected(StockRejected {
                    sku,
                    reason,
                })));
                outputs.push(rejected(order_reason(reason)));
            }
            outputs
        }
        TransitionKind::Confirmed => {
            let mut outputs = vec![Output::Order(OrderEvent::OrderConfirmed(OrderConfirmed {}))];
            outputs.extend(lines.map(|i| {
                stock(
                    i,
                    StockEvent::SaleRequested(SaleRequested {
                        order_id,
                        customer_id: details.customer_id.clone(),
                        line_index: index(i),
                        quantity: details.lines[i].quantity,
                    }),
                )
            }));
            outputs
        }
        TransitionKind::PaymentRejected => {
            let reason = match phase {
                Phase::Rejected { reason } => *reason,
                _ => RejectReason::PaymentDeclined,
            };
            let mut outputs: Vec<Output> = lines.map(release).collect();
            outputs.push(rejected(reason));
            outputs
        }
        TransitionKind::PaymentTimeout => {
            let mut outputs: Vec<Output> = lines.map(release).collect();
            outputs.push(rejected(RejectReason::PaymentTimeout));
            outputs
        }
        TransitionKind::StockTimeout => {
            // The lines reserved by the deadline; a later reservation is released when it comes.
            let mut outputs: Vec<Output> = lines
                .filter(|i| details.lines[*i].answer == LineAnswer::Reserved)
                .map(release)
                .collect();
            outputs.push(rejected(RejectReason::StockTimeout));
            outputs
        }
        TransitionKind::Cancelled => {
            // The lines reserved so far (every line when paying); a later reservation is
            // released when it comes.
            let mut outputs: Vec<Output> = lines
                .filter(|i| details.lines[*i].answer == LineAnswer::Reserved)
                .map(release)
                .collect();
            outputs.push(Output::Order(OrderEvent::OrderCancelled(OrderCancelled {})));
            outputs
        }
        TransitionKind::LateReservationReleased { line_index } => usize::try_from(line_index)
            .ok()
            .filter(|i| *i < details.lines.len())
            .map(release)
            .into_iter()
            .collect(),
    }
}

/// Line positions fit in u32: ingest caps an order at 100 lines.
fn index(i: usize) -> u32 {
    u32::try_from(i).expect("line index fits in u32")
}
