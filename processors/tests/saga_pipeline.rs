//! All four stages together on the real broker (stock, saga, payments with the simulated gateway
//! at 20% declines, notifications to the log), once per processing mode: every order ends in
//! exactly one terminal event, nothing is oversold, declined orders' stock is released (and
//! sold again), money moves once per confirmed order.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::order;
use orderpipe_processors::notifications::{LogSink, NotificationsStage};
use orderpipe_processors::payments::{PaymentsStage, SimConfig, SimulatedGateway};
use orderpipe_processors::saga::SagaStage;
use orderpipe_processors::stock::{set_stock, StockStage};
use orderpipe_processors::RetryPolicy;
use orderpipe_processors::{ensure_topics, spawn_stage, Config, ProcessingMode, Stage};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, RejectReason, StockAdjustment, StockEnvelope, StockEvent,
    StockLevels, Topics,
};
use orderpipe_testkit::kafka::{bootstrap, consume_n, consumer, producer, TestTopics};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const PARTITIONS: i32 = 2;

use orderpipe_testkit::both_modes;

both_modes!(a_small_sale_through_all_stages);

async fn a_small_sale_through_all_stages(mode: ProcessingMode) {
    let mut test_topics = TestTopics::new().unwrap();
    for topic in ["orders", "stock", "notifications"] {
        test_topics.create(topic, PARTITIONS).await.unwrap();
    }
    let topics = Topics::with_prefix(test_topics.prefix.clone());
    for stage in ["stock", "saga", "payments", "notifications"] {
        for created in ensure_topics(&bootstrap(), &topics, stage, PARTITIONS)
            .await
            .unwrap()
        {
            test_topics.adopt(&created);
        }
    }
    let stocked = [("HOT", 8u32), ("COLD", 20)];
    for (sku, quantity) in stocked {
        set_stock(
            &bootstrap(),
            &topics,
            sku,
            StockAdjustment::Set { quantity },
            None,
        )
        .await
        .unwrap();
    }

    let gateway = Arc::new(SimulatedGateway::new(SimConfig {
        decline_rate: 0.2,
        seed: 3,
        latency: Duration::from_millis(2),
    }));
    let handle = tokio::runtime::Handle::current();
    let stages: Vec<Box<dyn Stage>> = vec![
        Box::new(StockStage::new(topics.clone())),
        Box::new(SagaStage::new(topics.clone())),
        Box::new(PaymentsStage::new(
            topics.clone(),
            gateway.clone(),
            handle.clone(),
        )),
        Box::new(NotificationsStage::new(
            topics.clone(),
            Arc::new(LogSink),
            handle,
            RetryPolicy::default(),
        )),
    ];
    let shutdown = CancellationToken::new();
    let running: Vec<_> = stages
        .into_iter()
        .map(|stage| {
            spawn_stage(
                stage,
                &Config::with_mode(mode),
                &bootstrap(),
                &topics,
                shutdown.clone(),
            )
            .unwrap()
        })
        .collect();

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
    let reader = consumer(&test_topics.name("orders-reader"), true).unwrap();
    reader.subscribe(&[&topics.orders]).unwrap();
    let producer = producer().unwrap();
    for o in &orders {
        producer
            .send(
                FutureRecord::to(&topics.orders)
                    .key(&o.key())
                    .payload(&o.encode()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

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
    let levels_reader = consumer(&test_topics.name("stock-reader"), true).unwrap();
    levels_reader.subscribe(&[&topics.stock]).unwrap();
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

    shutdown.cancel();
    for stage in running {
        stage.wait().await.unwrap();
    }
}
