//! Flash sales end to end: the `orderpipe` binary (ingest + stock + payments + saga +
//! notifications) against the real broker, orders posted through the ingest API by concurrent
//! clients, outcomes read back from the topics. Each scenario runs in both processing modes.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use orderpipe_processors::payments::gateway_sim;
use orderpipe_processors::payments::simulated::{SimConfig, SimulatedGateway};
use orderpipe_processors::ProcessingMode;
use orderpipe_schemas::RejectReason;
use orderpipe_testkit::kafka::TestTopics;
use tokio_util::sync::CancellationToken;

const SETTLE: Duration = Duration::from_secs(120);

fn pipeline_args(mode: ProcessingMode, ingest_port: u16) -> Vec<String> {
    vec![
        "--components".into(),
        "ingest,stock,payments,saga,notifications".into(),
        "--processing".into(),
        mode.as_str().into(),
        "--ingest-listen".into(),
        format!("127.0.0.1:{ingest_port}"),
    ]
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Stock 100 of one SKU, 2,000 single-unit orders from 50 concurrent clients: exactly 100 units
/// confirmed, 1,900 orders rejected out_of_stock, the SKU ends at 0 available.
async fn hot_sku_sale(mode: ProcessingMode) {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let ingest_port = free_port();
    let mut pipeline = Orderpipe::run("all", &topics, &refs(&pipeline_args(mode, ingest_port)));
    pipeline.wait_ready(Duration::from_secs(60)).await;
    set_stock(&topics, "HOT-1", 100);

    let orders: Vec<OrderSpec> = (0..2000).map(|_| vec![("HOT-1".to_string(), 1)]).collect();
    let acked = run_sale(
        format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        orders,
        50,
        |_| {},
    )
    .await;
    assert_eq!(acked.len(), 2000, "every order acknowledged");

    let outcome = collect_outcome(&topics, &acked, SETTLE).await;
    let stock = BTreeMap::from([("HOT-1".to_string(), 100)]);
    assert_invariants(&outcome, &acked, &stock);
    let confirmed = acked.keys().filter(|id| outcome.confirmed(id)).count();
    let out_of_stock = acked
        .keys()
        .filter(|id| outcome.rejection(id) == Some(RejectReason::OutOfStock))
        .count();
    assert_eq!((confirmed, out_of_stock), (100, 1900), "{mode}");
    let levels = &outcome.levels["HOT-1"];
    assert_eq!(
        (levels.available, levels.reserved, levels.sold),
        (0, 0, 100),
        "{mode}"
    );
    pipeline.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_sku_sale_exactly_once() {
    hot_sku_sale(ProcessingMode::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_sku_sale_at_least_once() {
    hot_sku_sale(ProcessingMode::AtLeastOnce).await;
}

/// A deterministic mix of 1 to 3 line orders over `skus` SKUs (xorshift: no dependency, same
/// sale on every run).
fn mixed_orders(count: usize, skus: usize) -> Vec<OrderSpec> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    (0..count)
        .map(|_| {
            let lines = 1 + next(3) as usize;
            let first = next(skus as u64) as usize;
            (0..lines.min(skus))
                .map(|l| {
                    (
                        format!("SKU-{}", (first + l * 3) % skus),
                        1 + next(2) as u32,
                    )
                })
                .collect()
        })
        .collect()
}

/// Multi-line orders over 10 SKUs with 20% of payments declined: no oversell, every order
/// terminal exactly once, declined orders' stock released and sold again.
async fn multi_sku_sale_with_declines(mode: ProcessingMode) {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let ingest_port = free_port();
    let mut args = pipeline_args(mode, ingest_port);
    args.extend([
        "--payments-sim-decline-rate".into(),
        "0.2".into(),
        "--payments-sim-seed".into(),
        "7".into(),
    ]);
    let mut pipeline = Orderpipe::run("all", &topics, &refs(&args));
    pipeline.wait_ready(Duration::from_secs(60)).await;
    let mut stock = BTreeMap::new();
    for sku in 0..10 {
        let name = format!("SKU-{sku}");
        set_stock(&topics, &name, 40);
        stock.insert(name, 40u64);
    }

    let acked = run_sale(
        format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        mixed_orders(800, 10),
        50,
        |_| {},
    )
    .await;
    let outcome = collect_outcome(&topics, &acked, SETTLE).await;
    assert_invariants(&outcome, &acked, &stock);

    let declined = acked
        .keys()
        .filter(|id| outcome.rejection(id) == Some(RejectReason::PaymentDeclined))
        .count();
    let confirmed = acked.keys().filter(|id| outcome.confirmed(id)).count();
    assert!(
        declined > 0 && confirmed > 0,
        "{mode}: declined {declined}, confirmed {confirmed}"
    );
    let released: u64 = outcome.released_units.values().sum();
    let available: u64 = outcome.levels.values().map(|l| l.available).sum();
    assert!(released > 0, "{mode}: declined orders released nothing");
    // Demand is ten times the stock: units released by declined orders are reserved again by
    // later orders, so what is left available is less than what was ever released.
    assert!(
        available < released,
        "{mode}: released {released} units, {available} left unsold"
    );
    pipeline.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_sku_sale_with_declines_exactly_once() {
    multi_sku_sale_with_declines(ProcessingMode::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_sku_sale_with_declines_at_least_once() {
    multi_sku_sale_with_declines(ProcessingMode::AtLeastOnce).await;
}

/// The processors' process is SIGKILLed mid-sale and restarted with the same instance id: every
/// invariant still holds and the gateway (its own process role: here, this test) charged no order
/// twice.
///
/// Ignored in CI (run it with `cargo nextest run -p orderpipe-ops --test sale --run-ignored all`):
/// the testbed broker, noida-db 0.2.3, sometimes keeps the last stable offset stuck after the
/// restarted instance fences and aborts the killed one's open transaction. In one failed CI run
/// its data file showed the abort marker written and `aborted_txns` recorded, while the stock
/// stage's read_committed consumer stayed at the aborted transaction's first offset for minutes;
/// a second run stalled the same way on the orders topic. It passed 7 of 8 runs on an idle
/// machine, and stalled in 2 of 3 attempts under CI load. Apache Kafka moves the last stable
/// offset on after the abort; this test belongs in a run against real Kafka or Redpanda.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "noida-db 0.2.3 can leave the last stable offset stuck after fencing a killed transaction; run against real Kafka"]
async fn processors_killed_mid_sale_keep_every_invariant() {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);

    let gateway = Arc::new(SimulatedGateway::new(SimConfig {
        decline_rate: 0.1,
        seed: 3,
        ..SimConfig::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_url = format!("http://{}", listener.local_addr().unwrap());
    let stop_gateway = CancellationToken::new();
    tokio::spawn(gateway_sim::serve(
        listener,
        gateway.clone(),
        stop_gateway.clone(),
    ));

    let ingest_port = free_port();
    let ingest_listen = format!("127.0.0.1:{ingest_port}");
    let mut ingest = Orderpipe::run(
        "ingest",
        &topics,
        &["--components", "ingest", "--ingest-listen", &ingest_listen],
    );
    ingest.wait_ready(Duration::from_secs(30)).await;
    let processor_args = [
        "--components",
        "stock,payments,saga,notifications",
        "--processing",
        "exactly-once",
        "--instance-id",
        "p1",
        "--payments-gateway",
        "http",
        "--payments-gateway-url",
        &gateway_url,
    ];
    let mut processors = Orderpipe::run("processors", &topics, &processor_args);
    processors.wait_ready(Duration::from_secs(60)).await;
    set_stock(&topics, "HOT-1", 100);

    // Kill the processors once 600 of 2,000 orders are acknowledged, while the sale is running.
    let kill_now = Arc::new(AtomicBool::new(false));
    let flag = kill_now.clone();
    let orders: Vec<OrderSpec> = (0..2000).map(|_| vec![("HOT-1".to_string(), 1)]).collect();
    let sale = tokio::spawn(run_sale(
        ingest_listen.parse().unwrap(),
        orders,
        50,
        move |acked| {
            if acked == 600 {
                flag.store(true, Ordering::SeqCst);
            }
        },
    ));
    while !kill_now.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    processors.kill();
    // Same instance id: static membership gives the partitions back at once, and the new
    // transactional producer fences the dead one's open transaction.
    let mut processors = Orderpipe::run("processors-restarted", &topics, &processor_args);
    let acked = sale.await.unwrap();
    processors.wait_ready(Duration::from_secs(60)).await;

    // The sale settles in about 10 s; a stalled broker (see above) fails within a minute.
    let outcome = collect_outcome(&topics, &acked, Duration::from_secs(60)).await;
    let stock = BTreeMap::from([("HOT-1".to_string(), 100)]);
    assert_invariants(&outcome, &acked, &stock);
    let confirmed = acked.keys().filter(|id| outcome.confirmed(id)).count();
    assert_eq!(outcome.levels["HOT-1"].sold, confirmed as u64);

    let totals = gateway.totals();
    assert_eq!(totals.orders_charged_twice, 0, "{totals:?}");
    assert_eq!(
        totals.charges, confirmed as u64,
        "every confirmed order charged once, no other charge kept: {totals:?}"
    );
    processors.stop();
    ingest.stop();
    stop_gateway.cancel();
}

/// After a real flash sale through every component, the query API's views agree with the topics:
/// each order's status, reason and timeline; stock available + reserved + sold equals what was
/// set; sales totals equal the confirmed orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_agree_with_the_topics_after_a_flash_sale() {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let keyspace = orderpipe_testkit::cql::TestKeyspace::new().await.unwrap();
    let ingest_port = free_port();
    let query_port = free_port();
    let started = chrono::Utc::now() - chrono::Duration::minutes(1);
    let args = [
        "--ingest-listen".to_string(),
        format!("127.0.0.1:{ingest_port}"),
        "--query-listen".to_string(),
        format!("127.0.0.1:{query_port}"),
        "--scylla-nodes".to_string(),
        orderpipe_testkit::cql::nodes().join(","),
        "--keyspace".to_string(),
        keyspace.name().to_string(),
        "--payments-sim-decline-rate".to_string(),
        "0.2".to_string(),
    ];
    let mut pipeline = Orderpipe::run("all", &topics, &refs(&args));
    pipeline.wait_ready(Duration::from_secs(60)).await;
    set_stock(&topics, "HOT-1", 100);

    let orders: Vec<OrderSpec> = (0..400)
        .map(|i| vec![("HOT-1".to_string(), 1 + (i % 2) as u32)])
        .collect();
    let acked = run_sale(
        format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        orders,
        20,
        |_| {},
    )
    .await;
    let outcome = collect_outcome(&topics, &acked, SETTLE).await;
    assert_invariants(
        &outcome,
        &acked,
        &BTreeMap::from([("HOT-1".to_string(), 100)]),
    );

    let query: std::net::SocketAddr = format!("127.0.0.1:{query_port}").parse().unwrap();
    let mut conn = orderpipe_testkit::http::Conn::new(query);
    let mut confirmed = (0u64, 0i64, 0i64); // orders, units, revenue
    for (id, lines) in &acked {
        let expected_status = if outcome.confirmed(id) {
            "confirmed"
        } else {
            "rejected"
        };
        // The projector runs behind the processors: long-poll until the view reached the end.
        let view = loop {
            let reply = conn
                .get(&format!("/v1/orders/{id}?wait=5s&status=placed"))
                .await;
            assert_eq!(reply.status, 200, "{id}: {:?}", reply.body);
            let view = reply.json();
            if view["status"] == expected_status {
                break view;
            }
        };
        let reason = outcome
            .rejection(id)
            .map(|r| serde_json::to_value(r).unwrap());
        assert_eq!(
            view["reason"],
            reason.unwrap_or(serde_json::Value::Null),
            "{id}"
        );
        let mut timeline: Vec<String> = view["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_type"].as_str().unwrap().to_string())
            .collect();
        let mut events: Vec<String> = outcome.events[id]
            .iter()
            .map(|e| e.event_type().to_string())
            .collect();
        timeline.sort();
        events.sort();
        // Duplicated events (same order, same type) may collapse into one timeline row when they
        // share an event id; every event type the topic holds is on the timeline.
        events.dedup();
        timeline.dedup();
        assert_eq!(timeline, events, "{id}: timeline vs topic");
        if outcome.confirmed(id) {
            let units: i64 = lines.iter().map(|(_, q)| i64::from(*q)).sum();
            confirmed = (
                confirmed.0 + 1,
                confirmed.1 + units,
                confirmed.2 + units * 1000,
            );
        }
    }

    let stock = conn.get("/v1/stock/HOT-1").await.json();
    let (available, reserved, sold) = (
        stock["available"].as_u64().unwrap(),
        stock["reserved"].as_u64().unwrap(),
        stock["sold"].as_u64().unwrap(),
    );
    assert_eq!(available + reserved + sold, 100, "{stock}");
    assert_eq!(sold as i64, confirmed.1, "{stock}");

    let to = chrono::Utc::now() + chrono::Duration::minutes(1);
    let sales = conn
        .get(&format!(
            "/v1/sales?from={}&to={}",
            started.format("%Y-%m-%dT%H:%M:00Z"),
            to.format("%Y-%m-%dT%H:%M:00Z")
        ))
        .await
        .json();
    let totals = &sales["totals"];
    assert_eq!(
        (
            totals["orders"].as_u64().unwrap(),
            totals["units"].as_i64().unwrap(),
            totals["revenue_minor"].as_i64().unwrap()
        ),
        confirmed,
        "{sales}"
    );
    pipeline.stop();
    keyspace.drop_keyspace().await.unwrap();
}
