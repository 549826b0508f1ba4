//! Properties of the deadline decision (`decide_timeout`): it fires exactly from the phase's
//! deadline on, decides the same whenever it runs (time and ids from the order's state, not from
//! the clock), releases exactly the lines held, and a late reservation after a stock timeout is
//! released exactly once, so a timed-out order ends holding no stock.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use orderpipe_processors::saga::{decide, decide_timeout, OrderState, Output, Timeouts};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, OrderLine, OrderPlaced, PaymentRef, RejectReason, StockEvent,
    StockLineRejected, StockLineReserved, StockRejectReason,
};
use proptest::prelude::*;
use uuid::Uuid;

fn placed(order_id: Uuid, lines: usize, at: DateTime<Utc>) -> OrderEnvelope {
    let mut e = OrderEnvelope::new(
        order_id,
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: "c".into(),
            currency: "EUR".into(),
            lines: (0..lines)
                .map(|i| OrderLine {
                    sku: format!("S{i}"),
                    quantity: 1,
                    unit_price_minor: 100,
                })
                .collect(),
            total_minor: 100 * lines as i64,
            payment: PaymentRef {
                method: "card".into(),
                token: "tok".into(),
            },
        }),
        None,
        order_id,
    );
    e.occurred_at = at;
    e
}

fn answer(order_id: Uuid, line: usize, reserved: bool) -> OrderEnvelope {
    let event = if reserved {
        OrderEvent::StockLineReserved(StockLineReserved {
            sku: format!("S{line}"),
            line_index: line as u32,
            quantity: 1,
        })
    } else {
        OrderEvent::StockLineRejected(StockLineRejected {
            sku: format!("S{line}"),
            line_index: line as u32,
            quantity: 1,
            reason: StockRejectReason::OutOfStock,
        })
    };
    OrderEnvelope::new(order_id, event, None, order_id)
}

fn apply(state: Option<OrderState>, event: &OrderEnvelope) -> (Option<OrderState>, Vec<Output>) {
    let d = decide(state.as_ref(), event);
    (d.new_state.or(state), d.outputs)
}

/// Per line: +1 per reservation answer that holds units, -1 per release requested.
fn releases(outputs: &[Output]) -> Vec<u32> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Stock {
                event: StockEvent::ReleaseRequested(r),
                ..
            } => Some(r.line_index),
            _ => None,
        })
        .collect()
}

proptest! {
    #[test]
    fn a_stock_timeout_is_deterministic_and_the_order_ends_holding_nothing(
        // Per line: None = no answer before the deadline, Some(true) reserved, Some(false) rejected
        before in prop::collection::vec(prop::option::of(any::<bool>()), 1..5),
        // Per line, what comes late (after the deadline): reserved or rejected
        late in prop::collection::vec(any::<bool>(), 5),
        early_secs in 0i64..30,
        late_secs_a in 30i64..100_000,
        late_secs_b in 30i64..100_000,
    ) {
        let t0: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
        let timeouts = Timeouts { stock: Duration::from_secs(30), payment: Duration::from_secs(60) };
        let id = Uuid::from_u128(42);
        let (mut state, _) = apply(None, &placed(id, before.len(), t0));
        let mut held: BTreeMap<u32, i32> = BTreeMap::new();
        for (line, a) in before.iter().enumerate() {
            if let Some(reserved) = a {
                let (s, _) = apply(state, &answer(id, line, *reserved));
                state = s;
                if *reserved { *held.entry(line as u32).or_default() += 1; }
            }
        }
        let state = state.unwrap();
        prop_assume!(state.phase_name() == "reserving");
        // Before the deadline: nothing
        prop_assert!(decide_timeout(&state, id, t0 + chrono::Duration::seconds(early_secs), &timeouts).is_none());
        // From the deadline on: the same decision whenever it is taken
        let a = decide_timeout(&state, id, t0 + chrono::Duration::seconds(late_secs_a), &timeouts).unwrap();
        let b = decide_timeout(&state, id, t0 + chrono::Duration::seconds(late_secs_b), &timeouts).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(a.at, t0 + chrono::Duration::seconds(30));
        let rejected: Vec<&Output> = a.decision.outputs.iter()
            .filter(|o| matches!(o, Output::Order(OrderEvent::OrderRejected(r)) if r.reason == RejectReason::StockTimeout))
            .collect();
        prop_assert_eq!(rejected.len(), 1);
        for line in releases(&a.decision.outputs) { *held.entry(line).or_default() -= 1; }
        // Late answers for the unanswered lines (each twice: a redelivery)
        let mut state = a.decision.new_state;
        for (line, a) in before.iter().enumerate() {
            if a.is_none() {
                for _ in 0..2 {
                    let (s, outputs) = apply(state, &answer(id, line, late[line]));
                    state = s;
                    for l in releases(&outputs) { *held.entry(l).or_default() -= 1; }
                }
                if late[line] { *held.entry(line as u32).or_default() += 1; }
            }
        }
        // Every unit held is released exactly once, and nothing else is released
        prop_assert!(held.values().all(|h| *h == 0), "{:?}", held);
        // and the order no longer waits for anything: it can be compacted
        let state = state.unwrap();
        prop_assert!(!state.awaits_late_answers());
        prop_assert!(decide_timeout(&state, id, t0 + chrono::Duration::days(1), &timeouts).is_none());
    }
}
