//! Property: whatever the order of line answers, payment outcomes and cancellation requests
//! (repeated, redelivered, before or after the order's outcome), an order ends with exactly one
//! terminal event, and a cancelled or rejected order holds no stock (every reserved line is
//! released exactly once, nothing is sold) and keeps no charge (a settled charge is followed by
//! a terminal event the payments stage refunds). A cancellation that arrives before the order is
//! decided always wins; one that arrives after changes nothing.

mod common;

use std::collections::BTreeMap;

use common::{cancellation, line_answer, line_sku, payment_settled, placed_lines};
use orderpipe_processors::payments::is_for_payments;
use orderpipe_processors::saga::{decide, OrderState, Output, OutputEnvelope, Verdict};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, PaymentDeclined, StockEvent, StockRejectReason,
};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Step {
    Answer(usize),
    Cancel,
    Settled,
    Declined,
    /// The same message as an earlier step (picked by the index).
    Redeliver(prop::sample::Index),
}

#[derive(Debug, Clone)]
struct Case {
    /// Per line: reserved (true) or rejected.
    reserved: Vec<bool>,
    steps: Vec<Step>,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=4)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(prop::bool::weighted(0.8), n),
                1usize..3,
                prop_oneof![Just(Step::Settled), Just(Step::Declined)],
                any::<prop::sample::Index>(),
                prop::collection::vec(
                    (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
                    0..4,
                ),
            )
        })
        .prop_flat_map(|(reserved, cancels, payment, cancel_at, redeliveries)| {
            let answers: Vec<Step> = (0..reserved.len()).map(Step::Answer).collect();
            (
                Just(reserved),
                Just(answers).prop_shuffle(),
                Just(cancels),
                Just(payment),
                Just(cancel_at),
                Just(redeliveries),
            )
        })
        .prop_map(
            |(reserved, answers, cancels, payment, cancel_at, redeliveries)| {
                // Answers in any order, then the payment outcome (it only follows payment_requested;
                // the saga ignores it when the order is not paying); cancellations anywhere after
                // the placement, redeliveries of anything sent before them.
                let mut steps = answers;
                steps.push(payment);
                for _ in 0..cancels {
                    let at = cancel_at.index(steps.len() + 1);
                    steps.insert(at, Step::Cancel);
                }
                for (at, which) in redeliveries {
                    let at = 1 + at.index(steps.len());
                    steps.insert(at, Step::Redeliver(which));
                }
                Case { reserved, steps }
            },
        )
}

fn event(order_id: Uuid, case: &Case, step: Option<&Step>) -> OrderEnvelope {
    let e = match step {
        None => placed_lines(case.reserved.len()),
        Some(Step::Answer(i)) => line_answer(
            *i,
            (!case.reserved[*i]).then_some(StockRejectReason::OutOfStock),
        ),
        Some(Step::Cancel) => cancellation(),
        Some(Step::Settled) => payment_settled(),
        Some(Step::Declined) => OrderEvent::PaymentDeclined(PaymentDeclined {
            reason: "insufficient_funds".into(),
        }),
        Some(Step::Redeliver(_)) => unreachable!("not a new event"),
    };
    OrderEnvelope::new(order_id, e, None, Uuid::nil())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn cancellation_never_leaves_stock_held_or_a_charge_kept(case in case()) {
        let order_id = Uuid::now_v7();
        let placed = event(order_id, &case, None);
        let first = decide(None, &placed);
        let mut state: Option<OrderState> = first.new_state;
        let mut sent = vec![placed.clone()];
        // Distinct output events by id (repeats carry the same id), in emission order.
        let mut outputs: BTreeMap<Uuid, Output> = BTreeMap::new();
        let mut order: Vec<Uuid> = Vec::new();
        let mut record = |input: &OrderEnvelope, decided: Vec<Output>| -> Result<(), TestCaseError> {
            for (i, output) in (0u32..).zip(decided) {
                let id = match output.clone().into_envelope(order_id, input, Uuid::nil(), i) {
                    OutputEnvelope::Order(e) => e.event_id,
                    OutputEnvelope::Stock(e) => e.event_id,
                };
                match outputs.insert(id, output.clone()) {
                    Some(earlier) => prop_assert_eq!(earlier, output, "one id, two events"),
                    None => order.push(id),
                }
            }
            Ok(())
        };
        record(&placed, first.outputs)?;
        // Whether the order was still open when the first cancellation came.
        let mut cancel_while_open = None;
        for step in &case.steps {
            let input = match step {
                Step::Redeliver(which) => sent[which.index(sent.len())].clone(),
                _ => event(order_id, &case, Some(step)),
            };
            let before = state.clone().expect("placed");
            if matches!(step, Step::Cancel) && cancel_while_open.is_none() {
                cancel_while_open = Some(!before.is_terminal());
            }
            sent.push(input.clone());
            let decision = decide(Some(&before), &input);
            prop_assert!(!matches!(decision.verdict, Verdict::Invalid(_)), "{decision:?}");
            if let Some(s) = decision.new_state {
                state = Some(s);
            }
            record(&input, decision.outputs)?;
        }

        let state = state.expect("placed");
        let terminal: Vec<&OrderEvent> = order
            .iter()
            .filter_map(|id| match &outputs[id] {
                Output::Order(e @ (OrderEvent::OrderConfirmed(_)
                | OrderEvent::OrderRejected(_)
                | OrderEvent::OrderCancelled(_))) => Some(e),
                _ => None,
            })
            .collect();
        prop_assert_eq!(terminal.len(), 1, "{:?}", outputs);
        prop_assert!(state.is_terminal());
        let cancelled = matches!(terminal[0], OrderEvent::OrderCancelled(_));
        let confirmed = matches!(terminal[0], OrderEvent::OrderConfirmed(_));
        prop_assert_eq!(state.phase_name(), if cancelled { "cancelled" } else if confirmed { "confirmed" } else { "rejected" });
        // A cancellation wins exactly when it came while the order was open.
        prop_assert_eq!(cancelled, cancel_while_open == Some(true));

        // No stock held: a cancelled or rejected order releases each reserved line once and
        // sells nothing; a confirmed one sells each line once and releases nothing.
        let mut per_line: BTreeMap<(String, &'static str), u32> = BTreeMap::new();
        for output in outputs.values() {
            if let Output::Stock { sku, event } = output {
                let kind = match event {
                    StockEvent::ReservationRequested(_) => "reserve",
                    StockEvent::ReleaseRequested(_) => "release",
                    StockEvent::SaleRequested(_) => "sale",
                    other => panic!("{other:?}"),
                };
                *per_line.entry((sku.clone(), kind)).or_default() += 1;
            }
        }
        let count = |sku: &str, kind: &'static str| {
            per_line.get(&(sku.to_owned(), kind)).copied().unwrap_or(0)
        };
        for (i, reserved) in case.reserved.iter().enumerate() {
            let sku = line_sku(i);
            prop_assert_eq!(count(&sku, "reserve"), 1);
            let (releases, sales) = if confirmed { (0, 1) } else { (u32::from(*reserved), 0) };
            prop_assert_eq!(count(&sku, "release"), releases, "line {}", i);
            prop_assert_eq!(count(&sku, "sale"), sales, "line {}", i);
        }

        // No charge kept: the gateway charges once payment_requested is out, and the outcome
        // is `settled` (the payments stage charges whatever the saga decided meanwhile). Such a
        // charge belongs to a confirmed order, or the order's terminal event is one the payments
        // stage refunds.
        let payment_requested = outputs
            .values()
            .any(|o| matches!(o, Output::Order(OrderEvent::PaymentRequested(_))));
        let charged = payment_requested && case.steps.iter().any(|s| matches!(s, Step::Settled));
        prop_assert!(!charged || confirmed || is_for_payments(terminal[0]), "{:?}", terminal[0]);
        prop_assert!(!confirmed || charged);
        if cancelled {
            // Whether or not a charge landed (it may race the cancellation), payments refunds.
            prop_assert!(is_for_payments(terminal[0]));
        }
    }
}
