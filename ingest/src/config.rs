//! Settings of the ingest API, flattened into `orderpipe run`. Every flag has an environment
//! variable; `orderpipe run --help` shows these doc comments.

use std::path::PathBuf;
use std::time::Duration;

use clap::ArgAction;

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

    /// Create missing topics at start (`--ingest-create-topics=false` where topics are managed elsewhere).
    #[arg(long = "ingest-create-topics", env = "ORDERPIPE_INGEST_CREATE_TOPICS", default_value_t = true,
          action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub create_topics: bool,

    /// Partitions of topics created at start (orders, stock, notifications, changelogs, dead letters).
    #[arg(long = "ingest-partitions", env = "ORDERPIPE_INGEST_PARTITIONS", default_value_t = 12,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// Replication factor of topics created at start (3 on a production cluster).
    #[arg(long = "ingest-replication-factor", env = "ORDERPIPE_INGEST_REPLICATION_FACTOR", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: i32,

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

    /// How long this instance remembers an Idempotency-Key's body fingerprint (same key, other body: 422).
    #[arg(long = "ingest-idempotency-ttl", env = "ORDERPIPE_INGEST_IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,

    /// Most Idempotency-Keys remembered at once (oldest forgotten first); bounds memory.
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
    #[arg(
        long = "ingest-kafka-option",
        env = "ORDERPIPE_INGEST_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    pub kafka_options: Vec<String>,
}

impl Default for Config {
    /// The documented defaults (the same as the command line's).
    fn default() -> Self {
        Self {
            ack_deadline: Duration::from_secs(2),
            retry_after: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            create_topics: true,
            partitions: 12,
            replication_factor: 1,
            api_keys_file: None,
            rate_limit_per_second: 1000,
            rate_limit_burst: 2000,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_capacity: 100_000,
            producer_queue_messages: 100_000,
            producer_queue_kbytes: 65_536,
            producer_linger: Duration::from_millis(2),
            kafka_options: Vec::new(),
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
        for option in &self.kafka_options {
            if option
                .split_once('=')
                .is_none_or(|(k, _)| k.trim().is_empty())
            {
                return Err(format!("kafka option {option:?} is not key=value"));
            }
        }
        Ok(())
    }

    /// `kafka_options` as (key, value) pairs.
    pub(crate) fn kafka_option_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.kafka_options
            .iter()
            .filter_map(|o| o.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
    }
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
            "--ingest-create-topics=false",
            "--ingest-partitions",
            "3",
            "--ingest-api-keys-file",
            "/etc/keys.json",
            "--ingest-kafka-option",
            "security.protocol=SASL_SSL,sasl.mechanism=PLAIN",
        ])
        .unwrap();
        assert_eq!(c.ack_deadline, Duration::from_millis(500));
        assert!(!c.create_topics);
        assert_eq!(c.partitions, 3);
        assert_eq!(c.api_keys_file, Some(PathBuf::from("/etc/keys.json")));
        assert_eq!(
            c.kafka_option_pairs().collect::<Vec<_>>(),
            vec![
                ("security.protocol", "SASL_SSL"),
                ("sasl.mechanism", "PLAIN")
            ]
        );
        assert!(parse(&["--ingest-create-topics"]).unwrap().create_topics);
        assert!(parse(&["--ingest-partitions", "0"]).is_err());
    }

    #[test]
    fn conflicting_settings_are_refused() {
        let c = Config {
            request_timeout: Duration::from_secs(1),
            ..Config::default()
        };
        assert!(c.check().unwrap_err().contains("request timeout"));
        let c = Config {
            kafka_options: vec!["acks".into()],
            ..Config::default()
        };
        assert!(c.check().unwrap_err().contains("key=value"));
    }
}
