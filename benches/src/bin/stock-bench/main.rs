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

mod copy;
mod harness;
mod stages;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context};
use clap::Parser;
use orderpipe_processors::ProcessingMode;
use serde_json::json;

use copy::copy;
use stages::{placed, requests, saga_stage, stock_stage};

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
    ratios.insert(
        "stock_vs_txn_copy".into(),
        json!(eos.rate() / txn_copy.rate()),
    );
    ratios.insert("eos_vs_alo".into(), json!(eos.rate() / alo.rate()));
    ratios.insert(
        "stock_vs_plain_copy".into(),
        json!(eos.rate() / baseline.rate()),
    );
    ratios.insert(
        "txn_copy_vs_plain_copy".into(),
        json!(txn_copy.rate() / baseline.rate()),
    );
    let mut saga_json = serde_json::Value::Null;
    if !args.no_saga {
        let (saga_copy, saga) = (medians[4], medians[5]);
        ratios.insert(
            "saga_vs_txn_copy".into(),
            json!(saga.rate() / saga_copy.rate()),
        );
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
