//! The broker's transaction cost: how long `commit_transaction` takes for a transaction of N
//! messages (500 by default, the stages' batch size), as a ratio to the same N messages produced
//! and flushed without a transaction, in the same run, on the same broker and topic.
//!
//!     cargo run --release -p orderpipe-benches --bin txn-commit -- --transactions 200
//!
//! Each round sends N `order_placed`-sized payloads (300 bytes) with an idempotent producer,
//! acks=all. `transactional`: begin, send N, send a consumer group's offsets (as a stage does),
//! commit; the offsets call and the commit are timed alone (the sends and their acknowledgements
//! happen before them) and the whole transaction too. `plain`: send N, flush,
//! timed whole. Rounds alternate so that machine noise hits both alike. Prints progress each
//! second, a summary with p50/p99, and writes JSON (`--out`, default `target/txn-commit.json`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hdrhistogram::Histogram;
use orderpipe_testkit::kafka::TestTopics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::json;

/// Kafka transaction commit latency vs plain idempotent produce of the same batch.
#[derive(Debug, Parser)]
struct Args {
    /// Transactions (and plain batches) to time.
    #[arg(long, default_value_t = 200)]
    transactions: usize,
    /// Messages per transaction.
    #[arg(long, default_value_t = 500)]
    messages: usize,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Where the JSON report goes.
    #[arg(long, default_value = "target/txn-commit.json")]
    out: PathBuf,
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn producer(bootstrap: &str, transactional_id: Option<&str>) -> anyhow::Result<FutureProducer> {
    Ok(orderpipe_benches::kafka::copy_producer(bootstrap, transactional_id).create()?)
}

/// Enqueues all N at once (as a stage's batch does), then awaits every acknowledgement.
async fn send_batch(
    producer: &FutureProducer,
    topic: &str,
    payload: &str,
    n: usize,
) -> anyhow::Result<()> {
    let mut deliveries = Vec::with_capacity(n);
    for i in 0..n {
        let key = i.to_string();
        let delivery = producer
            .send_result(FutureRecord::to(topic).key(&key).payload(payload))
            .map_err(|(err, _)| err)?;
        deliveries.push(delivery);
    }
    for delivery in deliveries {
        delivery
            .await
            .context("delivery future dropped")?
            .map_err(|(err, _)| err)?;
    }
    Ok(())
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::env::set_var("KAFKA_BOOTSTRAP", &args.bootstrap);
    let mut topics = TestTopics::new()?;
    let topic = topics.create("txn-commit", 1).await?;
    let payload = "x".repeat(300);
    let txn = producer(&args.bootstrap, Some(&topics.name("txn-commit-producer")))?;
    txn.init_transactions(TIMEOUT)
        .context("init_transactions")?;
    let plain = producer(&args.bootstrap, None)?;
    // Warm both producers (connections, producer ids, the transaction coordinator).
    send_batch(&plain, &topic, &payload, 10).await?;
    txn.begin_transaction()?;
    send_batch(&txn, &topic, &payload, 10).await?;
    txn.commit_transaction(TIMEOUT)?;

    // A group whose offsets each transaction commits, as a stage's does (send_offsets_to_transaction).
    let consumer: BaseConsumer = orderpipe_benches::kafka::base(&args.bootstrap)
        .set("group.id", topics.name("txn-commit-group"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let group = consumer.group_metadata().context("group metadata")?;

    let mut commit = Histogram::<u64>::new(3)?;
    let mut offsets_histogram = Histogram::<u64>::new(3)?;
    let mut whole_txn = Histogram::<u64>::new(3)?;
    let mut whole_plain = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    let mut last_report = Instant::now();
    for round in 0..args.transactions {
        let begun = Instant::now();
        txn.begin_transaction()?;
        send_batch(&txn, &topic, &payload, args.messages).await?;
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(&topic, 0, Offset::Offset(round as i64 + 1))?;
        let sending_offsets = Instant::now();
        txn.send_offsets_to_transaction(&offsets, &group, TIMEOUT)?;
        offsets_histogram.record(sending_offsets.elapsed().as_micros() as u64)?;
        let committing = Instant::now();
        txn.commit_transaction(TIMEOUT)?;
        commit.record(committing.elapsed().as_micros() as u64)?;
        whole_txn.record(begun.elapsed().as_micros() as u64)?;

        let begun = Instant::now();
        send_batch(&plain, &topic, &payload, args.messages).await?;
        plain.flush(TIMEOUT)?;
        whole_plain.record(begun.elapsed().as_micros() as u64)?;

        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "[{:>4.0} s] {}/{} rounds, commit p50 {:.1} ms",
                started.elapsed().as_secs_f64(),
                round + 1,
                args.transactions,
                ms(&commit, 0.5)
            );
            last_report = Instant::now();
        }
    }

    let ratio = ms(&whole_txn, 0.5) / ms(&whole_plain, 0.5);
    println!(
        "{} transactions of {} messages on {}:\n  send_offsets_to_transaction p50 {:.1} ms  p99 {:.1} ms\n  commit_transaction  p50 {:.1} ms  p99 {:.1} ms\n  whole transaction   p50 {:.1} ms  p99 {:.1} ms\n  plain produce+flush p50 {:.1} ms  p99 {:.1} ms\n  transaction / plain (p50): {ratio:.2}",
        args.transactions,
        args.messages,
        args.bootstrap,
        ms(&offsets_histogram, 0.5),
        ms(&offsets_histogram, 0.99),
        ms(&commit, 0.5),
        ms(&commit, 0.99),
        ms(&whole_txn, 0.5),
        ms(&whole_txn, 0.99),
        ms(&whole_plain, 0.5),
        ms(&whole_plain, 0.99),
    );
    let report = json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "bootstrap": args.bootstrap,
        "transactions": args.transactions,
        "messages_per_transaction": args.messages,
        "send_offsets_p50_ms": ms(&offsets_histogram, 0.5),
        "commit_p50_ms": ms(&commit, 0.5),
        "commit_p99_ms": ms(&commit, 0.99),
        "transaction_p50_ms": ms(&whole_txn, 0.5),
        "plain_batch_p50_ms": ms(&whole_plain, 0.5),
        "transaction_vs_plain_p50": ratio,
    });
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    Ok(())
}
