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
pub struct Config {
    /// Processing guarantee: `exactly-once` (Kafka transactions) or `at-least-once`.
    #[arg(long, env = "ORDERPIPE_PROCESSING", value_enum, default_value_t = ProcessingMode::ExactlyOnce)]
    pub processing: ProcessingMode,

    /// Most input messages per batch (one transaction per batch).
    #[arg(long, env = "ORDERPIPE_BATCH_MAX_MESSAGES", default_value_t = 500)]
    pub batch_max_messages: usize,

    /// Longest wait for a batch to fill once its first message arrived (e.g. `20ms`).
    #[arg(long, env = "ORDERPIPE_BATCH_LINGER", default_value = "20ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,

    /// Identity of this process among the stage's instances: part of `group.instance.id`
    /// (static membership) and `transactional.id`. Unique per running instance, stable across restarts.
    #[arg(long, env = "ORDERPIPE_INSTANCE_ID", default_value = "0")]
    pub instance_id: String,

    /// How often librdkafka reports statistics (consumer lag metric); `0s` turns them off.
    #[arg(long, env = "ORDERPIPE_STATS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            processing: ProcessingMode::ExactlyOnce,
            batch_max_messages: 500,
            batch_linger: Duration::from_millis(20),
            instance_id: "0".to_owned(),
            stats_interval: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// The default configuration with `processing` mode.
    pub fn with_mode(processing: ProcessingMode) -> Self {
        Self {
            processing,
            ..Self::default()
        }
    }
}
