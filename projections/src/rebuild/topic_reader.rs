//! The replay's side of the topics: one consumer with manual assignment of the partitions and a
//! throw-away group id that never commits (the live groups are untouched); the partitions' ends,
//! the offsets at a time, and batches read up to the ends seen at start.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use orderpipe_runtime::kafka;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};

use super::PartitionPlan;
use crate::config::Config;
use crate::error::Error;

/// How long the replay waits for a message before checking positions again.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Longest wait for the broker's metadata, watermarks and time lookups.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// Next offset to read per (topic, partition).
pub(super) type Positions = BTreeMap<(String, i32), i64>;

/// Consumer context of a rebuild: partition ends are expected, other client errors logged.
struct RebuildContext;

impl ClientContext for RebuildContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::warn!(error = %error, reason, "rebuild consumer error");
        }
    }
}

impl ConsumerContext for RebuildContext {}

/// The replay's consumer (shared with the blocking lookups).
pub(super) struct TopicReader {
    consumer: Arc<StreamConsumer<RebuildContext>>,
}

impl TopicReader {
    /// A consumer that is never joined (manual assignment) and never commits.
    pub(super) fn new(config: &Config, bootstrap: &str) -> Result<Self, Error> {
        let group = format!(
            "{}.replay-{}",
            config.projector.group,
            uuid::Uuid::new_v4().simple()
        );
        let client = kafka::with_options(
            kafka::assigned_reader(bootstrap, "orderpipe-replay", &group),
            &config.projector.kafka_options,
        );
        let consumer = client
            .create_with_context(RebuildContext)
            .map_err(|e| Error::kafka("creating the replay consumer", e))?;
        Ok(Self {
            consumer: Arc::new(consumer),
        })
    }

    /// (low, high) watermarks of every partition of `topic`.
    pub(super) async fn watermarks(&self, topic: &str) -> Result<BTreeMap<i32, (i64, i64)>, Error> {
        let (consumer, topic) = (self.consumer.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let metadata = consumer
                .fetch_metadata(Some(&topic), BROKER_TIMEOUT)
                .map_err(|e| Error::kafka(format!("reading metadata of {topic}"), e))?;
            let mut out = BTreeMap::new();
            for t in metadata.topics() {
                if let Some(err) = t.error() {
                    return Err(Error::Config(format!("topic {topic}: {err:?}")));
                }
                for p in t.partitions() {
                    let (low, high) = consumer
                        .fetch_watermarks(&topic, p.id(), BROKER_TIMEOUT)
                        .map_err(|e| Error::kafka(format!("reading the end of {topic}"), e))?;
                    out.insert(p.id(), (low, high));
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::Config(format!("listing partitions failed: {e}")))?
    }

    /// The first offset at or after `time` of each of `partitions` (record timestamps; a
    /// partition with nothing that late starts at its end).
    pub(super) async fn offsets_at(
        &self,
        topic: &str,
        partitions: Vec<i32>,
        time: DateTime<Utc>,
    ) -> Result<BTreeMap<i32, i64>, Error> {
        let (consumer, topic) = (self.consumer.clone(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let mut query = TopicPartitionList::new();
            for partition in partitions {
                query
                    .add_partition_offset(
                        &topic,
                        partition,
                        Offset::Offset(time.timestamp_millis()),
                    )
                    .map_err(|e| Error::kafka("building the time lookup", e))?;
            }
            let found = consumer
                .offsets_for_times(query, BROKER_TIMEOUT)
                .map_err(|e| Error::kafka(format!("looking up offsets of {topic} at {time}"), e))?;
            let offsets = found
                .elements()
                .iter()
                .map(|element| match element.offset() {
                    Offset::Offset(offset) => (element.partition(), offset),
                    // Nothing at or after the time: start at the end (nothing to replay).
                    _ => (element.partition(), i64::MAX),
                })
                .collect();
            Ok(offsets)
        })
        .await
        .map_err(|e| Error::Config(format!("looking up offsets failed: {e}")))?
    }

    /// Assigns every planned partition with something to read, from its start.
    pub(super) fn assign(&self, partitions: &[PartitionPlan]) -> Result<(), Error> {
        let mut assignment = TopicPartitionList::new();
        for p in partitions.iter().filter(|p| p.end > p.start) {
            assignment
                .add_partition_offset(&p.topic, p.partition, Offset::Offset(p.start))
                .map_err(|e| Error::kafka("building the assignment", e))?;
        }
        self.consumer
            .assign(&assignment)
            .map_err(|e| Error::kafka("assigning partitions", e))
    }

    /// Up to `max` messages below their partition's end; the flag says the poll stopped for
    /// want of messages (a partition end, a quiet topic, an error), so positions are worth
    /// checking with [`Self::advance_to_positions`].
    pub(super) async fn next_batch(
        &self,
        ends: &Positions,
        max: usize,
    ) -> (Vec<OwnedMessage>, bool) {
        let mut batch: Vec<OwnedMessage> = Vec::with_capacity(max);
        while batch.len() < max {
            let wait = if batch.is_empty() {
                IDLE_POLL
            } else {
                Duration::from_millis(1)
            };
            match tokio::time::timeout(wait, self.consumer.recv()).await {
                Ok(Ok(message)) => {
                    let key = (message.topic().to_owned(), message.partition());
                    let end = ends.get(&key).copied().unwrap_or(0);
                    if message.offset() < end {
                        batch.push(message.detach());
                    }
                }
                Ok(Err(KafkaError::PartitionEOF(_))) | Err(_) => return (batch, true),
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "replay consumer error");
                    return (batch, true);
                }
            }
        }
        (batch, false)
    }

    /// Moves `positions` up to the consumer's (capped at `ends`): transaction markers are never
    /// delivered, the consumer's position tells how far a partition really is.
    pub(super) fn advance_to_positions(&self, positions: &mut Positions, ends: &Positions) {
        let Ok(list) = self.consumer.position() else {
            return;
        };
        for element in list.elements() {
            if let Offset::Offset(position) = element.offset() {
                let key = (element.topic().to_owned(), element.partition());
                if let (Some(entry), Some(end)) = (positions.get_mut(&key), ends.get(&key)) {
                    *entry = (*entry).max(position.min(*end));
                }
            }
        }
    }
}
