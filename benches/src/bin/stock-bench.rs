//! Stock and saga stage throughput, against a live broker, as ratios to copy baselines measured
//! in the same run (`stock_vs_txn_copy`, `saga_vs_txn_copy`, `eos_vs_alo` of `benches/run`).
//!
//!     cargo run --release -p orderpipe-benches --bin stock-bench -- --orders 20000
//!
//! Each run gets fresh topics (deleted afterwards). For each measurement, N messages are loaded
//! into a one-partition input topic first, a read_committed reader of the output topic joins its
//! group, then the processor starts. The clock runs from the first input the processor handles
//! to the moment the reader has all N outputs: group join, offset lookup and restore are excluded
//! for baseline and stage alike. "First input handled" is the copier's first consumed message for
//! the baseline, and the earliest `occurred_at` of the stage's answers (the decision time of its
//! first batch, which includes gathering that batch: a bias of at most one linger against the
//! stage). Wall clocks of one machine. Measurements:
//! - `baseline`: a plain consume -> produce copy loop (BaseConsumer + idempotent BaseProducer, no
//!   transactions, no decoding, offsets committed once at the end): what the broker and client
//!   allow for a consume-transform-produce stage on this machine.
//! - `txn-copy`: the same copy in Kafka transactions of `--batch-max-messages` messages (or
//!   `--batch-linger`), offsets committed in each with `send_offsets_to_transaction`, deliveries
//!   drained in 1 ms steps before each commit (as the runner does): the floor of an exactly-once
//!   stage with the stages' batch size. Same input as the stock stage.
//! - `exactly-once` / `at-least-once`: the stock stage on the runner, N `reservation_requested`
//!   for one SKU stocked with `--stock` units; its answers are checked (exactly `--stock` reserved).
//! - `saga-txn-copy`: the transactional copy of N one-line `order_placed` events (the saga's input).
//! - `saga`: the saga stage (exactly-once) on those N `order_placed`; the clock stops when all N
//!   `reservation_requested` it emits are readable.
//!
//! Rounds (`--repeat`, default 3) interleave the measurements; the median of each is
//! reported. `--no-saga` leaves the saga out. Prints progress and a human summary to the terminal and writes JSON (`--out`,
//! default `target/stock-bench.json`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use orderpipe_benches::kafka as bench_kafka;
use orderpipe_processors::saga::SagaStage;
use orderpipe_processors::stock::{set_stock, StockStage};
use orderpipe_processors::{ensure_topics, spawn_stage, Config, ProcessingMode};
use orderpipe_schemas::{
    NewOrder, OrderEnvelope, OrderEvent, ReservationRequested, StockAdjustment, StockEnvelope, StockEvent,
    Topics,
};
use orderpipe_testkit::kafka::TestTopics;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::Message;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Stock stage decisions/s for one hot SKU, both processing modes, vs a raw copy baseline.
#[derive(Debug, Parser)]
struct Args {
    /// Reservation requests (and baseline messages) per measurement.
    #[arg(long, default_value_t = 20_000)]
    orders: usize,
    /// Units of the hot SKU (default: orders / 20, as in a 100-for-2,000 flash sale).
    #[arg(long)]
    stock: Option<u32>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Most messages per batch (one transaction per batch in exactly-once mode).
    #[arg(long, default_value_t = 500)]
    batch_max_messages: usize,
    /// Longest wait for a batch to fill.
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    batch_linger: Duration,
    /// Rounds (each: every measurement once); the median of each is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Leave out the saga measurements.
    #[arg(long)]
    no_saga: bool,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/stock-bench.json")]
    out: PathBuf,
}

/// One measurement.
struct Measured {
    name: String,
    messages: usize,
    elapsed: Duration,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.orders > 0, "--orders must be positive");
    ensure!(args.repeat > 0, "--repeat must be positive");
    // The testkit deletes topics through KAFKA_BOOTSTRAP.
    std::env::set_var("KAFKA_BOOTSTRAP", &args.bootstrap);
    let stock = args.stock.unwrap_or((args.orders / 20).max(1) as u32);
    eprintln!(
        "stock-bench: {} messages per run, hot SKU stocked with {stock}, broker {}",
        args.orders, args.bootstrap
    );

    // Rounds interleave baselines and stages, so that background load hits them alike.
    // Order: baseline, txn-copy, exactly-once, at-least-once[, saga-txn-copy, saga].
    let measurements = if args.no_saga { 4 } else { 6 };
    let mut samples: Vec<Vec<Measured>> = (0..measurements).map(|_| Vec::new()).collect();
    for round in 1..=args.repeat {
        eprintln!("round {round}/{}", args.repeat);
        let mut runs = vec![
            copy(&args, "baseline", false, requests(args.orders)).await?,
            copy(&args, "txn-copy", true, requests(args.orders)).await?,
        ];
        report_line(&runs[0]);
        report_line(&runs[1]);
        for mode in ProcessingMode::ALL {
            runs.push(stock_stage(&args, mode, stock).await?);
            report_line(runs.last().expect("pushed"));
        }
        if !args.no_saga {
            runs.push(copy(&args, "saga-txn-copy", true, placed(args.orders)).await?);
            report_line(runs.last().expect("pushed"));
            runs.push(saga_stage(&args).await?);
            report_line(runs.last().expect("pushed"));
        }
        for (i, run) in runs.into_iter().enumerate() {
            samples[i].push(run);
        }
    }
    let medians: Vec<&Measured> = samples.iter().map(|s| median(s)).collect();
    let baseline = medians[0];

    println!();
    println!(
        "stages, {} inputs ({} units of one hot SKU for stock), batches of <= {} / {:?}, median of {}:",
        args.orders, stock, args.batch_max_messages, args.batch_linger, args.repeat
    );
    println!(
        "  {:<14} {:>12} {:>10} {:>12}   all rounds (msgs/s)",
        "run", "msgs/s", "seconds", "vs baseline"
    );
    for (run, all) in medians.iter().zip(&samples) {
        let rounds: Vec<String> = all.iter().map(|r| format!("{:.0}", r.rate())).collect();
        println!(
            "  {:<14} {:>12.0} {:>10.3} {:>11.1}%   {}",
            run.name,
            run.rate(),
            run.elapsed.as_secs_f64(),
            100.0 * run.rate() / baseline.rate(),
            rounds.join(", ")
        );
    }
    let rates = |all: &[Measured]| all.iter().map(Measured::rate).collect::<Vec<_>>();
    let (txn_copy, eos, alo) = (medians[1], medians[2], medians[3]);
    let mut ratios = serde_json::Map::new();
    ratios.insert("stock_vs_txn_copy".into(), json!(eos.rate() / txn_copy.rate()));
    ratios.insert("eos_vs_alo".into(), json!(eos.rate() / alo.rate()));
    ratios.insert("stock_vs_plain_copy".into(), json!(eos.rate() / baseline.rate()));
    ratios.insert("txn_copy_vs_plain_copy".into(), json!(txn_copy.rate() / baseline.rate()));
    let mut saga_json = serde_json::Value::Null;
    if !args.no_saga {
        let (saga_copy, saga) = (medians[4], medians[5]);
        ratios.insert("saga_vs_txn_copy".into(), json!(saga.rate() / saga_copy.rate()));
        saga_json = json!({
            "txn_copy_messages_per_second": saga_copy.rate(),
            "txn_copy_all_rounds": rates(&samples[4]),
            "decisions_per_second": saga.rate(),
            "all_rounds_decisions_per_second": rates(&samples[5]),
            "input": "one-line order_placed events, one partition",
        });
    }
    println!("  ratios: {}", serde_json::Value::Object(ratios.clone()));
    let report = json!({
        "benchmark": "stage-throughput",
        "orders": args.orders,
        "stock": stock,
        "batch_max_messages": args.batch_max_messages,
        "batch_linger_ms": args.batch_linger.as_millis() as u64,
        "rounds": args.repeat,
        "baseline": {
            "kind": "consume -> produce copy, idempotent producer, no transactions",
            "messages_per_second": baseline.rate(),
            "seconds": baseline.elapsed.as_secs_f64(),
            "all_rounds_messages_per_second": rates(&samples[0]),
        },
        "txn_copy": {
            "kind": "consume -> produce copy in transactions of batch_max_messages / batch_linger, send_offsets_to_transaction",
            "messages_per_second": txn_copy.rate(),
            "seconds": txn_copy.elapsed.as_secs_f64(),
            "all_rounds_messages_per_second": rates(&samples[1]),
        },
        "runs": medians[2..4].iter().zip(&samples[2..4]).map(|(r, all)| json!({
            "mode": r.name,
            "decisions_per_second": r.rate(),
            "seconds": r.elapsed.as_secs_f64(),
            "ratio_to_baseline": r.rate() / baseline.rate(),
            "ratio_to_txn_copy": r.rate() / txn_copy.rate(),
            "all_rounds_decisions_per_second": rates(all),
        })).collect::<Vec<_>>(),
        "saga": saga_json,
        "ratios": ratios,
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("\nJSON report: {}", args.out.display());
    Ok(())
}

fn report_line(run: &Measured) {
    eprintln!(
        "  {}: {} in {:.3} s = {:.0}/s",
        run.name,
        run.messages,
        run.elapsed.as_secs_f64(),
        run.rate()
    );
}

/// The sample with the median rate.
fn median(samples: &[Measured]) -> &Measured {
    let mut sorted: Vec<&Measured> = samples.iter().collect();
    sorted.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    sorted[sorted.len() / 2]
}

/// Produce `payloads` keyed by `key` to `topic` and wait for every acknowledgement.
async fn load(bootstrap: &str, topic: &str, key: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let producer: FutureProducer = bench_kafka::loader(bootstrap).create()?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(payloads.len());
    for payload in payloads {
        loop {
            match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    for delivery in pending {
        delivery
            .await
            .context("delivery canceled")?
            .map_err(|(e, _)| e)?;
    }
    eprintln!(
        "    loaded {} messages into {topic} in {:.2} s",
        payloads.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What a reader received, and when the first and the last output arrived.
struct Outputs {
    payloads: Vec<Vec<u8>>,
    last: SystemTime,
}

/// A read_committed reader of the output topic on its own thread, joined to its group before
/// the clock starts (so its group join is not measured); prints progress.
struct Reader {
    thread: std::thread::JoinHandle<anyhow::Result<Outputs>>,
}

impl Reader {
    /// Starts reading `n` messages of `topic`; returns once the reader owns its partitions.
    fn start(bootstrap: &str, topic: &str, n: usize, label: &str) -> anyhow::Result<Self> {
        let reader: BaseConsumer = bench_kafka::output_reader(
            bootstrap,
            &format!("bench-reader-{}", Uuid::new_v4().simple()),
        )
        .create()?;
        reader.subscribe(&[topic])?;
        let label = label.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            let mut got = Vec::with_capacity(n);
            let mut last = SystemTime::now();
            let mut next_report = Instant::now() + Duration::from_secs(1);
            let deadline = Instant::now() + Duration::from_secs(600);
            while got.len() < n {
                ensure!(
                    Instant::now() < deadline,
                    "{label}: only {} of {n} outputs after 10 minutes",
                    got.len()
                );
                if let Some(message) = reader.poll(Duration::from_millis(10)) {
                    let message = message?;
                    got.push(message.payload().unwrap_or_default().to_vec());
                    last = SystemTime::now();
                }
                if ready.is_some() && !reader.assignment()?.elements().is_empty() {
                    let _ = ready.take().expect("checked").send(());
                }
                if Instant::now() >= next_report {
                    eprintln!("    {label}: {}/{n} outputs", got.len());
                    next_report += Duration::from_secs(1);
                }
            }
            Ok(Outputs {
                payloads: got,
                last,
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("output reader did not join its group within 60 s")?;
        Ok(Self { thread })
    }

    /// Waits for all outputs.
    async fn finish(self) -> anyhow::Result<Outputs> {
        tokio::task::spawn_blocking(move || self.thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))?
    }
}

/// Fresh topics for one measurement.
async fn topics_for(name: &str) -> anyhow::Result<(TestTopics, Topics)> {
    let mut test_topics = TestTopics::new()?;
    test_topics.prefix = format!("bench-{name}-{}", test_topics.prefix);
    // The saga stage writes to (and the reader reads) these; both exist before the stage starts.
    test_topics.create("orders", 1).await?;
    test_topics.create("stock", 1).await?;
    let topics = Topics::with_prefix(test_topics.prefix.clone());
    Ok((test_topics, topics))
}

/// A consume -> produce copy of `payloads` (keyed `HOT`), plain or in transactions of the
/// stages' batch size.
async fn copy(
    args: &Args,
    name: &'static str,
    transactional: bool,
    payloads: Vec<Vec<u8>>,
) -> anyhow::Result<Measured> {
    eprintln!("{name}: consume -> produce copy of {} messages", payloads.len());
    let (_test_topics, topics) = topics_for(name).await?;
    let n = payloads.len();
    load(&args.bootstrap, &topics.stock, "HOT", &payloads).await?;

    // One warm-up record (below) comes out before the n copies.
    let reader = Reader::start(&args.bootstrap, &topics.orders, n + 1, name)?;
    let bootstrap = args.bootstrap.clone();
    let (input, output) = (topics.stock.clone(), topics.orders.clone());
    let (batch_max, linger) = (args.batch_max_messages.max(1), args.batch_linger);
    let copier = tokio::task::spawn_blocking(move || -> anyhow::Result<SystemTime> {
        let consumer: BaseConsumer = bench_kafka::copy_consumer(
            &bootstrap,
            &format!("bench-copy-{}", Uuid::new_v4().simple()),
        )
        .create()?;
        let transactional_id = format!("bench-copy-{}", Uuid::new_v4().simple());
        let producer: BaseProducer =
            bench_kafka::copy_producer(&bootstrap, transactional.then_some(transactional_id.as_str()))
                .create()?;
        const TIMEOUT: Duration = Duration::from_secs(30);
        // Warm up the producer (metadata, producer id, transaction coordinator) outside the
        // clock, as the stage's producer is (spawn_stage initialises it before consuming).
        if transactional {
            producer.init_transactions(TIMEOUT)?;
            producer.begin_transaction()?;
        }
        producer
            .send(
                BaseRecord::<str, str>::to(&output)
                    .key("warm-up")
                    .payload("warm-up"),
            )
            .map_err(|(e, _)| e)?;
        producer.flush(TIMEOUT)?;
        if transactional {
            producer.commit_transaction(TIMEOUT)?;
            producer.begin_transaction()?;
        }
        consumer.subscribe(&[&input])?;
        let mut copied = 0;
        let mut in_batch = 0;
        let mut batch_started: Option<Instant> = None;
        let mut first = None;
        while copied < n {
            let wait = batch_started.map_or(Duration::from_millis(100), |t| {
                linger.saturating_sub(t.elapsed()).max(Duration::from_millis(1))
            });
            match consumer.poll(wait) {
                Some(Ok(message)) => {
                    first.get_or_insert_with(SystemTime::now);
                    batch_started.get_or_insert_with(Instant::now);
                    let payload = message.payload().unwrap_or_default();
                    let mut record = BaseRecord::<[u8], [u8]>::to(&output).payload(payload);
                    if let Some(key) = message.key() {
                        record = record.key(key);
                    }
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((_, back)) => {
                                record = back;
                                producer.poll(Duration::from_millis(5));
                            }
                        }
                    }
                    producer.poll(Duration::ZERO);
                    copied += 1;
                    in_batch += 1;
                }
                Some(Err(err)) => bail!("{name} consumer: {err}"),
                None => {}
            }
            let lingered = batch_started.is_some_and(|t| t.elapsed() >= linger);
            if transactional && in_batch > 0 && (in_batch >= batch_max || lingered || copied == n) {
                // As the runner does: serve delivery reports in 1 ms steps before committing;
                // commit_transaction's own flush polls in 100 ms steps and would make this floor
                // a ceiling of ~10 transactions/s.
                while producer.in_flight_count() > 0 {
                    producer.poll(Duration::from_millis(1));
                }
                let position = consumer.position()?;
                let group = consumer
                    .group_metadata()
                    .context("consumer group metadata")?;
                producer.send_offsets_to_transaction(&position, &group, TIMEOUT)?;
                producer.commit_transaction(TIMEOUT)?;
                producer.begin_transaction()?;
                in_batch = 0;
                batch_started = None;
            } else if !transactional && (in_batch >= batch_max || lingered) {
                in_batch = 0;
                batch_started = None;
            }
        }
        producer.flush(TIMEOUT)?;
        if transactional {
            producer.abort_transaction(TIMEOUT)?;
        } else {
            consumer.commit_consumer_state(CommitMode::Sync)?;
        }
        Ok(first.expect("copied at least one message"))
    });
    let outputs = reader.finish().await?;
    let first_consumed = copier.await??;
    Ok(Measured {
        name: name.into(),
        messages: n,
        elapsed: outputs.last.duration_since(first_consumed)?,
    })
}

/// N one-line `order_placed` events (the saga's input), as ingest writes them.
fn placed(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let order: NewOrder = serde_json::from_value(json!({
                "customer_id": format!("customer-{i}"),
                "currency": "EUR",
                "lines": [{"sku": "HOT", "quantity": 1, "unit_price_minor": 999}],
                "total_minor": 999,
                "payment": {"method": "card", "token": "tok_bench"},
            }))
            .expect("valid order");
            let id = Uuid::now_v7();
            OrderEnvelope::new(id, OrderEvent::OrderPlaced(order.into_order_placed()), None, id)
                .encode()
        })
        .collect()
}

/// The saga stage (exactly-once) on N `order_placed`: decisions/s until every reservation
/// request it emits is readable.
async fn saga_stage(args: &Args) -> anyhow::Result<Measured> {
    eprintln!("saga: saga stage on {} order_placed", args.orders);
    let (mut test_topics, topics) = topics_for("saga").await?;
    for created in ensure_topics(&args.bootstrap, &topics, "saga", 1).await? {
        test_topics.adopt(&created);
    }
    // Keyed by order id as ingest keys them (one partition: the key does not move them).
    let inputs = placed(args.orders);
    load(&args.bootstrap, &topics.orders, "order", &inputs).await?;
    let reader = Reader::start(&args.bootstrap, &topics.stock, args.orders, "saga")?;
    let config = Config {
        batch_max_messages: args.batch_max_messages,
        batch_linger: args.batch_linger,
        ..Config::with_mode(ProcessingMode::ExactlyOnce)
    };
    let shutdown = CancellationToken::new();
    let handle = spawn_stage(
        Box::new(SagaStage::new(topics.clone())),
        &config,
        &args.bootstrap,
        &topics,
        shutdown.clone(),
    )?;
    let outputs = reader.finish().await?;
    shutdown.cancel();
    handle.wait().await?;
    let mut requested = 0;
    let mut first_decision = SystemTime::now();
    for bytes in &outputs.payloads {
        let answer = StockEnvelope::decode(bytes)?;
        first_decision = first_decision.min(answer.occurred_at.into());
        if let StockEvent::ReservationRequested(_) = answer.event {
            requested += 1;
        }
    }
    ensure!(
        requested == args.orders,
        "saga: {requested} reservation requests, expected {}",
        args.orders
    );
    Ok(Measured {
        name: "saga".into(),
        messages: args.orders,
        elapsed: outputs.last.duration_since(first_decision)?,
    })
}

fn requests(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let order = Uuid::now_v7();
            StockEnvelope::new(
                "HOT",
                StockEvent::ReservationRequested(ReservationRequested {
                    order_id: order,
                    customer_id: format!("customer-{i}"),
                    line_index: 0,
                    line_count: 1,
                    quantity: 1,
                }),
                None,
                order,
            )
            .encode()
        })
        .collect()
}

async fn stock_stage(args: &Args, mode: ProcessingMode, stock: u32) -> anyhow::Result<Measured> {
    eprintln!(
        "{mode}: stock stage on {} requests for one SKU",
        args.orders
    );
    let (mut test_topics, topics) = topics_for(match mode {
        ProcessingMode::ExactlyOnce => "eos",
        ProcessingMode::AtLeastOnce => "alo",
    })
    .await?;
    for created in ensure_topics(&args.bootstrap, &topics, "stock", 1).await? {
        test_topics.adopt(&created);
    }
    set_stock(
        &args.bootstrap,
        &topics,
        "HOT",
        StockAdjustment::Set { quantity: stock },
        None,
    )
    .await?;
    load(
        &args.bootstrap,
        &topics.stock,
        "HOT",
        &requests(args.orders),
    )
    .await?;

    let reader = Reader::start(
        &args.bootstrap,
        &topics.orders,
        args.orders,
        &mode.to_string(),
    )?;
    let config = Config {
        batch_max_messages: args.batch_max_messages,
        batch_linger: args.batch_linger,
        ..Config::with_mode(mode)
    };
    let shutdown = CancellationToken::new();
    let handle = spawn_stage(
        Box::new(StockStage::new(topics.clone())),
        &config,
        &args.bootstrap,
        &topics,
        shutdown.clone(),
    )?;
    let wait_ready = Instant::now() + Duration::from_secs(60);
    while !handle.is_ready() {
        ensure!(Instant::now() < wait_ready, "stage not ready after 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let outputs = reader.finish().await?;
    shutdown.cancel();
    handle.wait().await?;

    let mut reserved = 0;
    let mut first_decision = SystemTime::now();
    for bytes in &outputs.payloads {
        let answer = OrderEnvelope::decode(bytes)?;
        first_decision = first_decision.min(answer.occurred_at.into());
        if let OrderEvent::StockLineReserved(_) = answer.event {
            reserved += 1;
        }
    }
    ensure!(
        reserved == stock as usize,
        "{mode}: {reserved} reserved, expected {stock}"
    );
    Ok(Measured {
        name: mode.to_string(),
        messages: args.orders,
        elapsed: outputs.last.duration_since(first_decision)?,
    })
}
