//! `orderpipe-chaos`: a seeded chaos flash sale, and a soak run (README "Chaos and soak").
//!
//!     ops/chaos/flash-sale --seed 7 --duration 300 --brokers 3
//!     ops/chaos/soak --duration 1800 --rate 50
//!
//! `flash-sale` starts a private Kafka testbed (1 or 3 brokers, its own directory and ports: the
//! faults never touch the shared broker), runs every component as its own `orderpipe run` process
//! (ingest x2, stock, saga, payments, notifications, projections, query), the HTTP payment
//! gateway simulator and a webhook receiver in this process, drives a flash sale from open-loop
//! clients (retrying with the same Idempotency-Key on 503, 429, a cut connection or a timeout,
//! alternating the two ingest instances) and applies the seeded fault schedule of [`plan`]:
//! SIGKILL and restart of each component, stop/kill and restart of one broker at a time, gateway
//! outages and failed requests, and optionally one restart of a private CQL server. Then it waits
//! for quiescence and checks from the outside: the clients' record of acknowledged orders, the
//! gateway's ledger, the webhook receiver's log, the topics, the query API, and `orderpipe
//! verify`. Prints the counts and what it did; exits 1 if any count is not 0.
//!
//! `soak` is the same pipeline at a steady rate without faults; it reports memory (RSS per
//! process) and acknowledgement latency per interval, and their drift from the first interval.

mod audit;
mod checks;
mod clients;
mod faults;
mod http;
mod plan;
mod procs;
mod receiver;
mod report;
mod sale;
mod testbed;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use testbed::Testbed;

#[derive(Debug, Parser)]
#[command(
    name = "orderpipe-chaos",
    about = "Seeded chaos flash sale and soak run for orderpipe"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A flash sale under a seeded schedule of faults, then an audit from the outside.
    FlashSale(SaleArgs),
    /// A steady sale without faults: memory and latency drift.
    Soak(SaleArgs),
}

#[derive(Debug, Clone, Args)]
struct SaleArgs {
    /// Seed of the fault schedule, the orders and the gateway's declines.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of the sale in seconds (orders flow for this long; settling comes after).
    #[arg(long)]
    duration: u64,
    /// Kafka nodes of the private testbed (1 or 3; with 3, one is down at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=3))]
    brokers: u8,
    /// Orders per second (open loop).
    #[arg(long, default_value_t = 25.0)]
    rate: f64,
    /// SKUs on sale.
    #[arg(long, default_value_t = 8)]
    skus: u32,
    /// Units of each SKU (default: about half the expected demand, so the sale sells out).
    #[arg(long)]
    stock: Option<u32>,
    /// Share of acknowledged orders the client then asks to cancel.
    #[arg(long, default_value_t = 0.05)]
    cancel_rate: f64,
    /// Share of orders the gateway declines.
    #[arg(long, default_value_t = 0.1)]
    decline_rate: f64,
    /// Use this Kafka cluster instead of a private testbed (no broker faults then).
    #[arg(long)]
    kafka_bootstrap: Option<String>,
    /// CQL contact points (shared by default; never restarted unless --cql-restart).
    #[arg(long, env = "SCYLLA_NODES", default_value = "127.0.0.1:9042")]
    scylla_nodes: String,
    /// Run a private CQL server (Cassandra, in the private testbed) and restart it once. Slow:
    /// Cassandra takes a minute or more to start on a loaded machine.
    #[arg(long)]
    cql_restart: bool,
    /// The `orderpipe` binary (default: next to this one).
    #[arg(long)]
    orderpipe: Option<PathBuf>,
    /// Directory for logs and the private testbed (default: target/chaos/<seed>-<time>).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Longest wait for quiescence after the sale.
    #[arg(long, default_value_t = 240)]
    settle_timeout: u64,
    /// Orders whose view the query API is asked about.
    #[arg(long, default_value_t = 200)]
    view_sample: usize,
    /// Partitions of every topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Soak: seconds per reported interval.
    #[arg(long, default_value_t = 60)]
    interval: u64,
    /// Log filter of the pipeline's processes (`info` logs every order: ~1 GB per hour of sale).
    #[arg(long, default_value = "warn")]
    log: String,
    /// Keep the private testbed's directory (logs) after the run.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (args, soak) = match cli.command {
        Cmd::FlashSale(args) => (args, false),
        Cmd::Soak(args) => (args, true),
    };
    match runtime.block_on(run(args, soak)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("chaos: error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn say(message: impl AsRef<str>) {
    eprintln!("chaos: {}", message.as_ref());
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A loopback port nobody listens on now (see [`free_ports`]).
fn free_port() -> u16 {
    free_ports(1)
}

/// `n` consecutive free ports (Kafka nodes take KAFKA_PORT, KAFKA_PORT+1, ...), from 30000-32767:
/// below Linux's ephemeral range (32768-60999), so that no outgoing connection takes the port of
/// a broker or component while it is down between a kill and its restart (a seed-41 run lost a
/// broker that way), and above the 20000-29999 the test harness hands out. A port is never handed
/// out twice: "free now" alone let two components draw the same one before either listened (a
/// seed-41 run's notifications could never start, its admin port was ingest-1's).
fn free_ports(n: u16) -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = StdRng::from_os_rng();
    loop {
        let base = rng.random_range(30_000..32_768 - n);
        let ports = base..base + n;
        if ports.clone().all(|p| {
            !handed_out.contains(&p) && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        }) {
            handed_out.extend(ports);
            return base;
        }
    }
}

async fn run(args: SaleArgs, soak: bool) -> anyhow::Result<bool> {
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S").to_string();
    let work = args.work_dir.clone().unwrap_or_else(|| {
        repo().join(format!(
            "target/chaos/{}-{}-{stamp}",
            if soak { "soak" } else { "sale" },
            args.seed
        ))
    });
    let logs = work.join("logs");
    std::fs::create_dir_all(&logs)?;
    let work = work.canonicalize()?;
    let bin = match &args.orderpipe {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("orderpipe"),
    };
    anyhow::ensure!(
        bin.exists(),
        "no orderpipe binary at {} (cargo build -p orderpipe-ops)",
        bin.display()
    );

    // Private testbed, unless a cluster is given (then no broker faults).
    let testbed = match &args.kafka_bootstrap {
        Some(_) => None,
        None => Some(Testbed {
            dir: work.join("testbed"),
            kafka_port: free_ports(u16::from(args.brokers)),
            controller_port: free_ports(u16::from(args.brokers)),
            brokers: args.brokers,
            cql: args.cql_restart.then(|| (free_port(), free_port())),
        }),
    };
    let started_up = Instant::now();
    if let Some(testbed) = &testbed {
        say(format!(
            "starting a private testbed: {} Kafka node(s){} in {}",
            testbed.brokers,
            if testbed.cql.is_some() {
                " and a CQL server"
            } else {
                ""
            },
            testbed.dir.display()
        ));
        testbed
            .script("up", &["--brokers", &testbed.brokers.to_string()])
            .await?;
    }
    // Interrupted (Ctrl-C, SIGTERM): dropping the sale drops its processes, which kills them, and
    // the private testbed is stopped below, so nothing of the run is left behind.
    let interrupted = orderpipe_runtime::shutdown::on_signal();
    let result = tokio::select! {
        result = sale(&args, soak, &bin, &logs, testbed.as_ref(), started_up) => result,
        () = interrupted.cancelled() => Err(anyhow::anyhow!("interrupted: stopped every component")),
    };
    if let Some(testbed) = &testbed {
        say("stopping the private testbed");
        if let Err(err) = testbed.script("down", &[]).await {
            say(format!("testbed down failed: {err:#}"));
        }
        if !args.keep && matches!(result, Ok(true)) {
            let _ = std::fs::remove_dir_all(&testbed.dir);
        }
    }
    say(format!("logs: {}", logs.display()));
    result
}

/// The sale's phases, one after the other.
async fn sale(
    args: &SaleArgs,
    soak: bool,
    bin: &Path,
    logs: &Path,
    testbed: Option<&Testbed>,
    started_up: Instant,
) -> anyhow::Result<bool> {
    let pipeline = sale::setup(args, soak, bin, logs, testbed, started_up).await?;
    let driven = sale::drive(&pipeline).await?;
    let settled = sale::settle(&pipeline, &driven).await?;
    let settle_secs = settled.settle_secs;
    let findings = checks::check(&pipeline, &driven, settled).await?;
    let ok = report::print_report(&pipeline, &driven, findings, settle_secs).await;
    pipeline.shutdown.cancel();
    driven.sampler.abort();
    pipeline.procs.stop_all();
    // Leave the shared CQL server as it was: drop this run's keyspace.
    if testbed.is_none_or(|t| t.cql.is_none()) {
        drop_keyspace(&pipeline.scylla, &pipeline.keyspace).await;
    }
    Ok(ok)
}

async fn drop_keyspace(nodes: &str, keyspace: &str) {
    let nodes = orderpipe_projections::parse_nodes(nodes);
    if let Ok(session) = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(nodes)
        .build()
        .await
    {
        let _ = session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
            .await;
    }
}
