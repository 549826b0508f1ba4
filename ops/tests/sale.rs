//! Flash sales end to end: the `orderpipe` binary (ingest + stock + payments + saga +
//! notifications) against the real broker, orders posted through the ingest API by concurrent
//! clients, outcomes read back from the topics. Each scenario runs in both processing modes.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use orderpipe_gateway_sim as gateway_sim;
use orderpipe_processors::payments::simulated::{SimConfig, SimulatedGateway};
use orderpipe_processors::ProcessingMode;
use orderpipe_schemas::RejectReason;
use orderpipe_testkit::kafka::TestTopics;
use tokio_util::sync::CancellationToken;

const SETTLE: Duration = Duration::from_secs(120);

/// One process with ingest and every stage, paying through the gateway simulator at `gateway_url`.
fn pipeline_args(mode: ProcessingMode, ingest_port: u16, gateway_url: &str) -> Vec<String> {
    vec![
        "--components".into(),
        "ingest,stock,payments,saga,notifications".into(),
        "--processing".into(),
        mode.as_str().into(),
        "--ingest-listen".into(),
        format!("127.0.0.1:{ingest_port}"),
        "--payments-gateway".into(),
        "http".into(),
        "--payments-gateway-url".into(),
        gateway_url.into(),
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
    let (gateway, gateway_url, stop_gateway) = start_gateway(0.0, 1).await;
    let ingest_port = free_port();
    let mut pipeline = Orderpipe::run(
        "all",
        &topics,
        &refs(&pipeline_args(mode, ingest_port, &gateway_url)),
    );
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
    assert_invariants(&topics, &outcome, &acked, &stock);
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
    assert_gateway_ledger(&gateway, &outcome, &acked);
    pipeline.stop();
    stop_gateway.cancel();
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
    let (gateway, gateway_url, stop_gateway) = start_gateway(0.2, 7).await;
    let ingest_port = free_port();
    let args = pipeline_args(mode, ingest_port, &gateway_url);
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
    assert_invariants(&topics, &outcome, &acked, &stock);

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
    assert!(released > 0, "{mode}: declined orders released nothing");
    assert_gateway_ledger(&gateway, &outcome, &acked);

    // Released units are for sale again: a second wave of single-unit orders for what is left
    // available gets some confirmed, and the first wave's invariants still hold with it.
    let left: Vec<OrderSpec> = outcome
        .levels
        .iter()
        .flat_map(|(sku, levels)| (0..levels.available).map(move |_| vec![(sku.clone(), 1)]))
        .collect();
    assert!(
        !left.is_empty(),
        "{mode}: nothing available after releasing {released} units"
    );
    let second = run_sale(
        format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        left,
        10,
        |_| {},
    )
    .await;
    let mut all = acked.clone();
    all.extend(second.clone());
    let outcome = collect_outcome(&topics, &all, SETTLE).await;
    assert_invariants(&topics, &outcome, &all, &stock);
    let resold = second.keys().filter(|id| outcome.confirmed(id)).count();
    assert!(
        resold > 0,
        "{mode}: none of {} released units sold again",
        second.len()
    );
    assert_gateway_ledger(&gateway, &outcome, &all);
    pipeline.stop();
    stop_gateway.cancel();
}

/// The payment gateway fails every request for 5 seconds in the middle of a multi-SKU sale: an
/// outage means "later", never "declined". Every invariant holds, no order is rejected for a
/// payment reason the gateway did not give (no payment_timeout), and the ledger nets out.
async fn gateway_outage_mid_sale(mode: ProcessingMode) {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let (gateway, gateway_url, stop_gateway) = start_gateway(0.1, 11).await;
    let ingest_port = free_port();
    let ingest_listen = format!("127.0.0.1:{ingest_port}");
    let mut pipeline = Orderpipe::run(
        "all",
        &topics,
        &refs(&pipeline_args(mode, ingest_port, &gateway_url)),
    );
    pipeline.wait_ready(Duration::from_secs(60)).await;
    let mut stock = BTreeMap::new();
    for sku in 0..10 {
        let name = format!("SKU-{sku}");
        set_stock(&topics, &name, 40);
        stock.insert(name, 40u64);
    }

    let (sale, marks) = spawn_sale(&ingest_listen, mixed_orders(800, 10), vec![200]);
    wait_flag(&marks[0]).await;
    let mut admin = orderpipe_testkit::http::Conn::new(
        gateway_url.trim_start_matches("http://").parse().unwrap(),
    );
    let reply = admin
        .post_json("/v1/faults", r#"{"fail_for_ms": 5000, "status": 503}"#)
        .await;
    assert_eq!(reply.status, 204, "{:?}", reply.body);
    let acked = sale.await.unwrap();

    let outcome = collect_outcome(&topics, &acked, SETTLE).await;
    assert_invariants(&topics, &outcome, &acked, &stock);
    assert_gateway_ledger(&gateway, &outcome, &acked);
    let timed_out = acked
        .keys()
        .filter(|id| outcome.rejection(id) == Some(RejectReason::PaymentTimeout))
        .count();
    assert_eq!(
        timed_out, 0,
        "{mode}: a 5 s outage rejected {timed_out} orders"
    );
    let confirmed = acked.keys().filter(|id| outcome.confirmed(id)).count();
    assert!(confirmed > 0, "{mode}: nothing confirmed");
    pipeline.stop();
    stop_gateway.cancel();
}

mod gateway_outage {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exactly_once() {
        gateway_outage_mid_sale(ProcessingMode::ExactlyOnce).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn at_least_once() {
        gateway_outage_mid_sale(ProcessingMode::AtLeastOnce).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_sku_sale_with_declines_exactly_once() {
    multi_sku_sale_with_declines(ProcessingMode::ExactlyOnce).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multi_sku_sale_with_declines_at_least_once() {
    multi_sku_sale_with_declines(ProcessingMode::AtLeastOnce).await;
}

/// The simulated payment gateway served over HTTP from this test process (its own process role):
/// the processors charge through it, and its ledger says what was really charged.
async fn start_gateway(
    decline_rate: f64,
    seed: u64,
) -> (Arc<SimulatedGateway>, String, CancellationToken) {
    let gateway = Arc::new(SimulatedGateway::new(SimConfig {
        decline_rate,
        seed,
        ..SimConfig::default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(gateway_sim::serve(listener, gateway.clone(), stop.clone()));
    (gateway, url, stop)
}

/// Arguments of a processors-only process with instance id `instance`.
fn processor_args(
    mode: ProcessingMode,
    instance: &str,
    gateway_url: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--components",
        "stock,payments,saga,notifications",
        "--processing",
        mode.as_str(),
        "--instance-id",
        instance,
        "--payments-gateway",
        "http",
        "--payments-gateway-url",
        gateway_url,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Runs `orders` through a separate ingest process; `at_acked` is called with each count of
/// acknowledged orders (from a client task) and may flip a flag the test waits on.
fn spawn_sale(
    ingest_listen: &str,
    orders: Vec<OrderSpec>,
    marks: Vec<usize>,
) -> (
    tokio::task::JoinHandle<std::collections::HashMap<uuid::Uuid, OrderSpec>>,
    Vec<Arc<AtomicBool>>,
) {
    let flags: Vec<Arc<AtomicBool>> = marks
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let watched = flags.clone();
    let sale = tokio::spawn(run_sale(
        ingest_listen.parse().unwrap(),
        orders,
        50,
        move |acked| {
            for (mark, flag) in marks.iter().zip(&watched) {
                if acked == *mark {
                    flag.store(true, Ordering::SeqCst);
                }
            }
        },
    ));
    (sale, flags)
}

async fn wait_flag(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The processors' process is SIGKILLed mid-sale (600 of 2,000 orders acknowledged) and restarted
/// with the same instance id: every invariant still holds and the gateway's own ledger shows no
/// order charged twice and one kept charge per confirmed order. Static membership gives the
/// partitions back to the restarted process at once; its transactional producers fence the dead
/// ones' open transactions, which the broker aborts.
async fn processors_killed_mid_sale_keep_every_invariant(mode: ProcessingMode) {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let (gateway, gateway_url, stop_gateway) = start_gateway(0.1, 3).await;

    let ingest_listen = format!("127.0.0.1:{}", free_port());
    let mut ingest = Orderpipe::run(
        "ingest",
        &topics,
        &["--components", "ingest", "--ingest-listen", &ingest_listen],
    );
    ingest.wait_ready(Duration::from_secs(30)).await;
    let args = processor_args(mode, "p1", &gateway_url, &[]);
    let mut processors = Orderpipe::run("processors", &topics, &refs(&args));
    processors.wait_ready(Duration::from_secs(60)).await;
    set_stock(&topics, "HOT-1", 100);

    let orders: Vec<OrderSpec> = (0..2000).map(|_| vec![("HOT-1".to_string(), 1)]).collect();
    let (sale, marks) = spawn_sale(&ingest_listen, orders, vec![600]);
    wait_flag(&marks[0]).await;
    processors.kill();
    let mut processors = Orderpipe::run("processors-restarted", &topics, &refs(&args));
    let acked = sale.await.unwrap();
    processors.wait_ready(Duration::from_secs(60)).await;

    let outcome = collect_outcome(&topics, &acked, SETTLE).await;
    let stock = BTreeMap::from([("HOT-1".to_string(), 100)]);
    assert_invariants(&topics, &outcome, &acked, &stock);
    let confirmed = acked.keys().filter(|id| outcome.confirmed(id)).count();
    assert_eq!(outcome.levels["HOT-1"].sold, confirmed as u64, "{mode}");
    assert_gateway_ledger(&gateway, &outcome, &acked);
    processors.stop();
    ingest.stop();
    stop_gateway.cancel();
}

/// A second processors process joins the groups while orders flow (600 acknowledged) and leaves
/// again (1,300 acknowledged): partitions move twice mid-sale, with their state, and every
/// invariant holds. The short session timeout lets the departed static member's partitions return
/// within the test (a static member does not leave its group on shutdown, by design).
async fn second_processors_process_joins_and_leaves_mid_sale(mode: ProcessingMode) {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let (gateway, gateway_url, stop_gateway) = start_gateway(0.1, 5).await;

    let ingest_listen = format!("127.0.0.1:{}", free_port());
    let mut ingest = Orderpipe::run(
        "ingest",
        &topics,
        &["--components", "ingest", "--ingest-listen", &ingest_listen],
    );
    ingest.wait_ready(Duration::from_secs(30)).await;
    let session = ["--processor-kafka-option", "session.timeout.ms=8000"];
    let mut first = Orderpipe::run(
        "processors-1",
        &topics,
        &refs(&processor_args(mode, "p1", &gateway_url, &session)),
    );
    first.wait_ready(Duration::from_secs(60)).await;
    let mut stock = BTreeMap::new();
    for sku in 0..10 {
        let name = format!("SKU-{sku}");
        set_stock(&topics, &name, 60);
        stock.insert(name, 60u64);
    }

    let (sale, marks) = spawn_sale(&ingest_listen, mixed_orders(2000, 10), vec![600, 1300]);
    wait_flag(&marks[0]).await;
    let mut second = Orderpipe::run(
        "processors-2",
        &topics,
        &refs(&processor_args(mode, "p2", &gateway_url, &session)),
    );
    wait_flag(&marks[1]).await;
    second.stop();
    let acked = sale.await.unwrap();

    let outcome = collect_outcome(&topics, &acked, SETTLE).await;
    assert_invariants(&topics, &outcome, &acked, &stock);
    assert_gateway_ledger(&gateway, &outcome, &acked);
    first.stop();
    ingest.stop();
    stop_gateway.cancel();
}

/// From the gateway's own records, not from the topics: no order charged twice; every
/// confirmed order charged once and not refunded; every rejected order nets to zero (never
/// charged, or refunded).
fn assert_gateway_ledger(
    gateway: &SimulatedGateway,
    outcome: &Outcome,
    acked: &std::collections::HashMap<uuid::Uuid, OrderSpec>,
) {
    let totals = gateway.totals();
    assert_eq!(totals.orders_charged_twice, 0, "{totals:?}");
    assert_eq!(totals.charge_requests_without_key, 0, "{totals:?}");
    for (id, lines) in acked {
        let ledger = gateway.ledger(*id);
        let net = gateway.net_charged(*id);
        if outcome.confirmed(id) {
            let total: i64 = lines.iter().map(|(_, q)| i64::from(*q) * 1000).sum();
            assert_eq!(
                (ledger.accepted_charges(), net),
                (1, total),
                "confirmed order {id}: {ledger:?}"
            );
        } else {
            assert_eq!(net, 0, "rejected order {id} keeps a charge: {ledger:?}");
        }
    }
    let confirmed = acked.keys().filter(|id| outcome.confirmed(id)).count() as u64;
    assert_eq!(
        totals.charges, confirmed,
        "charges kept vs confirmed orders: {totals:?}"
    );
}

mod processors_killed_mid_sale {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exactly_once() {
        processors_killed_mid_sale_keep_every_invariant(ProcessingMode::ExactlyOnce).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn at_least_once() {
        processors_killed_mid_sale_keep_every_invariant(ProcessingMode::AtLeastOnce).await;
    }
}

mod rebalance_mid_sale {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exactly_once() {
        second_processors_process_joins_and_leaves_mid_sale(ProcessingMode::ExactlyOnce).await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn at_least_once() {
        second_processors_process_joins_and_leaves_mid_sale(ProcessingMode::AtLeastOnce).await;
    }
}

/// After a real flash sale through every component, the query API's views agree with the topics:
/// each order's status, reason and timeline; stock available + reserved + sold equals what was
/// set; sales totals equal the confirmed orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_agree_with_the_topics_after_a_flash_sale() {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let keyspace = orderpipe_testkit::cql::TestKeyspace::new().await.unwrap();
    let (gateway, gateway_url, stop_gateway) = start_gateway(0.2, 13).await;
    let ingest_port = free_port();
    let query_port = free_port();
    let started = chrono::Utc::now() - chrono::Duration::minutes(1);
    let mut args = every_component_args(
        &topics,
        keyspace.name(),
        format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        format!("127.0.0.1:{query_port}").parse().unwrap(),
    );
    args.extend(
        [
            "--payments-gateway",
            "http",
            "--payments-gateway-url",
            &gateway_url,
        ]
        .map(String::from),
    );
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
        &topics,
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
    assert_gateway_ledger(&gateway, &outcome, &acked);
    pipeline.stop();
    stop_gateway.cancel();
    keyspace.drop_keyspace().await.unwrap();
}
