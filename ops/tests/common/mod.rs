//! End-to-end harness: the real `orderpipe` binary as child processes against the test broker,
//! a sale driven through the ingest HTTP API, and the outcome read back from the topics.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, RejectReason, StockEnvelope, StockEvent, StockLevels, Topics,
};
use orderpipe_testkit::http::Conn;
use orderpipe_testkit::kafka::{self, TestTopics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use uuid::Uuid;

/// Partitions of every topic in these tests: enough to spread SKUs and orders, few enough to
/// keep assignment and changelog restore quick.
pub const PARTITIONS: i32 = 4;

pub use orderpipe_testkit::free_port;

/// One `orderpipe` child process; killed (SIGKILL) on drop if still running.
pub struct Orderpipe {
    child: Child,
    pub log: PathBuf,
    pub admin: SocketAddr,
}

impl Orderpipe {
    /// Start `orderpipe run` with `args` plus the test's broker, prefix and a fresh admin port.
    pub fn run(name: &str, topics: &TestTopics, args: &[&str]) -> Self {
        Self::run_on(&kafka::bootstrap(), name, topics, args)
    }

    /// [`Orderpipe::run`] against the broker at `bootstrap`.
    pub fn run_on(bootstrap: &str, name: &str, topics: &TestTopics, args: &[&str]) -> Self {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!(
            "orderpipe-{}{name}-{}.log",
            topics.prefix,
            admin.port()
        ));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
            .arg("run")
            .args(["--kafka-bootstrap", bootstrap])
            .args(["--topic-prefix", &topics.prefix])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--partitions", &PARTITIONS.to_string()])
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("starting orderpipe");
        Self { child, log, admin }
    }

    /// Wait until `/readyz` answers 200 (every stage assigned and restored).
    pub async fn wait_ready(&mut self, within: Duration) {
        self.wait_ready_with(within, &[]).await
    }

    /// [`Orderpipe::wait_ready`] sending `headers` (e.g. the admin key) with every probe.
    pub async fn wait_ready_with(&mut self, within: Duration, headers: &[(&str, &str)]) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("orderpipe exited early ({status}):\n{}", self.log_tail());
            }
            let mut conn = Conn::new(self.admin);
            if let Ok(reply) = conn
                .send(
                    hyper::Method::GET,
                    "/readyz",
                    headers,
                    orderpipe_testkit::http::full(""),
                )
                .await
            {
                if reply.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "orderpipe not ready in {within:?}:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: no shutdown, no commit, open transactions left hanging.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// The last lines of the process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Orderpipe {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every topic `orderpipe run` creates under the test prefix, so TestTopics deletes them after.
/// Arguments of an `orderpipe run` of every component serving ingest and the query API on
/// `ingest` and `query`, its views in `keyspace`, and its projector group under the test's prefix
/// (the default group is shared by every pipeline on the cluster). Tests append their own.
pub fn every_component_args(
    topics: &TestTopics,
    keyspace: &str,
    ingest: SocketAddr,
    query: SocketAddr,
) -> Vec<String> {
    [
        "--ingest-listen",
        &ingest.to_string(),
        "--query-listen",
        &query.to_string(),
        "--scylla-nodes",
        &orderpipe_testkit::cql::nodes().join(","),
        "--keyspace",
        keyspace,
        "--projections-group",
        &format!("{}projections", topics.prefix),
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect()
}

pub fn adopt_pipeline_topics(topics: &mut TestTopics) {
    let names = Topics::with_prefix(topics.prefix.clone());
    for spec in names.plan(PARTITIONS, 1) {
        topics.adopt(&spec.name);
    }
}

/// Lag of both projectors of group prefix `group` (`orderpipe lag --json`, summed).
pub fn projector_lag(topics: &TestTopics, group: &str) -> i64 {
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .args(["lag", "--json", "--projections-group", group])
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .output()
        .expect("running orderpipe lag");
    assert!(
        output.status.success(),
        "lag failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    rows.iter()
        .filter(|r| {
            r["consumer"]
                .as_str()
                .is_some_and(|c| c.starts_with("projections."))
        })
        .map(|r| r["lag"].as_i64().unwrap())
        .sum()
}

/// Polls [`projector_lag`] until it is 0 (views written up to the topics' ends).
pub async fn wait_projectors_caught_up(topics: &TestTopics, group: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let lag = projector_lag(topics, group);
        if lag == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "projector group {group} still {lag} behind after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `orderpipe stock set`.
pub fn set_stock(topics: &TestTopics, sku: &str, quantity: u32) {
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .args(["stock", "set", sku, &quantity.to_string()])
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .output()
        .expect("running orderpipe stock set");
    assert!(
        output.status.success(),
        "stock set failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One order of a sale: (sku, quantity) lines, all at 1000 minor units per unit.
pub type OrderSpec = Vec<(String, u32)>;

fn order_body(customer: &str, lines: &OrderSpec) -> String {
    let lines_json: Vec<serde_json::Value> = lines
        .iter()
        .map(|(sku, quantity)| serde_json::json!({"sku": sku, "quantity": quantity, "unit_price_minor": 1000}))
        .collect();
    let total: i64 = lines.iter().map(|(_, q)| i64::from(*q) * 1000).sum();
    serde_json::json!({
        "customer_id": customer,
        "currency": "EUR",
        "lines": lines_json,
        "total_minor": total,
        "payment": {"method": "card", "token": "tok_test"},
    })
    .to_string()
}

/// Posts the order until ingest accepts it (202), riding out 429 and 503 for up to 30 s (a
/// client retrying with the same Idempotency-Key), and returns its id; any other answer fails
/// the test with `what` in the message.
pub async fn place_until_accepted(
    conn: &mut Conn,
    headers: &[(&str, &str)],
    body: &str,
    what: &str,
) -> Uuid {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = conn.post_order(headers, body).await;
        match reply.status.as_u16() {
            202 => {
                return reply.json()["order_id"]
                    .as_str()
                    .unwrap()
                    .parse::<Uuid>()
                    .unwrap()
            }
            429 | 503 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("{what} got {other}: {:?}", reply.body),
        }
    }
}

/// Produces a record that is not an event (a poison message) to `topic`.
pub async fn send_poison(topic: &str) {
    kafka::producer()
        .unwrap()
        .send(
            rdkafka::producer::FutureRecord::to(topic)
                .key("poison")
                .payload("this is not an event"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Post `orders` through the ingest API from `clients` concurrent clients, each order with its own
/// Idempotency-Key (retried with the same key on 503, as a checkout frontend would). Calls
/// `after_each(acked_so_far)` after every acknowledgement. Returns order id -> lines.
pub async fn run_sale(
    ingest: SocketAddr,
    orders: Vec<OrderSpec>,
    clients: usize,
    after_each: impl Fn(usize) + Send + Sync + 'static,
) -> HashMap<Uuid, OrderSpec> {
    let orders = Arc::new(orders);
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let after_each = Arc::new(after_each);
    // Keys unique to this sale: a test may run several sales against one ingest.
    let sale = Arc::new(orderpipe_testkit::unique_suffix());
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (orders, next, acked, after_each, sale) = (
            orders.clone(),
            next.clone(),
            acked.clone(),
            after_each.clone(),
            sale.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(ingest);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(lines) = orders.get(i) else { break };
                let body = order_body(&format!("customer-{}", i % 997), lines);
                let key = format!("sale-{sale}-{i}");
                let what = format!("client {client}: order {i}");
                let headers = [("idempotency-key", key.as_str())];
                let order_id = place_until_accepted(&mut conn, &headers, &body, &what).await;
                let count = {
                    let mut acked = acked.lock().unwrap();
                    acked.insert(order_id, lines.clone());
                    acked.len()
                };
                after_each(count);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(acked).unwrap().into_inner().unwrap()
}

/// What the topics say about the sale.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every committed event of each order, in topic order.
    pub events: HashMap<Uuid, Vec<OrderEvent>>,
    /// The last `stock_levels` of each SKU.
    pub levels: BTreeMap<String, StockLevels>,
    /// `release_requested` events per SKU, in units.
    pub released_units: BTreeMap<String, u64>,
}

impl Outcome {
    /// The terminal events of an order (`order_confirmed` / `order_rejected` / `order_cancelled`).
    pub fn terminals(&self, order: &Uuid) -> Vec<&OrderEvent> {
        self.events
            .get(order)
            .map(|events| {
                events
                    .iter()
                    .filter(|e| {
                        matches!(
                            e,
                            OrderEvent::OrderConfirmed(_)
                                | OrderEvent::OrderRejected(_)
                                | OrderEvent::OrderCancelled(_)
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The rejection reason of an order, if it was rejected.
    pub fn rejection(&self, order: &Uuid) -> Option<RejectReason> {
        self.terminals(order).into_iter().find_map(|e| match e {
            OrderEvent::OrderRejected(r) => Some(r.reason),
            _ => None,
        })
    }

    /// Whether the order was confirmed.
    pub fn confirmed(&self, order: &Uuid) -> bool {
        self.terminals(order)
            .iter()
            .any(|e| matches!(e, OrderEvent::OrderConfirmed(_)))
    }
}

/// Read the orders and stock topics (read_committed) until every order in `orders` has a terminal
/// event and the stock levels show nothing reserved, or `within` passes.
pub async fn collect_outcome(
    topics: &TestTopics,
    orders: &HashMap<Uuid, OrderSpec>,
    within: Duration,
) -> Outcome {
    let names = Topics::with_prefix(topics.prefix.clone());
    let group = topics.name(&format!("check-{}", orderpipe_testkit::unique_suffix()));
    let consumer: StreamConsumer = kafka::consumer(&group, true).unwrap();
    consumer.subscribe(&[&names.orders, &names.stock]).unwrap();
    let mut outcome = Outcome::default();
    let deadline = Instant::now() + within;
    let mut settled_since: Option<Instant> = None;
    loop {
        let done = orders.keys().all(|id| !outcome.terminals(id).is_empty())
            && outcome.levels.values().all(|l| l.reserved == 0);
        // Once everything looks terminal, keep reading a little longer: a duplicate terminal
        // event would show up right behind the first.
        match (done, settled_since) {
            (true, None) => settled_since = Some(Instant::now()),
            (true, Some(since)) if since.elapsed() > Duration::from_secs(2) => return outcome,
            (false, _) => settled_since = None,
            _ => {}
        }
        if Instant::now() > deadline {
            let missing: Vec<&Uuid> = orders
                .keys()
                .filter(|id| outcome.terminals(id).is_empty())
                .collect();
            // What the topic says of a few of them tells which stage stopped short.
            let seen: Vec<String> = missing
                .iter()
                .take(5)
                .map(|id| {
                    let kinds: Vec<&str> = outcome
                        .events
                        .get(*id)
                        .map(|events| events.iter().map(OrderEvent::event_type).collect())
                        .unwrap_or_default();
                    format!("{id}: {kinds:?}")
                })
                .collect();
            panic!(
                "sale not settled within {within:?}: {} orders without a terminal event, levels {:?}; \
                 events of some: {seen:#?}",
                missing.len(),
                outcome.levels
            );
        }
        let message = match tokio::time::timeout(Duration::from_millis(200), consumer.recv()).await
        {
            Err(_) => continue,
            Ok(message) => message.expect("consumer error"),
        };
        let payload = message.payload().unwrap_or_default();
        if message.topic() == names.orders {
            let event = OrderEnvelope::decode(payload).expect("orders topic holds valid events");
            outcome
                .events
                .entry(event.order_id)
                .or_default()
                .push(event.event);
        } else {
            match StockEnvelope::decode(payload).expect("stock topic holds valid events") {
                StockEnvelope {
                    sku,
                    event: StockEvent::StockLevels(levels),
                    ..
                } => {
                    outcome.levels.insert(sku, levels);
                }
                StockEnvelope {
                    sku,
                    event: StockEvent::ReleaseRequested(r),
                    ..
                } => {
                    *outcome.released_units.entry(sku).or_default() += u64::from(r.quantity);
                }
                _ => {}
            }
        }
    }
}

/// Invariants every sale keeps, audited by `orderpipe verify`'s own implementation from the
/// topics (one terminal event per order, nothing held or charged for orders that did not go
/// through, no double charge, one notification per outcome, no oversell), plus what only the test
/// knows: every acknowledged order is on the topic, and per SKU the stock stage's numbers add up
/// to the units this test stocked.
pub fn assert_invariants(
    topics: &TestTopics,
    outcome: &Outcome,
    orders: &HashMap<Uuid, OrderSpec>,
    stock: &BTreeMap<String, u64>,
) {
    let names = Topics::with_prefix(topics.prefix.clone());
    let history = orderpipe_ops::verify::read_history(
        &kafka::bootstrap(),
        &[],
        &names,
        Duration::from_secs(60),
    )
    .expect("reading the topics for the audit");
    let window = orderpipe_ops::verify::Window {
        settle: Duration::ZERO,
        ..Default::default()
    };
    let report = orderpipe_ops::verify::audit(&history, &window);
    assert!(report.ok(), "{}", orderpipe_ops::verify::render(&report));
    for id in orders.keys() {
        assert!(
            history.orders.contains_key(id),
            "acknowledged order {id} is not on the orders topic"
        );
    }
    let mut confirmed_units: BTreeMap<String, u64> = BTreeMap::new();
    for (id, lines) in orders {
        if outcome.confirmed(id) {
            for (sku, quantity) in lines {
                *confirmed_units.entry(sku.clone()).or_default() += u64::from(*quantity);
            }
        }
    }
    for (sku, stocked) in stock {
        let levels = outcome
            .levels
            .get(sku)
            .unwrap_or_else(|| panic!("no stock_levels for {sku}"));
        let sold = confirmed_units.get(sku).copied().unwrap_or(0);
        assert_eq!(
            levels.sold, sold,
            "{sku}: stock stage's sold vs confirmed units"
        );
        assert!(sold <= *stocked, "{sku}: oversold {sold} > {stocked}");
        assert_eq!(
            levels.reserved, 0,
            "{sku}: units still reserved after every order ended"
        );
        assert_eq!(
            levels.available + levels.sold,
            *stocked,
            "{sku}: units lost or invented: {levels:?}"
        );
    }
}
