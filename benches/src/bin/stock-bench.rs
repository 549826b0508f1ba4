//! Stock stage throughput for one hot SKU, in both processing modes, against a live broker, as a
//! ratio to a baseline measured in the same run.
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
//! - `exactly-once` / `at-least-once`: the stock stage on the runner, N `reservation_requested`
//!   for one SKU stocked with `--stock` units; its answers are checked (exactly `--stock` reserved).
//!
//! Rounds (`--repeat`, default 3) interleave the three measurements; the median of each is
//! reported. Prints progress and a human summary to the terminal and writes JSON (`--out`,
//! default `target/stock-bench.json`).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context};
use clap::Parser;
use orderpipe_processors::stock::{set_stock, StockStage};
use orderpipe_processors::{ensure_topics, spawn_stage, Config, ProcessingMode};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, ReservationRequested, StockAdjustment, StockEnvelope, StockEvent,
    Topics,
};
use orderpipe_testkit::kafka::TestTopics;
use rdkafka::config::ClientConfig;
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
    /// Rounds (each: baseline, exactly-once, at-least-once); the median of each is reported.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
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

    // Rounds interleave baseline and modes, so that background load hits them alike.
    let mut samples: Vec<Vec<Measured>> = vec![Vec::new(), Vec::new(), Vec::new()];
    for round in 1..=args.repeat {
        eprintln!("round {round}/{}", args.repeat);
        let run = baseline(&args).await?;
        report_line(&run);
        samples[0].push(run);
        for (i, mode) in ProcessingMode::ALL.into_iter().enumerate() {
            let run = stock_stage(&args, mode, stock).await?;
            report_line(&run);
            samples[i + 1].push(run);
        }
    }
    let medians: Vec<&Measured> = samples.iter().map(|s| median(s)).collect();
    let baseline = medians[0];

    println!();
    println!(
        "stock stage, one hot SKU, {} requests ({} units), batches of <= {} / {:?}, median of {}:",
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
    let report = json!({
        "benchmark": "stock-stage-hot-sku",
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
        "runs": medians[1..].iter().zip(&samples[1..]).map(|(r, all)| json!({
            "mode": r.name,
            "decisions_per_second": r.rate(),
            "seconds": r.elapsed.as_secs_f64(),
            "ratio_to_baseline": r.rate() / baseline.rate(),
            "all_rounds_decisions_per_second": rates(all),
        })).collect::<Vec<_>>(),
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

fn client(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

/// Produce `payloads` keyed by `key` to `topic` and wait for every acknowledgement.
async fn load(bootstrap: &str, topic: &str, key: &str, payloads: &[Vec<u8>]) -> anyhow::Result<()> {
    let producer: FutureProducer = client(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
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
        let reader: BaseConsumer = client(bootstrap)
            .set(
                "group.id",
                format!("bench-reader-{}", Uuid::new_v4().simple()),
            )
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
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
    test_topics.create("orders", 1).await?;
    test_topics.create("stock", 1).await?;
    let topics = Topics::with_prefix(test_topics.prefix.clone());
    Ok((test_topics, topics))
}

async fn baseline(args: &Args) -> anyhow::Result<Measured> {
    eprintln!(
        "baseline: consume -> produce copy of {} messages",
        args.orders
    );
    let (_test_topics, topics) = topics_for("base").await?;
    // Same payloads as the stage gets, so sizes match.
    let payloads = requests(args.orders);
    load(&args.bootstrap, &topics.stock, "HOT", &payloads).await?;

    // One warm-up record (below) comes out before the n copies.
    let reader = Reader::start(&args.bootstrap, &topics.orders, args.orders + 1, "baseline")?;
    let bootstrap = args.bootstrap.clone();
    let (input, output) = (topics.stock.clone(), topics.orders.clone());
    let n = args.orders;
    let copier = tokio::task::spawn_blocking(move || -> anyhow::Result<SystemTime> {
        let consumer: BaseConsumer = client(&bootstrap)
            .set(
                "group.id",
                format!("bench-copy-{}", Uuid::new_v4().simple()),
            )
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .create()?;
        let producer: BaseProducer = client(&bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()?;
        // Warm up the producer (metadata, producer id) outside the clock, as the stage's producer
        // is (spawn_stage initialises it before the stage consumes anything).
        producer
            .send(
                BaseRecord::<str, str>::to(&output)
                    .key("warm-up")
                    .payload("warm-up"),
            )
            .map_err(|(e, _)| e)?;
        producer.flush(Duration::from_secs(30))?;
        consumer.subscribe(&[&input])?;
        let mut copied = 0;
        let mut first = None;
        while copied < n {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    first.get_or_insert_with(SystemTime::now);
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
                }
                Some(Err(err)) => bail!("baseline consumer: {err}"),
                None => {}
            }
        }
        producer.flush(Duration::from_secs(30))?;
        consumer.commit_consumer_state(CommitMode::Sync)?;
        Ok(first.expect("copied at least one message"))
    });
    let outputs = reader.finish().await?;
    let first_consumed = copier.await??;
    Ok(Measured {
        name: "baseline".into(),
        messages: args.orders,
        elapsed: outputs.last.duration_since(first_consumed)?,
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
