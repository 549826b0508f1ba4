//! Property: whatever the interleaving and duplication of line answers (and of `order_placed`
//! and payment outcomes), redeliveries of earlier messages (same event id) and compaction of
//! terminal orders, an order gets exactly one terminal event, every line is requested once, and
//! on rejection exactly the reserved lines are released, once each. "Once" counts distinct
//! event ids: a redelivered input repeats its outputs with the same ids (a repeat, which
//! consumers deduplicate, not a second event).

mod common;

use std::collections::BTreeMap;

use common::{line_answer, line_sku, payment_settled, placed_lines};
use orderpipe_processors::saga::{decide, OrderState, Output, OutputEnvelope, Verdict};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, PaymentDeclined, StockEvent, StockRejectReason,
};
use proptest::prelude::*;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Step {
    Placed,
    Answer(usize),
    Settled,
    Declined(&'static str),
    /// The same message as an earlier step (picked by the index).
    Redeliver(prop::sample::Index),
    /// The stage compacts the order if it is terminal.
    Compact,
}

#[derive(Debug, Clone)]
struct Case {
    /// Per line: `None` reserved, `Some(reason)` rejected.
    answers: Vec<Option<StockRejectReason>>,
    steps: Vec<Step>,
}

fn reason() -> impl Strategy<Value = StockRejectReason> {
    prop_oneof![
        Just(StockRejectReason::OutOfStock),
        Just(StockRejectReason::LimitExceeded),
        Just(StockRejectReason::UnknownSku),
    ]
}

fn payment_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Settled),
        Just(Step::Declined("insufficient_funds")),
        Just(Step::Declined("gateway_timeout")),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=5)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(prop::option::weighted(0.3, reason()), n),
                prop::collection::vec(0..n, 0..8),
                0usize..3,
                prop::collection::vec(payment_step(), 1..4),
                prop::collection::vec(
                    (any::<prop::sample::Index>(), any::<prop::sample::Index>()),
                    0..6,
                ),
                any::<bool>(),
            )
        })
        .prop_flat_map(
            |(answers, dup_answers, dup_placed, payments, redeliveries, compact)| {
                // Every line answered at least once, plus duplicates and repeated order_placed, in
                // any order; payment outcomes (possibly contradictory, repeated) at the end: the
                // payments stage only answers after payment_requested.
                let mut middle: Vec<Step> = (0..answers.len()).map(Step::Answer).collect();
                middle.extend(dup_answers.into_iter().map(Step::Answer));
                middle.extend((0..dup_placed).map(|_| Step::Placed));
                (
                    Just(answers),
                    Just(middle).prop_shuffle(),
                    Just(payments),
                    Just(redeliveries),
                    Just(compact),
                )
            },
        )
        .prop_map(|(answers, middle, payments, redeliveries, compact)| {
            let mut steps = vec![Step::Placed];
            steps.extend(middle);
            steps.extend(payments);
            for (at, which) in redeliveries {
                let at = 1 + at.index(steps.len());
                steps.insert(at, Step::Redeliver(which));
            }
            if compact {
                steps.push(Step::Compact);
            }
            Case { answers, steps }
        })
}

fn event(order_id: Uuid, case: &Case, step: &Step) -> OrderEnvelope {
    let e = match step {
        Step::Placed => placed_lines(case.answers.len()),
        Step::Answer(i) => line_answer(*i, case.answers[*i]),
        Step::Settled => payment_settled(),
        Step::Declined(reason) => OrderEvent::PaymentDeclined(PaymentDeclined {
            reason: (*reason).into(),
        }),
        Step::Redeliver(_) | Step::Compact => unreachable!("not a new event"),
    };
    OrderEnvelope::new(order_id, e, None, Uuid::nil())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn exactly_one_terminal_event_and_releases_match_reservations(case in case()) {
        let order_id = Uuid::now_v7();
        let mut state: Option<OrderState> = None;
        let mut sent: Vec<OrderEnvelope> = Vec::new();
        // Distinct output events by id (repeats carry the same id).
        let mut outputs: BTreeMap<Uuid, Output> = BTreeMap::new();
        for step in &case.steps {
            let input = match step {
                Step::Compact => {
                    if let Some(s) = state.as_mut().filter(|s| s.is_terminal()) {
                        s.compact();
                    }
                    continue;
                }
                Step::Redeliver(which) => sent[which.index(sent.len())].clone(),
                _ => event(order_id, &case, step),
            };
            sent.push(input.clone());
            let decision = decide(state.as_ref(), &input);
            prop_assert!(!matches!(decision.verdict, Verdict::Invalid(_)), "{decision:?}");
            if let Some(s) = decision.new_state {
                state = Some(s);
            }
            for (i, output) in (0u32..).zip(decision.outputs) {
                let id = match output.clone().into_envelope(order_id, &input, Uuid::nil(), i) {
                    OutputEnvelope::Order(e) => e.event_id,
                    OutputEnvelope::Stock(e) => e.event_id,
                };
                if let Some(earlier) = outputs.insert(id, output.clone()) {
                    prop_assert_eq!(earlier, output, "one id, two different events");
                }
            }
        }

        let mut terminal = Vec::new();
        let mut payment_requests = 0;
        let mut per_line: BTreeMap<(String, &'static str), u32> = BTreeMap::new();
        for output in outputs.values() {
            match output {
                Output::Order(OrderEvent::OrderConfirmed(_)) => terminal.push("confirmed"),
                Output::Order(OrderEvent::OrderRejected(_)) => terminal.push("rejected"),
                Output::Order(OrderEvent::PaymentRequested(_)) => payment_requests += 1,
                Output::Order(_) => {}
                Output::Stock { sku, event } => {
                    let kind = match event {
                        StockEvent::ReservationRequested(_) => "reserve",
                        StockEvent::ReleaseRequested(_) => "release",
                        StockEvent::SaleRequested(_) => "sale",
                        other => panic!("{other:?}"),
                    };
                    *per_line.entry((sku.clone(), kind)).or_default() += 1;
                }
            }
        }
        let count = |sku: &str, kind: &'static str| per_line.get(&(sku.to_owned(), kind)).copied().unwrap_or(0);

        // Exactly one terminal event, and the state agrees.
        prop_assert_eq!(terminal.len(), 1, "{:?}", outputs);
        prop_assert!(state.as_ref().is_some_and(OrderState::is_terminal));

        let all_reserved = case.answers.iter().all(Option::is_none);
        // Redeliveries only repeat earlier messages, so the first new payment outcome decides.
        let first_payment = case.steps.iter().find(|s| matches!(s, Step::Settled | Step::Declined(_)));
        let confirmed = all_reserved && matches!(first_payment, Some(Step::Settled));
        prop_assert_eq!(terminal[0], if confirmed { "confirmed" } else { "rejected" });
        prop_assert_eq!(payment_requests, u32::from(all_reserved));

        for (i, answer) in case.answers.iter().enumerate() {
            let sku = line_sku(i);
            prop_assert_eq!(count(&sku, "reserve"), 1);
            let (releases, sales) = if confirmed {
                (0, 1)
            } else if all_reserved {
                // Rejected by payment: every line was reserved, every line is released.
                (1, 0)
            } else {
                // Rejected by stock: exactly the reserved lines are released.
                (u32::from(answer.is_none()), 0)
            };
            prop_assert_eq!(count(&sku, "release"), releases, "line {}", i);
            prop_assert_eq!(count(&sku, "sale"), sales, "line {}", i);
        }
    }
}
