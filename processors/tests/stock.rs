//! The stock stage against the real broker, each test body run once per processing mode:
//! a flash sale (100 units, 2,000 requests), per-customer limits, poison events, restart with
//! restore, a failed batch that must leave no trace, and (exactly-once only) a zombie instance
//! fenced by its replacement.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::broker::{Env, Running};
use orderpipe_processors::stock::StockStage;
use orderpipe_processors::{Config, Effects, Error, Input, ProcessingMode, Stage};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, ReleaseRequested, ReservationRequested, SaleRequested,
    StockAdjustment, StockEnvelope, StockEvent, StockLevels, StockRejectReason,
};
use orderpipe_testkit::kafka::consume_n;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::producer::FutureRecord;
use uuid::Uuid;

const PARTITIONS: i32 = 2;
const WAIT: Duration = Duration::from_secs(60);

use orderpipe_testkit::both_modes;

both_modes!(
    late_duplicate_of_a_forgotten_line_is_not_decided_afresh,
    flash_sale_never_oversells_and_releases_restore_stock,
    limits_count_earlier_orders_and_unknown_skus_are_rejected,
    poison_events_are_dead_lettered_and_the_partition_moves_on,
    restart_restores_state_from_the_changelog,
    failed_batch_leaves_no_trace,
);

mod second_instance_takes_over_a_partition_with_its_state {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exactly_once() {
        super::second_instance_takes_over_a_partition_with_its_state(ProcessingMode::ExactlyOnce)
            .await;
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_least_once() {
        super::second_instance_takes_over_a_partition_with_its_state(ProcessingMode::AtLeastOnce)
            .await;
    }
}

/// One test's topics: orders and stock (created), stock.changelog and stock.dlq (ensure_topics).
async fn env() -> Env {
    // Install the process-wide recorder before any stage records a metric.
    orderpipe_runtime::metrics::handle();
    Env::new(
        &[("orders", PARTITIONS), ("stock", PARTITIONS)],
        &["stock"],
        PARTITIONS,
    )
    .await
}

fn config(mode: ProcessingMode, instance: &str) -> Config {
    Config {
        instance_id: instance.to_owned(),
        stats_interval: Duration::from_secs(1),
        ..Config::with_mode(mode)
    }
}

impl Env {
    /// A stock stage instance `instance`, optionally counting restores and processed inputs.
    fn start_instance(
        &self,
        mode: ProcessingMode,
        instance: &str,
        counters: Option<(Arc<AtomicUsize>, Arc<AtomicUsize>)>,
    ) -> Running {
        let stage = match counters {
            Some((restored, processed)) => hooked(
                self,
                Counting {
                    restored,
                    processed,
                },
            ),
            None => Box::new(StockStage::new(self.topics.clone())),
        };
        let mut config = config(mode, instance);
        // A static member does not leave its group when it stops: its partitions move on only
        // once its session times out, so keep that short for tests where an instance stops.
        config
            .kafka_options
            .push(("session.timeout.ms".to_owned(), "10000".to_owned()));
        Running::start(stage, &config, &self.topics)
    }

    fn start(&self, mode: ProcessingMode) -> Running {
        Running::start(
            Box::new(StockStage::new(self.topics.clone())),
            &config(mode, "0"),
            &self.topics,
        )
    }

    /// Produce stock events (keyed by SKU) and wait for every acknowledgement; returns the
    /// partition each landed on.
    async fn send(&self, events: Vec<StockEnvelope>) -> Vec<i32> {
        let mut pending = Vec::with_capacity(events.len());
        for event in &events {
            let payload = event.encode();
            loop {
                let record = FutureRecord::to(&self.topics.stock)
                    .key(&event.sku)
                    .payload(&payload);
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    // Queue full: let deliveries drain.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
        let mut partitions = Vec::with_capacity(pending.len());
        for delivery in pending {
            partitions.push(delivery.await.unwrap().unwrap().partition);
        }
        partitions
    }

    async fn send_raw(&self, key: &str, payload: &[u8]) {
        self.producer
            .send(
                FutureRecord::to(&self.topics.stock)
                    .key(key)
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
}

fn reserve(sku: &str, order: Uuid, line: u32, customer: &str, quantity: u32) -> StockEnvelope {
    StockEnvelope::new(
        sku,
        StockEvent::ReservationRequested(ReservationRequested {
            order_id: order,
            customer_id: customer.to_owned(),
            line_index: line,
            line_count: 1,
            quantity,
        }),
        None,
        order,
    )
}

/// A request for one unit of `sku` from each of `customers` customers `c0`, `c1`, ..., each
/// its own order.
fn one_unit_each(sku: &str, customers: usize) -> Vec<StockEnvelope> {
    (0..customers)
        .map(|i| reserve(sku, Uuid::now_v7(), 0, &format!("c{i}"), 1))
        .collect()
}

fn release(sku: &str, order: Uuid, customer: &str, quantity: u32) -> StockEnvelope {
    StockEnvelope::new(
        sku,
        StockEvent::ReleaseRequested(ReleaseRequested {
            order_id: order,
            customer_id: customer.to_owned(),
            line_index: 0,
            quantity,
        }),
        None,
        order,
    )
}

fn sell(sku: &str, order: Uuid, customer: &str, quantity: u32) -> StockEnvelope {
    StockEnvelope::new(
        sku,
        StockEvent::SaleRequested(SaleRequested {
            order_id: order,
            customer_id: customer.to_owned(),
            line_index: 0,
            quantity,
        }),
        None,
        order,
    )
}

/// A stock answer read from the orders topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    event_id: Uuid,
    order: Uuid,
    line: u32,
    sku: String,
    rejected: Option<StockRejectReason>,
}

fn answers(messages: &[OwnedMessage]) -> Vec<Answer> {
    messages
        .iter()
        .map(|m| {
            let e = OrderEnvelope::decode(m.payload().unwrap()).unwrap();
            let (line, sku, rejected) = match e.event {
                OrderEvent::StockLineReserved(r) => (r.line_index, r.sku, None),
                OrderEvent::StockLineRejected(r) => (r.line_index, r.sku, Some(r.reason)),
                other => panic!("unexpected event on orders: {other:?}"),
            };
            Answer {
                event_id: e.event_id,
                order: e.order_id,
                line,
                sku,
                rejected,
            }
        })
        .collect()
}

/// Reads `n` answers; with at-least-once, redelivered answers (same event id) may come in between,
/// so read until `n` distinct lines answered. Checks one decision per line, whatever the mode,
/// and no duplicate at all with exactly-once.
async fn read_answers(
    reader: &StreamConsumer,
    n: usize,
    mode: ProcessingMode,
) -> HashMap<(Uuid, u32), Answer> {
    let mut by_line: HashMap<(Uuid, u32), Answer> = HashMap::new();
    let mut duplicates = 0;
    while by_line.len() < n {
        let got = consume_n(reader, n - by_line.len(), WAIT).await;
        assert!(
            !got.is_empty(),
            "timed out with {} of {n} answers",
            by_line.len()
        );
        for answer in answers(&got) {
            match by_line.get(&(answer.order, answer.line)) {
                Some(first) => {
                    assert_eq!(first, &answer, "a line got two different answers");
                    duplicates += 1;
                }
                None => {
                    by_line.insert((answer.order, answer.line), answer);
                }
            }
        }
    }
    if mode == ProcessingMode::ExactlyOnce {
        assert_eq!(duplicates, 0, "exactly-once delivered an answer twice");
    }
    by_line
}

fn count(answers: &HashMap<(Uuid, u32), Answer>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in answers.values() {
        let k = match a.rejected {
            None => "reserved".to_owned(),
            Some(r) => format!("{r:?}"),
        };
        *counts.entry(k).or_insert(0) += 1;
    }
    counts
}

/// Reads stock_levels snapshots of `sku` until one equals `expected`; returns all seen.
async fn levels_until(
    reader: &StreamConsumer,
    sku: &str,
    expected: &StockLevels,
) -> Vec<StockLevels> {
    let mut seen = Vec::new();
    loop {
        let got = consume_n(reader, 1, WAIT).await;
        assert!(
            !got.is_empty(),
            "no stock_levels {expected:?} for {sku}; last seen {:?}",
            seen.last()
        );
        let e = StockEnvelope::decode(got[0].payload().unwrap()).unwrap();
        if let (true, StockEvent::StockLevels(levels)) = (e.sku == sku, e.event) {
            let done = &levels == expected;
            seen.push(levels);
            if done {
                return seen;
            }
        }
    }
}

fn levels(available: u64, reserved: u64, sold: u64, limit: Option<u32>) -> StockLevels {
    StockLevels {
        available,
        reserved,
        sold,
        per_customer_limit: limit,
    }
}

async fn flash_sale_never_oversells_and_releases_restore_stock(mode: ProcessingMode) {
    // Given 100 units of one SKU and a running stock stage
    let env = env().await;
    let sku = "HOT-1";
    env.set_stock(sku, 100, None).await;
    let stage = env.start(mode);
    let orders_reader = env.reader(&env.topics.orders);
    let stock_reader = env.reader(&env.topics.stock);

    // When 2,000 customers ask for one unit each
    let orders: Vec<Uuid> = (0..2000).map(|_| Uuid::now_v7()).collect();
    let customer = |i: usize| format!("cust-{i}");
    env.send(
        orders
            .iter()
            .enumerate()
            .map(|(i, o)| reserve(sku, *o, 0, &customer(i), 1))
            .collect(),
    )
    .await;

    // Then exactly 100 are reserved and 1,900 are out of stock
    let answers = read_answers(&orders_reader, 2000, mode).await;
    let counts = count(&answers);
    assert_eq!(counts.get("reserved"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("OutOfStock"), Some(&1900), "{counts:?}");

    // When 70 reserved lines are sold and 30 released (twice: releases are idempotent)
    let reserved: Vec<(usize, Uuid)> = orders
        .iter()
        .enumerate()
        .filter(|(_, o)| answers[&(**o, 0)].rejected.is_none())
        .map(|(i, o)| (i, *o))
        .collect();
    let mut follow_up = Vec::new();
    for (n, (i, o)) in reserved.iter().enumerate() {
        if n < 70 {
            follow_up.push(sell(sku, *o, &customer(*i), 1));
        } else {
            follow_up.push(release(sku, *o, &customer(*i), 1));
            follow_up.push(release(sku, *o, &customer(*i), 1));
        }
    }
    env.send(follow_up).await;
    // Then availability is restored: 30 available, 70 sold
    let seen = levels_until(&stock_reader, sku, &levels(30, 0, 70, None)).await;

    // And 50 late buyers get the 30 released units, 20 are out of stock
    let late: Vec<Uuid> = (0..50).map(|_| Uuid::now_v7()).collect();
    env.send(
        late.iter()
            .enumerate()
            .map(|(i, o)| reserve(sku, *o, 0, &customer(5000 + i), 1))
            .collect(),
    )
    .await;
    let late_answers = read_answers(&orders_reader, 50, mode).await;
    let counts = count(&late_answers);
    assert_eq!(counts.get("reserved"), Some(&30), "{counts:?}");
    assert_eq!(counts.get("OutOfStock"), Some(&20), "{counts:?}");
    let more = levels_until(&stock_reader, sku, &levels(0, 30, 70, None)).await;

    // And every snapshot conserves the 100 units
    for l in seen.iter().chain(&more) {
        assert_eq!(l.available + l.reserved + l.sold, 100, "{l:?}");
    }
    stage.stop().await.unwrap();

    // And the runner's metrics are exported (process-wide: other tests add to them)
    let text = orderpipe_runtime::metrics::render();
    for series in [
        r#"orderpipe_processor_events_in_total{stage="stock"}"#,
        r#"orderpipe_processor_events_out_total{stage="stock"}"#,
        r#"orderpipe_processor_transactions_total{stage="stock",outcome="commit"}"#,
        r#"orderpipe_processor_batch_seconds_count{stage="stock"}"#,
        r#"orderpipe_processor_consumer_lag{stage="stock"}"#,
        r#"orderpipe_stock_decisions_total{outcome="out_of_stock"}"#,
    ] {
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(series))
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
            .trim()
            .parse()
            .unwrap();
        if !series.contains("lag") {
            assert!(value > 0.0, "{series} = {value}");
        }
    }
}

async fn limits_count_earlier_orders_and_unknown_skus_are_rejected(mode: ProcessingMode) {
    // Given 10 units with a limit of 2 per customer
    let env = env().await;
    env.set_stock("LTD", 10, Some(2)).await;
    let stage = env.start(mode);
    let reader = env.reader(&env.topics.orders);

    // When a bot orders 1, then 1 (sold), then 1 more, then 3 at once; a human orders 2;
    // and someone orders a SKU that was never stocked
    let o: Vec<Uuid> = (0..6).map(|_| Uuid::now_v7()).collect();
    env.send(vec![
        reserve("LTD", o[0], 0, "bot", 1),
        reserve("LTD", o[1], 0, "bot", 1),
        sell("LTD", o[1], "bot", 1),
        reserve("LTD", o[2], 0, "bot", 1),
        reserve("LTD", o[3], 0, "bot", 3),
        reserve("LTD", o[4], 0, "human", 2),
        reserve("NEVER-STOCKED", o[5], 0, "human", 1),
    ])
    .await;

    // Then the bot's third and fourth orders exceed the limit, across its earlier orders
    let answers = read_answers(&reader, 6, mode).await;
    let reason = |i: usize| answers[&(o[i], 0)].rejected;
    assert_eq!(reason(0), None);
    assert_eq!(reason(1), None);
    assert_eq!(reason(2), Some(StockRejectReason::LimitExceeded));
    assert_eq!(reason(3), Some(StockRejectReason::LimitExceeded));
    assert_eq!(reason(4), None);
    assert_eq!(reason(5), Some(StockRejectReason::UnknownSku));
    stage.stop().await.unwrap();
}

async fn poison_events_are_dead_lettered_and_the_partition_moves_on(mode: ProcessingMode) {
    let env = env().await;
    let stage = env.start(mode);
    let reader = env.reader(&env.topics.orders);
    let dlq_reader = env.reader(&env.topics.dlq("stock"));

    // Given an unparseable message and an unknown event type on the SKU's partition
    let garbage = b"\x00not json at all".to_vec();
    let unknown = serde_json::to_vec(&serde_json::json!({
        "event_id": Uuid::now_v7(), "schema_version": 1, "sku": "P-1",
        "occurred_at": "2025-01-01T00:00:00Z", "causation_id": null,
        "correlation_id": Uuid::now_v7(), "event_type": "stock_teleported"
    }))
    .unwrap();
    env.send_raw("P-1", &garbage).await;
    env.send_raw("P-1", &unknown).await;
    // When valid events follow on the same key
    env.set_stock("P-1", 1, None).await;
    let order = Uuid::now_v7();
    env.send(vec![reserve("P-1", order, 0, "c", 1)]).await;

    // Then both poison messages are in stock.dlq with their reason and original bytes
    let dead = consume_n(&dlq_reader, 2, WAIT).await;
    assert_eq!(dead.len(), 2);
    let header = |m: &OwnedMessage, name: &str| -> String {
        let headers = m.headers().expect("dead letters carry headers");
        let h = headers
            .iter()
            .find(|h| h.key == name)
            .unwrap_or_else(|| panic!("header {name}"));
        String::from_utf8(h.value.unwrap().to_vec()).unwrap()
    };
    let by_reason: HashMap<String, &OwnedMessage> = dead
        .iter()
        .map(|m| (header(m, "orderpipe.dlq.reason"), m))
        .collect();
    assert_eq!(by_reason["malformed"].payload().unwrap(), &garbage[..]);
    assert_eq!(
        by_reason["unknown_event_type"].payload().unwrap(),
        &unknown[..]
    );
    let m = by_reason["malformed"];
    assert_eq!(header(m, "orderpipe.dlq.source.topic"), env.topics.stock);
    assert_eq!(header(m, "orderpipe.dlq.stage"), "stock");
    assert!(header(m, "orderpipe.dlq.source.offset")
        .parse::<i64>()
        .is_ok());
    assert_eq!(m.key(), Some(&b"P-1"[..]));
    // And the later reservation on that partition was answered
    let answers = read_answers(&reader, 1, mode).await;
    assert_eq!(answers[&(order, 0)].rejected, None);
    stage.stop().await.unwrap();
}

async fn restart_restores_state_from_the_changelog(mode: ProcessingMode) {
    // Given 5 units, 3 reserved by a first instance that then shuts down gracefully
    let env = env().await;
    env.set_stock("R-1", 5, Some(3)).await;
    let reader = env.reader(&env.topics.orders);
    let stock_reader = env.reader(&env.topics.stock);
    let first = one_unit_each("R-1", 3);
    let stage = env.start(mode);
    env.send(first.clone()).await;
    let before = read_answers(&reader, 3, mode).await;
    stage.stop().await.unwrap();

    // When a new instance starts and gets the same 3 requests again plus 3 new ones
    // (one of them from c0, who already holds a unit: limit 3 is not reached)
    let stage = env.start(mode);
    let new = one_unit_each("R-1", 3);
    let mut again = first.clone();
    again.extend(new.clone());
    env.send(again).await;

    // Then the repeated requests get their original answers (same event ids), nothing is
    // reserved twice: 2 of the new ones fit, the last is out of stock
    let mut after: HashMap<(Uuid, u32), Answer> = HashMap::new();
    while after.len() < 6 {
        let got = consume_n(&reader, 1, WAIT).await;
        assert!(!got.is_empty(), "timed out after {} answers", after.len());
        for a in answers(&got) {
            after.insert((a.order, a.line), a);
        }
    }
    for (key, answer) in &before {
        assert_eq!(&after[key], answer, "a repeated request got a new answer");
    }
    let new_answers: Vec<Option<StockRejectReason>> = new
        .iter()
        .map(|e| {
            let StockEvent::ReservationRequested(r) = &e.event else {
                unreachable!()
            };
            after[&(r.order_id, 0)].rejected
        })
        .collect();
    assert_eq!(
        new_answers,
        vec![None, None, Some(StockRejectReason::OutOfStock)]
    );
    // And the levels continue from the restored state
    levels_until(&stock_reader, "R-1", &levels(0, 5, 0, Some(3))).await;
    stage.stop().await.unwrap();
}

/// What a test adds around the stock stage; [`Hooked`] passes all else on to the stage.
trait Hooks: Send + 'static {
    /// Before the stage restores a changelog record.
    fn restoring(&self) {}
    /// Before the stage forgets a revoked partition.
    fn revoking(&self) {}
    /// Handles `batch` with `inner`, the stock stage (by default: as the stage does).
    fn process(&mut self, inner: &mut StockStage, batch: &[Input<'_>], out: &mut Effects) {
        inner.process(batch, out)
    }
}

/// The stock stage with a test's [`Hooks`] around it. Its `tick` (line pruning) never runs.
struct Hooked<H> {
    inner: StockStage,
    hooks: H,
}

impl<H: Hooks> Stage for Hooked<H> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn input_topic(&self) -> String {
        self.inner.input_topic()
    }
    fn restore(&mut self, partition: i32, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        self.hooks.restoring();
        self.inner.restore(partition, key, value)
    }
    fn revoke(&mut self, partition: i32) {
        self.hooks.revoking();
        self.inner.revoke(partition)
    }
    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        self.hooks.process(&mut self.inner, batch, out)
    }
}

/// A stock stage of `env`'s topics with `hooks` around it.
fn hooked(env: &Env, hooks: impl Hooks) -> Box<dyn Stage> {
    Box::new(Hooked {
        inner: StockStage::new(env.topics.clone()),
        hooks,
    })
}

/// Wraps the stock stage: on the first batch with input, it inserts a made-up 10-unit
/// reservation into the batch and writes an oversized changelog record (the broker-bound write
/// fails, as a broker error or a crash would make it) *after* the first half of the batch's real
/// changelog records: at-least-once, those land (a partial write), exactly-once the transaction
/// aborts. The phantom's own record comes after the failing one, so it never lands. The runner
/// must drop the batch's in-memory state (the phantom units), restore from the changelog (with
/// the partial write, if any) and redo the batch, repeating what was already decided.
struct FailOnce {
    sku: String,
    failed: Arc<AtomicBool>,
    revokes: Arc<AtomicUsize>,
    /// Real changelog records placed before the failing one.
    before_failure: Arc<AtomicUsize>,
}

impl Hooks for FailOnce {
    fn revoking(&self) {
        self.revokes.fetch_add(1, Ordering::Relaxed);
    }
    fn process(&mut self, inner: &mut StockStage, batch: &[Input<'_>], out: &mut Effects) {
        if batch.is_empty() || self.failed.swap(true, Ordering::Relaxed) {
            return inner.process(batch, out);
        }
        let phantom_order = Uuid::now_v7();
        let phantom = reserve(&self.sku, phantom_order, 0, "phantom", 10).encode();
        // Right after the stock is set (if in this batch), before any real request.
        let at = batch
            .iter()
            .position(|i| {
                StockEnvelope::decode(i.bytes())
                    .is_ok_and(|e| matches!(e.event, StockEvent::StockAdjusted(_)))
            })
            .map_or(0, |p| p + 1);
        let mut with_phantom = batch.to_vec();
        with_phantom.insert(
            at,
            Input {
                payload: Some(&phantom),
                ..batch[0]
            },
        );
        let mut effects = Effects::new();
        inner.process(&with_phantom, &mut effects);
        let held = inner.sku(&self.sku).map_or(0, |s| s.held_by("phantom"));
        assert_eq!(held, 10, "the phantom holds its units in memory");
        assert!(effects.dead_letters().is_empty());
        let phantom_key = phantom_order.to_string();
        let (phantom_records, real): (Vec<_>, Vec<_>) = effects
            .changelog()
            .iter()
            .cloned()
            .partition(|r| r.key.contains(&phantom_key));
        let half = real.len().div_ceil(2);
        self.before_failure.store(half, Ordering::Relaxed);
        fn put(out: &mut Effects, r: orderpipe_processors::ChangelogRecord) {
            match r.value {
                Some(v) => out.put(r.partition, r.key, v),
                None => out.delete(r.partition, r.key),
            }
        }
        let mut real = real.into_iter();
        for r in real.by_ref().take(half) {
            put(out, r);
        }
        out.put(batch[0].partition, "oversized", vec![0u8; 2_000_000]);
        for r in real.chain(phantom_records) {
            put(out, r);
        }
        for o in effects.outputs() {
            out.emit(&o.topic, o.key.clone(), o.payload.clone());
        }
    }
}

async fn failed_batch_leaves_no_trace(mode: ProcessingMode) {
    // Given 100 units and a stage whose first batch fails after deciding in memory
    let env = env().await;
    let sku = "F-1";
    env.set_stock(sku, 100, None).await;
    let failed = Arc::new(AtomicBool::new(false));
    let revokes = Arc::new(AtomicUsize::new(0));
    let before_failure = Arc::new(AtomicUsize::new(0));
    let stage = Running::start(
        hooked(
            &env,
            FailOnce {
                sku: sku.to_owned(),
                failed: failed.clone(),
                revokes: revokes.clone(),
                before_failure: before_failure.clone(),
            },
        ),
        &config(mode, "0"),
        &env.topics,
    );
    let reader = env.reader(&env.topics.orders);

    // When 300 one-unit requests arrive
    env.send(one_unit_each(sku, 300)).await;

    // Then the failure happened, state was dropped and restored, and the phantom's 10 units are
    // not held:
    // exactly 100 real requests are reserved, each line answered once
    let answers = read_answers(&reader, 300, mode).await;
    assert!(failed.load(Ordering::Relaxed));
    assert!(
        before_failure.load(Ordering::Relaxed) >= 1,
        "the failing write came after real changelog records (a partial write at-least-once)"
    );
    let counts = count(&answers);
    assert_eq!(counts.get("reserved"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("OutOfStock"), Some(&200), "{counts:?}");
    assert!(
        revokes.load(Ordering::Relaxed) >= 1,
        "state was not dropped"
    );
    stage.stop().await.unwrap();
}

/// Wraps the stock stage: blocks inside its first non-empty batch until released, so that a
/// second instance can take over meanwhile.
struct Gate {
    entered: Mutex<Option<mpsc::Sender<()>>>,
    release: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Hooks for Gate {
    fn process(&mut self, inner: &mut StockStage, batch: &[Input<'_>], out: &mut Effects) {
        inner.process(batch, out);
        if batch.is_empty() {
            return;
        }
        if let Some(entered) = self.entered.lock().unwrap().take() {
            let _ = entered.send(());
            let release = self.release.lock().unwrap().take().unwrap();
            let _ = release.recv();
        }
    }
}

/// Exactly-once only: fencing is what transactions add. A zombie instance (stalled mid-batch while
/// a replacement with the same instance id took over) is fenced: it commits nothing and stops,
/// and its batch is redone by the replacement, without reserving anything twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_instance_is_fenced_and_its_work_redone() {
    let mode = ProcessingMode::ExactlyOnce;
    let env = env().await;
    let sku = "Z-1";
    env.set_stock(sku, 100, None).await;
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    let zombie = Running::start(
        hooked(
            &env,
            Gate {
                entered: Mutex::new(Some(entered_tx)),
                release: Mutex::new(Some(release_rx)),
            },
        ),
        &config(mode, "0"),
        &env.topics,
    );
    let reader = env.reader(&env.topics.orders);
    env.send(one_unit_each(sku, 300)).await;
    // Given the first instance stalled inside a batch it decided in memory
    tokio::task::spawn_blocking(move || entered_rx.recv_timeout(WAIT).unwrap())
        .await
        .unwrap();

    // When a replacement with the same instance id starts (and fences the first)
    let replacement = env.start(mode);
    let answers = read_answers(&reader, 300, mode).await;
    release_tx.send(()).unwrap();

    // Then the zombie stops, fenced, having committed nothing
    let zombie_result = zombie.wait().await;
    assert!(
        matches!(zombie_result, Err(Error::Fenced { .. })),
        "{zombie_result:?}"
    );
    // And the replacement answered every line once: 100 reserved, 200 out of stock
    let counts = count(&answers);
    assert_eq!(counts.get("reserved"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("OutOfStock"), Some(&200), "{counts:?}");
    let late = consume_n(&reader, 1, Duration::from_secs(2)).await;
    assert!(
        late.is_empty(),
        "the zombie's batch became visible: {late:?}"
    );
    let ids: HashSet<Uuid> = answers.values().map(|a| a.event_id).collect();
    assert_eq!(ids.len(), 300);
    replacement.stop().await.unwrap();
}

/// Counts what a stage instance restores and processes.
struct Counting {
    restored: Arc<AtomicUsize>,
    processed: Arc<AtomicUsize>,
}

impl Hooks for Counting {
    fn restoring(&self) {
        self.restored.fetch_add(1, Ordering::Relaxed);
    }
    fn process(&mut self, inner: &mut StockStage, batch: &[Input<'_>], out: &mut Effects) {
        self.processed.fetch_add(batch.len(), Ordering::Relaxed);
        inner.process(batch, out)
    }
}

/// A second instance joining takes over one partition (cooperative-sticky) with its state.
async fn second_instance_takes_over_a_partition_with_its_state(mode: ProcessingMode) {
    // Given 30 units of each of 4 SKUs, two on each partition
    let env = env().await;
    let mut skus: Vec<(String, i32)> = Vec::new();
    for i in 0..64 {
        let sku = format!("RB-{i}");
        let adjust = StockEnvelope::new(
            sku.as_str(),
            StockEvent::StockAdjusted(orderpipe_schemas::StockAdjusted {
                adjustment: StockAdjustment::Set { quantity: 30 },
                per_customer_limit: None,
            }),
            None,
            Uuid::now_v7(),
        );
        // SKUs beyond two per partition are stocked too, but not ordered.
        let partition = env.send(vec![adjust]).await[0];
        if skus.iter().filter(|(_, p)| *p == partition).count() < 2 {
            skus.push((sku, partition));
        }
        if skus.len() == 4 {
            break;
        }
    }
    assert_eq!(skus.len(), 4, "could not place two SKUs on each partition");
    let wave = |n: usize| -> Vec<StockEnvelope> {
        skus.iter()
            .flat_map(|(sku, _)| one_unit_each(sku, n))
            .collect()
    };
    let reader = env.reader(&env.topics.orders);

    // And one instance that owns both partitions and answered a first wave
    let first = env.start_instance(mode, "a", None);
    env.send(wave(20)).await;
    let mut answers = read_answers(&reader, 80, mode).await;

    // When a second instance joins (cooperative-sticky hands it one partition, with its state)
    let restored = Arc::new(AtomicUsize::new(0));
    let processed = Arc::new(AtomicUsize::new(0));
    let second = env.start_instance(mode, "b", Some((restored.clone(), processed.clone())));
    let deadline = std::time::Instant::now() + WAIT;
    while restored.load(Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second instance never got a partition"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    env.send(wave(20)).await;

    // Then both instances decided, and each SKU still sold exactly its 30 units
    answers.extend(read_answers(&reader, 80, mode).await);
    assert!(processed.load(Ordering::Relaxed) > 0);
    assert_eq!(answers.len(), 160);
    let mut reserved: HashMap<&str, usize> = HashMap::new();
    for a in answers.values().filter(|a| a.rejected.is_none()) {
        *reserved.entry(a.sku.as_str()).or_insert(0) += 1;
    }
    for (sku, _) in &skus {
        assert_eq!(reserved.get(sku.as_str()), Some(&30), "{sku}: {reserved:?}");
    }
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

/// Item 9: a reservation request for a line the stage already forgot (pruned after the line
/// retention) is never decided afresh: a late duplicate is dead-lettered as `stale_request`
/// instead of getting a second, different answer.
async fn late_duplicate_of_a_forgotten_line_is_not_decided_afresh(mode: ProcessingMode) {
    // Given a stage that forgets done lines after 2 s, and a request rejected for lack of stock
    let env = env().await;
    let sku = "L-1";
    env.set_stock(sku, 0, None).await;
    let stage = Running::start(
        Box::new(StockStage::new(env.topics.clone()).with_line_retention(Duration::from_secs(2))),
        &config(mode, "0"),
        &env.topics,
    );
    let reader = env.reader(&env.topics.orders);
    let changelog_reader = env.reader(&env.topics.changelog("stock"));
    let dlq_reader = env.reader(&env.topics.dlq("stock"));
    let order = Uuid::now_v7();
    let request = reserve(sku, order, 0, "c", 1);
    env.send(vec![request.clone()]).await;
    let first = read_answers(&reader, 1, mode).await;
    assert_eq!(
        first[&(order, 0)].rejected,
        Some(StockRejectReason::OutOfStock)
    );
    // and the line was forgotten (its changelog record tombstoned)
    let line_key = format!("l|{sku}|{order}|0");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "line never pruned");
        let got = consume_n(&changelog_reader, 1, Duration::from_secs(2)).await;
        if got
            .iter()
            .any(|m| m.key() == Some(line_key.as_bytes()) && m.payload().is_none())
        {
            break;
        }
    }

    // When stock comes back and the same request arrives again (a late duplicate), then a new one
    env.set_stock(sku, 5, None).await;
    env.send(vec![request.clone()]).await;
    let fresh = Uuid::now_v7();
    env.send(vec![reserve(sku, fresh, 0, "d", 1)]).await;

    // Then the new one is reserved, the duplicate gets no second answer and is dead-lettered
    let mut later: Vec<Answer> = Vec::new();
    while !later.iter().any(|a| a.order == fresh) {
        let got = consume_n(&reader, 1, WAIT).await;
        assert!(!got.is_empty(), "timed out waiting for the fresh answer");
        later.extend(answers(&got));
    }
    for a in &later {
        if a.order == order {
            assert_eq!(
                a,
                &first[&(order, 0)],
                "the forgotten line was decided afresh"
            );
        }
    }
    assert_eq!(
        later.iter().find(|a| a.order == fresh).unwrap().rejected,
        None
    );
    let dead = consume_n(&dlq_reader, 1, WAIT).await;
    assert_eq!(dead.len(), 1, "the late duplicate is dead-lettered");
    let reason = dead[0]
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "orderpipe.dlq.reason")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(reason.as_deref(), Some("stale_request"));
    stage.stop().await.unwrap();
}

/// Item 6: a changelog record the stage cannot restore (an undecodable value, a key that is not
/// UTF-8) stops the stage with `Error::Restore` and a metric; it is never skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_changelog_record_stops_the_stage_loudly() {
    let counters = br#"{"kind":"counters","sku":"U-1","stocked":true,"capacity":5,"per_customer_limit":null,"recent_adjustments":[]}"#.to_vec();
    let cases: [(&str, Vec<u8>, Vec<u8>); 2] = [
        (
            "undecodable value",
            format!("l|U-1|{}|0", Uuid::now_v7()).into_bytes(),
            b"{\"kind\":\"line\",".to_vec(),
        ),
        ("non-UTF-8 key", vec![0xff, 0xfe, b'x'], counters.clone()),
    ];
    for (what, bad_key, bad_value) in cases {
        // Given a stock changelog whose partition 1 holds a good record, then a bad one
        let env = env().await;
        let changelog = env.topics.changelog("stock");
        for (key, value) in [(b"s|U-1".to_vec(), counters.clone()), (bad_key, bad_value)] {
            env.producer
                .send(
                    FutureRecord::to(&changelog)
                        .partition(1)
                        .key(&key)
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
        // When a stage is assigned that partition
        let stage = env.start(ProcessingMode::ExactlyOnce);
        // Then it stops, saying which record it cannot restore
        let ended = tokio::time::timeout(WAIT, stage.wait())
            .await
            .unwrap_or_else(|_| panic!("{what}: the stage kept running on incomplete state"));
        match ended {
            Err(Error::Restore {
                stage: "stock",
                partition: 1,
                offset: 1,
                ..
            }) => {}
            other => panic!("{what}: expected a restore error, got {other:?}"),
        }
        // And the failure is counted
        let text = orderpipe_runtime::metrics::render();
        assert!(
            text.lines().any(
                |l| l.starts_with("orderpipe_changelog_restore_failures_total{")
                    && l.contains(r#"stage="stock""#)
                    && l.contains(r#"partition="1""#)
            ),
            "{what}: metric missing from:\n{text}"
        );
    }
}
