//! Given/when/then tests of the saga's pure decision function.

use orderpipe_processors::payments::is_for_payments;
use orderpipe_processors::saga::{decide, Ignored, LineAnswer, OrderState, Output, Phase, Verdict};
use orderpipe_schemas::{
    CancellationRequested, OrderCancelled, OrderConfirmed, OrderEnvelope, OrderEvent, OrderLine,
    OrderPlaced, OrderRejected, PaymentDeclined, PaymentRef, PaymentRequested, PaymentSettled,
    Refunded, RejectReason, StockEvent, StockLineRejected, StockLineReserved, StockRejectReason,
    StockRejected, StockReserved,
};
use uuid::Uuid;

const CORRELATION: Uuid = Uuid::from_u128(0xC0);

fn env(order_id: Uuid, event: OrderEvent) -> OrderEnvelope {
    OrderEnvelope::new(order_id, event, None, CORRELATION)
}

fn placed(order_id: Uuid, lines: &[(&str, u32)]) -> OrderEnvelope {
    let lines: Vec<OrderLine> = lines
        .iter()
        .map(|(sku, quantity)| OrderLine {
            sku: (*sku).to_owned(),
            quantity: *quantity,
            unit_price_minor: 250,
        })
        .collect();
    let total_minor = lines
        .iter()
        .map(|l| i64::from(l.quantity) * l.unit_price_minor)
        .sum();
    env(
        order_id,
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: "cust-1".into(),
            currency: "EUR".into(),
            lines,
            total_minor,
            payment: PaymentRef {
                method: "card".into(),
                token: "tok_1".into(),
            },
        }),
    )
}

fn reserved(order_id: Uuid, line_index: u32, sku: &str, quantity: u32) -> OrderEnvelope {
    env(
        order_id,
        OrderEvent::StockLineReserved(StockLineReserved {
            sku: sku.into(),
            line_index,
            quantity,
        }),
    )
}

fn rejected(
    order_id: Uuid,
    line_index: u32,
    sku: &str,
    quantity: u32,
    reason: StockRejectReason,
) -> OrderEnvelope {
    env(
        order_id,
        OrderEvent::StockLineRejected(StockLineRejected {
            sku: sku.into(),
            line_index,
            quantity,
            reason,
        }),
    )
}

fn settled(order_id: Uuid) -> OrderEnvelope {
    env(
        order_id,
        OrderEvent::PaymentSettled(PaymentSettled {
            amount_minor: 1,
            currency: "EUR".into(),
            charge_id: "ch_1".into(),
        }),
    )
}

fn declined(order_id: Uuid, reason: &str) -> OrderEnvelope {
    env(
        order_id,
        OrderEvent::PaymentDeclined(PaymentDeclined {
            reason: reason.into(),
        }),
    )
}

/// Applies `events` in order; returns the final state and the outputs of each event.
fn run(events: &[OrderEnvelope]) -> (Option<OrderState>, Vec<Vec<Output>>) {
    let mut state = None;
    let mut outputs = Vec::new();
    for event in events {
        let decision = decide(state.as_ref(), event);
        if let Some(new_state) = decision.new_state {
            state = Some(new_state);
        }
        outputs.push(decision.outputs);
    }
    (state, outputs)
}

fn order_events(outputs: &[Output]) -> Vec<&OrderEvent> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Order(e) => Some(e),
            Output::Stock { .. } => None,
        })
        .collect()
}

/// `(sku, kind, line_index, quantity)` of every stock output.
fn stock_events(outputs: &[Output]) -> Vec<(String, &'static str, u32, u32)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Stock { sku, event } => Some(match event {
                StockEvent::ReservationRequested(r) => {
                    (sku.clone(), "reserve", r.line_index, r.quantity)
                }
                StockEvent::ReleaseRequested(r) => {
                    (sku.clone(), "release", r.line_index, r.quantity)
                }
                StockEvent::SaleRequested(r) => (sku.clone(), "sale", r.line_index, r.quantity),
                other => panic!("unexpected stock output {other:?}"),
            }),
            Output::Order(_) => None,
        })
        .collect()
}

fn s(sku: &str, kind: &'static str, line: u32, qty: u32) -> (String, &'static str, u32, u32) {
    (sku.to_owned(), kind, line, qty)
}

#[test]
fn new_order_requests_one_reservation_per_line() {
    // Given no state, when an order with two lines is placed
    let id = Uuid::now_v7();
    let decision = decide(None, &placed(id, &[("A", 2), ("B", 1)]));
    // Then one reservation per line is requested, carrying order, customer and line count
    assert_eq!(decision.verdict, Verdict::Applied);
    assert_eq!(
        stock_events(&decision.outputs),
        vec![s("A", "reserve", 0, 2), s("B", "reserve", 1, 1)]
    );
    for output in &decision.outputs {
        let Output::Stock {
            event: StockEvent::ReservationRequested(r),
            ..
        } = output
        else {
            panic!("{output:?}")
        };
        assert_eq!(
            (r.order_id, r.customer_id.as_str(), r.line_count),
            (id, "cust-1", 2)
        );
    }
    let state = decision.new_state.unwrap();
    assert_eq!(state.phase_name(), "reserving");
    assert_eq!(state.correlation_id, CORRELATION);
}

#[test]
fn duplicate_order_placed_is_ignored_in_every_phase() {
    let id = Uuid::now_v7();
    let p = placed(id, &[("A", 1)]);
    let phases = [
        vec![p.clone()],
        vec![p.clone(), reserved(id, 0, "A", 1)],
        vec![p.clone(), reserved(id, 0, "A", 1), settled(id)],
        vec![
            p.clone(),
            rejected(id, 0, "A", 1, StockRejectReason::OutOfStock),
        ],
    ];
    for history in phases {
        // Given an order in some phase
        let (state, _) = run(&history);
        // When the same order is placed again (an idempotent client retry: a new event)
        let decision = decide(state.as_ref(), &placed(id, &[("A", 1)]));
        // Then nothing happens
        assert_eq!(
            decision.verdict,
            Verdict::Ignored(Ignored::DuplicateOrderPlaced)
        );
        assert!(decision.outputs.is_empty() && decision.new_state.is_none());
    }
}

#[test]
fn all_lines_reserved_in_any_order_request_payment_once() {
    let id = Uuid::now_v7();
    // Given a three-line order whose answers arrive out of order, with a duplicate
    let (state, outputs) = run(&[
        placed(id, &[("A", 1), ("B", 2), ("C", 3)]),
        reserved(id, 2, "C", 3),
        reserved(id, 0, "A", 1),
        reserved(id, 2, "C", 3),
        reserved(id, 1, "B", 2),
    ]);
    // Then only the last new answer emits: stock_reserved and payment_requested with the total
    assert!(outputs[1..4].iter().all(Vec::is_empty));
    assert_eq!(
        order_events(&outputs[4]),
        vec![
            &OrderEvent::StockReserved(StockReserved {}),
            &OrderEvent::PaymentRequested(PaymentRequested {
                amount_minor: 6 * 250,
                currency: "EUR".into(),
                payment: PaymentRef {
                    method: "card".into(),
                    token: "tok_1".into(),
                },
            }),
        ]
    );
    assert_eq!(state.unwrap().phase_name(), "paying");
}

#[test]
fn partial_rejection_waits_for_every_answer_and_releases_exactly_the_reserved_lines() {
    let id = Uuid::now_v7();
    // Given a four-line order: line 1 rejected first, then lines 0 and 3 reserved, line 2 rejected
    let (state, outputs) = run(&[
        placed(id, &[("A", 1), ("B", 2), ("C", 3), ("D", 4)]),
        rejected(id, 1, "B", 2, StockRejectReason::OutOfStock),
        reserved(id, 0, "A", 1),
        reserved(id, 3, "D", 4),
        rejected(id, 2, "C", 3, StockRejectReason::LimitExceeded),
    ]);
    // Then nothing is emitted until the last answer (so late reservations are not missed)
    assert!(outputs[1..4].iter().all(Vec::is_empty));
    // And then: releases of exactly lines 0 and 3, stock_rejected of the first rejected line,
    // order_rejected with that line's reason
    let last = &outputs[4];
    assert_eq!(
        stock_events(last),
        vec![s("A", "release", 0, 1), s("D", "release", 3, 4)]
    );
    assert_eq!(
        order_events(last),
        vec![
            &OrderEvent::StockRejected(StockRejected {
                sku: "B".into(),
                reason: StockRejectReason::OutOfStock,
            }),
            &OrderEvent::OrderRejected(OrderRejected {
                reason: RejectReason::OutOfStock,
            }),
        ]
    );
    assert_eq!(
        state.unwrap().phase,
        Phase::Rejected {
            reason: RejectReason::OutOfStock
        }
    );
}

#[test]
fn stock_reject_reasons_map_to_order_reject_reasons() {
    let cases = [
        (StockRejectReason::OutOfStock, RejectReason::OutOfStock),
        (StockRejectReason::UnknownSku, RejectReason::OutOfStock),
        (
            StockRejectReason::LimitExceeded,
            RejectReason::LimitExceeded,
        ),
    ];
    for (stock_reason, order_reason) in cases {
        let id = Uuid::now_v7();
        let (_, outputs) = run(&[
            placed(id, &[("A", 1)]),
            rejected(id, 0, "A", 1, stock_reason),
        ]);
        assert_eq!(
            order_events(&outputs[1]).last(),
            Some(&&OrderEvent::OrderRejected(OrderRejected {
                reason: order_reason
            }))
        );
        // Nothing was reserved, so nothing is released
        assert!(stock_events(&outputs[1]).is_empty());
    }
}

#[test]
fn a_second_answer_for_a_line_is_ignored_even_if_it_differs() {
    let id = Uuid::now_v7();
    let (state, _) = run(&[placed(id, &[("A", 1), ("B", 1)]), reserved(id, 0, "A", 1)]);
    // When line 0 is answered again, the same way or differently
    for again in [
        reserved(id, 0, "A", 1),
        rejected(id, 0, "A", 1, StockRejectReason::OutOfStock),
    ] {
        let decision = decide(state.as_ref(), &again);
        // Then the first answer stands
        assert_eq!(
            decision.verdict,
            Verdict::Ignored(Ignored::DuplicateLineAnswer)
        );
        assert!(decision.new_state.is_none() && decision.outputs.is_empty());
    }
    let state = state.unwrap();
    assert_eq!(state.phase, Phase::Reserving);
    assert_eq!(state.details.unwrap().lines[0].answer, LineAnswer::Reserved);
}

#[test]
fn answers_that_contradict_the_order_are_invalid() {
    let id = Uuid::now_v7();
    let (state, _) = run(&[placed(id, &[("A", 1)])]);
    for bad in [
        reserved(id, 1, "A", 1),
        reserved(id, 0, "B", 1),
        reserved(id, 0, "A", 7),
    ] {
        let decision = decide(state.as_ref(), &bad);
        assert!(
            matches!(decision.verdict, Verdict::Invalid(_)),
            "{decision:?}"
        );
        assert!(decision.new_state.is_none() && decision.outputs.is_empty());
    }
}

#[test]
fn payment_settled_confirms_and_sells_every_line() {
    let id = Uuid::now_v7();
    let (state, outputs) = run(&[
        placed(id, &[("A", 1), ("B", 2)]),
        reserved(id, 0, "A", 1),
        reserved(id, 1, "B", 2),
        settled(id),
    ]);
    assert_eq!(
        order_events(&outputs[3]),
        vec![&OrderEvent::OrderConfirmed(OrderConfirmed {})]
    );
    assert_eq!(
        stock_events(&outputs[3]),
        vec![s("A", "sale", 0, 1), s("B", "sale", 1, 2)]
    );
    assert_eq!(
        state.unwrap().phase,
        Phase::Confirmed {
            charge_id: "ch_1".into()
        }
    );
}

#[test]
fn payment_declined_releases_every_line_and_rejects() {
    let cases = [
        ("insufficient_funds", RejectReason::PaymentDeclined),
        ("gateway_timeout", RejectReason::PaymentTimeout),
    ];
    for (gateway_reason, reason) in cases {
        let id = Uuid::now_v7();
        let (state, outputs) = run(&[
            placed(id, &[("A", 1), ("B", 2)]),
            reserved(id, 1, "B", 2),
            reserved(id, 0, "A", 1),
            declined(id, gateway_reason),
        ]);
        assert_eq!(
            stock_events(&outputs[3]),
            vec![s("A", "release", 0, 1), s("B", "release", 1, 2)]
        );
        assert_eq!(
            order_events(&outputs[3]),
            vec![&OrderEvent::OrderRejected(OrderRejected { reason })]
        );
        assert_eq!(state.unwrap().phase, Phase::Rejected { reason });
    }
}

#[test]
fn nothing_after_the_terminal_event_emits_again() {
    let id = Uuid::now_v7();
    let confirmed = vec![
        placed(id, &[("A", 1)]),
        reserved(id, 0, "A", 1),
        settled(id),
    ];
    let rejected_by_payment = vec![
        placed(id, &[("A", 1)]),
        reserved(id, 0, "A", 1),
        declined(id, "gateway_timeout"),
    ];
    for history in [confirmed, rejected_by_payment] {
        let (state, _) = run(&history);
        let state = state.unwrap();
        assert!(state.is_terminal());
        // Late or duplicate events: payment outcomes (a settlement after a timeout rejection
        // is refunded by the payments stage), line answers, own outputs
        for late in [
            settled(id),
            declined(id, "insufficient_funds"),
            reserved(id, 0, "A", 1),
            rejected(id, 0, "A", 1, StockRejectReason::OutOfStock),
            env(
                id,
                OrderEvent::Refunded(Refunded {
                    amount_minor: 250,
                    currency: "EUR".into(),
                }),
            ),
        ] {
            let decision = decide(Some(&state), &late);
            assert!(
                matches!(decision.verdict, Verdict::Ignored(_)),
                "{} -> {decision:?}",
                late.event_type()
            );
            assert!(decision.outputs.is_empty() && decision.new_state.is_none());
        }
    }
}

#[test]
fn payment_outcomes_before_payment_was_requested_are_ignored() {
    let id = Uuid::now_v7();
    let (state, _) = run(&[placed(id, &[("A", 1), ("B", 1)]), reserved(id, 0, "A", 1)]);
    for early in [settled(id), declined(id, "x")] {
        let decision = decide(state.as_ref(), &early);
        assert_eq!(
            decision.verdict,
            Verdict::Ignored(Ignored::UnexpectedPayment)
        );
    }
}

#[test]
fn events_of_unknown_orders_are_ignored() {
    let id = Uuid::now_v7();
    for event in [reserved(id, 0, "A", 1), settled(id), declined(id, "x")] {
        assert_eq!(
            decide(None, &event).verdict,
            Verdict::Ignored(Ignored::UnknownOrder)
        );
    }
}

#[test]
fn own_outputs_coming_back_are_ignored() {
    let id = Uuid::now_v7();
    let (state, outputs) = run(&[placed(id, &[("A", 1)]), reserved(id, 0, "A", 1)]);
    for output in order_events(&outputs[1]) {
        let decision = decide(state.as_ref(), &env(id, output.clone()));
        assert_eq!(decision.verdict, Verdict::Ignored(Ignored::NotForSaga));
    }
}

#[test]
fn an_order_without_lines_is_rejected_as_invalid() {
    let id = Uuid::now_v7();
    let (state, outputs) = run(&[placed(id, &[])]);
    assert_eq!(
        order_events(&outputs[0]),
        vec![&OrderEvent::OrderRejected(OrderRejected {
            reason: RejectReason::Invalid
        })]
    );
    assert!(state.unwrap().is_terminal());
}

#[test]
fn state_survives_the_changelog_and_compacted_terminal_records_are_small() {
    let id = Uuid::now_v7();
    let (open, _) = run(&[placed(id, &[("A", 1), ("B", 2)]), reserved(id, 0, "A", 1)]);
    let open = open.unwrap();
    assert_eq!(OrderState::from_json(&open.to_json()).unwrap(), open);
    let (done, _) = run(&[
        placed(id, &[("A", 1), ("B", 2)]),
        reserved(id, 0, "A", 1),
        reserved(id, 1, "B", 2),
        settled(id),
    ]);
    let mut done = done.unwrap();
    assert_eq!(OrderState::from_json(&done.to_json()).unwrap(), done);
    assert!(done.is_compactable());
    done.compact();
    let bytes = done.to_json();
    assert_eq!(OrderState::from_json(&bytes).unwrap(), done);
    // (phase, charge id, correlation id, and `since` for the retention)
    assert!(bytes.len() < 160, "{}", String::from_utf8_lossy(&bytes));
    // The payment token is gone with the details
    assert!(!String::from_utf8_lossy(&bytes).contains("tok_1"));
    assert!(!done.is_compactable());
}

#[test]
fn a_redelivered_input_repeats_its_outputs_and_nothing_else() {
    let id = Uuid::now_v7();
    let history = [
        placed(id, &[("A", 1), ("B", 2)]),
        reserved(id, 0, "A", 1),
        rejected(id, 1, "B", 2, StockRejectReason::LimitExceeded),
    ];
    let (state, outputs) = run(&history);
    let state = state.unwrap();
    // When any input that emitted is delivered again (same event id), its outputs repeat exactly
    for (event, first) in history.iter().zip(&outputs) {
        let decision = decide(Some(&state), event);
        if first.is_empty() {
            assert!(
                matches!(decision.verdict, Verdict::Ignored(_)),
                "{decision:?}"
            );
        } else {
            assert_eq!(decision.verdict, Verdict::Repeated);
            assert_eq!(&decision.outputs, first);
        }
        assert!(decision.new_state.is_none());
    }
    // Once compacted, a redelivery is only a late duplicate
    let mut compacted = state.clone();
    compacted.compact();
    for event in &history {
        let decision = decide(Some(&compacted), event);
        assert!(
            matches!(decision.verdict, Verdict::Ignored(_)),
            "{decision:?}"
        );
        assert!(decision.outputs.is_empty());
    }
}

#[test]
fn outputs_get_causation_correlation_and_ids_derived_from_the_cause() {
    let id = Uuid::now_v7();
    let p = placed(id, &[("A", 1), ("B", 1)]);
    let decision = decide(None, &p);
    let envelopes = |outputs: Vec<Output>| -> Vec<_> {
        (0u32..)
            .zip(outputs)
            .map(|(i, o)| match o.into_envelope(id, &p, CORRELATION, i) {
                orderpipe_processors::saga::OutputEnvelope::Stock(e) => e,
                other => panic!("{other:?}"),
            })
            .collect()
    };
    let first = envelopes(decision.outputs.clone());
    for e in &first {
        assert_eq!(
            (e.causation_id, e.correlation_id),
            (Some(p.event_id), CORRELATION)
        );
    }
    assert_ne!(first[0].event_id, first[1].event_id);
    // The same decision again gets the same ids
    let again = envelopes(decision.outputs);
    let ids =
        |v: &[orderpipe_schemas::StockEnvelope]| v.iter().map(|e| e.event_id).collect::<Vec<_>>();
    assert_eq!(ids(&first), ids(&again));
}

fn cancel(order_id: Uuid) -> OrderEnvelope {
    env(
        order_id,
        OrderEvent::CancellationRequested(CancellationRequested {
            client_id: "checkout".into(),
        }),
    )
}

#[test]
fn cancel_while_reserving_releases_the_reserved_lines_and_later_reservations() {
    // Given an order of three lines, line 0 reserved, line 1 rejected, line 2 unanswered
    let id = Uuid::now_v7();
    let (state, _) = run(&[
        placed(id, &[("A", 1), ("B", 2), ("C", 3)]),
        reserved(id, 0, "A", 1),
        rejected(id, 1, "B", 2, StockRejectReason::OutOfStock),
    ]);
    // When its cancellation is requested
    let decision = decide(state.as_ref(), &cancel(id));
    // Then it is cancelled: line 0 released, order_cancelled emitted
    assert_eq!(decision.verdict, Verdict::Applied);
    assert_eq!(
        stock_events(&decision.outputs),
        vec![s("A", "release", 0, 1)]
    );
    assert_eq!(
        order_events(&decision.outputs),
        vec![&OrderEvent::OrderCancelled(OrderCancelled {})]
    );
    let state = decision.new_state.unwrap();
    assert_eq!(state.phase, Phase::Cancelled);
    assert!(state.is_terminal() && state.awaits_late_answers() && !state.is_compactable());
    // And when line 2 is reserved after all, it is released at once, nothing else
    let late = decide(Some(&state), &reserved(id, 2, "C", 3));
    assert_eq!(late.verdict, Verdict::Applied);
    assert_eq!(stock_events(&late.outputs), vec![s("C", "release", 2, 3)]);
    assert!(order_events(&late.outputs).is_empty());
    let state = late.new_state.unwrap();
    assert_eq!(
        state.details.as_ref().unwrap().lines[2].answer,
        LineAnswer::ReleasedLate
    );
    assert!(!state.awaits_late_answers() && state.is_compactable());
}

#[test]
fn cancel_while_paying_releases_every_line_and_asks_payments_to_refund() {
    // Given an order reserved and paying
    let id = Uuid::now_v7();
    let (state, outputs) = run(&[
        placed(id, &[("A", 1), ("B", 2)]),
        reserved(id, 1, "B", 2),
        reserved(id, 0, "A", 1),
    ]);
    assert!(matches!(
        order_events(&outputs[2])[1],
        OrderEvent::PaymentRequested(_)
    ));
    // When its cancellation is requested
    let decision = decide(state.as_ref(), &cancel(id));
    // Then every line is released and the order is cancelled
    assert_eq!(
        stock_events(&decision.outputs),
        vec![s("A", "release", 0, 1), s("B", "release", 1, 2)]
    );
    let cancelled = order_events(&decision.outputs);
    assert_eq!(
        cancelled,
        vec![&OrderEvent::OrderCancelled(OrderCancelled {})]
    );
    // And the payments stage refunds (or voids) the charge of a cancelled order
    assert!(is_for_payments(cancelled[0]));
    // And a payment outcome that comes later (the charge raced the cancellation) changes
    // nothing in the saga: the refund above covers it
    let state = decision.new_state.unwrap();
    for late in [settled(id), declined(id, "insufficient_funds")] {
        let d = decide(Some(&state), &late);
        assert_eq!(d.verdict, Verdict::Ignored(Ignored::UnexpectedPayment));
        assert!(d.outputs.is_empty() && d.new_state.is_none());
    }
}

#[test]
fn cancel_of_a_terminal_or_unknown_order_is_ignored_and_a_redelivery_repeats() {
    let id = Uuid::now_v7();
    let confirmed = vec![
        placed(id, &[("A", 1)]),
        reserved(id, 0, "A", 1),
        settled(id),
    ];
    let rejected_by_stock = vec![
        placed(id, &[("A", 1)]),
        rejected(id, 0, "A", 1, StockRejectReason::OutOfStock),
    ];
    let first_cancel = cancel(id);
    let cancelled = vec![placed(id, &[("A", 1)]), first_cancel.clone()];
    for history in [confirmed, rejected_by_stock, cancelled] {
        let (state, _) = run(&history);
        let state = state.unwrap();
        assert!(state.is_terminal());
        // A new request (another event id: a client retry) is ignored
        let d = decide(Some(&state), &cancel(id));
        assert_eq!(d.verdict, Verdict::Ignored(Ignored::LateCancellation));
        assert!(d.outputs.is_empty() && d.new_state.is_none());
    }
    // Unknown order: ignored
    assert_eq!(
        decide(None, &cancel(id)).verdict,
        Verdict::Ignored(Ignored::UnknownOrder)
    );
    // The same request redelivered repeats its outputs, identically
    let (state, outputs) = run(&[placed(id, &[("A", 1)]), first_cancel.clone()]);
    let again = decide(state.as_ref(), &first_cancel);
    assert_eq!(again.verdict, Verdict::Repeated);
    assert_eq!(again.outputs, outputs[1]);
    assert!(again.new_state.is_none());
    // The saga's own order_cancelled coming back is not a request
    let d = decide(
        state.as_ref(),
        &env(id, OrderEvent::OrderCancelled(OrderCancelled {})),
    );
    assert_eq!(d.verdict, Verdict::Ignored(Ignored::NotForSaga));
}
