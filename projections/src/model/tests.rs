//! Tests of the pure core: write timestamps, status derivation and planning.

use super::plan::detail;
use super::*;
use chrono::{TimeZone, Utc};
use orderpipe_schemas::{
    OrderConfirmed, OrderEnvelope, OrderEvent, OrderLine, OrderPlaced, OrderRejected, PaymentRef,
    PaymentSettled, RejectReason, StockEnvelope, StockEvent, StockLevels,
};

fn envelope(order_id: Uuid, secs: i64, event: OrderEvent) -> OrderEnvelope {
    let mut e = OrderEnvelope::new(order_id, event, None, order_id);
    e.occurred_at = Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap();
    e
}

fn placed(customer: &str, qty: u32) -> OrderEvent {
    OrderEvent::OrderPlaced(OrderPlaced {
        customer_id: customer.into(),
        currency: "EUR".into(),
        lines: vec![
            OrderLine {
                sku: "A".into(),
                quantity: qty,
                unit_price_minor: 100,
            },
            OrderLine {
                sku: "B".into(),
                quantity: 1,
                unit_price_minor: 50,
            },
        ],
        total_minor: i64::from(qty) * 100 + 50,
        payment: PaymentRef {
            method: "card".into(),
            token: "tok_secret".into(),
        },
    })
}

fn count(writes: &[Write], f: impl Fn(&Write) -> bool) -> usize {
    writes.iter().filter(|w| f(w)).count()
}

#[test]
fn stamps_order_first_and_latest() {
    assert!(first_wins(1) > first_wins(2));
    assert!(latest_wins(2) > latest_wins(1));
    assert!(latest_wins(i64::from(u32::MAX) * 1000) < first_wins(i64::from(u32::MAX) * 1000));
}

/// Every stamp lies in the past (ScyllaDB refuses timestamps over 3 days ahead) and both
/// mappings keep their order for every offset up to 2^40.
#[test]
fn stamps_stay_in_the_past_and_ordered_up_to_2_pow_40() {
    let now_micros = Utc::now().timestamp_micros();
    let mut offsets: Vec<i64> = vec![0, 1, 2, 3, 1_000, MAX_OFFSET - 1, MAX_OFFSET];
    offsets.extend((0..=40).map(|b| 1i64 << b));
    offsets.extend((1..=40).map(|b| (1i64 << b) - 1));
    offsets.extend((0..1000).map(|i| i * (MAX_OFFSET / 1000)));
    offsets.sort_unstable();
    offsets.dedup();
    for pair in offsets.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        assert!(
            first_wins(a) > first_wins(b),
            "first_wins order at {a} < {b}"
        );
        assert!(
            latest_wins(a) < latest_wins(b),
            "latest_wins order at {a} < {b}"
        );
    }
    for &o in &offsets {
        for stamp in [first_wins(o), latest_wins(o)] {
            assert!(stamp > 0, "stamp of offset {o} is not positive");
            assert!(stamp < now_micros, "stamp of offset {o} is not in the past");
        }
        // Any latest-wins stamp is below any first-wins stamp.
        assert!(latest_wins(MAX_OFFSET) < first_wins(o));
    }
    assert!(first_wins(0) <= ANCHOR);
}

#[test]
fn status_never_regresses_from_a_terminal_outcome() {
    // Given a rejected order that later sees payment_settled
    assert_eq!(
        Status::derive(Some("rejected"), true, true),
        Status::Rejected
    );
    assert_eq!(
        Status::derive(Some("confirmed"), true, true),
        Status::Confirmed
    );
    assert_eq!(Status::derive(None, true, true), Status::Paid);
    assert_eq!(Status::derive(None, false, true), Status::StockReserved);
    assert_eq!(Status::derive(None, false, false), Status::Placed);
    assert_eq!(
        Status::derive(Some("cancelled"), true, true),
        Status::Cancelled
    );
    for s in [
        "placed",
        "stock_reserved",
        "paid",
        "confirmed",
        "rejected",
        "cancelled",
    ] {
        assert_eq!(Status::parse(s).unwrap().as_str(), s);
    }
    assert_eq!(Status::parse("bogus"), None);
}

#[test]
fn duplicate_placement_only_adds_a_timeline_row() {
    // Given an order placed at offset 3
    let id = Uuid::now_v7();
    let mut state = OrderState::default();
    let mut first = Vec::new();
    assert_eq!(
        plan_order(&mut state, &envelope(id, 0, placed("c1", 2)), 3, &mut first),
        None
    );
    assert_eq!(
        count(&first, |w| matches!(w, Write::CustomerOrder { .. })),
        1
    );
    assert_eq!(count(&first, |w| matches!(w, Write::Line { .. })), 2);
    // When a retry of the same order arrives later
    let mut dup = Vec::new();
    let anomaly = plan_order(&mut state, &envelope(id, 5, placed("c1", 2)), 7, &mut dup);
    // Then only its timeline row is written
    assert_eq!(anomaly, Some(Anomaly::DuplicatePlacement));
    assert_eq!(dup.len(), 1);
    assert!(matches!(dup[0], Write::Timeline { offset: 7, .. }));
    assert_eq!(state.placed.as_ref().unwrap().offset, 3);
}

#[test]
fn replanning_an_applied_event_gives_identical_writes() {
    // Given the state after applying a placement and a confirmation
    let id = Uuid::now_v7();
    let place = envelope(id, 0, placed("c1", 2));
    let confirm = envelope(id, 90, OrderEvent::OrderConfirmed(OrderConfirmed {}));
    let mut state = OrderState::default();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    plan_order(&mut state, &place, 1, &mut a);
    plan_order(&mut state, &confirm, 9, &mut a);
    // When both are planned again from that (later) state, as a replay does
    plan_order(&mut state, &place, 1, &mut b);
    plan_order(&mut state, &confirm, 9, &mut b);
    // Then the writes are the same
    assert_eq!(a, b);
}

#[test]
fn confirmation_writes_sales_rows_from_the_placement() {
    let id = Uuid::now_v7();
    let mut state = OrderState::default();
    let mut w = Vec::new();
    plan_order(&mut state, &envelope(id, 0, placed("c1", 3)), 1, &mut w);
    w.clear();
    let anomaly = plan_order(
        &mut state,
        &envelope(id, 125, OrderEvent::OrderConfirmed(OrderConfirmed {})),
        4,
        &mut w,
    );
    assert_eq!(anomaly, None);
    let sale = w.iter().find(|w| matches!(w, Write::Sale { .. })).unwrap();
    let Write::Sale {
        minute,
        units,
        revenue_minor,
        ..
    } = sale
    else {
        unreachable!()
    };
    assert_eq!(*minute % 60_000, 0);
    assert_eq!((*units, *revenue_minor), (4, 350));
    assert_eq!(count(&w, |w| matches!(w, Write::SkuSale { .. })), 2);
}

#[test]
fn order_cancelled_is_a_terminal_cancelled_outcome_without_sales() {
    // Given a placed order whose cancellation was requested
    let id = Uuid::now_v7();
    let mut state = OrderState::default();
    let mut w = Vec::new();
    plan_order(&mut state, &envelope(id, 0, placed("c1", 1)), 1, &mut w);
    w.clear();
    let request = OrderEvent::CancellationRequested(orderpipe_schemas::CancellationRequested {
        client_id: "checkout".into(),
    });
    // Then the request alone only adds a timeline row (the saga may still refuse it)
    assert_eq!(
        plan_order(&mut state, &envelope(id, 5, request), 2, &mut w),
        None
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(matches!(w[0], Write::Timeline { .. }));
    w.clear();
    // When the saga's order_cancelled arrives
    let cancelled = OrderEvent::OrderCancelled(orderpipe_schemas::OrderCancelled {});
    assert!(needs_state(&cancelled));
    assert_eq!(
        plan_order(&mut state, &envelope(id, 6, cancelled), 3, &mut w),
        None
    );
    // Then the order's terminal status is cancelled, with its cancelled_at, and no sales
    assert!(w.iter().any(|w| matches!(
        w,
        Write::Terminal {
            status: "cancelled",
            reason: None,
            offset: 3,
            ..
        }
    )));
    assert_eq!(
        count(&w, |w| matches!(
            w,
            Write::Stage {
                column: StageColumn::Cancelled,
                ..
            }
        )),
        1
    );
    assert_eq!(
        count(&w, |w| matches!(
            w,
            Write::Sale { .. } | Write::SkuSale { .. }
        )),
        0
    );
    // And a late confirmation changes nothing
    w.clear();
    let anomaly = plan_order(
        &mut state,
        &envelope(id, 12, OrderEvent::OrderConfirmed(OrderConfirmed {})),
        7,
        &mut w,
    );
    assert_eq!(anomaly, Some(Anomaly::LateTerminal));
    assert_eq!(count(&w, |w| matches!(w, Write::Terminal { .. })), 0);
}

#[test]
fn late_outcome_after_rejection_is_ignored() {
    // Given an order rejected at offset 5
    let id = Uuid::now_v7();
    let mut state = OrderState::default();
    let mut w = Vec::new();
    plan_order(&mut state, &envelope(id, 0, placed("c1", 1)), 1, &mut w);
    let reject = OrderEvent::OrderRejected(OrderRejected {
        reason: RejectReason::PaymentDeclined,
    });
    plan_order(&mut state, &envelope(id, 10, reject), 5, &mut w);
    w.clear();
    // When a confirmation and a payment arrive after it
    let settled = OrderEvent::PaymentSettled(PaymentSettled {
        amount_minor: 150,
        currency: "EUR".into(),
        charge_id: "ch".into(),
    });
    plan_order(&mut state, &envelope(id, 11, settled), 6, &mut w);
    let anomaly = plan_order(
        &mut state,
        &envelope(id, 12, OrderEvent::OrderConfirmed(OrderConfirmed {})),
        7,
        &mut w,
    );
    // Then no sales row and no new outcome is written
    assert_eq!(anomaly, Some(Anomaly::LateTerminal));
    assert_eq!(
        count(&w, |w| matches!(
            w,
            Write::Sale { .. } | Write::Terminal { .. }
        )),
        0
    );
}

#[test]
fn earlier_placement_arriving_late_replaces_the_later_one() {
    // Given a placement at offset 9 applied first (consumer started past offset 4)
    let id = Uuid::now_v7();
    let mut state = OrderState::default();
    let mut w = Vec::new();
    plan_order(&mut state, &envelope(id, 60, placed("c1", 2)), 9, &mut w);
    w.clear();
    // When the earlier one (offset 4, other time) is applied
    plan_order(&mut state, &envelope(id, 0, placed("c1", 2)), 4, &mut w);
    // Then the later one's customer row is deleted and the earlier one written
    assert_eq!(
        count(&w, |w| matches!(w, Write::DeleteCustomerOrder { .. })),
        1
    );
    assert_eq!(count(&w, |w| matches!(w, Write::CustomerOrder { .. })), 1);
    assert_eq!(state.placed.as_ref().unwrap().offset, 4);
}

#[test]
fn timeline_detail_never_shows_the_payment_token() {
    let d = detail(&placed("c1", 1));
    assert!(!d.contains("tok_secret"), "{d}");
    assert_eq!(d, "2 line(s), total 150 EUR");
}

#[test]
fn only_stock_levels_feed_the_stock_view() {
    let levels = StockEnvelope::new(
        "SKU-1",
        StockEvent::StockLevels(StockLevels {
            available: 7,
            reserved: 2,
            sold: 1,
            per_customer_limit: Some(2),
        }),
        None,
        Uuid::now_v7(),
    );
    let w = plan_stock(&levels, 41).unwrap();
    assert!(matches!(
        w,
        Write::StockLevels {
            available: 7,
            reserved: 2,
            sold: 1,
            stamp: 42,
            ..
        }
    ));
}

#[test]
fn buckets() {
    assert_eq!(minute_of(125_000), 120_000);
    assert_eq!(hour_of(3_600_000 * 5 + 7), 3_600_000 * 5);
    assert_eq!(minute_of(-1), -60_000);
}
