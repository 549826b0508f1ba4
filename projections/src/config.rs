//! Settings of the projectors, the query API and their CQL connection, flattened into
//! `orderpipe run`. Every flag has an environment variable; `orderpipe run --help` shows these
//! doc comments.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use orderpipe_runtime::kafka::{self, TopicSettings};
use scylla::statement::Consistency;

/// Everything this crate needs besides the broker and CQL addresses (which `orderpipe run` owns).
/// `Default` gives the documented defaults (the same as the command line's).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
#[group(id = "projections_config")]
pub struct Config {
    /// CQL keyspace and consistency.
    #[command(flatten)]
    pub cql: CqlConfig,
    /// Projector consumers.
    #[command(flatten)]
    pub projector: ProjectorConfig,
    /// Query API.
    #[command(flatten)]
    pub query: QueryConfig,
    /// Whether (and how) the projectors create their dead-letter topic at start, when started
    /// alone; `orderpipe run` creates every topic itself from its pipeline-wide flags.
    #[arg(skip)]
    pub topics: TopicSettings,
}

/// Keyspace, replication and consistency of the views.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CqlConfig {
    /// Keyspace of the views (letters, digits and `_`, at most 48).
    #[arg(
        long = "keyspace",
        env = "ORDERPIPE_KEYSPACE",
        default_value = "orderpipe"
    )]
    pub keyspace: String,

    /// Replication of the keyspace when the migrations create it: `simple:N` (SimpleStrategy,
    /// development) or `dc1:3,dc2:3` (NetworkTopologyStrategy, one `datacenter:factor` per DC).
    /// An existing keyspace keeps its replication (change it with ALTER KEYSPACE).
    #[arg(
        long = "replication",
        env = "ORDERPIPE_REPLICATION",
        default_value = "simple:1"
    )]
    pub replication: Replication,

    /// Consistency of every view read and write. LOCAL_QUORUM reads see LOCAL_QUORUM writes
    /// (the projector's read-before-write and the query API rely on it); on a one-node
    /// development cluster it is one replica.
    #[arg(
        long = "cql-consistency",
        env = "ORDERPIPE_CQL_CONSISTENCY",
        default_value = "local-quorum",
        value_enum
    )]
    pub consistency: ConsistencyLevel,

    /// How long one CQL request may take before the driver gives up on it.
    #[arg(id = "cql_request_timeout", long = "cql-request-timeout", env = "ORDERPIPE_CQL_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// The login of every session (`None`: no authentication). Not a flag here: `orderpipe`
    /// reads `--cql-username` / `--cql-password-file` once for every component.
    #[arg(skip)]
    pub credentials: Option<orderpipe_runtime::cql::Credentials>,
}

/// The projector consumers (flags start with `--projections-`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ProjectorConfig {
    /// Consumer group name: the orders projector uses `<topic prefix><group>.orders`, the stock
    /// projector `<topic prefix><group>.stock`.
    #[arg(
        long = "projections-group",
        env = "ORDERPIPE_PROJECTIONS_GROUP",
        default_value = "orderpipe-projections"
    )]
    pub group: String,

    /// Static group membership id of this replica (`group.instance.id`, suffixed per projector);
    /// unique per replica, stable across restarts (e.g. the pod name). Default: the host name.
    #[arg(
        id = "projections_instance_id",
        long = "projections-instance-id",
        env = "ORDERPIPE_PROJECTIONS_INSTANCE_ID"
    )]
    pub instance_id: Option<String>,

    /// Most events written per batch (one commit per batch).
    #[arg(long = "projections-batch-max", env = "ORDERPIPE_PROJECTIONS_BATCH_MAX", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_max: u32,

    /// How long a batch waits for more events after its first one (a caught-up partition ends
    /// the batch at once).
    #[arg(id = "projections_batch_linger", long = "projections-batch-linger", env = "ORDERPIPE_PROJECTIONS_BATCH_LINGER", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,

    /// CQL batches (one per view partition) in flight at once while writing a batch.
    #[arg(long = "projections-write-concurrency", env = "ORDERPIPE_PROJECTIONS_WRITE_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub write_concurrency: u32,

    /// Events a projector may be behind (summed over its partitions) and still be ready.
    #[arg(
        long = "projections-lag-threshold",
        env = "ORDERPIPE_PROJECTIONS_LAG_THRESHOLD",
        default_value_t = 1000
    )]
    pub lag_threshold: u64,

    /// How often librdkafka reports partition end offsets (the lag metric's refresh period).
    #[arg(id = "projections_stats_interval", long = "projections-stats-interval", env = "ORDERPIPE_PROJECTIONS_STATS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,

    /// How often a projector logs its progress (events/s, lag).
    #[arg(long = "projections-progress-interval", env = "ORDERPIPE_PROJECTIONS_PROGRESS_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,

    /// Orders whose placement and outcome the orders projector keeps in memory (saves the
    /// read-before-write of duplicates and confirmations).
    #[arg(
        long = "projections-state-cache",
        env = "ORDERPIPE_PROJECTIONS_STATE_CACHE",
        default_value_t = 100_000
    )]
    pub state_cache: usize,

    /// Extra librdkafka settings for the consumers and the dead-letter producer, `key=value`,
    /// comma-separated (e.g. `security.protocol=SASL_SSL`).
    #[arg(id = "projections_kafka_options", long = "projections-kafka-option", value_name = "KEY=VALUE",
          env = "ORDERPIPE_PROJECTIONS_KAFKA_OPTIONS", value_delimiter = ',', value_parser = kafka::parse_option)]
    pub kafka_options: Vec<(String, String)>,
}

/// The query API (flags start with `--query-`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct QueryConfig {
    /// Longest `?wait=` a client may ask for on `GET /v1/orders/{id}`.
    #[arg(long = "query-max-wait", env = "ORDERPIPE_QUERY_MAX_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,

    /// Most long-polls waiting at once (each re-reads its order every poll interval); past it,
    /// `?wait=` requests are answered at once.
    #[arg(
        long = "query-max-long-polls",
        env = "ORDERPIPE_QUERY_MAX_LONG_POLLS",
        default_value_t = 1000
    )]
    pub max_long_polls: usize,

    /// How often a long-poll re-reads the order's status.
    #[arg(long = "query-poll-interval", env = "ORDERPIPE_QUERY_POLL_INTERVAL", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// Widest `from..to` range of `GET /v1/sales` (one CQL partition is read per hour).
    #[arg(long = "query-max-sales-range", env = "ORDERPIPE_QUERY_MAX_SALES_RANGE", default_value = "24h", value_parser = humantime::parse_duration)]
    pub max_sales_range: Duration,

    /// Page size of `GET /v1/customers/{id}/orders` when `limit` is not given.
    #[arg(long = "query-default-page", env = "ORDERPIPE_QUERY_DEFAULT_PAGE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub default_page: u32,

    /// How often the query API re-reads which keyspace to serve (`active_views` in `--keyspace`,
    /// written by `orderpipe switch`).
    #[arg(long = "query-keyspace-check-interval", env = "ORDERPIPE_QUERY_KEYSPACE_CHECK_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub keyspace_check_interval: Duration,

    /// Largest `limit` accepted by `GET /v1/customers/{id}/orders`.
    #[arg(long = "query-max-page", env = "ORDERPIPE_QUERY_MAX_PAGE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_page: u32,

    /// Most `GET /v1/stock/{sku}/stream` subscribers at once; past it, 503 with Retry-After.
    #[arg(
        long = "query-stream-max-subscribers",
        env = "ORDERPIPE_QUERY_STREAM_MAX_SUBSCRIBERS",
        default_value_t = 1000
    )]
    pub stream_max_subscribers: usize,

    /// How often a SKU with stream subscribers has its stock re-read (one read per SKU, shared
    /// by its subscribers). A projector in the same process also wakes it at once per write.
    #[arg(long = "query-stream-poll-interval", env = "ORDERPIPE_QUERY_STREAM_POLL_INTERVAL", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub stream_poll_interval: Duration,

    /// How often an idle stock stream sends a heartbeat (an SSE comment), so proxies keep it
    /// open and clients notice a dead connection.
    #[arg(long = "query-stream-heartbeat", env = "ORDERPIPE_QUERY_STREAM_HEARTBEAT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub stream_heartbeat: Duration,

    /// The control room at `/` (flags start with `--control-room-`).
    #[command(flatten)]
    pub control_room: crate::control_room::ControlRoomConfig,
}

impl Default for CqlConfig {
    fn default() -> Self {
        Self {
            keyspace: "orderpipe".into(),
            replication: Replication::Simple(1),
            consistency: ConsistencyLevel::LocalQuorum,
            request_timeout: Duration::from_secs(5),
            credentials: None,
        }
    }
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            group: "orderpipe-projections".into(),
            instance_id: None,
            batch_max: 500,
            batch_linger: Duration::from_millis(20),
            write_concurrency: 32,
            lag_threshold: 1000,
            stats_interval: Duration::from_secs(5),
            progress_interval: Duration::from_secs(10),
            state_cache: 100_000,
            kafka_options: Vec::new(),
        }
    }
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(30),
            max_long_polls: 1000,
            poll_interval: Duration::from_millis(100),
            max_sales_range: Duration::from_secs(24 * 3600),
            default_page: 20,
            max_page: 100,
            keyspace_check_interval: Duration::from_secs(2),
            stream_max_subscribers: 1000,
            stream_poll_interval: Duration::from_millis(50),
            stream_heartbeat: Duration::from_secs(15),
            control_room: Default::default(),
        }
    }
}

impl Config {
    /// Checks what clap cannot express; the reason when a setting is unusable.
    pub fn check(&self) -> Result<(), String> {
        check_keyspace(&self.cql.keyspace)?;
        if self.cql.request_timeout.is_zero() {
            return Err("CQL request timeout must be positive".into());
        }
        if self.projector.group.trim().is_empty() {
            return Err("projections group must not be empty".into());
        }
        if self.projector.stats_interval < Duration::from_millis(100) {
            return Err("projections stats interval must be at least 100ms".into());
        }
        if self.query.poll_interval.is_zero() {
            return Err("query poll interval must be positive".into());
        }
        if self.query.keyspace_check_interval.is_zero() {
            return Err("query keyspace check interval must be positive".into());
        }
        if self.query.stream_poll_interval.is_zero() || self.query.stream_heartbeat.is_zero() {
            return Err("query stream poll interval and heartbeat must be positive".into());
        }
        if self.query.default_page > self.query.max_page {
            return Err("query default page must not exceed the max page".into());
        }
        if self.query.control_room.max_viewers == 0 {
            return Err("control room max viewers must be at least 1".into());
        }
        if self.query.max_sales_range < Duration::from_secs(60) {
            return Err("query max sales range must be at least one minute".into());
        }
        Ok(())
    }
}

impl ProjectorConfig {
    /// The static membership id: the configured one, else the host name.
    pub(crate) fn instance_id(&self) -> String {
        self.instance_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "projections-0".into())
    }
}

/// A keyspace name is interpolated into CQL text, so it must be a plain identifier.
pub(crate) fn check_keyspace(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with('_');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "keyspace {name:?} must be 1-48 letters, digits or `_` (not leading)"
        ))
    }
}

/// Replication of the views' keyspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy` with this replication factor (development, one data center).
    Simple(u32),
    /// `NetworkTopologyStrategy` with a replication factor per data center.
    NetworkTopology(Vec<(String, u32)>),
}

impl Replication {
    /// The CQL map literal for `CREATE KEYSPACE ... WITH replication = ...`.
    pub fn to_cql(&self) -> String {
        match self {
            Replication::Simple(rf) => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {rf}}}")
            }
            Replication::NetworkTopology(dcs) => {
                let mut out = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, rf) in dcs {
                    out.push_str(&format!(", '{dc}': {rf}"));
                }
                out.push('}');
                out
            }
        }
    }
}

impl FromStr for Replication {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let factor = |v: &str| -> Result<u32, String> {
            match v.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!(
                    "replication factor {v:?} is not a positive integer"
                )),
            }
        };
        if let Some(rf) = s.strip_prefix("simple:") {
            return Ok(Replication::Simple(factor(rf)?));
        }
        let mut dcs = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (dc, rf) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not datacenter:factor (or use simple:N)"))?;
            let dc = dc.trim();
            // Data center names are quoted in CQL text: keep them to a safe alphabet.
            if dc.is_empty()
                || !dc
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(format!("data center name {dc:?} is not valid"));
            }
            dcs.push((dc.to_owned(), factor(rf)?));
        }
        if dcs.is_empty() {
            return Err("replication is empty: use simple:N or dc1:3,dc2:3".into());
        }
        Ok(Replication::NetworkTopology(dcs))
    }
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Replication::Simple(rf) => write!(f, "simple:{rf}"),
            Replication::NetworkTopology(dcs) => {
                let parts: Vec<String> = dcs.iter().map(|(dc, rf)| format!("{dc}:{rf}")).collect();
                f.write_str(&parts.join(","))
            }
        }
    }
}

/// Consistency levels that make sense for the views (no serial levels, no ANY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsistencyLevel {
    /// One replica.
    One,
    /// One replica in the local data center.
    LocalOne,
    /// A majority of all replicas.
    Quorum,
    /// A majority of the local data center's replicas (default).
    LocalQuorum,
    /// Every replica.
    All,
}

impl From<ConsistencyLevel> for Consistency {
    fn from(level: ConsistencyLevel) -> Self {
        match level {
            ConsistencyLevel::One => Consistency::One,
            ConsistencyLevel::LocalOne => Consistency::LocalOne,
            ConsistencyLevel::Quorum => Consistency::Quorum,
            ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
            ConsistencyLevel::All => Consistency::All,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        projections: Config,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .map(|c| c.projections)
    }

    #[test]
    fn command_line_defaults_match_default() {
        // Only meaningful when no variable of ours is set in the test environment.
        if std::env::vars().any(|(k, _)| {
            k == "ORDERPIPE_KEYSPACE"
                || k == "ORDERPIPE_REPLICATION"
                || k.starts_with("ORDERPIPE_CQL_")
                || k.starts_with("ORDERPIPE_PROJECTIONS_")
                || k.starts_with("ORDERPIPE_QUERY_")
        }) {
            return;
        }
        assert_eq!(parse(&[]).unwrap(), Config::default());
        assert_eq!(Config::default().check(), Ok(()));
    }

    #[test]
    fn replication_forms() {
        assert_eq!(
            "simple:3".parse::<Replication>().unwrap().to_cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        );
        let nts: Replication = "eu-west:3, us_east:2".parse().unwrap();
        assert_eq!(
            nts.to_cql(),
            "{'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us_east': 2}"
        );
        assert_eq!(nts.to_string(), "eu-west:3,us_east:2");
        for bad in ["", "simple:0", "simple:x", "dc1", "dc'1:3", "dc1:-1"] {
            assert!(bad.parse::<Replication>().is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_parse() {
        let c = parse(&[
            "--keyspace",
            "views_v2",
            "--replication",
            "dc1:3,dc2:3",
            "--cql-consistency",
            "quorum",
            "--projections-batch-max",
            "50",
            "--query-max-wait",
            "10s",
        ])
        .unwrap();
        assert_eq!(c.cql.keyspace, "views_v2");
        assert!(matches!(c.cql.replication, Replication::NetworkTopology(ref d) if d.len() == 2));
        assert_eq!(c.cql.consistency, ConsistencyLevel::Quorum);
        assert_eq!(c.projector.batch_max, 50);
        assert_eq!(c.query.max_wait, Duration::from_secs(10));
        assert!(parse(&["--projections-batch-max", "0"]).is_err());
    }

    #[test]
    fn keyspace_must_be_an_identifier() {
        assert!(check_keyspace("orderpipe_1").is_ok());
        for bad in ["", "_x", "a-b", "a;DROP", &"x".repeat(49)] {
            assert!(check_keyspace(bad).is_err(), "{bad}");
        }
    }
}
