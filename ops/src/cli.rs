//! Command line of the `orderpipe` binary. Every flag has an environment variable; `--help` lists them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::components::Component;

/// orderpipe: an event-sourced order pipeline for flash sales.
#[derive(Debug, Parser)]
#[command(name = "orderpipe", version, about)]
pub struct Cli {
    /// Log filter in `tracing` syntax (e.g. `info`, `orderpipe=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
// Parsed once at start-up: the size difference between variants costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run pipeline components in this process until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Stock administration.
    #[command(subcommand)]
    Stock(StockCommand),
    /// Rebuild every view from offset 0 into a fresh keyspace (the live views and consumer groups
    /// are not touched); shows progress, prints a summary.
    Rebuild(RebuildArgs),
    /// Run the payment gateway simulator over HTTP (for `--payments-gateway http` in tests and demos).
    GatewaySim(orderpipe_processors::payments::GatewaySimArgs),
    /// Audit the pipeline's invariants from the topics (read_committed): one terminal state per
    /// order, nothing held or charged for orders that did not go through, no double charge, one
    /// notification per outcome, no SKU oversold. Exit 1 on any violation.
    Verify(VerifyArgs),
    /// Dead letters of a stage: list them, show one (headers and the original event decoded),
    /// redrive chosen ones to the stage's input exactly once (a second redrive is refused).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Consumer lag per group and partition, for every stage and both projectors: committed
    /// offset vs end offset, and the age of the oldest unprocessed record.
    Lag(LagArgs),
    /// The pipeline's topics: create them from the topic plan, or compare the cluster with it.
    #[command(subcommand)]
    Topics(TopicsCommand),
}

/// `orderpipe lag`.
#[derive(Debug, Args)]
pub struct LagArgs {
    /// Consumer group prefix of the projectors (`<group>.orders`, `<group>.stock`).
    #[arg(long, env = "ORDERPIPE_PROJECTIONS_GROUP", default_value = "orderpipe-projections")]
    pub projections_group: String,
    /// Print JSON (one object per group and partition) instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connections: Connections,
}

/// `orderpipe topics ...`.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every planned topic that is missing (idempotent: existing topics are left alone).
    Create(TopicsArgs),
    /// Each planned topic's partitions, replication and cleanup.policy on the cluster, and its
    /// drift from the plan (missing, fewer partitions, less replication, wrong cleanup policy).
    /// Exit 1 on any drift.
    Describe(TopicsArgs),
}

/// The topic plan's inputs: prefix, partitions, replication (the `--ingest-*` flags `run` uses).
#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// Print JSON instead of the table (`describe`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connections: Connections,
    /// Partitions and replication the plan asks for (`create` also needs `--create-topics`'s
    /// default, true).
    #[command(flatten)]
    pub topics: orderpipe_runtime::kafka::TopicSettings,
    #[command(flatten)]
    pub ingest: orderpipe_ingest::Config,
}

/// `orderpipe dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// One line per dead letter of the stage: id, time, reason, source, whether redriven.
    List(DlqSelect),
    /// Each chosen letter (`--id`, default all) in full: headers, key, the original bytes
    /// decoded as an event (or why they do not decode).
    Show(DlqSelect),
    /// Send chosen letters back to their source topic (the stage's input) with their original
    /// key and bytes, in one Kafka transaction with a marker in `<stage>.dlq.redriven`: each
    /// letter at most once. `--all` redrives every letter not yet redriven and asks first
    /// (or needs `--yes`).
    Redrive(DlqRedriveArgs),
}

/// A stage whose dead letters `orderpipe dlq` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DlqStage {
    /// `stock.dlq`.
    Stock,
    /// `payments.dlq`.
    Payments,
    /// `saga.dlq`.
    Saga,
    /// `notifications.dlq`.
    Notifications,
    /// `projections.dlq` (undecodable events the projectors skipped).
    Projections,
}

impl DlqStage {
    /// The stage name in topic names.
    pub fn name(self) -> &'static str {
        match self {
            DlqStage::Stock => "stock",
            DlqStage::Payments => "payments",
            DlqStage::Saga => "saga",
            DlqStage::Notifications => "notifications",
            DlqStage::Projections => "projections",
        }
    }
}

/// Which letters of which stage.
#[derive(Debug, Args)]
pub struct DlqSelect {
    /// The stage.
    #[arg(long, env = "ORDERPIPE_DLQ_STAGE", value_enum)]
    pub stage: DlqStage,
    /// A letter, as `PARTITION/OFFSET` in `<stage>.dlq` (the `id` column of `dlq list`);
    /// repeatable or comma-separated.
    #[arg(long = "id", value_delimiter = ',', conflicts_with = "all")]
    pub ids: Vec<crate::dlq::LetterId>,
    /// Every letter of the stage (for `redrive`: every letter not yet redriven).
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of text (`list`, `show`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connections: Connections,
}

/// `orderpipe dlq redrive`.
#[derive(Debug, Args)]
pub struct DlqRedriveArgs {
    #[command(flatten)]
    pub select: DlqSelect,
    /// Show what would be sent, send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask before a bulk (`--all`) redrive.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Replication factor of `<stage>.dlq.redriven` when the first redrive creates it.
    #[arg(long, env = "ORDERPIPE_DLQ_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,
}

/// `orderpipe verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Audit only orders placed at or after this time (RFC 3339).
    #[arg(long)]
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// Audit only orders placed before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// An order younger than this without a terminal state counts as in flight, not as a violation.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Give up reading the topics after this long (an open transaction holds read_committed back).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,
    /// Print the report as JSON (for machines) instead of the summary table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connections: Connections,
}

/// `orderpipe rebuild --into KEYSPACE`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Keyspace to build the views into (created when missing; must differ from `--keyspace`).
    #[arg(long = "into")]
    pub target_keyspace: String,
    #[command(flatten)]
    pub connections: Connections,
    #[command(flatten)]
    pub projections: orderpipe_projections::Config,
}

/// `orderpipe stock ...`.
// Parsed once at start-up: `show` carries the projections config; not worth boxing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum StockCommand {
    /// Set the available units of a SKU (emits `stock_adjusted`; the stock stage applies it).
    Set(StockSetArgs),
    /// Add (or with a negative DELTA remove) available units of a SKU (emits `stock_adjusted`;
    /// available units never go below 0).
    Adjust(StockAdjustArgs),
    /// A SKU's stock as the query view has it (read from the CQL cluster, as
    /// `GET /v1/stock/{sku}` would answer; no running service needed).
    Show(StockShowArgs),
}

/// `orderpipe stock adjust SKU DELTA [--limit N]`.
#[derive(Debug, Args)]
pub struct StockAdjustArgs {
    /// The SKU.
    pub sku: String,
    /// Units to add (e.g. `5`) or remove (e.g. `-5`).
    #[arg(allow_negative_numbers = true)]
    pub delta: i64,
    /// Most units one customer may buy of this SKU (no flag: no limit).
    #[arg(long)]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub connections: Connections,
}

/// `orderpipe stock show SKU`.
#[derive(Debug, Args)]
pub struct StockShowArgs {
    /// The SKU.
    pub sku: String,
    /// Print the view as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub connections: Connections,
    #[command(flatten)]
    pub projections: orderpipe_projections::Config,
}

/// `orderpipe stock set SKU QTY [--limit N]`.
#[derive(Debug, Args)]
pub struct StockSetArgs {
    /// The SKU.
    pub sku: String,
    /// Units available for sale.
    pub quantity: u32,
    /// Most units one customer may buy of this SKU (no flag: no limit).
    #[arg(long)]
    pub limit: Option<u32>,
    #[command(flatten)]
    pub connections: Connections,
}

/// `orderpipe run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Components to run, comma-separated. Default: every component this build provides.
    #[arg(long, env = "ORDERPIPE_COMPONENTS", value_delimiter = ',', value_enum)]
    pub components: Vec<Component>,

    #[command(flatten)]
    pub connections: Connections,

    /// Topic creation, partitions and replication of every topic of the pipeline.
    #[command(flatten)]
    pub topics: orderpipe_runtime::kafka::TopicSettings,

    /// Address of the ingest HTTP API.
    #[arg(
        long,
        env = "ORDERPIPE_INGEST_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub ingest_listen: SocketAddr,

    /// Address of the query HTTP API.
    #[arg(long, env = "ORDERPIPE_QUERY_LISTEN", default_value = "127.0.0.1:8081")]
    pub query_listen: SocketAddr,

    /// Address of this process's `/metrics`, `/healthz` and `/readyz` (readiness of every
    /// component it runs: stages assigned and restored, projector lag under the threshold).
    #[arg(long, env = "ORDERPIPE_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    pub admin_listen: SocketAddr,

    #[command(flatten)]
    pub ingest: orderpipe_ingest::Config,

    #[command(flatten)]
    pub projections: orderpipe_projections::Config,

    #[command(flatten)]
    pub processors: orderpipe_processors::Config,

    #[command(flatten)]
    pub payments: orderpipe_processors::payments::PaymentsArgs,

    #[command(flatten)]
    pub saga: orderpipe_processors::saga::SagaArgs,

    #[command(flatten)]
    pub notifications: orderpipe_processors::notifications::NotificationsArgs,

    /// How long components get to finish in-flight work after a shutdown signal.
    #[arg(long, env = "ORDERPIPE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// Where the broker and the CQL cluster are. Production and the testbed differ only here.
#[derive(Debug, Clone, Args)]
pub struct Connections {
    /// Kafka bootstrap servers (host:port, comma-separated).
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,

    /// Prefix for every topic name (lets several pipelines share one cluster).
    #[arg(long, env = "ORDERPIPE_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// ScyllaDB / Cassandra contact points (host:port, comma-separated).
    #[arg(long, env = "SCYLLA_NODES", default_value = "127.0.0.1:9042")]
    pub scylla_nodes: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("orderpipe").chain(args.iter().copied()))
    }

    #[test]
    fn components_are_a_comma_separated_list() {
        let Command::Run(run) = parse(&["run", "--components", "ingest,query"])
            .unwrap()
            .command
        else {
            panic!("run expected")
        };
        assert_eq!(run.components, vec![Component::Ingest, Component::Query]);
    }

    #[test]
    fn unknown_component_is_a_clear_error() {
        let err = parse(&["run", "--components", "ingest,bogus"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(err.contains("possible values"), "{err}");
    }

    #[test]
    fn defaults_are_the_local_testbed() {
        let Command::Run(run) = parse(&["run"]).unwrap().command else {
            panic!("run expected")
        };
        assert!(run.components.is_empty());
        assert_eq!(run.ingest_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(run.query_listen.to_string(), "127.0.0.1:8081");
        // Environment may override these two in CI; only check the defaults when unset.
        if std::env::var_os("KAFKA_BOOTSTRAP").is_none() {
            assert_eq!(run.connections.kafka_bootstrap, "127.0.0.1:9092");
        }
        if std::env::var_os("SCYLLA_NODES").is_none() {
            assert_eq!(run.connections.scylla_nodes, "127.0.0.1:9042");
        }
    }

    #[test]
    fn stock_set_parses_sku_quantity_and_limit() {
        let Command::Stock(StockCommand::Set(set)) =
            parse(&["stock", "set", "SKU-1", "100", "--limit", "2"])
                .unwrap()
                .command
        else {
            panic!("stock set expected")
        };
        assert_eq!(
            (set.sku.as_str(), set.quantity, set.limit),
            ("SKU-1", 100, Some(2))
        );
        assert!(
            parse(&["stock", "set", "SKU-1", "-5"]).is_err(),
            "negative stock is refused"
        );
    }

    #[test]
    fn topic_flags_are_pipeline_wide_and_keep_their_old_names() {
        let run = |args: &[&str]| match parse(&[&["run"], args].concat()).map(|c| c.command) {
            Ok(Command::Run(run)) => Ok(run.topics),
            Ok(_) => panic!("run expected"),
            Err(err) => Err(err),
        };
        let t = run(&[
            "--partitions",
            "3",
            "--replication-factor",
            "2",
            "--create-topics=false",
        ])
        .unwrap();
        assert_eq!(
            (t.create, t.partitions, t.replication_factor),
            (false, 3, 2)
        );
        let old = run(&["--ingest-partitions", "3", "--ingest-create-topics=false"]).unwrap();
        assert_eq!((old.create, old.partitions), (false, 3));
        assert!(!run(&["--projections-create-dlq=false"]).unwrap().create);
        assert!(run(&["--create-topics"]).unwrap().create);
        assert!(run(&["--partitions", "0"]).is_err());
        assert!(run(&["--ingest-partitions", "0"]).is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
