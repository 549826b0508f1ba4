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

mod http;
mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use clap::{Args, Parser, Subcommand};
use orderpipe_processors::payments::gateway_sim;
use orderpipe_processors::payments::simulated::{SimConfig, SimulatedGateway};
use orderpipe_schemas::{OrderEvent, StockAdjustment, Topics};
use plan::{Action, Comp, Fault, Shape};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

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
/// broker that way), and above the 20000-29999 the test harness hands out.
fn free_ports(n: u16) -> u16 {
    let mut rng = StdRng::from_os_rng();
    loop {
        let base = rng.random_range(30_000..32_768 - n);
        if (base..base + n).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The private testbed

struct Testbed {
    dir: PathBuf,
    kafka_port: u16,
    controller_port: u16,
    brokers: u8,
    cql: Option<(u16, u16)>,
}

impl Testbed {
    fn bootstrap(&self) -> String {
        (0..u16::from(self.brokers))
            .map(|i| format!("127.0.0.1:{}", self.kafka_port + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn command(&self, script: &str, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(repo().join("ops/testbed").join(script));
        command
            .args(args)
            .env("ORDERPIPE_TESTBED_DIR", &self.dir)
            .env("KAFKA_PORT", self.kafka_port.to_string())
            .env("KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env_remove("KAFKA_BOOTSTRAP")
            .env_remove("KAFKA_BROKERS")
            .stdin(Stdio::null());
        match self.cql {
            Some((port, storage)) => {
                command
                    .env_remove("SCYLLA_NODES")
                    .env("CQL_PORT", port.to_string())
                    .env("CASSANDRA_STORAGE_PORT", storage.to_string());
            }
            None => {
                command.env("SCYLLA_NODES", "not-used-by-this-run");
            }
        }
        let shared_jars = repo().join(".testbed/kafka/libs");
        if shared_jars.join(".pom-sha256").exists() {
            command.env("KAFKA_LIBS", shared_jars);
        }
        command
    }

    async fn script(&self, script: &str, args: &[&str]) -> anyhow::Result<()> {
        let output = self
            .command(script, args)
            .output()
            .await
            .with_context(|| format!("running ops/testbed/{script}"))?;
        if !output.status.success() {
            bail!(
                "ops/testbed/{script} {args:?} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    /// `cql_stop; cql_start` from ops/testbed/cassandra.sh, on the private CQL server.
    async fn cql_restart(&self) -> anyhow::Result<()> {
        let mut command = self.command("status", &[]);
        let script = format!(
            "source {0}/ops/testbed/common.sh && source {0}/ops/testbed/cassandra.sh && cql_stop && cql_start",
            repo().display()
        );
        let command = command.as_std_mut();
        let output = Command::new("bash")
            .args(["-c", &script])
            .envs(
                command
                    .get_envs()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
            )
            .env("ORDERPIPE_TESTBED_DIR", &self.dir)
            .output()?;
        if !output.status.success() {
            bail!(
                "CQL restart failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline's processes

struct Procs {
    bin: PathBuf,
    logs: PathBuf,
    common: Vec<String>,
    admin: HashMap<Comp, SocketAddr>,
    ingest: [SocketAddr; 2],
    query: SocketAddr,
    gateway: SocketAddr,
    webhook: SocketAddr,
    secret: String,
    log_filter: String,
    children: Mutex<HashMap<Comp, Child>>,
}

impl Procs {
    fn args(&self, comp: Comp) -> Vec<String> {
        let mut args: Vec<String> =
            vec!["run".into(), "--components".into(), comp.component().into()];
        args.extend(self.common.iter().cloned());
        args.extend(["--admin-listen".into(), self.admin[&comp].to_string()]);
        args.extend(["--instance-id".into(), format!("chaos-{}", comp.name())]);
        match comp {
            Comp::Ingest1 => args.extend(["--ingest-listen".into(), self.ingest[0].to_string()]),
            Comp::Ingest2 => args.extend(["--ingest-listen".into(), self.ingest[1].to_string()]),
            Comp::Payments => args.extend([
                "--payments-gateway".into(),
                "http".into(),
                "--payments-gateway-url".into(),
                format!("http://{}", self.gateway),
            ]),
            Comp::Notifications => args.extend([
                "--notifications-sink".into(),
                "webhook".into(),
                "--notifications-webhook-url".into(),
                format!("http://{}/hook", self.webhook),
            ]),
            Comp::Projections => args.extend([
                "--projections-instance-id".into(),
                "chaos-projections".into(),
            ]),
            Comp::Query => args.extend(["--query-listen".into(), self.query.to_string()]),
            Comp::Stock | Comp::Saga => {}
        }
        args
    }

    fn start(&self, comp: Comp) -> anyhow::Result<()> {
        let child = self.spawn(comp)?;
        self.children.lock().unwrap().insert(comp, child);
        Ok(())
    }

    /// The supervisor's round (what systemd or Kubernetes do for a deployment): a component
    /// whose process exited on its own (e.g. it started while its broker was down and gave up)
    /// is started again. Returns the components restarted, with their exit status.
    fn restart_exited(&self) -> Vec<(Comp, String)> {
        let mut children = self.children.lock().unwrap();
        let mut out = Vec::new();
        for (comp, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                match self.spawn(*comp) {
                    Ok(new) => *child = new,
                    Err(err) => say(format!("restarting {}: {err:#}", comp.name())),
                }
                out.push((*comp, status.to_string()));
            }
        }
        out
    }

    fn spawn(&self, comp: Comp) -> anyhow::Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", comp.name())))?;
        let child = Command::new(&self.bin)
            .args(self.args(comp))
            .env("RUST_LOG", &self.log_filter)
            // The webhook secret goes by environment, never on a command line.
            .env("ORDERPIPE_NOTIFICATIONS_WEBHOOK_SECRET", &self.secret)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        Ok(child)
    }

    fn kill(&self, comp: Comp) {
        if let Some(mut child) = self.children.lock().unwrap().remove(&comp) {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// The last `error:` line of a component's log (why it exited).
    fn last_error(&self, comp: Comp) -> String {
        std::fs::read_to_string(self.logs.join(format!("{}.log", comp.name())))
            .unwrap_or_default()
            .lines()
            .rev()
            .find(|l| l.starts_with("error:") || l.contains("panicked at"))
            .unwrap_or("no error line")
            .to_string()
    }

    fn pid(&self, comp: Comp) -> Option<u32> {
        self.children.lock().unwrap().get(&comp).map(Child::id)
    }

    async fn wait_ready(&self, comp: Comp, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(reply) = http::request(
                self.admin[&comp],
                "GET",
                "/readyz",
                &[],
                None,
                Duration::from_secs(2),
            )
            .await
            {
                if reply.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready within {within:?} (log: {})",
                    comp.name(),
                    self.logs.join(format!("{}.log", comp.name())).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn stop_all(&self) {
        let mut children = self.children.lock().unwrap();
        for child in children.values() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for child in children.values_mut() {
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        children.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, mut child) in self.children.lock().unwrap().drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Resident memory of a process in KiB (`VmRSS` of /proc/PID/status).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix("VmRSS:")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    })
}

// ---------------------------------------------------------------------------------------------
// The webhook receiver: every delivery, signature checked, logged

#[derive(Debug, Clone)]
struct Delivery {
    event_id: Uuid,
    order_id: Uuid,
    kind: String,
}

#[derive(Clone)]
struct Receiver {
    secret: Arc<String>,
    log: Arc<Mutex<Vec<Delivery>>>,
    bad: Arc<AtomicU64>,
}

async fn hook(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = headers
        .get(orderpipe_processors::notifications::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !orderpipe_processors::notifications::verify(receiver.secret.as_bytes(), &body, signature) {
        receiver.bad.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |name: &str| json[name].as_str().and_then(|s| s.parse::<Uuid>().ok());
    match (field("event_id"), field("order_id"), json["kind"].as_str()) {
        (Some(event_id), Some(order_id), Some(kind)) => {
            receiver.log.lock().unwrap().push(Delivery {
                event_id,
                order_id,
                kind: kind.to_string(),
            });
            StatusCode::NO_CONTENT
        }
        _ => {
            receiver.bad.fetch_add(1, Ordering::Relaxed);
            StatusCode::BAD_REQUEST
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The sale's clients

#[derive(Debug, Clone)]
struct OrderSpec {
    key: String,
    customer: String,
    lines: Vec<(String, u32)>,
    cancel: bool,
}

impl OrderSpec {
    fn body(&self) -> String {
        let lines: Vec<serde_json::Value> = self
            .lines
            .iter()
            .map(
                |(sku, q)| serde_json::json!({"sku": sku, "quantity": q, "unit_price_minor": 1000}),
            )
            .collect();
        let total: i64 = self.lines.iter().map(|(_, q)| i64::from(*q) * 1000).sum();
        serde_json::json!({
            "customer_id": self.customer, "currency": "EUR", "lines": lines, "total_minor": total,
            "payment": {"method": "card", "token": "tok_chaos_secret_4242"},
        })
        .to_string()
    }
}

/// The orders of the sale: a function of the seed (a generator of its own, apart from the faults').
fn orders(seed: u64, count: usize, skus: u32, cancel_rate: f64) -> Vec<OrderSpec> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5EED_0F_0DE5);
    (0..count)
        .map(|i| {
            let n = rng.random_range(1..=3u32.min(skus));
            let mut picked = BTreeSet::new();
            while picked.len() < n as usize {
                // Skewed popularity: SKU-0 is hottest.
                let r: f64 = rng.random();
                picked.insert((r * r * f64::from(skus)) as u32);
            }
            OrderSpec {
                key: format!("chaos-{seed}-{i}"),
                customer: format!("customer-{}", rng.random_range(0..2000)),
                lines: picked
                    .into_iter()
                    .map(|s| (format!("SKU-{s}"), rng.random_range(1..=2)))
                    .collect(),
                cancel: rng.random_bool(cancel_rate.clamp(0.0, 1.0)),
            }
        })
        .collect()
}

#[derive(Default)]
struct Sale {
    acked: Mutex<HashMap<Uuid, usize>>,
    ack_ms: Mutex<Vec<(f64, u64)>>,
    cancels_acked: AtomicU64,
    attempts: AtomicU64,
    retried_503: AtomicU64,
    retried_429: AtomicU64,
    retried_cut: AtomicU64,
    abandoned: AtomicU64,
    client_errors: Mutex<Vec<String>>,
    same_key_other_id: AtomicU64,
}

const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// POSTs until 202 (same Idempotency-Key on every attempt, alternating ingest instances).
async fn post_until_accepted(
    sale: &Sale,
    ingest: [SocketAddr; 2],
    first: usize,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut target = first;
    let mut attempt = 0u64;
    let headers: Vec<(&str, &str)> = key
        .map(|k| vec![("idempotency-key", k)])
        .unwrap_or_default();
    loop {
        sale.attempts.fetch_add(1, Ordering::Relaxed);
        match http::request(
            ingest[target],
            "POST",
            path,
            &headers,
            body,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(reply) if reply.status == 202 => return Some(reply.json()),
            Ok(reply) if reply.status == 503 => sale.retried_503.fetch_add(1, Ordering::Relaxed),
            Ok(reply) if reply.status == 429 => sale.retried_429.fetch_add(1, Ordering::Relaxed),
            Ok(reply) => {
                sale.client_errors
                    .lock()
                    .unwrap()
                    .push(format!("{path}: {} {}", reply.status, reply.body));
                return None;
            }
            Err(_) => sale.retried_cut.fetch_add(1, Ordering::Relaxed),
        };
        if Instant::now() > deadline {
            sale.abandoned.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        attempt += 1;
        target ^= 1;
        tokio::time::sleep(Duration::from_millis((100 * attempt).min(1000))).await;
    }
}

async fn place(
    sale: Arc<Sale>,
    ingest: [SocketAddr; 2],
    index: usize,
    spec: OrderSpec,
    due: Instant,
    started: Instant,
) {
    let body = spec.body();
    let Some(reply) = post_until_accepted(
        &sale,
        ingest,
        index % 2,
        "/v1/orders",
        Some(&spec.key),
        Some(&body),
    )
    .await
    else {
        return;
    };
    let Some(id) = reply["order_id"]
        .as_str()
        .and_then(|s| s.parse::<Uuid>().ok())
    else {
        sale.client_errors
            .lock()
            .unwrap()
            .push(format!("202 without an order id: {reply}"));
        return;
    };
    let latency = due.elapsed().as_millis() as u64;
    sale.ack_ms
        .lock()
        .unwrap()
        .push((started.elapsed().as_secs_f64(), latency));
    if let Some(previous) = sale.acked.lock().unwrap().insert(id, index) {
        if previous != index {
            sale.same_key_other_id.fetch_add(1, Ordering::Relaxed);
        }
    }
    if spec.cancel {
        let path = format!("/v1/orders/{id}/cancel");
        if post_until_accepted(&sale, ingest, index % 2 ^ 1, &path, None, None)
            .await
            .is_some()
        {
            sale.cancels_acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Faults

#[derive(Default)]
struct Done {
    kills: BTreeMap<&'static str, u32>,
    restarts: BTreeMap<&'static str, u32>,
    broker_stops: u32,
    broker_starts: u32,
    gateway_faults: u32,
    cql_restarts: u32,
    errors: Vec<String>,
    log: Vec<String>,
}

async fn gateway_fault(gateway: SocketAddr, body: &str) -> anyhow::Result<()> {
    let reply = http::request(
        gateway,
        "POST",
        "/v1/faults",
        &[],
        Some(body),
        Duration::from_secs(5),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    if reply.status != 204 {
        bail!("gateway faults: {} {}", reply.status, reply.body);
    }
    Ok(())
}

async fn apply(
    fault: Fault,
    procs: &Procs,
    testbed: Option<&Testbed>,
    done: &Mutex<Done>,
    started: Instant,
) {
    let note = |done: &Mutex<Done>, what: String| {
        let line = format!("{:7.1}s  {what}", started.elapsed().as_secs_f64());
        say(&line);
        done.lock().unwrap().log.push(line);
    };
    let result: anyhow::Result<()> = async {
        match fault.action {
            Action::Kill {
                comp,
                restart_after_ms,
            } => {
                procs.kill(comp);
                *done.lock().unwrap().kills.entry(comp.name()).or_default() += 1;
                note(done, format!("SIGKILL {}", comp.name()));
                tokio::time::sleep(Duration::from_millis(restart_after_ms)).await;
                procs.start(comp)?;
                *done
                    .lock()
                    .unwrap()
                    .restarts
                    .entry(comp.name())
                    .or_default() += 1;
                note(done, format!("restarted {}", comp.name()));
            }
            Action::Broker {
                node,
                hard,
                down_ms,
            } => {
                let testbed = testbed.context("broker fault without a private testbed")?;
                let n = node.to_string();
                testbed
                    .script("broker", &[if hard { "kill" } else { "stop" }, &n])
                    .await?;
                done.lock().unwrap().broker_stops += 1;
                note(
                    done,
                    format!(
                        "{} broker {node}",
                        if hard { "SIGKILLed" } else { "stopped" }
                    ),
                );
                tokio::time::sleep(Duration::from_millis(down_ms)).await;
                testbed.script("broker", &["start", &n]).await?;
                done.lock().unwrap().broker_starts += 1;
                note(done, format!("broker {node} back"));
            }
            Action::GatewayOutage { ms } => {
                gateway_fault(
                    procs.gateway,
                    &format!(r#"{{"fail_for_ms": {ms}, "status": 503}}"#),
                )
                .await?;
                done.lock().unwrap().gateway_faults += 1;
                note(done, format!("gateway fails every request for {ms} ms"));
            }
            Action::GatewayFailNext { n } => {
                gateway_fault(
                    procs.gateway,
                    &format!(r#"{{"fail_next": {n}, "status": 503}}"#),
                )
                .await?;
                done.lock().unwrap().gateway_faults += 1;
                note(done, format!("gateway fails the next {n} requests"));
            }
            Action::CqlRestart => {
                let testbed = testbed.context("CQL restart without a private CQL server")?;
                note(done, "restarting the CQL server".into());
                testbed.cql_restart().await?;
                done.lock().unwrap().cql_restarts += 1;
                note(done, "CQL server back".into());
            }
        }
        Ok(())
    }
    .await;
    if let Err(err) = result {
        note(done, format!("fault failed: {err:#}"));
        done.lock()
            .unwrap()
            .errors
            .push(format!("{fault}: {err:#}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The audit

#[derive(Debug, Default)]
struct Counts {
    acked_missing_from_topic: usize,
    units_oversold: u64,
    orders_not_exactly_one_terminal: usize,
    double_charges: usize,
    charges_without_key: usize,
    unrefunded_charges: usize,
    confirmed_without_charge: usize,
    notifications_lost: usize,
    notifications_duplicated: usize,
    webhook_bad_requests: u64,
    views_disagreeing: usize,
    verify_violations: usize,
    verify_exit_nonzero: usize,
    client_errors: usize,
    orders_abandoned: u64,
    same_key_two_ids: u64,
    processes_panicked: usize,
    secrets_in_logs_or_metrics: usize,
    fault_errors: usize,
}

impl Counts {
    fn rows(&self) -> Vec<(&'static str, u64)> {
        vec![
            (
                "acked orders missing from the topic",
                self.acked_missing_from_topic as u64,
            ),
            ("units oversold", self.units_oversold),
            (
                "orders without exactly one terminal state",
                self.orders_not_exactly_one_terminal as u64,
            ),
            (
                "double charges (gateway ledger)",
                self.double_charges as u64,
            ),
            (
                "charges without idempotency key",
                self.charges_without_key as u64,
            ),
            (
                "unrefunded charges of unconfirmed orders",
                self.unrefunded_charges as u64,
            ),
            (
                "confirmed orders never charged",
                self.confirmed_without_charge as u64,
            ),
            (
                "notifications lost (webhook log)",
                self.notifications_lost as u64,
            ),
            (
                "notifications duplicated (distinct event ids)",
                self.notifications_duplicated as u64,
            ),
            (
                "webhook requests unsigned or malformed",
                self.webhook_bad_requests,
            ),
            (
                "views disagreeing with topics",
                self.views_disagreeing as u64,
            ),
            ("orderpipe verify violations", self.verify_violations as u64),
            (
                "orderpipe verify exit non-zero",
                self.verify_exit_nonzero as u64,
            ),
            (
                "client errors (unexpected answers)",
                self.client_errors as u64,
            ),
            (
                "orders abandoned by clients (no 202 in 120 s)",
                self.orders_abandoned,
            ),
            ("same key acknowledged under two ids", self.same_key_two_ids),
            (
                "processes that panicked (logs)",
                self.processes_panicked as u64,
            ),
            (
                "secrets (payment token, webhook secret) in logs or metrics",
                self.secrets_in_logs_or_metrics as u64,
            ),
            ("faults that could not be applied", self.fault_errors as u64),
        ]
    }
}

fn terminal_status(event: &OrderEvent) -> Option<&'static str> {
    match event {
        OrderEvent::OrderConfirmed(_) => Some("confirmed"),
        OrderEvent::OrderRejected(_) => Some("rejected"),
        OrderEvent::OrderCancelled(_) => Some("cancelled"),
        _ => None,
    }
}

/// Distinct terminal events of each order (repeats of one event_id count once).
fn terminals(history: &orderpipe_ops::verify::History) -> HashMap<Uuid, Vec<&'static str>> {
    history
        .orders
        .iter()
        .map(|(id, events)| {
            let mut seen = BTreeSet::new();
            let statuses = events
                .iter()
                .filter_map(|e| terminal_status(&e.event).filter(|_| seen.insert(e.event_id)))
                .collect();
            (*id, statuses)
        })
        .collect()
}

async fn read_history(
    bootstrap: &str,
    topics: &Topics,
) -> anyhow::Result<orderpipe_ops::verify::History> {
    let (bootstrap, topics) = (bootstrap.to_string(), topics.clone());
    tokio::task::spawn_blocking(move || {
        orderpipe_ops::verify::read_history(&bootstrap, &topics, Duration::from_secs(90))
    })
    .await?
}

// ---------------------------------------------------------------------------------------------

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
    let result = sale(&args, soak, &bin, &logs, testbed.as_ref(), started_up).await;
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

#[allow(clippy::too_many_lines)]
async fn sale(
    args: &SaleArgs,
    soak: bool,
    bin: &Path,
    logs: &Path,
    testbed: Option<&Testbed>,
    started_up: Instant,
) -> anyhow::Result<bool> {
    let bootstrap = match (&args.kafka_bootstrap, testbed) {
        (Some(b), _) => b.clone(),
        (None, Some(t)) => t.bootstrap(),
        (None, None) => unreachable!("a testbed or a bootstrap"),
    };
    let scylla = match testbed.and_then(|t| t.cql) {
        Some((port, _)) => format!("127.0.0.1:{port}"),
        None => args.scylla_nodes.clone(),
    };
    let stamp = chrono::Utc::now().format("%m%d%H%M%S").to_string();
    let prefix = format!("chaos{}x{stamp}.", args.seed);
    let keyspace = format!("chaos_{}_{stamp}", args.seed);
    let topics = Topics::with_prefix(prefix.clone());
    let replication = if testbed.is_some() { args.brokers } else { 1 };

    // Gateway simulator (HTTP, in this process) and webhook receiver.
    let shutdown = CancellationToken::new();
    let gateway = Arc::new(SimulatedGateway::new(SimConfig {
        latency: Duration::from_millis(2),
        decline_rate: args.decline_rate,
        seed: args.seed,
    }));
    let gateway_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway_addr = gateway_listener.local_addr()?;
    tokio::spawn(gateway_sim::serve(
        gateway_listener,
        gateway.clone(),
        shutdown.clone(),
    ));
    let secret = format!("whsec-chaos-{}", Uuid::new_v4().simple());
    let receiver = Receiver {
        secret: Arc::new(secret.clone()),
        log: Arc::default(),
        bad: Arc::default(),
    };
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let webhook_addr = hook_listener.local_addr()?;
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(receiver.clone());
    let hook_shutdown = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(hook_listener, router)
            .with_graceful_shutdown(hook_shutdown.cancelled_owned())
            .await
    });

    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let procs = Procs {
        bin: bin.to_path_buf(),
        logs: logs.to_path_buf(),
        common: vec![
            "--kafka-bootstrap".into(),
            bootstrap.clone(),
            "--topic-prefix".into(),
            prefix.clone(),
            "--scylla-nodes".into(),
            scylla.clone(),
            "--keyspace".into(),
            keyspace.clone(),
            "--processing".into(),
            "exactly-once".into(),
            "--partitions".into(),
            args.partitions.to_string(),
            "--replication-factor".into(),
            replication.to_string(),
            "--ingest-rate-limit".into(),
            "0".into(),
        ],
        admin: Comp::ALL.iter().map(|c| (*c, addr(free_port()))).collect(),
        ingest: [addr(free_port()), addr(free_port())],
        query: addr(free_port()),
        gateway: gateway_addr,
        webhook: webhook_addr,
        secret,
        log_filter: args.log.clone(),
        children: Mutex::default(),
    };

    // Ingest 1 creates the topics; then everything else.
    procs.start(Comp::Ingest1)?;
    procs
        .wait_ready(Comp::Ingest1, Duration::from_secs(120))
        .await?;
    for comp in &Comp::ALL[1..] {
        procs.start(*comp)?;
    }
    for comp in Comp::ALL {
        procs.wait_ready(comp, Duration::from_secs(180)).await?;
    }
    let count = (args.rate * args.duration as f64).round() as usize;
    let specs = orders(
        args.seed,
        count,
        args.skus,
        if soak { 0.0 } else { args.cancel_rate },
    );
    let demand: u64 = specs
        .iter()
        .flat_map(|s| s.lines.iter().map(|(_, q)| u64::from(*q)))
        .sum();
    let per_sku = args
        .stock
        .unwrap_or_else(|| ((demand / u64::from(args.skus) / 2).max(5)) as u32);
    let mut stocked = BTreeMap::new();
    for sku in 0..args.skus {
        let name = format!("SKU-{sku}");
        orderpipe_processors::stock::set_stock(
            &bootstrap,
            &topics,
            &name,
            StockAdjustment::Set { quantity: per_sku },
            None,
        )
        .await
        .with_context(|| format!("stock set {name}"))?;
        stocked.insert(name, u64::from(per_sku));
    }
    say(format!(
        "pipeline up in {:.0} s: {} processes, topic prefix {prefix}, keyspace {keyspace}, {} SKUs x {per_sku} units, {count} orders at {}/s for {} s",
        started_up.elapsed().as_secs_f64(), Comp::ALL.len(), args.skus, args.rate, args.duration
    ));

    // The schedule.
    let faults = if soak {
        Vec::new()
    } else {
        plan::plan(Shape {
            seed: args.seed,
            duration_ms: args.duration * 1000,
            brokers: args.brokers,
            broker_faults: testbed.is_some(),
            cql_restart: testbed.is_some_and(|t| t.cql.is_some()),
        })
    };
    if !soak {
        say(format!(
            "fault schedule of seed {} ({} faults):",
            args.seed,
            faults.len()
        ));
        for f in &faults {
            eprintln!("    {f}");
        }
    }

    // Go.
    let started = Instant::now();
    let sale_state = Arc::new(Sale::default());
    let done = Arc::new(Mutex::new(Done::default()));
    let procs = Arc::new(procs);
    let testbed_ptr: Option<Arc<Testbed>> = testbed.map(|t| {
        Arc::new(Testbed {
            dir: t.dir.clone(),
            kafka_port: t.kafka_port,
            controller_port: t.controller_port,
            brokers: t.brokers,
            cql: t.cql,
        })
    });
    let mut by_actor: BTreeMap<String, Vec<Fault>> = BTreeMap::new();
    for f in faults {
        by_actor.entry(f.action.actor()).or_default().push(f);
    }
    let mut actors = Vec::new();
    for (_, list) in by_actor {
        let (procs, done, testbed) = (procs.clone(), done.clone(), testbed_ptr.clone());
        actors.push(tokio::spawn(async move {
            for fault in list {
                tokio::time::sleep_until((started + Duration::from_millis(fault.at_ms)).into())
                    .await;
                apply(fault, &procs, testbed.as_deref(), &done, started).await;
            }
        }));
    }
    // Soak: memory and latency per interval.
    let samples: Arc<Mutex<Vec<(f64, BTreeMap<&'static str, u64>)>>> = Arc::default();
    let sampler = {
        let (procs, samples, stop) = (procs.clone(), samples.clone(), shutdown.clone());
        let every = Duration::from_secs(if soak { args.interval.max(5) } else { 10 });
        tokio::spawn(async move {
            loop {
                let rss: BTreeMap<&'static str, u64> = Comp::ALL
                    .iter()
                    .filter_map(|c| Some((c.name(), rss_kib(procs.pid(*c)?)?)))
                    .collect();
                samples
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), rss));
                tokio::select! { _ = tokio::time::sleep(every) => {}, _ = stop.cancelled() => return }
            }
        })
    };
    let supervised: Arc<Mutex<Vec<String>>> = Arc::default();
    let supervisor = {
        let (procs, supervised, stop) = (procs.clone(), supervised.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                for (comp, status) in procs.restart_exited() {
                    let line = format!(
                        "{:7.1}s  {} exited on its own ({status}): {}; started again",
                        started.elapsed().as_secs_f64(),
                        comp.name(),
                        procs.last_error(comp)
                    );
                    say(&line);
                    supervised.lock().unwrap().push(line);
                }
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = stop.cancelled() => return }
            }
        })
    };
    let mut clients = Vec::with_capacity(count);
    let mut progress = Instant::now();
    for (i, spec) in specs.iter().cloned().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        clients.push(tokio::spawn(place(
            sale_state.clone(),
            procs.ingest,
            i,
            spec,
            due,
            started,
        )));
        if progress.elapsed() > Duration::from_secs(10) {
            progress = Instant::now();
            say(format!(
                "{:5.0}s  {} sent, {} acked, {} retries after 503, {} after a cut connection",
                started.elapsed().as_secs_f64(),
                i + 1,
                sale_state.acked.lock().unwrap().len(),
                sale_state.retried_503.load(Ordering::Relaxed),
                sale_state.retried_cut.load(Ordering::Relaxed)
            ));
        }
    }
    say("every order sent; waiting for the clients and the fault schedule to finish");
    for actor in actors {
        actor.await?;
    }
    // Whatever the gateway was told, it answers from now on.
    let _ = gateway_fault(
        procs.gateway,
        r#"{"fail_next": 0, "fail_for_ms": 0, "status": 503}"#,
    )
    .await;
    for client in clients {
        client.await?;
    }
    let sale_secs = started.elapsed().as_secs_f64();
    let acked: HashMap<Uuid, usize> = sale_state.acked.lock().unwrap().clone();
    say(format!(
        "sale over after {sale_secs:.0} s: {} orders acknowledged; waiting for quiescence",
        acked.len()
    ));
    for comp in Comp::ALL {
        procs.wait_ready(comp, Duration::from_secs(180)).await?;
    }

    // Quiescence: every acknowledged order terminal, nothing in flight for the audit, every
    // terminal order's notification received; then once more a few seconds later for late repeats.
    let settle_deadline = Instant::now() + Duration::from_secs(args.settle_timeout);
    let window = orderpipe_ops::verify::Window {
        settle: Duration::ZERO,
        ..Default::default()
    };
    let mut quiet_since: Option<Instant> = None;
    let history = loop {
        let history = read_history(&bootstrap, &topics).await?;
        let terms = terminals(&history);
        let delivered: BTreeSet<Uuid> = receiver
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.kind != "refunded")
            .map(|d| d.order_id)
            .collect();
        let unsettled = acked
            .keys()
            .filter(|id| terms.get(id).is_none_or(Vec::is_empty))
            .count();
        let undelivered = terms
            .iter()
            .filter(|(id, t)| !t.is_empty() && !delivered.contains(id))
            .count();
        let report = orderpipe_ops::verify::audit(
            &history,
            &orderpipe_ops::verify::Window {
                now: chrono::Utc::now(),
                ..window.clone()
            },
        );
        let quiet = unsettled == 0 && undelivered == 0 && report.ok();
        match (quiet, quiet_since) {
            (true, Some(since)) if since.elapsed() > Duration::from_secs(5) => break history,
            (true, None) => quiet_since = Some(Instant::now()),
            (true, Some(_)) => {}
            (false, _) => quiet_since = None,
        }
        if Instant::now() > settle_deadline {
            say(format!("not quiet after {} s: {unsettled} acked orders without a terminal state, {undelivered} notifications not received, {} audit violations", args.settle_timeout, report.violations.len()));
            break history;
        }
        tokio::time::sleep(Duration::from_secs(if quiet { 2 } else { 5 })).await;
    };
    let settle_secs = started.elapsed().as_secs_f64() - sale_secs;

    // The checks.
    let mut counts = Counts::default();
    let terms = terminals(&history);
    counts.acked_missing_from_topic = acked
        .keys()
        .filter(|id| {
            !history.orders.get(id).is_some_and(|events| {
                events
                    .iter()
                    .any(|e| matches!(e.event, OrderEvent::OrderPlaced(_)))
            })
        })
        .count();
    counts.orders_not_exactly_one_terminal = acked
        .keys()
        .chain(history.orders.keys().filter(|id| !acked.contains_key(id)))
        .filter(|id| terms.get(id).map_or(0, Vec::len) != 1)
        .count();
    let placed_lines = |id: &Uuid| -> Vec<(String, u32)> {
        history
            .orders
            .get(id)
            .into_iter()
            .flatten()
            .find_map(|e| match &e.event {
                OrderEvent::OrderPlaced(p) => Some(
                    p.lines
                        .iter()
                        .map(|l| (l.sku.clone(), l.quantity))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    };
    let mut confirmed_units: BTreeMap<String, u64> = BTreeMap::new();
    let mut status_of: HashMap<Uuid, &'static str> = HashMap::new();
    for (id, t) in &terms {
        if let [status] = t.as_slice() {
            status_of.insert(*id, status);
            if *status == "confirmed" {
                for (sku, q) in placed_lines(id) {
                    *confirmed_units.entry(sku).or_default() += u64::from(q);
                }
            }
        }
    }
    counts.units_oversold = stocked
        .iter()
        .map(|(sku, units)| {
            confirmed_units
                .get(sku)
                .copied()
                .unwrap_or(0)
                .saturating_sub(*units)
        })
        .sum();
    let ledgers = gateway.ledgers();
    for (id, ledger) in &ledgers {
        counts.double_charges += usize::from(
            ledger
                .charges
                .iter()
                .filter(|c| c.idempotency_key.is_some())
                .count()
                > 1,
        );
        counts.charges_without_key += ledger
            .requests
            .iter()
            .filter(|r| r.idempotency_key.is_none())
            .count();
        let confirmed = status_of.get(id) == Some(&"confirmed");
        counts.unrefunded_charges +=
            usize::from(!confirmed && ledger.charges.iter().any(|c| !c.refunded));
    }
    counts.confirmed_without_charge = status_of
        .iter()
        .filter(|(id, s)| {
            **s == "confirmed" && ledgers.get(id).is_none_or(|l| l.charges.is_empty())
        })
        .count();
    // Webhook log: one distinct outcome notification per terminal order, of the outcome's kind.
    let deliveries = receiver.log.lock().unwrap().clone();
    let mut by_order: HashMap<Uuid, BTreeMap<String, BTreeSet<Uuid>>> = HashMap::new();
    for d in &deliveries {
        by_order
            .entry(d.order_id)
            .or_default()
            .entry(d.kind.clone())
            .or_default()
            .insert(d.event_id);
    }
    for (id, status) in &status_of {
        let kind = format!("order_{status}");
        match by_order
            .get(id)
            .and_then(|k| k.get(&kind))
            .map_or(0, BTreeSet::len)
        {
            0 => counts.notifications_lost += 1,
            1 => {}
            _ => counts.notifications_duplicated += 1,
        }
        let other_outcomes = by_order.get(id).map_or(0, |k| {
            k.keys().filter(|k| **k != kind && *k != "refunded").count()
        });
        counts.notifications_duplicated += other_outcomes;
    }
    counts.webhook_bad_requests = receiver.bad.load(Ordering::Relaxed);
    let redeliveries = deliveries.len()
        - by_order
            .values()
            .flat_map(|k| k.values())
            .map(BTreeSet::len)
            .sum::<usize>();

    // Views: a seeded sample of orders in the query API, and every SKU's sold units.
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0x0051_E115);
    let mut sample: Vec<Uuid> = status_of.keys().copied().collect();
    sample.sort();
    let sample: Vec<Uuid> = (0..args.view_sample.min(sample.len()))
        .map(|_| sample[rng.random_range(0..sample.len())])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let view_deadline = Instant::now() + Duration::from_secs(90);
    let mut disagreeing: Vec<String> = Vec::new();
    for id in &sample {
        let expected = status_of[id];
        let total: i64 = placed_lines(id)
            .iter()
            .map(|(_, q)| i64::from(*q) * 1000)
            .sum();
        let mut last = String::new();
        let ok = loop {
            match http::request(
                procs.query,
                "GET",
                &format!("/v1/orders/{id}"),
                &[],
                None,
                Duration::from_secs(5),
            )
            .await
            {
                Ok(reply) if reply.status == 200 => {
                    let view = reply.json();
                    if view["status"] == expected && view["total_minor"] == total {
                        break true;
                    }
                    last = format!("{} {}", view["status"], view["total_minor"]);
                }
                Ok(reply) => last = format!("{} {}", reply.status, reply.body),
                Err(err) => last = err,
            }
            if Instant::now() > view_deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if !ok {
            disagreeing.push(format!(
                "order {id}: topics say {expected} total {total}, view says {last}"
            ));
        }
    }
    for (sku, units) in &stocked {
        let sold = confirmed_units.get(sku).copied().unwrap_or(0);
        let mut last = String::new();
        let ok = loop {
            match http::request(
                procs.query,
                "GET",
                &format!("/v1/stock/{sku}"),
                &[],
                None,
                Duration::from_secs(5),
            )
            .await
            {
                Ok(reply) if reply.status == 200 => {
                    let view = reply.json();
                    if view["sold"] == sold
                        && view["reserved"] == 0
                        && view["available"] == units - sold
                    {
                        break true;
                    }
                    last = view.to_string();
                }
                Ok(reply) => last = format!("{} {}", reply.status, reply.body),
                Err(err) => last = err,
            }
            if Instant::now() > view_deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        if !ok {
            disagreeing.push(format!(
                "{sku}: topics say sold {sold} of {units}, view says {last}"
            ));
        }
    }
    counts.views_disagreeing = disagreeing.len();

    let report = orderpipe_ops::verify::audit(
        &history,
        &orderpipe_ops::verify::Window {
            now: chrono::Utc::now(),
            ..window
        },
    );
    counts.verify_violations = report.violations.len();
    let verify = Command::new(bin)
        .args([
            "verify",
            "--settle",
            "0s",
            "--read-timeout",
            "90s",
            "--kafka-bootstrap",
            &bootstrap,
            "--topic-prefix",
            &prefix,
        ])
        .env("RUST_LOG", "warn")
        .output()?;
    counts.verify_exit_nonzero = usize::from(!verify.status.success());
    let client_errors = sale_state.client_errors.lock().unwrap().clone();
    counts.client_errors = client_errors.len();
    counts.orders_abandoned = sale_state.abandoned.load(Ordering::Relaxed);
    counts.same_key_two_ids = sale_state.same_key_other_id.load(Ordering::Relaxed);
    supervisor.abort();
    let supervised = supervised.lock().unwrap().clone();
    let panics: Vec<String> = Comp::ALL
        .iter()
        .filter_map(|c| {
            let log = std::fs::read_to_string(procs.logs.join(format!("{}.log", c.name()))).ok()?;
            let line = log.lines().find(|l| l.contains("panicked at"))?;
            Some(format!("{}: {line}", c.name()))
        })
        .collect();
    counts.processes_panicked = panics.len();
    // Secrets: the payment token every order carries and the webhook secret never appear in a
    // process's log or metrics.
    let mut leaks = Vec::new();
    for comp in Comp::ALL {
        let log = std::fs::read_to_string(procs.logs.join(format!("{}.log", comp.name())))
            .unwrap_or_default();
        let metrics = http::request(
            procs.admin[&comp],
            "GET",
            "/metrics",
            &[],
            None,
            Duration::from_secs(5),
        )
        .await
        .map(|r| r.body)
        .unwrap_or_default();
        for (what, text) in [("log", &log), ("metrics", &metrics)] {
            for secret in ["tok_chaos_secret_4242", procs.secret.as_str()] {
                if text.contains(secret) {
                    leaks.push(format!("{} {what} holds {secret:.12}...", comp.name()));
                }
            }
        }
    }
    counts.secrets_in_logs_or_metrics = leaks.len();
    let done = std::mem::take(&mut *done.lock().unwrap());
    counts.fault_errors = done.errors.len();

    // What it did.
    let totals = gateway.totals();
    let [confirmed, rejected, cancelled] = ["confirmed", "rejected", "cancelled"]
        .map(|s| status_of.values().filter(|v| **v == s).count());
    let faults_served = http::request(
        procs.gateway,
        "GET",
        "/v1/charges/stats",
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    .map(|r| r.json()["faults_served"].as_u64().unwrap_or(0))
    .unwrap_or(0);
    println!(
        "== orderpipe chaos {} (seed {}, {} s, {} broker(s){}) ==",
        if soak { "soak" } else { "flash sale" },
        args.seed,
        args.duration,
        if testbed.is_some() {
            args.brokers.to_string()
        } else {
            "shared".into()
        },
        if testbed.is_some_and(|t| t.cql.is_some()) {
            ", private CQL"
        } else {
            ", shared CQL: not restarted"
        }
    );
    println!("orders: {count} sent, {} acked, {} cancellations acked; {confirmed} confirmed, {rejected} rejected, {cancelled} cancelled", acked.len(), sale_state.cancels_acked.load(Ordering::Relaxed));
    println!("client retries: {} after 503, {} after 429, {} after a cut connection or timeout ({} requests)", sale_state.retried_503.load(Ordering::Relaxed), sale_state.retried_429.load(Ordering::Relaxed), sale_state.retried_cut.load(Ordering::Relaxed), sale_state.attempts.load(Ordering::Relaxed));
    println!(
        "stock: {} SKUs x {per_sku}; sold {} units",
        stocked.len(),
        confirmed_units.values().sum::<u64>()
    );
    println!("gateway: {} charge requests, {} charges kept, {} refunds, {faults_served} requests failed by injected faults", totals.charge_attempts, totals.charges, totals.refunds);
    println!(
        "webhook: {} deliveries, {redeliveries} redeliveries of an event id already received",
        deliveries.len()
    );
    let kills: u32 = done.kills.values().sum();
    println!(
        "kills: {kills} ({})",
        done.kills
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "restarts: {} components, {} broker stops + {} starts, {} gateway faults, {} CQL restarts",
        done.restarts.values().sum::<u32>(),
        done.broker_stops,
        done.broker_starts,
        done.gateway_faults,
        done.cql_restarts
    );
    println!(
        "supervisor: {} restarts of processes that exited on their own",
        supervised.len()
    );
    for line in &supervised {
        println!("  {line}");
    }
    println!("time: sale {sale_secs:.0} s, settle {settle_secs:.0} s");
    if soak {
        print_soak(
            &samples.lock().unwrap(),
            &sale_state.ack_ms.lock().unwrap(),
            args.interval.max(5) as f64,
        );
    }
    println!("-- checks --");
    for (name, n) in counts.rows() {
        println!("{n:>6}  {name}");
    }
    for line in disagreeing.iter().take(10) {
        println!("  view: {line}");
    }
    for line in client_errors.iter().take(10) {
        println!("  client: {line}");
    }
    for line in &done.errors {
        println!("  fault: {line}");
    }
    for line in &leaks {
        println!("  leak: {line}");
    }
    for line in &panics {
        println!("  panic: {line}");
    }
    if !report.ok() || !verify.status.success() {
        print!("{}", orderpipe_ops::verify::render(&report));
        print!("{}", String::from_utf8_lossy(&verify.stdout));
    }
    let ok = counts.rows().iter().all(|(_, n)| *n == 0);
    println!(
        "result: {}",
        if ok {
            "PASS (every count is 0)"
        } else {
            "FAIL"
        }
    );
    shutdown.cancel();
    sampler.abort();
    procs.stop_all();
    // Leave the shared CQL server as it was: drop this run's keyspace.
    if testbed.is_none_or(|t| t.cql.is_none()) {
        drop_keyspace(&scylla, &keyspace).await;
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

fn print_soak(samples: &[(f64, BTreeMap<&'static str, u64>)], acks: &[(f64, u64)], interval: f64) {
    println!("-- soak: resident memory (MiB) per process over time --");
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        for (name, start) in &first.1 {
            let end = last.1.get(name).copied().unwrap_or(0);
            println!(
                "{name:>14}: {:7.1} -> {:7.1} MiB ({:+.1}%)",
                *start as f64 / 1024.0,
                end as f64 / 1024.0,
                (end as f64 / (*start).max(1) as f64 - 1.0) * 100.0
            );
        }
    }
    println!(
        "-- soak: acknowledgement latency from intended send time, per {interval:.0} s interval --"
    );
    let mut buckets: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (at, ms) in acks {
        buckets.entry((at / interval) as u64).or_default().push(*ms);
    }
    let mut first_p99 = None;
    for (bucket, mut lat) in buckets {
        lat.sort_unstable();
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        let p99 = q(0.99);
        let base = *first_p99.get_or_insert(p99);
        println!(
            "  {:6.0}s  n={:6}  p50 {:5} ms  p99 {:5} ms  max {:5} ms  p99 drift {:+.0}%",
            bucket as f64 * interval,
            lat.len(),
            q(0.5),
            p99,
            lat[lat.len() - 1],
            (p99 as f64 / base.max(1) as f64 - 1.0) * 100.0
        );
    }
}
