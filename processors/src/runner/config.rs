//! Runner configuration shared by every stage: processing guarantee, batching, instance identity.

use std::time::Duration;

/// Delivery guarantee of a stage's consume-transform-produce loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ProcessingMode {
    /// Kafka transactions: a batch's outputs, changelog updates, dead letters and input offsets
    /// commit atomically; read_committed consumers never see an aborted batch.
    ExactlyOnce,
    /// No transactions: outputs and changelog are produced and acknowledged, then the offsets are
    /// committed. A crash in between redelivers the batch; stages are idempotent under redelivery.
    AtLeastOnce,
}

impl ProcessingMode {
    /// Both modes, for tests and benchmarks that run once per mode.
    pub const ALL: [ProcessingMode; 2] = [Self::ExactlyOnce, Self::AtLeastOnce];

    /// The command-line spelling (`exactly-once`, `at-least-once`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExactlyOnce => "exactly-once",
            Self::AtLeastOnce => "at-least-once",
        }
    }
}

impl std::fmt::Display for ProcessingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Options of the stage runner (flatten into a binary's clap config with `#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
#[group(id = "processors_config")]
pub struct Config {
    /// Processing guarantee: `exactly-once` (Kafka transactions) or `at-least-once`.
    #[arg(id = "processor_processing",
        value_name = "MODE", long = "processing", env = "ORDERPIPE_PROCESSING", value_enum, default_value_t = ProcessingMode::ExactlyOnce)]
    pub processing: ProcessingMode,

    /// Most input messages per batch (one transaction per batch).
    #[arg(
        id = "processor_batch_max_messages",
        value_name = "N",
        long = "processor-batch-max-messages",
        env = "ORDERPIPE_PROCESSOR_BATCH_MAX_MESSAGES",
        default_value_t = 500
    )]
    pub batch_max_messages: usize,

    /// Longest wait for a batch to fill once its first message arrived (e.g. `20ms`).
    #[arg(id = "processor_batch_linger",
        value_name = "DURATION", long = "processor-batch-linger", env = "ORDERPIPE_PROCESSOR_BATCH_LINGER", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,

    /// Identity of this process among the stage's instances: part of `group.instance.id`
    /// (static membership) and `transactional.id`. Unique per running instance, stable across restarts.
    #[arg(
        id = "processor_instance_id",
        value_name = "ID",
        long = "instance-id",
        env = "ORDERPIPE_INSTANCE_ID",
        default_value = AUTO_INSTANCE_ID
    )]
    pub instance_id: String,

    /// How often librdkafka reports statistics (consumer lag metric); `0s` turns them off.
    #[arg(id = "processor_stats_interval",
        value_name = "DURATION", long = "processor-stats-interval", env = "ORDERPIPE_PROCESSOR_STATS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,

    /// Extra librdkafka settings for every client of the stages, `key=value`, comma-separated
    /// (e.g. `security.protocol=SASL_SSL`); they override the runner's own settings.
    #[arg(id = "processor_kafka_options",
        value_name = "KEY=VALUE", long = "processor-kafka-option", env = "ORDERPIPE_PROCESSOR_KAFKA_OPTIONS", value_delimiter = ',', value_parser = orderpipe_runtime::kafka::parse_option)]
    pub kafka_options: Vec<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            processing: ProcessingMode::ExactlyOnce,
            batch_max_messages: 500,
            batch_linger: Duration::from_millis(20),
            instance_id: "0".to_owned(),
            stats_interval: Duration::from_secs(5),
            kafka_options: Vec::new(),
        }
    }
}

/// `--instance-id` default: derived from the host name and the admin port by
/// [`Config::resolve_instance_id`], so two processes never share one by accident (they cannot
/// share an admin port on one host) and a restarted process gets its old id back (static
/// membership and transactional ids stay stable). On hosts whose name changes at every restart
/// (containers), set `--instance-id` explicitly, e.g. to the StatefulSet pod ordinal.
pub const AUTO_INSTANCE_ID: &str = "auto";

impl Config {
    /// Replaces an `auto` instance id with `<hostname>-<admin port>` (see [`AUTO_INSTANCE_ID`]);
    /// an explicit id is kept.
    pub fn resolve_instance_id(&mut self, admin_listen: std::net::SocketAddr) {
        if self.instance_id == AUTO_INSTANCE_ID {
            self.instance_id = auto_instance_id(&hostname(), admin_listen.port());
        }
    }

    /// The default configuration with `processing` mode.
    pub fn with_mode(processing: ProcessingMode) -> Self {
        Self {
            processing,
            ..Self::default()
        }
    }
}

/// `<host>-<port>`, the host reduced to what a Kafka client id accepts.
fn auto_instance_id(host: &str, port: u16) -> String {
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let host = if host.is_empty() {
        "localhost".to_owned()
    } else {
        host
    };
    format!("{host}-{port}")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let parsed = Cli::parse_from(["orderpipe"]).config;
        let default = Config::default();
        assert_eq!(parsed.processing, default.processing);
        assert_eq!(parsed.batch_max_messages, default.batch_max_messages);
        assert_eq!(parsed.batch_linger, default.batch_linger);
        // The flag's default is resolved by the binary (`resolve_instance_id`); the library's
        // `Config::default()` (tests, embedding) keeps the fixed id `0`.
        assert_eq!(parsed.instance_id, AUTO_INSTANCE_ID);
        assert_eq!(default.instance_id, "0");
        assert_eq!(parsed.stats_interval, default.stats_interval);
        assert!(parsed.kafka_options.is_empty());
    }

    #[test]
    fn flags_parse() {
        let c = Cli::parse_from([
            "orderpipe",
            "--processing",
            "at-least-once",
            "--processor-batch-linger",
            "5ms",
            "--processor-kafka-option",
            "security.protocol=SASL_SSL,sasl.mechanism=PLAIN",
        ])
        .config;
        assert_eq!(c.processing, ProcessingMode::AtLeastOnce);
        assert_eq!(c.batch_linger, Duration::from_millis(5));
        assert_eq!(
            c.kafka_options,
            vec![
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
                ("sasl.mechanism".to_owned(), "PLAIN".to_owned())
            ]
        );
        assert!(Cli::try_parse_from(["orderpipe", "--processor-kafka-option", "nokey"]).is_err());
    }

    /// Item 9: without `--instance-id`, two processes (two admin ports) get different ids, and
    /// one process restarted gets the same one; the old default `0` was shared by all.
    #[test]
    fn default_instance_id_is_unique_per_process_and_stable_across_restarts() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap().config;
        let mut a = parse(&["t"]);
        let mut b = parse(&["t"]);
        assert_eq!(a.instance_id, AUTO_INSTANCE_ID);
        a.resolve_instance_id("127.0.0.1:9464".parse().unwrap());
        b.resolve_instance_id("127.0.0.1:9465".parse().unwrap());
        assert_ne!(
            a.instance_id, b.instance_id,
            "two processes fence each other"
        );
        let mut again = parse(&["t"]);
        again.resolve_instance_id("127.0.0.1:9464".parse().unwrap());
        assert_eq!(again.instance_id, a.instance_id, "a restart keeps its id");
        assert!(a.instance_id.ends_with("-9464"));
        let mut explicit = parse(&["t", "--instance-id", "7"]);
        explicit.resolve_instance_id("127.0.0.1:9464".parse().unwrap());
        assert_eq!(explicit.instance_id, "7");
        assert_eq!(auto_instance_id("my host!", 1), "my_host_-1");
        assert_eq!(auto_instance_id("", 1), "localhost-1");
    }
}
