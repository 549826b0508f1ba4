//! Flash sales end to end: the `orderpipe` binary (ingest + stock + payments + saga +
//! notifications) against the real broker, orders posted through the ingest API by concurrent
//! clients, outcomes read back from the topics. Each scenario runs in both processing modes.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use orderpipe_gateway_sim as gateway_sim;
use orderpipe_processors::payments::simulated::{SimConfig, SimulatedGateway};
use orderpipe_processors::ProcessingMode;
use orderpipe_schemas::RejectReason;
use orderpipe_testkit::both_modes;
use orderpipe_testkit::kafka::TestTopics;
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(120);

both_modes!(
    worker_threads = 4;
    hot_sku_sale,
    multi_sku_sale_with_declines,
    gateway_outage,
    processors_killed_mid_sale,
    rebalance_mid_sale,
);

/// What every sale runs on: the test's topics, the port its ingest listens on, and the simulated
/// payment gateway served over HTTP from this test process (its own process role), which the
/// processors charge through and whose ledger says what was really charged.
struct Bed {
    topics: TestTopics,
    ingest: SocketAddr,
    gateway: Arc<SimulatedGateway>,
    gateway_addr: SocketAddr,
    _stop_gateway: DropGuard,
}

impl Bed {
    /// Fresh topics, and a gateway that declines `decline_rate` of the charges (seeded by `seed`).
    async fn new(decline_rate: f64, seed: u64) -> Self {
        let mut topics = TestTopics::new().unwrap();
        adopt_pipeline_topics(&mut topics);
        let gateway = Arc::new(SimulatedGateway::new(SimConfig {
            decline_rate,
            seed,
            ..SimConfig::default()
        }));
        let stop = CancellationToken::new();
        let gateway_addr = gateway_sim::spawn(gateway.clone(), stop.clone()).await;
        Self {
            topics,
            ingest: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            gateway,
            gateway_addr: gateway_addr.unwrap(),
            _stop_gateway: stop.drop_guard(),
        }
    }

    /// One process with ingest and every stage, ready.
    async fn all_in_one(&self, mode: ProcessingMode) -> Orderpipe {
        let mut args = vec![
            "--components".to_string(),
            "ingest,stock,payments,saga,notifications".into(),
            "--processing".into(),
            mode.as_str().into(),
            "--ingest-listen".into(),
            self.ingest.to_string(),
        ];
        args.extend(self.gateway_args());
        let mut pipeline = Orderpipe::run("all", &self.topics, &refs(&args));
        pipeline.wait_ready(Duration::from_secs(60)).await;
        pipeline
    }

    /// A process with ingest alone, ready.
    async fn ingest(&self) -> Orderpipe {
        let listen = self.ingest.to_string();
        let args = ["--components", "ingest", "--ingest-listen", &listen];
        let mut ingest = Orderpipe::run("ingest", &self.topics, &args);
        ingest.wait_ready(Duration::from_secs(30)).await;
        ingest
    }

    /// A processors-only process `name` with instance id `instance` and `extra` arguments.
    fn processors(
        &self,
        name: &str,
        mode: ProcessingMode,
        instance: &str,
        extra: &[&str],
    ) -> Orderpipe {
        let mut args: Vec<String> = [
            "--components",
            "stock,payments,saga,notifications",
            "--processing",
            mode.as_str(),
            "--instance-id",
            instance,
        ]
        .map(String::from)
        .into();
        args.extend(self.gateway_args());
        args.extend(extra.iter().map(|a| a.to_string()));
        Orderpipe::run(name, &self.topics, &refs(&args))
    }

    /// The arguments that make the processors pay through this bed's gateway.
    fn gateway_args(&self) -> [String; 4] {
        let url = format!("http://{}", self.gateway_addr);
        ["--payments-gateway", "http", "--payments-gateway-url", &url].map(String::from)
    }

    /// Sets the stock of each of `skus` to `quantity`; the stock the audit starts from.
    fn stock_up(
        &self,
        skus: impl IntoIterator<Item = String>,
        quantity: u32,
    ) -> BTreeMap<String, u64> {
        skus.into_iter()
            .map(|sku| {
                set_stock(&self.topics, &sku, quantity);
                (sku, u64::from(quantity))
            })
            .collect()
    }

    /// Posts `orders` from `clients` concurrent clients; the acknowledged ones.
    async fn sale(&self, orders: Vec<OrderSpec>, clients: usize) -> HashMap<Uuid, OrderSpec> {
        run_sale(self.ingest, orders, clients, |_| {}).await
    }

    /// What the topics say about the `acked` orders once every one of them is terminal.
    async fn outcome(&self, acked: &HashMap<Uuid, OrderSpec>) -> Outcome {
        collect_outcome(&self.topics, acked, SETTLE).await
    }
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Stock 100 of one SKU, 2,000 single-unit orders from 50 concurrent clients: exactly 100 units
/// confirmed, 1,900 orders rejected out_of_stock, the SKU ends at 0 available.
async fn hot_sku_sale(mode: ProcessingMode) {
    let bed = Bed::new(0.0, 1).await;
    let mut pipeline = bed.all_in_one(mode).await;
    let stock = bed.stock_up(["HOT-1".to_string()], 100);

    let orders: Vec<OrderSpec> = (0..2000).map(|_| vec![("HOT-1".to_string(), 1)]).collect();
    let acked = bed.sale(orders, 50).await;
    assert_eq!(acked.len(), 2000, "every order acknowledged");

    let outcome = bed.outcome(&acked).await;
    assert_invariants(&bed.topics, &outcome, &acked, &stock);
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
    assert_gateway_ledger(&bed.gateway, &outcome, &acked);
    pipeline.stop();
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
    let bed = Bed::new(0.2, 7).await;
    let mut pipeline = bed.all_in_one(mode).await;
    let stock = bed.stock_up((0..10).map(|sku| format!("SKU-{sku}")), 40);

    let acked = bed.sale(mixed_orders(800, 10), 50).await;
    let outcome = bed.outcome(&acked).await;
    assert_invariants(&bed.topics, &outcome, &acked, &stock);

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
    assert_gateway_ledger(&bed.gateway, &outcome, &acked);

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
    let second = bed.sale(left, 10).await;
    let mut all = acked.clone();
    all.extend(second.clone());
    let outcome = bed.outcome(&all).await;
    assert_invariants(&bed.topics, &outcome, &all, &stock);
    let resold = second.keys().filter(|id| outcome.confirmed(id)).count();
    assert!(
        resold > 0,
        "{mode}: none of {} released units sold again",
        second.len()
    );
    assert_gateway_ledger(&bed.gateway, &outcome, &all);
    pipeline.stop();
}

/// The payment gateway fails every request for 5 seconds in the middle of a multi-SKU sale: an
/// outage means "later", never "declined". Every invariant holds, no order is rejected for a
/// payment reason the gateway did not give (no payment_timeout), and the ledger nets out.
async fn gateway_outage(mode: ProcessingMode) {
    let bed = Bed::new(0.1, 11).await;
    let mut pipeline = bed.all_in_one(mode).await;
    let stock = bed.stock_up((0..10).map(|sku| format!("SKU-{sku}")), 40);

    let (sale, marks) = spawn_sale(bed.ingest, mixed_orders(800, 10), vec![200]);
    wait_flag(&marks[0]).await;
    let mut admin = orderpipe_testkit::http::Conn::new(bed.gateway_addr);
    let reply = admin
        .post_json("/v1/faults", r#"{"fail_for_ms": 5000, "status": 503}"#)
        .await;
    assert_eq!(reply.status, 204, "{:?}", reply.body);
    let acked = sale.await.unwrap();

    let outcome = bed.outcome(&acked).await;
    assert_invariants(&bed.topics, &outcome, &acked, &stock);
    assert_gateway_ledger(&bed.gateway, &outcome, &acked);
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
}

/// Runs `orders` through a separate ingest process; `at_acked` is called with each count of
/// acknowledged orders (from a client task) and may flip a flag the test waits on.
fn spawn_sale(
    ingest: SocketAddr,
    orders: Vec<OrderSpec>,
    marks: Vec<usize>,
) -> (
    tokio::task::JoinHandle<HashMap<Uuid, OrderSpec>>,
    Vec<Arc<AtomicBool>>,
) {
    let flags: Vec<Arc<AtomicBool>> = marks
        .iter()
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let watched = flags.clone();
    let sale = tokio::spawn(run_sale(ingest, orders, 50, move |acked| {
        for (mark, flag) in marks.iter().zip(&watched) {
            if acked == *mark {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }));
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
async fn processors_killed_mid_sale(mode: ProcessingMode) {
    let bed = Bed::new(0.1, 3).await;
    let mut ingest = bed.ingest().await;
    let mut processors = bed.processors("processors", mode, "p1", &[]);
    processors.wait_ready(Duration::from_secs(60)).await;
    let stock = bed.stock_up(["HOT-1".to_string()], 100);

    let orders: Vec<OrderSpec> = (0..2000).map(|_| vec![("HOT-1".to_string(), 1)]).collect();
    let (sale, marks) = spawn_sale(bed.ingest, orders, vec![600]);
    wait_flag(&marks[0]).await;
    processors.kill();
    let mut processors = bed.processors("processors-restarted", mode, "p1", &[]);
    let acked = sale.await.unwrap();
    processors.wait_ready(Duration::from_secs(60)).await;

    let outcome = bed.outcome(&acked).await;
    assert_invariants(&bed.topics, &outcome, &acked, &stock);
    let confirmed = acked.keys().filter(|id| outcome.confirmed(id)).count();
    assert_eq!(outcome.levels["HOT-1"].sold, confirmed as u64, "{mode}");
    assert_gateway_ledger(&bed.gateway, &outcome, &acked);
    processors.stop();
    ingest.stop();
}

/// A second processors process joins the groups while orders flow (600 acknowledged) and leaves
/// again (1,300 acknowledged): partitions move twice mid-sale, with their state, and every
/// invariant holds. The short session timeout lets the departed static member's partitions return
/// within the test (a static member does not leave its group on shutdown, by design).
async fn rebalance_mid_sale(mode: ProcessingMode) {
    let bed = Bed::new(0.1, 5).await;
    let mut ingest = bed.ingest().await;
    let session = ["--processor-kafka-option", "session.timeout.ms=8000"];
    let mut first = bed.processors("processors-1", mode, "p1", &session);
    first.wait_ready(Duration::from_secs(60)).await;
    let stock = bed.stock_up((0..10).map(|sku| format!("SKU-{sku}")), 60);

    let (sale, marks) = spawn_sale(bed.ingest, mixed_orders(2000, 10), vec![600, 1300]);
    wait_flag(&marks[0]).await;
    let mut second = bed.processors("processors-2", mode, "p2", &session);
    wait_flag(&marks[1]).await;
    second.stop();
    let acked = sale.await.unwrap();

    let outcome = bed.outcome(&acked).await;
    assert_invariants(&bed.topics, &outcome, &acked, &stock);
    assert_gateway_ledger(&bed.gateway, &outcome, &acked);
    first.stop();
    ingest.stop();
}

/// From the gateway's own records, not from the topics: no order charged twice; every
/// confirmed order charged once and not refunded; every rejected order nets to zero (never
/// charged, or refunded).
fn assert_gateway_ledger(
    gateway: &SimulatedGateway,
    outcome: &Outcome,
    acked: &HashMap<Uuid, OrderSpec>,
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

/// After a real flash sale through every component, the query API's views agree with the topics:
/// each order's status, reason and timeline; stock available + reserved + sold equals what was
/// set; sales totals equal the confirmed orders.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn views_agree_with_the_topics_after_a_flash_sale() {
    let bed = Bed::new(0.2, 13).await;
    let keyspace = orderpipe_testkit::cql::TestKeyspace::new().await.unwrap();
    let query: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let started = chrono::Utc::now() - chrono::Duration::minutes(1);
    let mut args = every_component_args(&bed.topics, keyspace.name(), bed.ingest, query);
    args.extend(bed.gateway_args());
    let mut pipeline = Orderpipe::run("all", &bed.topics, &refs(&args));
    pipeline.wait_ready(Duration::from_secs(60)).await;
    let stock = bed.stock_up(["HOT-1".to_string()], 100);

    let orders: Vec<OrderSpec> = (0..400)
        .map(|i| vec![("HOT-1".to_string(), 1 + (i % 2) as u32)])
        .collect();
    let acked = bed.sale(orders, 20).await;
    let outcome = bed.outcome(&acked).await;
    assert_invariants(&bed.topics, &outcome, &acked, &stock);

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
    assert_gateway_ledger(&bed.gateway, &outcome, &acked);
    pipeline.stop();
    keyspace.drop_keyspace().await.unwrap();
}
