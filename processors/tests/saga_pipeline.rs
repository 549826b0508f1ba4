//! All four stages together on the real broker (stock, saga, payments with the simulated gateway
//! at 20% declines, notifications to the log), once per processing mode: every order ends in
//! exactly one terminal event, nothing is oversold, declined orders' stock is released (and
//! sold again), money moves once per confirmed order.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::{all_stages, Env, Running};
use common::order;
use orderpipe_processors::payments::{SimConfig, SimulatedGateway};
use orderpipe_processors::{Config, ProcessingMode};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, RejectReason, StockEnvelope, StockEvent, StockLevels,
};
use orderpipe_testkit::kafka::consume_n;
use rdkafka::message::Message;
use uuid::Uuid;

const PARTITIONS: i32 = 2;

use orderpipe_testkit::both_modes;

both_modes!(a_small_sale_through_all_stages);

async fn a_small_sale_through_all_stages(mode: ProcessingMode) {
    let env = Env::for_all_stages(PARTITIONS).await;
    env.stock_up(&[("HOT", 8), ("COLD", 20)]).await;

    let gateway = Arc::new(SimulatedGateway::new(SimConfig {
        decline_rate: 0.2,
        seed: 3,
        latency: Duration::from_millis(2),
    }));
    let running = Running::start_all(
        all_stages(&env.topics, gateway.clone()),
        &env.topics,
        |_| Config::with_mode(mode),
    );

    // 40 orders: 30 want one HOT unit (8 in stock), 10 want one HOT and one COLD
    let orders: Vec<OrderEnvelope> = (0..40)
        .map(|i| {
            let id = Uuid::now_v7();
            if i % 4 == 3 {
                order(id, &[("COLD", 1), ("HOT", 1)])
            } else {
                order(id, &[("HOT", 1)])
            }
        })
        .collect();
    let reader = env.reader(&env.topics.orders);
    env.send_orders(&orders).await;

    // Every order reaches a terminal event; distinct terminal events per order = 1
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut terminal: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    let mut outcome: HashMap<Uuid, OrderEvent> = HashMap::new();
    while terminal.len() < orders.len() {
        assert!(
            Instant::now() < deadline,
            "only {} orders terminal",
            terminal.len()
        );
        for m in consume_n(&reader, 50, Duration::from_millis(500)).await {
            let e = OrderEnvelope::decode(m.payload().unwrap()).unwrap();
            if matches!(
                e.event,
                OrderEvent::OrderConfirmed(_) | OrderEvent::OrderRejected(_)
            ) {
                terminal.entry(e.order_id).or_default().insert(e.event_id);
                outcome.insert(e.order_id, e.event);
            }
        }
    }
    // A quiet second: no second terminal event shows up
    for m in consume_n(&reader, 1_000, Duration::from_secs(1)).await {
        let e = OrderEnvelope::decode(m.payload().unwrap()).unwrap();
        if matches!(
            e.event,
            OrderEvent::OrderConfirmed(_) | OrderEvent::OrderRejected(_)
        ) {
            terminal.entry(e.order_id).or_default().insert(e.event_id);
        }
    }
    assert!(terminal.values().all(|ids| ids.len() == 1), "{terminal:?}");
    let confirmed: Vec<Uuid> = outcome
        .iter()
        .filter(|(_, e)| matches!(e, OrderEvent::OrderConfirmed(_)))
        .map(|(id, _)| *id)
        .collect();
    let reasons: HashSet<RejectReason> = outcome
        .values()
        .filter_map(|e| match e {
            OrderEvent::OrderRejected(r) => Some(r.reason),
            _ => None,
        })
        .collect();
    assert!(
        !confirmed.is_empty() && confirmed.len() <= 8,
        "{}",
        confirmed.len()
    );
    assert!(reasons.contains(&RejectReason::OutOfStock), "{reasons:?}");

    // Stock settles: nothing reserved, sold = confirmed units, no oversell
    let hot_sold = confirmed.len() as u64;
    let cold_sold = orders
        .iter()
        .filter(|o| confirmed.contains(&o.order_id))
        .filter(|o| matches!(&o.event, OrderEvent::OrderPlaced(p) if p.lines.len() == 2))
        .count() as u64;
    let levels_reader = env.reader(&env.topics.stock);
    let mut latest: HashMap<String, StockLevels> = HashMap::new();
    let want = |stocked: u32, sold: u64| StockLevels {
        available: u64::from(stocked) - sold,
        reserved: 0,
        sold,
        per_customer_limit: None,
    };
    let expected = [
        ("HOT".to_owned(), want(8, hot_sold)),
        ("COLD".to_owned(), want(20, cold_sold)),
    ];
    while expected
        .iter()
        .any(|(sku, levels)| latest.get(sku) != Some(levels))
    {
        assert!(
            Instant::now() < deadline,
            "stock levels {latest:?}, want {expected:?}"
        );
        for m in consume_n(&levels_reader, 100, Duration::from_millis(500)).await {
            let e = StockEnvelope::decode(m.payload().unwrap()).unwrap();
            if let StockEvent::StockLevels(levels) = e.event {
                latest.insert(e.sku, levels);
            }
        }
    }

    // Money moved once per confirmed order, never twice
    let totals = gateway.totals();
    assert_eq!(totals.charges, confirmed.len() as u64);
    assert_eq!(totals.orders_charged_twice, 0);

    running.stop().await.unwrap();
}
