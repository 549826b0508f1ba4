//! Projector throughput while rebuilding from offset 0 (ignored by default: it takes a while).
//!
//! ```text
//! cargo test --release -p orderpipe-projections --test throughput -- --ignored --nocapture
//! ```
//! `ORDERPIPE_BENCH_EVENTS` (default 20000) sets the number of events; `ORDERPIPE_BENCH_BATCH`
//! and `ORDERPIPE_BENCH_CONCURRENCY` the projector's batch size and CQL batches in flight.

mod common;

use std::time::{Duration, Instant};

use common::{line, order_event, placed, Produce};
use futures::future::try_join_all;
use orderpipe_projections::{connect, dump_views, rebuild};
use orderpipe_schemas::{
    OrderConfirmed, OrderEvent, OrderRejected, PaymentRef, PaymentRequested, PaymentSettled,
    RejectReason, StockLineReserved, StockReserved, Topics,
};
use orderpipe_testkit::cql::{self, TestKeyspace};
use orderpipe_testkit::kafka::{self, TestTopics};
use rdkafka::producer::FutureRecord;
use uuid::Uuid;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// About seven events per order (six on `orders`, one snapshot on `stock`), orders spread
/// over an hour, one in ten rejected.
fn history(events: usize) -> Vec<Produce> {
    let orders = events.div_ceil(7);
    let mut out = Vec::with_capacity(orders * 7);
    for i in 0..orders {
        let id = Uuid::now_v7();
        let t = i64::try_from(i * 3600 / orders).unwrap_or(0);
        let sku = format!("SKU-{}", i % 50);
        out.push(order_event(
            id,
            t,
            placed(&format!("c{}", i % 500), vec![line(&sku, 1, 999)]),
        ));
        out.push(order_event(
            id,
            t,
            OrderEvent::StockLineReserved(StockLineReserved {
                sku: sku.clone(),
                line_index: 0,
                quantity: 1,
            }),
        ));
        out.push(common::levels(&sku, t, 1000, 1, 0));
        out.push(order_event(
            id,
            t + 1,
            OrderEvent::StockReserved(StockReserved {}),
        ));
        out.push(order_event(
            id,
            t + 1,
            OrderEvent::PaymentRequested(PaymentRequested {
                amount_minor: 999,
                currency: "EUR".into(),
                payment: PaymentRef {
                    method: "card".into(),
                    token: "tok".into(),
                },
            }),
        ));
        if i % 10 == 9 {
            out.push(order_event(
                id,
                t + 2,
                OrderEvent::OrderRejected(OrderRejected {
                    reason: RejectReason::PaymentTimeout,
                }),
            ));
        } else {
            out.push(order_event(
                id,
                t + 2,
                OrderEvent::PaymentSettled(PaymentSettled {
                    amount_minor: 999,
                    currency: "EUR".into(),
                    charge_id: format!("ch{i}"),
                }),
            ));
        }
        out.push(order_event(
            id,
            t + 3,
            OrderEvent::OrderConfirmed(OrderConfirmed {}),
        ));
    }
    out.truncate(events);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput measurement; run with --ignored --nocapture (release build advised)"]
async fn rebuild_throughput() -> anyhow::Result<()> {
    orderpipe_runtime::telemetry::init("orderpipe_projections=info,warn");
    let events = env_usize("ORDERPIPE_BENCH_EVENTS", 20_000);
    let mut test_topics = TestTopics::new()?;
    test_topics.create("orders", 6).await?;
    test_topics.create("stock", 3).await?;
    let topics = Topics::with_prefix(test_topics.prefix.clone());

    // Given N events on the topics (produced concurrently, ordered per key by the idempotent
    // producer)
    let messages = history(events);
    let producer = kafka::producer()?;
    let started = Instant::now();
    for chunk in messages.chunks(2000) {
        try_join_all(chunk.iter().map(|m| {
            let topic = if m.stock {
                &topics.stock
            } else {
                &topics.orders
            };
            producer.send(
                FutureRecord::to(topic).key(&m.key).payload(&m.value),
                Duration::from_secs(30),
            )
        }))
        .await
        .map_err(|(e, _)| e)?;
    }
    eprintln!(
        "produced {} events in {:?}",
        messages.len(),
        started.elapsed()
    );

    // When every view is rebuilt from offset 0 into a fresh keyspace
    let keyspace = TestKeyspace::new().await?;
    let mut config = orderpipe_projections::Config::default();
    config.cql.keyspace = "orderpipe_unused_live".into();
    config.projector.batch_max = u32::try_from(env_usize("ORDERPIPE_BENCH_BATCH", 2000))?;
    config.projector.write_concurrency =
        u32::try_from(env_usize("ORDERPIPE_BENCH_CONCURRENCY", 64))?;
    let report = rebuild(
        &config,
        &kafka::bootstrap(),
        &cql::nodes(),
        &topics,
        keyspace.name(),
        |p| {
            eprintln!(
                "rebuild: {} events, {} left, {:.0} events/s",
                p.events, p.remaining, p.events_per_second
            )
        },
    )
    .await?;

    // Then it reports its rate
    eprintln!(
        "REBUILD {} events (batch {}, {} CQL batches in flight): {:.0} events/s over {:.2?} of reading and writing ({:.2?} with connection and migrations)",
        report.events,
        config.projector.batch_max,
        config.projector.write_concurrency,
        report.events_per_second,
        Duration::from_secs_f64(report.events as f64 / report.events_per_second),
        report.elapsed,
    );
    assert_eq!(report.events, messages.len() as u64);
    let session = connect(&cql::nodes(), &config.cql).await?;
    let dump = dump_views(&session, keyspace.name()).await?;
    let orders_rows = dump
        .iter()
        .find(|(t, _)| t == "orders")
        .map_or(0, |(_, r)| r.len());
    assert_eq!(orders_rows, messages.iter().filter(|m| !m.stock).count());

    // When the same events are applied again onto those views (not fresh: the projector reads
    // each order's state before planning placements and outcomes, as a live replay does)
    let again = rebuild(
        &config,
        &kafka::bootstrap(),
        &cql::nodes(),
        &topics,
        keyspace.name(),
        |_| {},
    )
    .await?;
    eprintln!(
        "REPLAY onto existing views {} events: {:.0} events/s",
        again.events, again.events_per_second
    );
    // Then nothing changed, at scale too
    assert!(
        dump == dump_views(&session, keyspace.name()).await?,
        "replay changed rows"
    );
    keyspace.drop_keyspace().await?;
    Ok(())
}
