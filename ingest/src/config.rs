//! Settings of the ingest API, flattened into `orderpipe run`. Every flag has an environment
//! variable; `orderpipe run --help` shows these doc comments.

use std::path::PathBuf;
use std::time::Duration;

use orderpipe_runtime::kafka::{self, TopicSettings};

/// Ingest settings (flags start with `--ingest-`, variables with `ORDERPIPE_INGEST_`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
#[group(id = "ingest_config")]
pub struct Config {
    /// How long a request waits for the broker to acknowledge its `order_placed` before it is
    /// answered 503 with Retry-After (also the producer's `message.timeout.ms`).
    #[arg(long = "ingest-ack-deadline", env = "ORDERPIPE_INGEST_ACK_DEADLINE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub ack_deadline: Duration,

    /// Retry-After advertised on 503 answers (broker unreachable, producer queue full).
    #[arg(long = "ingest-retry-after", env = "ORDERPIPE_INGEST_RETRY_AFTER", default_value = "1s", value_parser = humantime::parse_duration)]
    pub retry_after: Duration,

    /// Upper bound on a whole request, body upload included (408 past it); longer than the ack deadline.
    #[arg(long = "ingest-request-timeout", env = "ORDERPIPE_INGEST_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Largest accepted request body in bytes (413 past it).
    #[arg(long = "ingest-max-body-bytes", env = "ORDERPIPE_INGEST_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Topics ingest creates at start when asked to (alone, in tests); `orderpipe run` creates
    /// the pipeline's topics itself, once, from its pipeline-wide `--partitions` and
    /// `--replication-factor`, and turns this off.
    #[arg(skip)]
    pub topics: TopicSettings,

    /// JSON file of API keys, `[{"client_id": "...", "key_sha256": "<hex>", "disabled": false}]`.
    /// Without it every caller is the client `anonymous` and no key is asked for.
    #[arg(long = "ingest-api-keys-file", env = "ORDERPIPE_INGEST_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Requests per second allowed per client (per peer IP without API keys); 0 turns the limit off.
    #[arg(
        long = "ingest-rate-limit",
        env = "ORDERPIPE_INGEST_RATE_LIMIT",
        default_value_t = 1000
    )]
    pub rate_limit_per_second: u32,

    /// Requests a client may send at once above its steady rate.
    #[arg(long = "ingest-rate-limit-burst", env = "ORDERPIPE_INGEST_RATE_LIMIT_BURST", default_value_t = 2000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,

    /// How long an Idempotency-Key's body fingerprint is remembered (same key, other body: 422):
    /// in this instance's memory, and in the shared store (its rows' TTL) with `cql`.
    #[arg(long = "ingest-idempotency-ttl", env = "ORDERPIPE_INGEST_IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,

    /// Most Idempotency-Keys remembered in memory at once (oldest forgotten first); bounds memory.
    /// With the `cql` store this is the fast path in front of it.
    #[arg(
        long = "ingest-idempotency-capacity",
        env = "ORDERPIPE_INGEST_IDEMPOTENCY_CAPACITY",
        default_value_t = 100_000
    )]
    pub idempotency_capacity: usize,

    /// Most messages waiting in the producer queue; past it requests get 503 at once (backpressure).
    #[arg(long = "ingest-producer-queue-messages", env = "ORDERPIPE_INGEST_PRODUCER_QUEUE_MESSAGES", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub producer_queue_messages: u32,

    /// Most kilobytes waiting in the producer queue; past it requests get 503 at once.
    #[arg(long = "ingest-producer-queue-kbytes", env = "ORDERPIPE_INGEST_PRODUCER_QUEUE_KBYTES", default_value_t = 65_536,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub producer_queue_kbytes: u32,

    /// How long the producer waits to batch messages (`linger.ms`): a little latency for throughput.
    #[arg(long = "ingest-producer-linger", env = "ORDERPIPE_INGEST_PRODUCER_LINGER", default_value = "2ms", value_parser = humantime::parse_duration)]
    pub producer_linger: Duration,

    /// Extra librdkafka settings for the producer and admin client, `key=value`, comma-separated
    /// (e.g. `security.protocol=SASL_SSL`).
    #[arg(long = "ingest-kafka-option", value_name = "KEY=VALUE", env = "ORDERPIPE_INGEST_KAFKA_OPTIONS",
          value_delimiter = ',', value_parser = kafka::parse_option)]
    pub kafka_options: Vec<(String, String)>,

    /// Where Idempotency-Key fingerprints are checked: `memory` (this instance only) or `cql`
    /// (a ScyllaDB/Cassandra table shared by every instance, surviving restarts; memory stays
    /// as a fast path in front). With `cql`, a keyed order is never accepted unchecked: when the
    /// store fails or is slower than the ack deadline the answer is 503 with Retry-After.
    #[arg(id = "ingest_idempotency_store", long = "ingest-idempotency-store", env = "ORDERPIPE_INGEST_IDEMPOTENCY_STORE",
          value_enum, default_value_t = IdempotencyStore::Memory)]
    pub idempotency_store: IdempotencyStore,

    /// CQL contact points (host:port, comma-separated) of the `cql` idempotency store and of the
    /// waiting room. Default: `orderpipe`'s `--scylla-nodes`, the cluster of the views (empty:
    /// [`DEFAULT_CQL_NODES`]).
    #[arg(
        id = "ingest_cql_nodes",
        long = "ingest-cql-nodes",
        env = "ORDERPIPE_INGEST_CQL_NODES",
        value_delimiter = ','
    )]
    pub cql_nodes: Vec<String>,

    /// Keyspace of the `cql` idempotency store and of the waiting room (created at start when
    /// missing, with their tables).
    #[arg(id = "ingest_cql_keyspace", long = "ingest-cql-keyspace", env = "ORDERPIPE_INGEST_CQL_KEYSPACE",
          default_value = DEFAULT_CQL_KEYSPACE)]
    pub cql_keyspace: String,

    /// SimpleStrategy replication factor used when the keyspace is created at start (an
    /// existing keyspace is left as it is: create it beforehand for NetworkTopologyStrategy).
    #[arg(id = "ingest_cql_replication_factor", long = "ingest-cql-replication-factor", env = "ORDERPIPE_INGEST_CQL_REPLICATION_FACTOR",
          default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub cql_replication_factor: u32,

    /// The login of the idempotency store's and the waiting room's sessions (`None`: no
    /// authentication). Not a flag here: `orderpipe` reads `--cql-username` /
    /// `--cql-password-file` once for every component.
    #[arg(skip)]
    pub cql_credentials: Option<orderpipe_runtime::cql::Credentials>,

    /// Orders per second admitted by the whole ingest fleet (the virtual waiting room); past it
    /// an order gets 429 with a signed queue ticket and is admitted in ticket order when it
    /// comes back with it. 0 (default) turns the waiting room off. Needs a secret and a CQL
    /// keyspace (`--ingest-cql-nodes`, `--ingest-cql-keyspace`) shared by every instance.
    #[arg(
        long = "ingest-waiting-room-rate",
        env = "ORDERPIPE_INGEST_WAITING_ROOM_RATE",
        default_value_t = 0
    )]
    pub waiting_room_rate: u32,

    /// Admissions an idle waiting room saves up and lets through at once; 0: one second's worth
    /// of the rate.
    #[arg(
        long = "ingest-waiting-room-burst",
        env = "ORDERPIPE_INGEST_WAITING_ROOM_BURST",
        default_value_t = 0
    )]
    pub waiting_room_burst: u32,

    /// File holding the secret that signs queue tickets (at least 32 bytes; the same on every
    /// instance). Preferred to the variable.
    #[arg(
        long = "ingest-waiting-room-secret-file",
        env = "ORDERPIPE_INGEST_WAITING_ROOM_SECRET_FILE"
    )]
    pub waiting_room_secret_file: Option<PathBuf>,

    /// The ticket-signing secret itself; give it through the environment (a flag would show in
    /// `ps`), or use the file.
    #[arg(
        long = "ingest-waiting-room-secret",
        env = "ORDERPIPE_INGEST_WAITING_ROOM_SECRET",
        hide = true,
        hide_env_values = true
    )]
    pub waiting_room_secret: Option<Secret>,

    /// How long after its expected turn a queue ticket still admits (410 past it).
    #[arg(long = "ingest-waiting-room-grace", env = "ORDERPIPE_INGEST_WAITING_ROOM_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub waiting_room_grace: Duration,

    /// Name of the waiting room (its row in the keyspace): instances with the same name share one
    /// queue.
    #[arg(
        long = "ingest-waiting-room-name",
        env = "ORDERPIPE_INGEST_WAITING_ROOM_NAME",
        default_value = "orders"
    )]
    pub waiting_room_name: String,

    /// How often each instance re-reads (and when due advances) the admission watermark.
    #[arg(long = "ingest-waiting-room-refresh", env = "ORDERPIPE_INGEST_WAITING_ROOM_REFRESH", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub waiting_room_refresh: Duration,
}

/// A secret setting: never printed (`Debug` shows `<redacted>`), so a logged config leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret's value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// CQL contact points when `cql_nodes` is empty (the `orderpipe` binary fills it from
/// `--scylla-nodes`).
pub const DEFAULT_CQL_NODES: &str = "127.0.0.1:9042";

/// Default of `--ingest-cql-keyspace`.
pub const DEFAULT_CQL_KEYSPACE: &str = "orderpipe_ingest";

/// Longest TTL CQL accepts (20 years), in seconds.
pub(crate) const MAX_CQL_TTL_SECS: u64 = 630_720_000;

/// Where Idempotency-Key fingerprints are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IdempotencyStore {
    /// In this instance's memory only: lost on restart, not shared between instances.
    #[default]
    Memory,
    /// In a ScyllaDB/Cassandra table (`INSERT ... IF NOT EXISTS`), shared and durable.
    Cql,
}

impl Default for Config {
    /// The documented defaults (the same as the command line's).
    fn default() -> Self {
        Self {
            ack_deadline: Duration::from_secs(2),
            retry_after: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            topics: TopicSettings::default(),
            api_keys_file: None,
            rate_limit_per_second: 1000,
            rate_limit_burst: 2000,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_capacity: 100_000,
            producer_queue_messages: 100_000,
            producer_queue_kbytes: 65_536,
            producer_linger: Duration::from_millis(2),
            kafka_options: Vec::new(),
            idempotency_store: IdempotencyStore::Memory,
            cql_nodes: Vec::new(),
            cql_keyspace: DEFAULT_CQL_KEYSPACE.to_owned(),
            cql_replication_factor: 1,
            cql_credentials: None,
            waiting_room_rate: 0,
            waiting_room_burst: 0,
            waiting_room_secret_file: None,
            waiting_room_secret: None,
            waiting_room_grace: Duration::from_secs(60),
            waiting_room_name: "orders".to_owned(),
            waiting_room_refresh: Duration::from_millis(100),
        }
    }
}

impl Config {
    /// Checks relations between settings that clap cannot express; the reason when they conflict.
    pub fn check(&self) -> Result<(), String> {
        if self.ack_deadline < Duration::from_millis(10) {
            return Err("ack deadline must be at least 10ms".into());
        }
        if self.producer_linger >= self.ack_deadline {
            return Err("producer linger must be shorter than the ack deadline".into());
        }
        if self.request_timeout <= self.ack_deadline {
            return Err("request timeout must be longer than the ack deadline".into());
        }
        if self.max_body_bytes == 0 {
            return Err("max body bytes must be positive".into());
        }
        if self.waiting_room_rate > 0 {
            if self.waiting_room_secret.is_none() && self.waiting_room_secret_file.is_none() {
                return Err("the waiting room needs a secret (--ingest-waiting-room-secret-file or ORDERPIPE_INGEST_WAITING_ROOM_SECRET)".into());
            }
            if self.waiting_room_name.is_empty() {
                return Err("the waiting room needs a name".into());
            }
            if self.waiting_room_grace < Duration::from_secs(1) {
                return Err("the waiting room grace must be at least 1s".into());
            }
            if !(Duration::from_millis(10)..=Duration::from_secs(10))
                .contains(&self.waiting_room_refresh)
            {
                return Err("the waiting room refresh must be 10ms to 10s".into());
            }
        }
        if self.idempotency_store == IdempotencyStore::Cql || self.waiting_room_rate > 0 {
            if !is_cql_identifier(&self.cql_keyspace) {
                return Err(format!(
                    "CQL keyspace {:?} must be a letter then up to 47 letters, digits or _",
                    self.cql_keyspace
                ));
            }
        }
        if self.idempotency_store == IdempotencyStore::Cql {
            let ttl = self.idempotency_ttl.as_secs();
            if ttl == 0 || ttl > MAX_CQL_TTL_SECS {
                return Err(
                    "with the cql idempotency store the idempotency TTL must be 1s to 20 years"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Admissions an idle waiting room saves up: the flag, or one second of the rate.
    pub fn waiting_room_burst(&self) -> u32 {
        if self.waiting_room_burst > 0 {
            self.waiting_room_burst
        } else {
            self.waiting_room_rate.max(1)
        }
    }

    /// `cql_nodes` trimmed, without empty entries; [`DEFAULT_CQL_NODES`] when none is left.
    pub(crate) fn cql_node_list(&self) -> Vec<String> {
        let nodes: Vec<String> = self
            .cql_nodes
            .iter()
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if nodes.is_empty() {
            vec![DEFAULT_CQL_NODES.to_owned()]
        } else {
            nodes
        }
    }
}

/// An unquoted CQL identifier that is a valid keyspace name.
fn is_cql_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.len() <= 48
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        ingest: Config,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Cli::try_parse_from(std::iter::once("test").chain(args.iter().copied())).map(|c| c.ingest)
    }

    #[test]
    fn command_line_defaults_match_default() {
        // Only meaningful when no ORDERPIPE_INGEST_* variable is set in the test environment.
        if std::env::vars().any(|(k, _)| k.starts_with("ORDERPIPE_INGEST_")) {
            return;
        }
        assert_eq!(parse(&[]).unwrap(), Config::default());
        assert_eq!(Config::default().check(), Ok(()));
    }

    #[test]
    fn flags_parse() {
        let c = parse(&[
            "--ingest-ack-deadline",
            "500ms",
            "--ingest-api-keys-file",
            "/etc/keys.json",
            "--ingest-kafka-option",
            "security.protocol=SASL_SSL,sasl.mechanism=PLAIN",
        ])
        .unwrap();
        assert_eq!(c.ack_deadline, Duration::from_millis(500));
        assert_eq!(c.api_keys_file, Some(PathBuf::from("/etc/keys.json")));
        assert_eq!(
            c.kafka_options,
            vec![
                ("security.protocol".into(), "SASL_SSL".into()),
                ("sasl.mechanism".into(), "PLAIN".into())
            ]
        );
    }

    #[test]
    fn idempotency_store_flags_parse() {
        let c = parse(&[
            "--ingest-idempotency-store",
            "cql",
            "--ingest-cql-nodes",
            "10.0.0.1:9042, 10.0.0.2:9042",
            "--ingest-cql-keyspace",
            "ks_1",
            "--ingest-cql-replication-factor",
            "3",
        ])
        .unwrap();
        assert_eq!(c.idempotency_store, IdempotencyStore::Cql);
        assert_eq!(c.cql_node_list(), vec!["10.0.0.1:9042", "10.0.0.2:9042"]);
        assert_eq!(c.cql_keyspace, "ks_1");
        assert_eq!(c.cql_replication_factor, 3);
        assert_eq!(c.check(), Ok(()));
        assert!(parse(&["--ingest-idempotency-store", "redis"]).is_err());
        assert!(parse(&["--ingest-cql-replication-factor", "0"]).is_err());
        let bad = Config {
            idempotency_store: IdempotencyStore::Cql,
            cql_keyspace: "drop table".into(),
            ..Config::default()
        };
        assert!(bad.check().unwrap_err().contains("keyspace"));
        let bad = Config {
            idempotency_store: IdempotencyStore::Cql,
            idempotency_ttl: Duration::from_millis(500),
            ..Config::default()
        };
        assert!(bad.check().unwrap_err().contains("TTL"));
        // The memory store ignores the CQL settings.
        let memory = Config {
            cql_keyspace: "not checked".into(),
            ..Config::default()
        };
        assert_eq!(memory.check(), Ok(()));
    }

    #[test]
    fn waiting_room_flags_parse_and_need_a_secret() {
        let c = parse(&[
            "--ingest-waiting-room-rate",
            "500",
            "--ingest-waiting-room-secret-file",
            "/etc/room.key",
            "--ingest-waiting-room-grace",
            "30s",
        ])
        .unwrap();
        assert_eq!(c.waiting_room_rate, 500);
        assert_eq!(c.waiting_room_burst(), 500);
        assert_eq!(c.waiting_room_grace, Duration::from_secs(30));
        assert_eq!(c.check(), Ok(()));
        let no_secret = Config {
            waiting_room_rate: 5,
            ..Config::default()
        };
        assert!(no_secret.check().unwrap_err().contains("secret"));
        let secret = Config {
            waiting_room_rate: 5,
            waiting_room_secret: Some("s3cret".parse().unwrap()),
            ..Config::default()
        };
        assert!(
            !format!("{secret:?}").contains("s3cret"),
            "the secret is printed"
        );
        assert_eq!(secret.check(), Ok(()));
    }

    #[test]
    fn conflicting_settings_are_refused() {
        let c = Config {
            request_timeout: Duration::from_secs(1),
            ..Config::default()
        };
        assert!(c.check().unwrap_err().contains("request timeout"));
        let err = parse(&["--ingest-kafka-option", "acks"]).unwrap_err();
        assert!(err.to_string().contains("key=value"), "{err}");
    }
}
