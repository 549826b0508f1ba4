//! Property: the saga's decisions (`decide` on events, `decide_timeout` on the clock) under any
//! interleaving of line answers, cancellation requests, the payment outcome and the passing of
//! time, with redeliveries. The other saga properties take these one family at a time
//! (answers and payments: `saga_proptest`; cancellations: `saga_cancel_proptest`; a stock
//! deadline: `saga_timeout_proptest`); this one mixes them, so it covers the races between them:
//! a late stock answer after a stock timeout or a cancellation, a payment outcome after a payment
//! timeout or a cancellation, a cancellation racing a confirmation or a deadline, a deadline
//! checked early, late or repeatedly.
//!
//! Invariants, counted by distinct event id (a redelivered input repeats its outputs with the
//! same ids):
//! - exactly one terminal event, and it is the one the step that closed the order calls for
//!   (the cancellation: `order_cancelled`; a deadline: `stock_timeout` or `payment_timeout`, at
//!   the deadline and never before; a rejected line: a stock reason; the payment outcome:
//!   confirmed, declined or timed out); once the clock passed every deadline the order is closed;
//! - every line is requested once; a confirmed order sells each line once and releases none; any
//!   other releases exactly the lines that were reserved, however late their answer came, and
//!   sells none;
//! - `payment_requested` at most once, and only for an order whose lines were all reserved; a
//!   charge the gateway may have made (settled, or an outcome not known) belongs to a confirmed
//!   order or to a terminal event the payments stage refunds or voids; a confirmation only
//!   follows a settled charge.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::{cancellation, line_answer, line_sku, payment_settled, placed_lines};
use orderpipe_processors::payments::is_for_payments;
use orderpipe_processors::saga::{
    decide, decide_timeout, OrderState, Output, OutputEnvelope, Timeouts, Verdict,
};
use orderpipe_schemas::{
    DeclineReason, OrderEnvelope, OrderEvent, PaymentDeclined, RejectReason, StockEvent,
    StockRejectReason,
};
use proptest::prelude::*;
use uuid::Uuid;

const TIMEOUTS: Timeouts = Timeouts {
    stock: Duration::from_secs(30),
    payment: Duration::from_secs(60),
};

/// What the gateway answers once asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gateway {
    Settles,
    Declines,
    /// The payments stage gave up reaching it: outcome unknown, the charge may exist.
    TimesOut,
    /// Never answers within the run: only the saga's payment deadline ends the order.
    Silent,
}

#[derive(Debug, Clone)]
enum Step {
    /// The stock stage's answer for a line.
    Answer(usize),
    /// The gateway's outcome arrives, if payment was requested by then (else it comes at the end).
    Payment,
    Cancel,
    /// The clock moves on by this many seconds and the stage checks the order's deadline.
    Tick(u32),
    /// An earlier input again (picked by the index).
    Redeliver(prop::sample::Index),
}

#[derive(Debug, Clone)]
struct Case {
    /// Per line: reserved (true) or rejected.
    reserved: Vec<bool>,
    gateway: Gateway,
    steps: Vec<Step>,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=4)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(prop::bool::weighted(0.8), n),
                prop_oneof![
                    3 => Just(Gateway::Settles),
                    1 => Just(Gateway::Declines),
                    1 => Just(Gateway::TimesOut),
                    1 => Just(Gateway::Silent),
                ],
                // Extra steps: cancellations (rare: most orders must get as far as paying),
                // clock ticks (some past a deadline), redeliveries.
                prop::collection::vec(
                    prop_oneof![
                        1 => Just(Step::Cancel),
                        4 => prop_oneof![0u32..20, 0u32..90].prop_map(Step::Tick),
                        3 => any::<prop::sample::Index>().prop_map(Step::Redeliver),
                    ],
                    0..8,
                ),
                prop::collection::vec(any::<prop::sample::Index>(), 8),
            )
        })
        .prop_flat_map(|(reserved, gateway, extra, positions)| {
            let mut ordered: Vec<Step> = (0..reserved.len()).map(Step::Answer).collect();
            ordered.push(Step::Payment);
            (
                Just(reserved),
                Just(gateway),
                Just(ordered).prop_shuffle(),
                Just(extra),
                Just(positions),
            )
        })
        .prop_map(|(reserved, gateway, mut steps, extra, positions)| {
            for (step, at) in extra.into_iter().zip(positions) {
                let at = at.index(steps.len() + 1);
                steps.insert(at, step);
            }
            Case {
                reserved,
                gateway,
                steps,
            }
        })
}

fn input(order_id: Uuid, case: &Case, step: Option<&Step>, at: DateTime<Utc>) -> OrderEnvelope {
    let event = match step {
        None => placed_lines(case.reserved.len()),
        Some(Step::Answer(i)) => line_answer(
            *i,
            (!case.reserved[*i]).then_some(StockRejectReason::OutOfStock),
        ),
        Some(Step::Cancel) => cancellation(),
        Some(Step::Payment) => match case.gateway {
            Gateway::Settles => payment_settled(),
            Gateway::Declines => OrderEvent::PaymentDeclined(PaymentDeclined {
                reason: DeclineReason::Gateway("insufficient_funds".into()),
            }),
            Gateway::TimesOut => OrderEvent::PaymentDeclined(PaymentDeclined {
                reason: DeclineReason::GatewayTimeout,
            }),
            Gateway::Silent => unreachable!("a silent gateway sends nothing"),
        },
        Some(Step::Tick(_) | Step::Redeliver(_)) => unreachable!("not an event"),
    };
    let mut envelope = OrderEnvelope::new(order_id, event, None, order_id);
    envelope.occurred_at = at;
    envelope
}

/// Distinct outputs by event id, in emission order, and which step emitted the terminal one.
#[derive(Default)]
struct Emitted {
    by_id: BTreeMap<Uuid, Output>,
    order: Vec<Uuid>,
    /// (step that closed the order, terminal event)
    terminal: Vec<(String, OrderEvent)>,
}

impl Emitted {
    fn record(
        &mut self,
        envelopes: Vec<OutputEnvelope>,
        outputs: Vec<Output>,
        step: &str,
    ) -> Result<(), TestCaseError> {
        for (envelope, output) in envelopes.into_iter().zip(outputs) {
            let id = match envelope {
                OutputEnvelope::Order(e) => e.event_id,
                OutputEnvelope::Stock(e) => e.event_id,
            };
            match self.by_id.insert(id, output.clone()) {
                Some(earlier) => prop_assert_eq!(earlier, output, "one id, two events"),
                None => {
                    self.order.push(id);
                    if let Output::Order(
                        e @ (OrderEvent::OrderConfirmed(_)
                        | OrderEvent::OrderRejected(_)
                        | OrderEvent::OrderCancelled(_)),
                    ) = &output
                    {
                        self.terminal.push((step.to_owned(), e.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    fn count(&self, wanted: impl Fn(&Output) -> bool) -> usize {
        self.by_id.values().filter(|o| wanted(o)).count()
    }
}

fn stock_count(emitted: &Emitted, line: usize, kind: &str) -> usize {
    emitted.count(|o| match o {
        Output::Stock { sku: s, event } if *s == line_sku(line) => matches!(
            (kind, event),
            ("reserve", StockEvent::ReservationRequested(_))
                | ("release", StockEvent::ReleaseRequested(_))
                | ("sale", StockEvent::SaleRequested(_))
        ),
        _ => false,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn answers_cancellations_payments_and_deadlines_in_any_order(case in case()) {
        let order_id = Uuid::now_v7();
        let t0: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        let mut now = t0;
        let mut emitted = Emitted::default();

        let placed = input(order_id, &case, None, now);
        let first = decide(None, &placed);
        let mut state: OrderState = first.new_state.expect("placed");
        let envelopes = first.outputs.iter().enumerate()
            .map(|(i, o)| o.clone().into_envelope(order_id, &placed, order_id, i as u32))
            .collect();
        emitted.record(envelopes, first.outputs, "placed")?;
        let mut sent = vec![placed];
        let mut payment_delivered = false;

        // The steps, then what is still owed: the gateway's outcome (it answers after
        // payment_requested, however late), and a clock past every deadline.
        let mut steps = case.steps.clone();
        steps.push(Step::Payment);
        steps.push(Step::Tick(24 * 3600));
        for step in &steps {
            let before = state.clone();
            let input = match step {
                Step::Tick(secs) => {
                    now += chrono::Duration::seconds(i64::from(*secs));
                    let deadline = orderpipe_processors::saga::deadline(&before, &TIMEOUTS);
                    match decide_timeout(&before, order_id, now, &TIMEOUTS) {
                        None => {
                            // Nothing before the deadline, nothing for a closed order.
                            prop_assert!(deadline.is_none_or(|d| now < d), "{:?} {}", deadline, now);
                        }
                        Some(timed_out) => {
                            let deadline = deadline.expect("a deadline fired");
                            prop_assert!(deadline <= now);
                            prop_assert_eq!(timed_out.at, deadline, "outputs are dated at the deadline");
                            let envelopes = timed_out.decision.outputs.iter().enumerate()
                                .map(|(i, o)| o.clone().into_envelope_at(order_id, timed_out.cause, timed_out.at, order_id, i as u32))
                                .collect();
                            emitted.record(envelopes, timed_out.decision.outputs, before.phase_name())?;
                            state = timed_out.decision.new_state.expect("a deadline moves the order");
                        }
                    }
                    continue;
                }
                Step::Payment => {
                    let requested = emitted.count(|o| matches!(o, Output::Order(OrderEvent::PaymentRequested(_)))) > 0;
                    if !requested || payment_delivered || case.gateway == Gateway::Silent {
                        continue;
                    }
                    payment_delivered = true;
                    input(order_id, &case, Some(step), now)
                }
                Step::Redeliver(which) => sent[which.index(sent.len())].clone(),
                Step::Answer(_) | Step::Cancel => input(order_id, &case, Some(step), now),
            };
            let decision = decide(Some(&before), &input);
            prop_assert!(!matches!(decision.verdict, Verdict::Invalid(_)), "{:?}", decision);
            let name = match step {
                Step::Answer(_) => "answer",
                Step::Payment => "payment",
                Step::Cancel => "cancel",
                _ => "redelivery",
            };
            let envelopes = decision.outputs.iter().enumerate()
                .map(|(i, o)| o.clone().into_envelope(order_id, &input, order_id, i as u32))
                .collect();
            emitted.record(envelopes, decision.outputs, name)?;
            if let Some(s) = decision.new_state {
                state = s;
            }
            sent.push(input);
        }

        // Exactly one terminal event, from the step that closed the order.
        prop_assert_eq!(emitted.terminal.len(), 1, "{:?}", emitted.terminal);
        prop_assert!(state.is_terminal(), "open after every deadline: {}", state.phase_name());
        let (closer, terminal) = &emitted.terminal[0];
        let all_reserved = case.reserved.iter().all(|r| *r);
        match (closer.as_str(), terminal) {
            ("cancel", OrderEvent::OrderCancelled(_)) => {}
            ("reserving", OrderEvent::OrderRejected(r)) => prop_assert_eq!(r.reason, RejectReason::StockTimeout),
            ("paying", OrderEvent::OrderRejected(r)) => prop_assert_eq!(r.reason, RejectReason::PaymentTimeout),
            ("answer", OrderEvent::OrderRejected(r)) => {
                prop_assert!(!all_reserved);
                prop_assert_eq!(r.reason, RejectReason::OutOfStock);
            }
            ("payment", OrderEvent::OrderConfirmed(_)) => prop_assert_eq!(case.gateway, Gateway::Settles),
            ("payment", OrderEvent::OrderRejected(r)) => prop_assert_eq!(
                r.reason,
                if case.gateway == Gateway::TimesOut { RejectReason::PaymentTimeout } else { RejectReason::PaymentDeclined }
            ),
            (closer, terminal) => prop_assert!(false, "{} closed the order with {:?}", closer, terminal),
        }
        let confirmed = matches!(terminal, OrderEvent::OrderConfirmed(_));

        // Stock: requested once per line; sold if confirmed, else every reserved line released
        // once (late answers included), nothing sold.
        for (line, reserved) in case.reserved.iter().enumerate() {
            prop_assert_eq!(stock_count(&emitted, line, "reserve"), 1, "line {}", line);
            let (releases, sales) = if confirmed { (0, 1) } else { (usize::from(*reserved), 0) };
            prop_assert_eq!(stock_count(&emitted, line, "release"), releases, "line {} releases", line);
            prop_assert_eq!(stock_count(&emitted, line, "sale"), sales, "line {} sales", line);
        }

        // Payment: asked at most once, only when every line was reserved; a charge that may
        // exist is confirmed or refunded/voided by the payments stage.
        let requested = emitted.count(|o| matches!(o, Output::Order(OrderEvent::PaymentRequested(_))));
        prop_assert!(requested <= 1);
        prop_assert!(requested == 0 || all_reserved);
        let maybe_charged = requested == 1 && case.gateway != Gateway::Declines;
        prop_assert!(!maybe_charged || confirmed || is_for_payments(terminal), "{:?}", terminal);
        prop_assert!(!confirmed || (payment_delivered && case.gateway == Gateway::Settles));
        // And the closed order has no deadline left.
        prop_assert!(decide_timeout(&state, order_id, now + chrono::Duration::days(30), &TIMEOUTS).is_none());
    }
}
