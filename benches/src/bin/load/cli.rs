//! The command line: subcommands, mode and the arguments of a run and a cleanup.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "orderpipe-load",
    about = "Load generator for the orderpipe ingest API"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Send orders (open or closed loop) and report latencies.
    Run(LoadArgs),
    /// Delete every pipeline topic under a prefix (after a bench run of `orderpipe run`).
    Cleanup(CleanupArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    Open,
    Closed,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct LoadArgs {
    /// Base URL of the ingest API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub(crate) ingest_url: String,
    /// Base URL of the query API (for `--e2e-sample`).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub(crate) query_url: String,
    /// Open loop (fixed arrival rate) or closed loop (maximum throughput).
    #[arg(long, value_enum, default_value_t = Mode::Open)]
    pub(crate) mode: Mode,
    /// Orders per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub(crate) rate: f64,
    /// Duration of the measurement, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// Clients of the closed loop.
    #[arg(long, default_value_t = 64)]
    pub(crate) connections: usize,
    /// Most orders pending at once in the open loop; past it, due orders are dropped and counted.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) max_in_flight: u64,
    /// SKUs in the catalogue.
    #[arg(long, default_value_t = 50)]
    pub(crate) skus: u32,
    /// Zipf exponent of SKU popularity (rank 1 is the hottest).
    #[arg(long, default_value_t = 1.1)]
    pub(crate) zipf: f64,
    /// SKU name prefix (`<prefix>1` is the hottest).
    #[arg(long, default_value = "FS-")]
    pub(crate) sku_prefix: String,
    /// Most lines per order (1 to this many, distinct SKUs).
    #[arg(long, default_value_t = 3)]
    pub(crate) max_lines: u32,
    /// Most units per line.
    #[arg(long, default_value_t = 2)]
    pub(crate) max_quantity: u32,
    /// Customers in the pool (uniform).
    #[arg(long, default_value_t = 5000)]
    pub(crate) customers: u32,
    /// Before the load: set every SKU's stock to this many units (needs --kafka-bootstrap).
    #[arg(long)]
    pub(crate) set_stock: Option<u32>,
    /// With --set-stock: most units of a SKU one customer may hold.
    #[arg(long)]
    pub(crate) customer_limit: Option<u32>,
    /// Kafka bootstrap servers (for --set-stock).
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub(crate) kafka_bootstrap: String,
    /// Topic prefix of the pipeline under load (for --set-stock).
    #[arg(long, env = "ORDERPIPE_TOPIC_PREFIX", default_value = "")]
    pub(crate) topic_prefix: String,
    /// Retries of an order after 503/429 or a transport error, with the same Idempotency-Key.
    #[arg(long, default_value_t = 3)]
    pub(crate) retries: u32,
    /// Longest wait before a retry (the server's Retry-After is honoured up to this).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) retry_cap: Duration,
    /// Fraction of acknowledged orders followed to a terminal status in the query API.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) e2e_sample: f64,
    /// How long an order is followed before it counts as `e2e_timeout`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) e2e_timeout: Duration,
    /// Seed of the scenario's random choices.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/bench/load.json")]
    pub(crate) json: PathBuf,
    /// Label of this run in the report.
    #[arg(long, default_value = "load")]
    pub(crate) label: String,
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Topic prefix of the pipeline whose topics go.
    #[arg(long)]
    pub(crate) topic_prefix: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub(crate) kafka_bootstrap: String,
    /// A keyspace to drop as well (the views of the pipeline under load).
    #[arg(long)]
    pub(crate) keyspace: Option<String>,
    /// CQL contact points (for --keyspace).
    #[arg(long, env = "SCYLLA_NODES", default_value = "127.0.0.1:9042")]
    pub(crate) scylla_nodes: String,
}
