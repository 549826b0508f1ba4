//! Projector rebuild throughput as a ratio to raw CQL writes of the same view rows, with the
//! same driver and the same concurrency, in the same run (`projection_vs_raw_cql`).
//!
//!     cargo run --release -p orderpipe-benches --bin projection-bench -- --events 20000
//!
//! 1. N events (about seven per order: placed, line reserved, stock levels, stock reserved,
//!    payment requested, settled or rejected, confirmed) go to fresh topics.
//! 2. `projector`: `orderpipe_projections::rebuild` reads them from offset 0 into a fresh keyspace
//!    (the projector's own batch size and `--write-concurrency` CQL requests in flight). Its rate is
//!    the view rows it leaves, per second of reading and writing (connection and migrations
//!    excluded, as the rebuild report counts them).
//! 3. `raw_cql`: those same rows (read back as typed values, held in memory before the clock
//!    starts) are written into a second fresh keyspace with the same schema by prepared INSERTs,
//!    batched as the projector batches (one unlogged batch per partition, at most 64 statements,
//!    single rows as plain statements), `--write-concurrency` in flight, same scylla driver: the
//!    ceiling for the projector's writes, without its reading, decoding and planning.
//!
//! Prints progress and a summary; writes JSON (`--out`). Topics and keyspaces are deleted.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, TimeZone, Utc};
use clap::Parser;
use futures::stream::{self, StreamExt, TryStreamExt};
use orderpipe_projections::{connect, migrate, rebuild, VIEW_TABLES};
use orderpipe_schemas::{
    OrderConfirmed, OrderEnvelope, OrderEvent, OrderLine, OrderPlaced, OrderRejected, PaymentRef,
    PaymentRequested, PaymentSettled, RejectReason, StockEnvelope, StockEvent, StockLevels,
    StockLineReserved, StockReserved, Topics,
};
use orderpipe_testkit::cql::TestKeyspace;
use orderpipe_testkit::kafka::TestTopics;
use rdkafka::producer::{FutureProducer, FutureRecord};
use scylla::statement::batch::{Batch, BatchType};
use scylla::value::{CqlValue, Row};
use serde_json::json;
use uuid::Uuid;

/// The projector's cap on statements per unlogged batch (`projections/src/store/writer.rs`).
const MAX_BATCH_STATEMENTS: usize = 64;

/// Projector rebuild rows/s vs raw CQL writes of the same rows.
#[derive(Debug, Parser)]
struct Args {
    /// Events on the topics.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Projector batch size (events per batch).
    #[arg(long, default_value_t = 2000)]
    batch: u32,
    /// CQL requests in flight, projector and raw writer alike.
    #[arg(long, default_value_t = 64)]
    write_concurrency: u32,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// CQL contact points.
    #[arg(long, env = "SCYLLA_NODES", default_value = "127.0.0.1:9042")]
    nodes: String,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/projection.json")]
    out: PathBuf,
}

struct Message {
    stock: bool,
    key: String,
    value: Vec<u8>,
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap() + chrono::Duration::seconds(secs)
}

fn order_event(id: Uuid, secs: i64, event: OrderEvent) -> Message {
    let mut envelope = OrderEnvelope::new(id, event, None, id);
    envelope.occurred_at = at(secs);
    Message {
        stock: false,
        key: envelope.key(),
        value: envelope.encode(),
    }
}

fn levels(sku: &str, secs: i64, sold: u64) -> Message {
    let mut envelope = StockEnvelope::new(
        sku,
        StockEvent::StockLevels(StockLevels {
            available: 1000,
            reserved: 1,
            sold,
            per_customer_limit: Some(5),
        }),
        None,
        Uuid::now_v7(),
    );
    envelope.occurred_at = at(secs);
    Message {
        stock: true,
        key: envelope.key(),
        value: envelope.encode(),
    }
}

/// About seven events per order, orders spread over an hour, one in ten rejected.
fn history(events: usize) -> Vec<Message> {
    let orders = events.div_ceil(7);
    let mut out = Vec::with_capacity(orders * 7);
    let payment = PaymentRef {
        method: "card".into(),
        token: "tok_bench".into(),
    };
    for i in 0..orders {
        let id = Uuid::now_v7();
        let t = i64::try_from(i * 3600 / orders.max(1)).unwrap_or(0);
        let sku = format!("SKU-{}", i % 50);
        out.push(order_event(
            id,
            t,
            OrderEvent::OrderPlaced(OrderPlaced {
                customer_id: format!("c{}", i % 500),
                currency: "EUR".into(),
                lines: vec![OrderLine {
                    sku: sku.clone(),
                    quantity: 1,
                    unit_price_minor: 999,
                }],
                total_minor: 999,
                payment: payment.clone(),
            }),
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
        out.push(levels(&sku, t, i as u64));
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
                payment: payment.clone(),
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
            out.push(order_event(
                id,
                t + 3,
                OrderEvent::OrderConfirmed(OrderConfirmed {}),
            ));
        }
    }
    out.truncate(events);
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.events > 0, "--events must be positive");
    // The testkit creates and deletes topics and keyspaces through these.
    std::env::set_var("KAFKA_BOOTSTRAP", &args.bootstrap);
    std::env::set_var("SCYLLA_NODES", &args.nodes);
    orderpipe_runtime::telemetry::init("warn");
    let nodes = orderpipe_projections::parse_nodes(&args.nodes);

    let mut test_topics = TestTopics::new()?;
    test_topics.prefix = format!("bench-proj-{}", test_topics.prefix);
    test_topics.create("orders", 6).await?;
    test_topics.create("stock", 3).await?;
    let topics = Topics::with_prefix(test_topics.prefix.clone());
    let messages = history(args.events);
    let producer: FutureProducer = orderpipe_benches::kafka::loader(&args.bootstrap).create()?;
    let started = Instant::now();
    for chunk in messages.chunks(2000) {
        futures::future::try_join_all(chunk.iter().map(|m| {
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
        "projection-bench: produced {} events in {:.2} s",
        messages.len(),
        started.elapsed().as_secs_f64()
    );

    // Projector: rebuild from offset 0 into a fresh keyspace.
    let projected = TestKeyspace::new().await?;
    let mut config = orderpipe_projections::Config::default();
    config.cql.keyspace = "orderpipe_unused_live".into();
    config.projector.batch_max = args.batch;
    config.projector.write_concurrency = args.write_concurrency;
    let report = rebuild(
        &config,
        &args.bootstrap,
        &nodes,
        &topics,
        projected.name(),
        |p| {
            eprintln!(
                "  projector: {} events, {} left, {:.0} events/s",
                p.events, p.remaining, p.events_per_second
            )
        },
    )
    .await?;
    anyhow::ensure!(
        report.events == messages.len() as u64,
        "rebuild applied {} events of {}",
        report.events,
        messages.len()
    );
    let projector_seconds = report.events as f64 / report.events_per_second;

    // The rows it left, per table, as typed values (read before the raw clock starts), grouped
    // as the projector groups its writes: one unlogged batch per partition, at most
    // MAX_BATCH_STATEMENTS statements each, single-row partitions as plain statements.
    let session = connect(&nodes, &config.cql).await?;
    let mut chunks: Vec<(String, Vec<Vec<Option<CqlValue>>>)> = Vec::new();
    let mut per_table = serde_json::Map::new();
    let mut columns_of = std::collections::HashMap::new();
    let mut row_count = 0u64;
    for table in VIEW_TABLES {
        let described = session
            .query_unpaged(
                "SELECT column_name, kind, position FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?",
                (projected.name(), *table),
            )
            .await?
            .into_rows_result()?;
        let mut columns: Vec<(String, String, i32)> = described
            .rows::<(String, String, i32)>()?
            .collect::<Result<_, _>>()?;
        columns.sort_by_key(|c| (c.1 != "partition_key", c.2));
        let names: Vec<String> = columns.iter().map(|c| c.0.clone()).collect();
        let key_len = columns.iter().filter(|c| c.1 == "partition_key").count();
        let statement = scylla::statement::Statement::new(format!(
            "SELECT {} FROM {}.{table}",
            names.join(", "),
            projected.name()
        ))
        .with_page_size(5000);
        let mut pager = session
            .query_iter(statement, &[])
            .await
            .with_context(|| format!("reading {table}"))?
            .rows_stream::<Row>()?;
        let mut partitions: std::collections::HashMap<String, Vec<Vec<Option<CqlValue>>>> =
            std::collections::HashMap::new();
        let mut n = 0u64;
        while let Some(row) = pager.try_next().await? {
            let key = format!("{:?}", &row.columns[..key_len]);
            partitions.entry(key).or_default().push(row.columns);
            n += 1;
        }
        for mut rows in partitions.into_values() {
            while rows.len() > MAX_BATCH_STATEMENTS {
                let rest = rows.split_off(MAX_BATCH_STATEMENTS);
                chunks.push((table.to_string(), std::mem::replace(&mut rows, rest)));
            }
            chunks.push((table.to_string(), rows));
        }
        per_table.insert(table.to_string(), json!(n));
        row_count += n;
        columns_of.insert(table.to_string(), names);
    }
    anyhow::ensure!(row_count > 0, "the rebuild left no rows");

    // Raw CQL: the same rows into a second keyspace with the same schema, same batching and
    // concurrency, typed values bound to prepared INSERTs.
    let raw = TestKeyspace::with_session(session.clone()).await?;
    migrate(&session, raw.name(), &config.cql.replication).await?;
    let mut prepared = std::collections::HashMap::new();
    for table in VIEW_TABLES {
        let names = &columns_of[*table];
        let marks = vec!["?"; names.len()].join(", ");
        let statement = session
            .prepare(format!(
                "INSERT INTO {}.{table} ({}) VALUES ({marks})",
                raw.name(),
                names.join(", ")
            ))
            .await
            .with_context(|| format!("preparing insert into {table}"))?;
        prepared.insert(table.to_string(), statement);
    }
    let written = Arc::new(AtomicU64::new(0));
    let raw_started = Instant::now();
    let ticker = {
        let written = written.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                eprintln!(
                    "  raw cql: {} of {row_count} rows",
                    written.load(Ordering::Relaxed)
                );
            }
        })
    };
    stream::iter(chunks.iter())
        .map(|(table, rows)| {
            let (session, statement, written) = (&session, &prepared[table], &written);
            async move {
                if rows.len() == 1 {
                    session.execute_unpaged(statement, &rows[0]).await?;
                } else {
                    let mut batch = Batch::new(BatchType::Unlogged);
                    for _ in rows {
                        batch.append_statement(statement.clone());
                    }
                    session.batch(&batch, rows).await?;
                }
                written.fetch_add(rows.len() as u64, Ordering::Relaxed);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(args.write_concurrency as usize)
        .try_collect::<()>()
        .await?;
    let raw_seconds = raw_started.elapsed().as_secs_f64();
    ticker.abort();

    let projector_rows_per_second = row_count as f64 / projector_seconds;
    let raw_rows_per_second = row_count as f64 / raw_seconds;
    let ratio = projector_rows_per_second / raw_rows_per_second;
    println!(
        "projection: {} events -> {row_count} view rows; projector {:.0} rows/s ({:.0} events/s, {:.2} s), raw CQL {:.0} rows/s ({:.2} s): ratio {ratio:.3}",
        report.events, projector_rows_per_second, report.events_per_second, projector_seconds,
        raw_rows_per_second, raw_seconds
    );
    let out = json!({
        "benchmark": "projection-rebuild-vs-raw-cql",
        "events": report.events,
        "view_rows": row_count,
        "rows_per_table": per_table,
        "batch": args.batch,
        "write_concurrency": args.write_concurrency,
        "projector": {
            "kind": "orderpipe_projections::rebuild from offset 0 into a fresh keyspace",
            "events_per_second": report.events_per_second,
            "rows_per_second": projector_rows_per_second,
            "seconds": projector_seconds,
            "seconds_with_connection_and_migrations": report.elapsed.as_secs_f64(),
        },
        "raw_cql": {
            "kind": "prepared typed INSERTs, one unlogged batch per partition (<= 64), write_concurrency in flight, same driver, fresh keyspace",
            "rows_per_second": raw_rows_per_second,
            "seconds": raw_seconds,
        },
        "projection_vs_raw_cql": ratio,
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&out)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("JSON report: {}", args.out.display());
    projected.drop_keyspace().await?;
    raw.drop_keyspace().await?;
    drop(test_topics);
    Ok(())
}
