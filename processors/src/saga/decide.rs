//! The saga's decision function: `(state, event) -> (new state, outputs)`, pure and total.
//!
//! Rules (one order; every event of an order arrives on one partition, in log order):
//! - `order_placed`: first one opens the order and requests a reservation per line; any later
//!   one (an idempotent client retry re-produced it) is ignored.
//! - `stock_line_reserved` / `stock_line_rejected`: recorded per line, the first answer of a line
//!   wins (duplicates ignored). Once every line has answered: all reserved -> `stock_reserved` +
//!   `payment_requested`; otherwise `release_requested` for exactly the reserved lines,
//!   `stock_rejected` and `order_rejected`. Waiting for every answer is what lets a reservation
//!   that lands after a rejection be released too.
//! - `payment_settled` while paying -> `order_confirmed` + `sale_requested` per line.
//! - `payment_declined` while paying -> `release_requested` per line + `order_rejected`
//!   (`payment_timeout` when the reason is [`GATEWAY_TIMEOUT_REASON`], else `payment_declined`).
//! - Anything after the terminal event is ignored: the terminal event is emitted once. A
//!   `payment_settled` for an order already rejected needs a refund; the payments stage owns
//!   money and refunds every charge of an order rejected for a payment reason (see
//!   [`crate::payments`]), so the saga has nothing to add.
//! - The saga's own outputs and the payments stage's `refunded` come back on the orders topic and
//!   are ignored.

use orderpipe_schemas::{
    OrderConfirmed, OrderEnvelope, OrderEvent, OrderPlaced, OrderRejected, PaymentRequested,
    RejectReason, ReleaseRequested, ReservationRequested, SaleRequested, StockEnvelope, StockEvent,
    StockRejectReason, StockRejected, StockReserved,
};
use uuid::Uuid;

use super::state::{LineAnswer, LineState, OpenOrder, OrderState, Phase};
use crate::payments::GATEWAY_TIMEOUT_REASON;

/// What the saga does with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The order's new state when it changed (write it to memory and the changelog), else `None`.
    pub new_state: Option<OrderState>,
    /// Events to emit, in order.
    pub outputs: Vec<Output>,
    /// Whether the event was applied, ignored (and why) or is invalid (dead-letter it).
    pub verdict: Verdict,
}

/// How an event was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The event moved the order on.
    Applied,
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
    /// Wraps the output: `causation_id` = the triggering event, `correlation_id` = the order's.
    pub fn into_envelope(
        self,
        order_id: Uuid,
        cause: Uuid,
        correlation_id: Uuid,
    ) -> OutputEnvelope {
        match self {
            Self::Order(event) => OutputEnvelope::Order(OrderEnvelope::new(
                order_id,
                event,
                Some(cause),
                correlation_id,
            )),
            Self::Stock { sku, event } => {
                OutputEnvelope::Stock(StockEnvelope::new(sku, event, Some(cause), correlation_id))
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

    fn apply(new_state: OrderState, outputs: Vec<Output>) -> Self {
        Self {
            new_state: Some(new_state),
            outputs,
            verdict: Verdict::Applied,
        }
    }
}

/// Decides what one orders-topic event does to an order in `state` (`None`: never seen).
pub fn decide(state: Option<&OrderState>, event: &OrderEnvelope) -> Decision {
    let order_id = event.order_id;
    match (&event.event, state) {
        (OrderEvent::OrderPlaced(_), Some(_)) => Decision::ignore(Ignored::DuplicateOrderPlaced),
        (OrderEvent::OrderPlaced(placed), None) => place(order_id, event.correlation_id, placed),
        (OrderEvent::StockLineReserved(_) | OrderEvent::StockLineRejected(_), None)
        | (OrderEvent::PaymentSettled(_) | OrderEvent::PaymentDeclined(_), None) => {
            Decision::ignore(Ignored::UnknownOrder)
        }
        (OrderEvent::StockLineReserved(line), Some(state)) => answer(
            order_id,
            state,
            line.line_index,
            &line.sku,
            line.quantity,
            LineAnswer::Reserved,
        ),
        (OrderEvent::StockLineRejected(line), Some(state)) => answer(
            order_id,
            state,
            line.line_index,
            &line.sku,
            line.quantity,
            LineAnswer::Rejected {
                reason: line.reason,
            },
        ),
        (OrderEvent::PaymentSettled(settled), Some(state)) => match &state.phase {
            Phase::Paying { order } => {
                let mut outputs =
                    vec![Output::Order(OrderEvent::OrderConfirmed(OrderConfirmed {}))];
                outputs.extend(order.lines.iter().enumerate().map(|(i, line)| {
                    stock_output(
                        line,
                        StockEvent::SaleRequested(SaleRequested {
                            order_id,
                            customer_id: order.customer_id.clone(),
                            line_index: index(i),
                            quantity: line.quantity,
                        }),
                    )
                }));
                let new_state = OrderState {
                    correlation_id: state.correlation_id,
                    phase: Phase::Confirmed {
                        charge_id: settled.charge_id.clone(),
                    },
                };
                Decision::apply(new_state, outputs)
            }
            _ => Decision::ignore(Ignored::UnexpectedPayment),
        },
        (OrderEvent::PaymentDeclined(declined), Some(state)) => match &state.phase {
            Phase::Paying { order } => {
                let reason = if declined.reason == GATEWAY_TIMEOUT_REASON {
                    RejectReason::PaymentTimeout
                } else {
                    RejectReason::PaymentDeclined
                };
                let mut outputs: Vec<Output> = order
                    .lines
                    .iter()
                    .enumerate()
                    .map(|(i, line)| release(order_id, order, i, line))
                    .collect();
                outputs.push(Output::Order(OrderEvent::OrderRejected(OrderRejected {
                    reason,
                })));
                let new_state = OrderState {
                    correlation_id: state.correlation_id,
                    phase: Phase::Rejected { reason },
                };
                Decision::apply(new_state, outputs)
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

/// A new order: one reservation request per line (an order without lines cannot be reserved:
/// rejected as invalid right away, so it still ends in a terminal event).
fn place(order_id: Uuid, correlation_id: Uuid, placed: &OrderPlaced) -> Decision {
    if placed.lines.is_empty() {
        let state = OrderState {
            correlation_id,
            phase: Phase::Rejected {
                reason: RejectReason::Invalid,
            },
        };
        let outputs = vec![Output::Order(OrderEvent::OrderRejected(OrderRejected {
            reason: RejectReason::Invalid,
        }))];
        return Decision::apply(state, outputs);
    }
    let line_count = index(placed.lines.len());
    let lines: Vec<LineState> = placed
        .lines
        .iter()
        .map(|line| LineState {
            sku: line.sku.clone(),
            quantity: line.quantity,
            answer: LineAnswer::Pending,
        })
        .collect();
    let outputs = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            stock_output(
                line,
                StockEvent::ReservationRequested(ReservationRequested {
                    order_id,
                    customer_id: placed.customer_id.clone(),
                    line_index: index(i),
                    line_count,
                    quantity: line.quantity,
                }),
            )
        })
        .collect();
    let state = OrderState {
        correlation_id,
        phase: Phase::Reserving {
            order: OpenOrder {
                customer_id: placed.customer_id.clone(),
                currency: placed.currency.clone(),
                total_minor: placed.total_minor,
                lines,
            },
            payment: placed.payment.clone(),
        },
    };
    Decision::apply(state, outputs)
}

/// A stock answer for one line.
fn answer(
    order_id: Uuid,
    state: &OrderState,
    line_index: u32,
    sku: &str,
    quantity: u32,
    answer: LineAnswer,
) -> Decision {
    let (order, payment) = match &state.phase {
        Phase::Reserving { order, payment } => (order, payment),
        Phase::Paying { .. } | Phase::Confirmed { .. } | Phase::Rejected { .. } => {
            return Decision::ignore(Ignored::LateLineAnswer)
        }
    };
    let Some(line) = usize::try_from(line_index)
        .ok()
        .and_then(|i| order.lines.get(i))
    else {
        return Decision::invalid(format!(
            "line_index {line_index} out of range: the order has {} lines",
            order.lines.len()
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
    let mut order = order.clone();
    order.lines[line_index as usize].answer = answer;
    if order.lines.iter().any(|l| l.answer == LineAnswer::Pending) {
        let new_state = OrderState {
            correlation_id: state.correlation_id,
            phase: Phase::Reserving {
                order,
                payment: payment.clone(),
            },
        };
        return Decision::apply(new_state, Vec::new());
    }
    // Every line has answered.
    let first_rejected = order.lines.iter().find_map(|l| match l.answer {
        LineAnswer::Rejected { reason } => Some((l.sku.clone(), reason)),
        LineAnswer::Pending | LineAnswer::Reserved => None,
    });
    match first_rejected {
        None => {
            let outputs = vec![
                Output::Order(OrderEvent::StockReserved(StockReserved {})),
                Output::Order(OrderEvent::PaymentRequested(PaymentRequested {
                    amount_minor: order.total_minor,
                    currency: order.currency.clone(),
                    payment: payment.clone(),
                })),
            ];
            let new_state = OrderState {
                correlation_id: state.correlation_id,
                phase: Phase::Paying { order },
            };
            Decision::apply(new_state, outputs)
        }
        Some((sku, stock_reason)) => {
            let reason = match stock_reason {
                StockRejectReason::OutOfStock | StockRejectReason::UnknownSku => {
                    RejectReason::OutOfStock
                }
                StockRejectReason::LimitExceeded => RejectReason::LimitExceeded,
            };
            let mut outputs: Vec<Output> = order
                .lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.answer == LineAnswer::Reserved)
                .map(|(i, l)| release(order_id, &order, i, l))
                .collect();
            outputs.push(Output::Order(OrderEvent::StockRejected(StockRejected {
                sku,
                reason: stock_reason,
            })));
            outputs.push(Output::Order(OrderEvent::OrderRejected(OrderRejected {
                reason,
            })));
            let new_state = OrderState {
                correlation_id: state.correlation_id,
                phase: Phase::Rejected { reason },
            };
            Decision::apply(new_state, outputs)
        }
    }
}

fn release(order_id: Uuid, order: &OpenOrder, i: usize, line: &LineState) -> Output {
    stock_output(
        line,
        StockEvent::ReleaseRequested(ReleaseRequested {
            order_id,
            customer_id: order.customer_id.clone(),
            line_index: index(i),
            quantity: line.quantity,
        }),
    )
}

fn stock_output(line: &LineState, event: StockEvent) -> Output {
    Output::Stock {
        sku: line.sku.clone(),
        event,
    }
}

/// Line positions fit in u32: ingest caps an order at 100 lines.
fn index(i: usize) -> u32 {
    u32::try_from(i).expect("line index fits in u32")
}
