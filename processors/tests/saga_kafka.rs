//! The saga stage against the real broker, each body once per processing mode: orders driven
//! through reservation, rejection and payment by hand-made stock/payment answers; duplicates
//! ignored; a restarted instance restores terminal orders from the changelog.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::broker::{Env, Running};
use common::{batch, types};
use orderpipe_processors::saga::SagaStage;
use orderpipe_processors::{Config, Effects, ProcessingMode, Stage};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, OrderLine, OrderPlaced, PaymentRef, PaymentSettled, RejectReason,
    StockEnvelope, StockEvent, StockLineRejected, StockLineReserved, StockRejectReason,
};
use orderpipe_testkit::kafka::consume_n;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_secs(2);

use orderpipe_testkit::both_modes;

both_modes!(
    orders_reach_one_terminal_event_through_the_broker,
    a_restarted_saga_remembers_terminal_orders,
);

async fn env() -> Env {
    // One partition: every order's events and the probes that follow them stay in order.
    Env::new(&[("orders", 1), ("stock", 1)], &[SagaStage::NAME], 1).await
}

impl Env {
    fn start(&self, mode: ProcessingMode) -> Running {
        let config = Config {
            stats_interval: Duration::from_secs(1),
            ..Config::with_mode(mode)
        };
        Running::start(
            Box::new(SagaStage::new(self.topics.clone())),
            &config,
            &self.topics,
        )
    }
}

fn placed(order_id: Uuid, skus: &[&str]) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: "cust".into(),
            currency: "EUR".into(),
            lines: skus
                .iter()
                .map(|sku| OrderLine {
                    sku: (*sku).into(),
                    quantity: 1,
                    unit_price_minor: 100,
                })
                .collect(),
            total_minor: 100 * skus.len() as i64,
            payment: PaymentRef {
                method: "card".into(),
                token: "tok".into(),
            },
        }),
        None,
        order_id,
    )
}

fn answer(
    order_id: Uuid,
    line: u32,
    sku: &str,
    rejected: Option<StockRejectReason>,
) -> OrderEnvelope {
    let event = match rejected {
        None => OrderEvent::StockLineReserved(StockLineReserved {
            sku: sku.into(),
            line_index: line,
            quantity: 1,
        }),
        Some(reason) => OrderEvent::StockLineRejected(StockLineRejected {
            sku: sku.into(),
            line_index: line,
            quantity: 1,
            reason,
        }),
    };
    OrderEnvelope::new(order_id, event, None, order_id)
}

fn settled(order_id: Uuid) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::PaymentSettled(PaymentSettled {
            amount_minor: 200,
            currency: "EUR".into(),
            charge_id: format!("ch_{order_id}"),
        }),
        None,
        order_id,
    )
}

/// Reads the saga's orders-topic outputs (skipping the test's own inputs) until `pred` holds.
async fn orders_until(
    reader: &StreamConsumer,
    seen: &mut Vec<OrderEnvelope>,
    pred: impl Fn(&[OrderEnvelope]) -> bool,
) {
    while !pred(seen) {
        let got = consume_n(reader, 1, WAIT).await;
        assert!(!got.is_empty(), "timed out; saw {:?}", types(seen));
        for m in got {
            let e = OrderEnvelope::decode(m.payload().unwrap()).unwrap();
            if e.causation_id.is_some() {
                seen.push(e);
            }
        }
    }
}

/// Reads stock-topic events until `n` arrived.
async fn stock_n(reader: &StreamConsumer, n: usize) -> Vec<StockEnvelope> {
    let got = consume_n(reader, n, WAIT).await;
    assert_eq!(got.len(), n);
    got.iter()
        .map(|m| StockEnvelope::decode(m.payload().unwrap()).unwrap())
        .collect()
}

fn count(events: &[OrderEnvelope], order: Uuid, event_type: &str) -> usize {
    events
        .iter()
        .filter(|e| e.order_id == order && e.event_type() == event_type)
        .count()
}

/// Distinct outputs: with at-least-once a redelivered batch may repeat outputs (same order, same
/// type, same causation); the saga's guarantee is about decisions, so compare by cause.
fn distinct(events: &[OrderEnvelope]) -> Vec<OrderEnvelope> {
    let mut by_cause: HashMap<(Uuid, Option<Uuid>, &str), OrderEnvelope> = HashMap::new();
    for e in events {
        by_cause
            .entry((e.order_id, e.causation_id, e.event_type()))
            .or_insert_with(|| e.clone());
    }
    by_cause.into_values().collect()
}

async fn orders_reach_one_terminal_event_through_the_broker(mode: ProcessingMode) {
    let env = env().await;
    let orders_reader = env.reader(&env.topics.orders);
    let stock_reader = env.reader(&env.topics.stock);
    let stage = env.start(mode);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());

    // Given order A (2 lines), its duplicate from a client retry, and order B (2 lines)
    let placed_a = placed(a, &["S-1", "S-2"]);
    env.send_orders([
        &placed_a,
        &placed(a, &["S-1", "S-2"]),
        &placed(b, &["S-1", "S-3"]),
    ])
    .await;
    // Then one reservation request per line, none for the duplicate
    let requests = stock_n(&stock_reader, 4).await;
    assert!(requests
        .iter()
        .all(|r| matches!(r.event, StockEvent::ReservationRequested(_))));
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.causation_id == Some(placed_a.event_id))
            .count(),
        2
    );

    // When A's lines are reserved and B's first line is reserved, second rejected (late answer
    // order: rejection first)
    env.send_orders([
        &answer(a, 1, "S-2", None),
        &answer(b, 1, "S-3", Some(StockRejectReason::OutOfStock)),
        &answer(a, 0, "S-1", None),
        &answer(a, 0, "S-1", None),
        &answer(b, 0, "S-1", None),
    ])
    .await;
    let mut seen = Vec::new();
    orders_until(&orders_reader, &mut seen, |s| {
        count(s, a, "payment_requested") > 0 && count(s, b, "order_rejected") > 0
    })
    .await;
    // Then B releases exactly its reserved line 0
    let releases = stock_n(&stock_reader, 1).await;
    let StockEvent::ReleaseRequested(release) = &releases[0].event else {
        panic!("{releases:?}")
    };
    assert_eq!(
        (
            release.order_id,
            release.line_index,
            releases[0].sku.as_str()
        ),
        (b, 0, "S-1")
    );

    // When A is paid (twice: a duplicate settlement)
    env.send_orders([&settled(a), &settled(a)]).await;
    orders_until(&orders_reader, &mut seen, |s| {
        count(s, a, "order_confirmed") > 0
    })
    .await;
    let sales = stock_n(&stock_reader, 2).await;
    assert!(sales
        .iter()
        .all(|s| matches!(s.event, StockEvent::SaleRequested(_))));

    // Then, after a quiet period, each order has exactly one terminal decision
    let rest = consume_n(&orders_reader, 100, QUIET).await;
    for m in rest {
        let e = OrderEnvelope::decode(m.payload().unwrap()).unwrap();
        if e.causation_id.is_some() {
            seen.push(e);
        }
    }
    let decisions = distinct(&seen);
    assert_eq!(
        count(&decisions, a, "order_confirmed"),
        1,
        "{:?}",
        types(&seen)
    );
    assert_eq!(count(&decisions, a, "order_rejected"), 0);
    assert_eq!(count(&decisions, b, "order_rejected"), 1);
    assert_eq!(count(&decisions, b, "order_confirmed"), 0);
    let rejected = decisions
        .iter()
        .find(|e| e.order_id == b && e.event_type() == "order_rejected")
        .unwrap();
    assert_eq!(
        rejected.event,
        OrderEvent::OrderRejected(orderpipe_schemas::OrderRejected {
            reason: RejectReason::OutOfStock
        })
    );
    if mode == ProcessingMode::ExactlyOnce {
        assert_eq!(
            decisions.len(),
            seen.len(),
            "exactly-once emitted a duplicate"
        );
    }
    assert!(
        consume_n(&stock_reader, 1, QUIET).await.is_empty() || mode == ProcessingMode::AtLeastOnce
    );
    stage.stop().await.unwrap();
}

async fn a_restarted_saga_remembers_terminal_orders(mode: ProcessingMode) {
    let env = env().await;
    let orders_reader = env.reader(&env.topics.orders);
    let stock_reader = env.reader(&env.topics.stock);
    let c = Uuid::now_v7();
    let placed_c = placed(c, &["R-1"]);

    // Given order C confirmed by a first instance, which then stops
    let stage = env.start(mode);
    env.send_orders([&placed_c, &answer(c, 0, "R-1", None), &settled(c)])
        .await;
    let mut seen = Vec::new();
    orders_until(&orders_reader, &mut seen, |s| {
        count(s, c, "order_confirmed") > 0
    })
    .await;
    stage.stop().await.unwrap();
    let before = stock_n(&stock_reader, 2).await; // reservation + sale

    // When a second instance gets C's order_placed again (the same message, and a client retry
    // with a new event id), a new settlement of C, and then order D
    let stage = env.start(mode);
    let d = Uuid::now_v7();
    env.send_orders([
        &placed_c,
        &placed(c, &["R-1"]),
        &settled(c),
        &placed(d, &["R-2"]),
    ])
    .await;

    // Then D is served, and nothing new happened to C: at most repeats of C's first outputs
    // (same event ids), never a new decision
    let known_stock: Vec<Uuid> = before.iter().map(|e| e.event_id).collect();
    loop {
        let next = stock_n(&stock_reader, 1).await.remove(0);
        if next.sku == "R-2" {
            break;
        }
        assert!(
            known_stock.contains(&next.event_id),
            "new stock output for C: {next:?}"
        );
    }
    let known_orders: Vec<Uuid> = seen.iter().map(|e| e.event_id).collect();
    for m in consume_n(&orders_reader, 100, QUIET).await {
        let e = OrderEnvelope::decode(m.payload().unwrap()).unwrap();
        if e.order_id == c && e.causation_id.is_some() {
            assert!(
                known_orders.contains(&e.event_id),
                "new output for C: {}",
                e.event_type()
            );
        }
    }
    stage.stop().await.unwrap();
}

/// Issue 9 item 3: an at-least-once saga wrote its state, then died before its outputs and
/// offsets; the restarted one reads the inputs again one per batch
/// (`--processor-batch-max-messages 1`). The restored terminal order must not be compacted
/// before the input that confirmed it comes again, or `order_confirmed` would never be emitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_in_batches_of_one_after_a_restore_repeats_the_confirmation() {
    let env = env().await;
    let id = Uuid::now_v7();
    let inputs = [placed(id, &["A"]), answer(id, 0, "A", None), settled(id)];
    // The state the dead instance wrote: the same stage code, fed the same inputs at offsets 0..2
    let payloads: Vec<Vec<u8>> = inputs.iter().map(OrderEnvelope::encode).collect();
    let mut dead = SagaStage::new(env.topics.clone());
    let mut lost = Effects::new();
    dead.process(&batch(&env.topics.orders, 0, 0, &payloads), &mut lost);
    let changelog = env.topics.changelog(SagaStage::NAME);
    for record in lost.changelog() {
        env.producer
            .send(
                FutureRecord::to(&changelog)
                    .partition(record.partition)
                    .key(&record.key)
                    .payload(record.value.as_deref().unwrap()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // The inputs are in the topic; none of the outputs made it, no offset was committed
    env.send_orders(&inputs).await;
    let reader = env.reader(&env.topics.orders);
    let config = Config {
        batch_max_messages: 1,
        ..Config::with_mode(ProcessingMode::AtLeastOnce)
    };
    let stage = Running::start(
        Box::new(SagaStage::new(env.topics.clone())),
        &config,
        &env.topics,
    );
    let mut seen = Vec::new();
    orders_until(&reader, &mut seen, |s| count(s, id, "order_confirmed") >= 1).await;
    let confirmed = seen
        .iter()
        .find(|e| e.event_type() == "order_confirmed")
        .unwrap();
    assert_eq!(confirmed.causation_id, Some(inputs[2].event_id));
    assert_eq!(count(&seen, id, "payment_requested"), 1);
    stage.stop().await.unwrap();
}
