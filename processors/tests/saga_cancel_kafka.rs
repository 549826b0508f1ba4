//! Cancellation through the real broker, once per processing mode: stock, saga and payments
//! (simulated gateway, 2 s per call, so that a charge is in flight while the cancellation is
//! decided). An order cancelled while paying ends `order_cancelled`, its stock released and its
//! charge refunded (the gateway's own ledger nets to zero); a cancellation of a confirmed order
//! changes nothing.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::{order_stages, Env, Running};
use common::{cancellation, order, types};
use orderpipe_processors::payments::{SimConfig, SimulatedGateway};
use orderpipe_processors::{Config, ProcessingMode};
use orderpipe_schemas::{OrderEnvelope, StockEnvelope, StockEvent, StockLevels};
use orderpipe_testkit::kafka::consume_n;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use uuid::Uuid;

const PARTITIONS: i32 = 2;
const WAIT: Duration = Duration::from_secs(60);

use orderpipe_testkit::both_modes;

both_modes!(a_cancelled_order_releases_its_stock_and_its_charge_is_refunded);

/// What ingest writes for `POST /v1/orders/{id}/cancel`.
fn cancel(order_id: Uuid) -> OrderEnvelope {
    OrderEnvelope::new(order_id, cancellation(), None, order_id)
}

/// Reads the orders topic into `seen` until `pred` holds.
async fn until(
    reader: &StreamConsumer,
    seen: &mut Vec<OrderEnvelope>,
    pred: impl Fn(&[OrderEnvelope]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !pred(seen) {
        assert!(
            Instant::now() < deadline,
            "timed out; saw {:?}",
            types(seen)
        );
        for m in consume_n(reader, 50, Duration::from_millis(300)).await {
            seen.push(OrderEnvelope::decode(m.payload().unwrap()).unwrap());
        }
    }
}

/// Distinct events (by id: at-least-once may repeat one) of `order` with `event_type`.
fn count(events: &[OrderEnvelope], order: Uuid, event_type: &str) -> usize {
    events
        .iter()
        .filter(|e| e.order_id == order && e.event_type() == event_type)
        .map(|e| e.event_id)
        .collect::<HashSet<_>>()
        .len()
}

async fn a_cancelled_order_releases_its_stock_and_its_charge_is_refunded(mode: ProcessingMode) {
    let env = Env::new(
        &[("orders", PARTITIONS), ("stock", PARTITIONS)],
        &["stock", "saga", "payments"],
        PARTITIONS,
    )
    .await;
    env.stock_up(&[("CX-A", 5), ("CX-B", 3)]).await;
    // Every gateway call takes 2 s: the charge of the order is in flight when it is cancelled.
    let gateway = Arc::new(SimulatedGateway::new(SimConfig {
        latency: Duration::from_secs(2),
        ..SimConfig::default()
    }));
    let running = Running::start_all(
        order_stages(&env.topics, gateway.clone()),
        &env.topics,
        |_| Config::with_mode(mode),
    );
    let reader = env.reader(&env.topics.orders);

    // Given order A (2 x CX-A, 1 x CX-B) and order B (1 x CX-A)
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    env.send_orders([
        &order(a, &[("CX-A", 2), ("CX-B", 1)]),
        &order(b, &[("CX-A", 1)]),
    ])
    .await;
    let mut seen = Vec::new();

    // When A is cancelled once its payment is requested (reserved, charge on its way)
    until(&reader, &mut seen, |s| {
        count(s, a, "payment_requested") == 1
    })
    .await;
    env.send_orders([&cancel(a)]).await;
    // And B is cancelled after it was confirmed
    until(&reader, &mut seen, |s| count(s, b, "order_confirmed") == 1).await;
    env.send_orders([&cancel(b)]).await;

    // Then A ends cancelled and its charge is refunded; B stays confirmed
    until(&reader, &mut seen, |s| {
        count(s, a, "order_cancelled") == 1
            && count(s, a, "refunded") == 1
            && count(s, b, "cancellation_requested") == 1
    })
    .await;
    // (a quiet while: nothing else decides either order, even the charge of A landing late)
    let quiet_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < quiet_until {
        for m in consume_n(&reader, 100, Duration::from_millis(500)).await {
            seen.push(OrderEnvelope::decode(m.payload().unwrap()).unwrap());
        }
    }
    let terminal = |o: Uuid| -> Vec<&'static str> {
        ["order_confirmed", "order_rejected", "order_cancelled"]
            .into_iter()
            .filter(|t| count(&seen, o, t) > 0)
            .collect()
    };
    assert_eq!(terminal(a), ["order_cancelled"], "{:?}", types(&seen));
    assert_eq!(count(&seen, a, "order_cancelled"), 1);
    assert_eq!(terminal(b), ["order_confirmed"], "{:?}", types(&seen));
    assert_eq!(count(&seen, b, "order_confirmed"), 1);
    assert_eq!(count(&seen, b, "refunded"), 0);

    // And the gateway's own ledger: A was charged once and refunded (nets to zero), B charged once
    let ledger_a = gateway.ledger(a);
    assert_eq!(ledger_a.accepted_charges(), 1, "{ledger_a:?}");
    assert_eq!(gateway.net_charged(a), 0, "{ledger_a:?}");
    assert_eq!(gateway.net_charged(b), 1_000);
    assert_eq!(gateway.ledger(b).accepted_charges(), 1);
    assert_eq!(gateway.totals().orders_charged_twice, 0);

    // And the stock settles with nothing held: A's lines released, B's unit sold
    let want = [
        (
            "CX-A",
            StockLevels {
                available: 4,
                reserved: 0,
                sold: 1,
                per_customer_limit: None,
            },
        ),
        (
            "CX-B",
            StockLevels {
                available: 3,
                reserved: 0,
                sold: 0,
                per_customer_limit: None,
            },
        ),
    ];
    let levels_reader = env.reader(&env.topics.stock);
    let mut latest: HashMap<String, StockLevels> = HashMap::new();
    let mut releases = 0;
    let deadline = Instant::now() + WAIT;
    while want.iter().any(|(sku, l)| latest.get(*sku) != Some(l)) {
        assert!(
            Instant::now() < deadline,
            "stock levels {latest:?}, want {want:?}"
        );
        for m in consume_n(&levels_reader, 100, Duration::from_millis(500)).await {
            let e = StockEnvelope::decode(m.payload().unwrap()).unwrap();
            match e.event {
                StockEvent::StockLevels(levels) => {
                    latest.insert(e.sku, levels);
                }
                StockEvent::ReleaseRequested(r) if r.order_id == a => releases += 1,
                _ => {}
            }
        }
    }
    assert!(releases >= 2, "both lines of A released: {releases}");

    running.stop().await.unwrap();
}
