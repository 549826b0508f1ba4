//! Errors of the stage runner; each variant says what the caller (the ops binary) does.

use rdkafka::error::KafkaError;

/// Why a stage could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker refused or did not answer a setup call: check the broker, then restart.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What the runner was doing.
        context: &'static str,
        /// The client's error.
        source: KafkaError,
    },
    /// A topic the stage needs does not exist: create it (`orderpipe run --create-topics`, or
    /// `ensure_topics` for a stage's own topics).
    #[error("topic {0} does not exist (create it first, e.g. with orderpipe run --create-topics)")]
    TopicMissing(String),
    /// The changelog is not co-partitioned with the input: recreate the changelog with the
    /// input's partition count (its state is rebuilt from it, so it must match exactly).
    #[error(
        "changelog {changelog} has {changelog_partitions} partitions but input {input} has \
         {input_partitions}: they must be equal"
    )]
    PartitionMismatch {
        /// Input topic.
        input: String,
        /// Its partition count.
        input_partitions: i32,
        /// Changelog topic.
        changelog: String,
        /// Its partition count.
        changelog_partitions: i32,
    },
    /// Creating topics failed: check the broker, its permissions and settings.
    #[error(transparent)]
    Topics(#[from] orderpipe_runtime::kafka::Error),
    /// Another instance took over this stage's `transactional.id` or `group.instance.id`: this
    /// one is a zombie and stopped without committing. Do not restart it with the same instance id
    /// while the other runs.
    #[error("fenced: another instance with the same id ({id}) took over")]
    Fenced {
        /// The `transactional.id` or `group.instance.id`.
        id: String,
    },
    /// A changelog record could not be restored (undecodable value, unreadable or non-UTF-8
    /// key). The stage stops rather than run on incomplete state (a skipped reserved line would
    /// oversell): inspect the record at `offset`, fix or tombstone it, then restart.
    #[error(
        "stage {stage}: changelog {topic} partition {partition} offset {offset} (key {key:?}) \
         cannot be restored: {reason}; the stage stopped instead of skipping it"
    )]
    Restore {
        /// Stage name.
        stage: &'static str,
        /// Changelog topic.
        topic: String,
        /// Changelog partition.
        partition: i32,
        /// Offset of the record.
        offset: i64,
        /// Its key, lossily decoded.
        key: String,
        /// Why it cannot be restored.
        reason: String,
    },
    /// The client hit an unrecoverable error: restart the process.
    #[error("fatal kafka error: {0}")]
    Fatal(String),
    /// The stage thread panicked outside a guarded batch: a bug; restart the process.
    #[error("stage thread panicked")]
    Panicked,
}
