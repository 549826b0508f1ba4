//! Issue 9 item 4: repeats are byte-identical. A small sale runs through all four stages in
//! at-least-once mode; then every stage is started again in a fresh consumer group, so it is
//! redelivered every input it ever handled, with its state restored from its changelog. Every
//! repeated decision must be byte-identical to the first: no two records on any topic share an
//! `event_id` with different bytes, and each order is notified once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::broker::{all_stages, Env, Running};
use common::order;
use orderpipe_processors::payments::{SimConfig, SimulatedGateway};
use orderpipe_processors::{Config, ProcessingMode};
use orderpipe_schemas::{NotificationEnvelope, NotificationEvent, OrderEnvelope, OrderEvent};
use orderpipe_testkit::kafka::{consume_n, consumer, high_watermark};
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Message, OwnedMessage};
use uuid::Uuid;

const PARTITIONS: i32 = 2;

/// All four stages at least once; in groups of their own, suffixed `group_suffix`, if given.
fn start_all(env: &Env, gateway: &Arc<SimulatedGateway>, group_suffix: Option<&str>) -> Running {
    Running::start_all(
        all_stages(&env.topics, gateway.clone()),
        &env.topics,
        |stage| {
            let mut config = Config::with_mode(ProcessingMode::AtLeastOnce);
            if let Some(suffix) = group_suffix {
                // A fresh group: the stage reads every input again from offset 0.
                config.kafka_options.push((
                    "group.id".to_owned(),
                    format!("{}orderpipe-{}-{suffix}", env.topics.prefix(), stage.name()),
                ));
            }
            config
        },
    )
}

/// Sum of the end offsets of `topics`.
fn total_end(reader: &StreamConsumer, topics: &[&str]) -> i64 {
    let mut sum = 0;
    for topic in topics {
        for p in 0..PARTITIONS {
            sum += high_watermark(reader, topic, p).unwrap();
        }
    }
    sum
}

/// Waits until the topics stop growing for `quiet`.
async fn settle(reader: &StreamConsumer, topics: &[&str], quiet: Duration, max: Duration) {
    let deadline = Instant::now() + max;
    let mut last = total_end(reader, topics);
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        assert!(Instant::now() < deadline, "topics never settled");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = total_end(reader, topics);
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

async fn read_all(env: &Env, topic: &str) -> Vec<OwnedMessage> {
    let reader = env.reader(topic);
    let mut all = Vec::new();
    loop {
        let got = consume_n(&reader, 10_000, Duration::from_secs(3)).await;
        if got.is_empty() {
            return all;
        }
        all.extend(got);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redelivered_sale_repeats_every_event_byte_for_byte() {
    let env = Env::for_all_stages(PARTITIONS).await;
    env.stock_up(&[("HOT", 6), ("COLD", 20)]).await;
    let gateway = Arc::new(SimulatedGateway::new(SimConfig {
        decline_rate: 0.2,
        seed: 5,
        latency: Duration::from_millis(2),
    }));

    // Given a sale of 30 orders handled at least once by all four stages
    let running = start_all(&env, &gateway, None);
    let orders: Vec<OrderEnvelope> = (0..30)
        .map(|i| {
            let id = Uuid::now_v7();
            if i % 3 == 0 {
                order(id, &[("COLD", 1), ("HOT", 1)])
            } else {
                order(id, &[("HOT", 1)])
            }
        })
        .collect();
    env.send_orders(&orders).await;
    let watch = consumer(&env.test_topics.name("watch"), true).unwrap();
    let all_topics = [
        env.topics.orders.as_str(),
        env.topics.stock.as_str(),
        env.topics.notifications.as_str(),
    ];
    settle(
        &watch,
        &all_topics,
        Duration::from_secs(6),
        Duration::from_secs(120),
    )
    .await;
    running.stop().await.unwrap();

    // When every stage gets all its inputs again (fresh groups, state restored)
    let running = start_all(&env, &gateway, Some("again"));
    settle(
        &watch,
        &all_topics,
        Duration::from_secs(8),
        Duration::from_secs(180),
    )
    .await;
    running.stop().await.unwrap();

    // Then no event id names two different byte strings, on any topic
    let mut notified: HashMap<Uuid, HashSet<Uuid>> = HashMap::new();
    let mut terminal: HashSet<Uuid> = HashSet::new();
    for topic in all_topics {
        let mut seen: HashMap<Uuid, Vec<u8>> = HashMap::new();
        let mut repeats = 0;
        for m in read_all(&env, topic).await {
            let bytes = m.payload().unwrap_or_default().to_vec();
            let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let id: Uuid = value["event_id"].as_str().unwrap().parse().unwrap();
            if let Some(first) = seen.get(&id) {
                repeats += 1;
                assert_eq!(
                    String::from_utf8_lossy(first),
                    String::from_utf8_lossy(&bytes),
                    "{topic}: event {id} repeated with other bytes"
                );
            } else {
                seen.insert(id, bytes.clone());
            }
            if topic == env.topics.notifications {
                let e = NotificationEnvelope::decode(&bytes).unwrap();
                if matches!(e.event, NotificationEvent::NotificationRequested(_)) {
                    notified.entry(e.order_id).or_default().insert(e.event_id);
                }
            }
            if topic == env.topics.orders {
                let e = OrderEnvelope::decode(&bytes).unwrap();
                if matches!(
                    e.event,
                    OrderEvent::OrderConfirmed(_) | OrderEvent::OrderRejected(_)
                ) {
                    terminal.insert(e.order_id);
                }
            }
        }
        eprintln!("{topic}: {} events, {repeats} repeats", seen.len());
    }
    // And every order reached its end and was notified exactly once
    assert_eq!(
        terminal.len(),
        orders.len(),
        "orders without a terminal event"
    );
    for o in &orders {
        let n = notified.get(&o.order_id).map_or(0, HashSet::len);
        assert_eq!(n, 1, "order {} notified {n} times", o.order_id);
    }
}
