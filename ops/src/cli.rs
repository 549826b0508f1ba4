//! Command line of the `orderpipe` binary. Every flag has an environment variable; `--help` lists them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use orderpipe_runtime::cql::Credentials;

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
    /// are not touched); shows progress, prints a summary. Same as `replay --from beginning`.
    Rebuild(RebuildArgs),
    /// Replay the topics into another keyspace's views, from the beginning or from a time onto a
    /// restored backup of the views; resumable (run it again after an interrupt). Then
    /// `orderpipe switch` points the query APIs at it.
    #[command(long_about = REPLAY_ABOUT)]
    Replay(ReplayArgs),
    /// Point every query API configured with `--keyspace` at another keyspace (or back), without
    /// downtime: they re-read the choice every `--query-keyspace-check-interval`. Asks first.
    Switch(SwitchArgs),
    /// Run the payment gateway simulator over HTTP (for `--payments-gateway http` in tests and demos).
    GatewaySim(orderpipe_gateway_sim::GatewaySimArgs),
    /// Audit the pipeline's invariants from the topics (read_committed): one terminal state per
    /// order, nothing held or charged for orders that did not go through, no double charge, one
    /// notification per outcome, no SKU oversold; with `--views KEYSPACE`, views equal to what the
    /// topics say (order status, stock). Exit 1 on any violation.
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
    #[arg(
        long,
        env = "ORDERPIPE_PROJECTIONS_GROUP",
        default_value = "orderpipe-projections"
    )]
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
    /// Also compare the views in this keyspace (on `--scylla-nodes`, read as the query API
    /// answers) with the topics: each settled order's status, each SKU's stock. Run it once
    /// `orderpipe lag` shows the projectors caught up (a lagging view counts as a violation).
    #[arg(long, value_name = "KEYSPACE")]
    pub views: Option<String>,
    #[command(flatten)]
    pub connections: Connections,
}

/// `orderpipe replay --help`.
const REPLAY_ABOUT: &str = "\
Replay the orders and/or stock topics into the views of another keyspace (--into), without moving
any live consumer group (partitions are assigned, nothing is committed). The live keyspace
(--keyspace) is never written.

Where it starts:
- KEYSPACE records how far replays into it got (replay_positions, written after every batch).
  With a record, the replay continues from it, whatever --from says: run the same command again
  after Ctrl-C, SIGTERM or a crash and it finishes the job (the last batch may be re-applied,
  which changes nothing: every write is stamped with its event's offset).
- Without a record, --from beginning replays every event: a full rebuild, valid into any keyspace.
- Without a record, --from TIME starts at the first event at or after TIME (offsets_for_times),
  and is only correct onto a keyspace that already holds the views as of TIME: a restored
  backup of the views. The views are not sums of the events (each cell is one event's value;
  stock is the stock stage's absolute snapshot), so an event left out is missing for good:
  replaying only the tail into an empty keyspace would lose every order placed and every stock
  level set before TIME, and is refused. Pick TIME at or before the moment the backup's views
  were complete (minus the projector lag then); earlier is always safe. Writing onto existing
  views asks first (or needs --yes).

It shows a progress bar (events/s, ETA) on a terminal, a progress line each second otherwise,
and stops at the partition ends seen when it started. Then:
  1. start a projector on KEYSPACE (orderpipe run --components projections --keyspace KEYSPACE
     --projections-group NEW_GROUP; a new group starts at offset 0 and re-applies, idempotently,
     what the replay already wrote) and wait until `orderpipe lag --projections-group NEW_GROUP`
     shows it caught up;
  2. orderpipe switch KEYSPACE --keyspace LIVE (every query API configured with LIVE follows);
  3. stop the old projector.";

/// Which projections a replay writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProjectionChoice {
    /// Orders, timelines, orders by customer, sales (reads the orders topic).
    Orders,
    /// Stock by SKU (reads the stock topic).
    Stock,
    /// Both.
    All,
}

impl ProjectionChoice {
    /// The projectors whose views are replayed.
    pub fn kinds(self) -> Vec<orderpipe_projections::ProjectorKind> {
        use orderpipe_projections::ProjectorKind;
        match self {
            ProjectionChoice::Orders => vec![ProjectorKind::Orders],
            ProjectionChoice::Stock => vec![ProjectorKind::Stock],
            ProjectionChoice::All => ProjectorKind::ALL.to_vec(),
        }
    }
}

/// `--from beginning` or an RFC 3339 time (`2026-12-05T10:00:00Z`, `2026-12-05T11:00:00+01:00`).
pub fn parse_replay_from(value: &str) -> Result<orderpipe_projections::ReplayFrom, String> {
    if value.eq_ignore_ascii_case("beginning") {
        return Ok(orderpipe_projections::ReplayFrom::Beginning);
    }
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| orderpipe_projections::ReplayFrom::Time(t.with_timezone(&chrono::Utc)))
        .map_err(|err| {
            format!("{value:?} is neither `beginning` nor an RFC 3339 time like 2026-12-05T10:00:00Z ({err})")
        })
}

/// `orderpipe replay --from TIME|beginning [--projection NAME|all] --into KEYSPACE`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// `beginning`, or an RFC 3339 time (e.g. 2026-12-05T10:00:00Z): where a first replay into
    /// KEYSPACE starts (see above; a keyspace with a record continues from it).
    #[arg(long, value_parser = parse_replay_from)]
    pub from: orderpipe_projections::ReplayFrom,
    /// The projection(s) to replay.
    #[arg(long, value_enum, default_value = "all")]
    pub projection: ProjectionChoice,
    /// Keyspace to write the views into (created and migrated when missing; never `--keyspace`).
    #[arg(long = "into")]
    pub target_keyspace: String,
    /// Most events applied per second (leaves the cluster room for live traffic during a
    /// sale); default: as fast as it goes. Batches are `--projections-batch-max` events.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_events_per_second: Option<u32>,
    /// Do not ask before writing onto views the keyspace already holds (a restored backup).
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub connections: Connections,
    #[command(flatten)]
    pub projections: orderpipe_projections::Config,
}

/// `orderpipe switch KEYSPACE`.
#[derive(Debug, Args)]
pub struct SwitchArgs {
    /// The keyspace the query APIs should serve (the `--keyspace` one itself switches back).
    pub target_keyspace: String,
    /// Do not ask first.
    #[arg(long, short = 'y')]
    pub yes: bool,
    #[command(flatten)]
    pub connections: Connections,
    /// `--keyspace` is the one the query APIs are configured with (it holds the choice).
    #[command(flatten)]
    pub projections: orderpipe_projections::Config,
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

    /// The admin key guarding `/metrics` and `/readyz` on the admin listener and on the ingest
    /// and query ports (see `orderpipe_runtime::auth`).
    #[command(flatten)]
    pub admin: orderpipe_runtime::auth::AdminKeyArgs,

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

    /// Extra librdkafka settings for every Kafka client of the command, `key=value`, repeatable
    /// or comma-separated (e.g. `security.protocol=SASL_SSL`). Applied over each client's preset;
    /// the per-component `--ingest-`, `--processor-` and `--projections-kafka-option`s apply
    /// after these and win.
    #[arg(id = "pipeline_kafka_options", long = "kafka-option", value_name = "KEY=VALUE",
          env = "ORDERPIPE_KAFKA_OPTIONS", value_delimiter = ',',
          value_parser = orderpipe_runtime::kafka::parse_option)]
    pub kafka_options: Vec<(String, String)>,

    /// CQL user name of every CQL session (PasswordAuthenticator); needs `--cql-password-file`.
    #[arg(long, env = "ORDERPIPE_CQL_USERNAME", requires = "cql_password_file")]
    pub cql_username: Option<String>,

    /// File holding the CQL password (a trailing line break is ignored), e.g. a mounted secret:
    /// a file, so that the password is not on the command line. Read at start; unreadable or
    /// empty is an error.
    #[arg(long, env = "ORDERPIPE_CQL_PASSWORD_FILE", requires = "cql_username")]
    pub cql_password_file: Option<PathBuf>,
}

impl Connections {
    /// `--kafka-option`s followed by a component's own options, which win (the last value of a
    /// key is the one a client gets).
    pub fn kafka_options_then(&self, component: &[(String, String)]) -> Vec<(String, String)> {
        [self.kafka_options.as_slice(), component].concat()
    }

    /// `config` with what these connections own for every component: the `--kafka-option`s
    /// before its `--projections-kafka-option`s, and the CQL login.
    pub fn projections(
        &self,
        config: &orderpipe_projections::Config,
    ) -> anyhow::Result<orderpipe_projections::Config> {
        let mut config = config.clone();
        config.projector.kafka_options = self.kafka_options_then(&config.projector.kafka_options);
        config.cql.credentials = self.cql_credentials()?;
        Ok(config)
    }

    /// The CQL login, its password read from the file now (`None` without `--cql-username`).
    pub fn cql_credentials(&self) -> anyhow::Result<Option<Credentials>> {
        match (&self.cql_username, &self.cql_password_file) {
            (Some(username), Some(file)) => Ok(Some(Credentials::read(username, file)?)),
            (None, None) => Ok(None),
            _ => anyhow::bail!("--cql-username and --cql-password-file go together"),
        }
    }
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

    /// The `Connections` of every command that has them.
    fn connections(command: &Command) -> &Connections {
        match command {
            Command::Run(a) => &a.connections,
            Command::Stock(StockCommand::Set(a)) => &a.connections,
            Command::Stock(StockCommand::Adjust(a)) => &a.connections,
            Command::Stock(StockCommand::Show(a)) => &a.connections,
            Command::Rebuild(a) => &a.connections,
            Command::Replay(a) => &a.connections,
            Command::Switch(a) => &a.connections,
            Command::Verify(a) => &a.connections,
            Command::Dlq(DlqCommand::List(a) | DlqCommand::Show(a)) => &a.connections,
            Command::Dlq(DlqCommand::Redrive(a)) => &a.select.connections,
            Command::Lag(a) => &a.connections,
            Command::Topics(TopicsCommand::Create(a) | TopicsCommand::Describe(a)) => {
                &a.connections
            }
            Command::GatewaySim(_) => panic!("gateway-sim talks to neither Kafka nor CQL"),
        }
    }

    /// Every command with `Connections`, as typed before the shared flags.
    const COMMANDS: [&[&str]; 13] = [
        &["run"],
        &["stock", "set", "SKU-1", "1"],
        &["stock", "adjust", "SKU-1", "1"],
        &["stock", "show", "SKU-1"],
        &["rebuild", "--into", "views_b"],
        &["replay", "--from", "beginning", "--into", "views_b"],
        &["switch", "views_b"],
        &["verify"],
        &["dlq", "list", "--stage", "stock"],
        &["dlq", "show", "--stage", "stock"],
        &["dlq", "redrive", "--stage", "stock", "--all"],
        &["lag"],
        &["topics", "describe"],
    ];

    fn options(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_command_takes_repeatable_kafka_options() {
        for command in COMMANDS {
            let args = [
                command,
                &[
                    "--kafka-option",
                    "security.protocol=SASL_SSL",
                    "--kafka-option",
                    "sasl.mechanism=SCRAM-SHA-512,ssl.ca.location=/etc/ca.pem",
                ],
            ]
            .concat();
            let parsed = parse(&args).unwrap_or_else(|e| panic!("{command:?}: {e}"));
            assert_eq!(
                connections(&parsed.command).kafka_options,
                options(&[
                    ("security.protocol", "SASL_SSL"),
                    ("sasl.mechanism", "SCRAM-SHA-512"),
                    ("ssl.ca.location", "/etc/ca.pem"),
                ]),
                "{command:?}"
            );
        }
        let err = parse(&["lag", "--kafka-option", "security.protocol"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not key=value"), "{err}");
    }

    #[test]
    fn component_kafka_options_come_after_the_pipeline_ones() {
        let parsed = parse(&[
            "topics",
            "create",
            "--kafka-option",
            "client.id=pipeline",
            "--kafka-option",
            "security.protocol=SSL",
            "--ingest-kafka-option",
            "client.id=ingest",
        ])
        .unwrap();
        let Command::Topics(TopicsCommand::Create(args)) = parsed.command else {
            panic!("topics create expected")
        };
        let merged = args
            .connections
            .kafka_options_then(&args.ingest.kafka_options);
        let client = orderpipe_runtime::kafka::with_options(
            orderpipe_runtime::kafka::client("127.0.0.1:9092", "preset"),
            &merged,
        );
        assert_eq!(client.get("client.id"), Some("ingest"));
        assert_eq!(client.get("security.protocol"), Some("SSL"));
    }

    /// A file under the temp dir holding `content`, removed on drop.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, content: &str) -> Self {
            let path = std::env::temp_dir().join(format!(
                "orderpipe-cli-{name}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::write(&path, content).unwrap();
            Self(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn cql_credentials_are_a_username_and_a_password_file() {
        let file = TempFile::new("pw", "cql-pw-7c1e9a\n");
        for command in COMMANDS {
            let args = [
                command,
                &[
                    "--cql-username",
                    "orderpipe",
                    "--cql-password-file",
                    file.path(),
                ],
            ]
            .concat();
            let parsed = parse(&args).unwrap_or_else(|e| panic!("{command:?}: {e}"));
            let login = connections(&parsed.command)
                .cql_credentials()
                .unwrap()
                .expect("credentials");
            assert_eq!(
                (login.username(), login.password()),
                ("orderpipe", "cql-pw-7c1e9a"),
                "{command:?}"
            );
        }
        let none = parse(&["verify"]).unwrap();
        if std::env::var_os("ORDERPIPE_CQL_USERNAME").is_none() {
            assert!(connections(&none.command)
                .cql_credentials()
                .unwrap()
                .is_none());
        }
        // One without the other is refused by the parser.
        assert!(parse(&["verify", "--cql-username", "orderpipe"]).is_err());
        assert!(parse(&["verify", "--cql-password-file", file.path()]).is_err());
        // No flag takes the password itself.
        assert!(parse(&["verify", "--cql-password", "cql-pw-7c1e9a"]).is_err());
    }

    #[test]
    fn missing_or_empty_password_files_are_clear_errors() {
        let credentials = |file: &str| {
            let parsed = parse(&[
                "verify",
                "--cql-username",
                "orderpipe",
                "--cql-password-file",
                file,
            ])
            .unwrap();
            connections(&parsed.command)
                .cql_credentials()
                .map_err(|e| format!("{e:#}"))
        };
        let err = credentials("/nonexistent/cql-password").unwrap_err();
        assert!(
            err.contains("reading the CQL password file /nonexistent/cql-password"),
            "{err}"
        );
        let empty = TempFile::new("empty", "\n");
        let err = credentials(empty.path()).unwrap_err();
        assert!(err.contains("is empty"), "{err}");
        assert!(err.contains(empty.path()), "{err}");
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let file = TempFile::new("debug", "cql-pw-7c1e9a");
        let parsed = parse(&[
            "stock",
            "show",
            "SKU-1",
            "--cql-username",
            "orderpipe",
            "--cql-password-file",
            file.path(),
        ])
        .unwrap();
        let Command::Stock(StockCommand::Show(args)) = &parsed.command else {
            panic!("stock show expected")
        };
        let config = args.connections.projections(&args.projections).unwrap();
        assert!(config.cql.credentials.is_some());
        let printed = format!("{parsed:?} {config:?}");
        assert!(printed.contains("orderpipe"), "{printed}");
        assert!(!printed.contains("cql-pw-7c1e9a"), "{printed}");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
