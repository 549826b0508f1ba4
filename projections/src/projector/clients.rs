//! The Kafka clients of a live projector: its consumer (and the consumer context that turns
//! librdkafka statistics into [`Progress`] and records rebalances) and the dead-letter producer.

use std::sync::{Arc, Mutex};

use orderpipe_runtime::kafka;
use orderpipe_schemas::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;

use super::{Progress, ProjectorKind};
use crate::config::Config;
use crate::error::Error;

/// Consumer context: exports lag from librdkafka statistics, records rebalances.
pub(super) struct ProjectorContext {
    kind: ProjectorKind,
    topic: String,
    progress: Progress,
    pub(super) rebalanced: Mutex<Vec<(bool, Vec<i32>)>>,
}

impl ClientContext for ProjectorContext {
    fn stats(&self, statistics: Statistics) {
        let offsets = kafka::partition_offsets(&statistics, &self.topic).unwrap_or_default();
        self.progress.with(|p| {
            p.stats_seen.insert(self.kind);
            for stats in &offsets {
                let key = (self.kind, self.topic.clone(), stats.partition);
                let entry = p.partitions.entry(key).or_default();
                entry.end = stats.end.or(entry.end);
                entry.start = stats.start.or(entry.start);
                if entry.committed.is_none() {
                    entry.committed = stats.committed;
                }
            }
        });
        for partition in offsets.iter().map(|o| o.partition) {
            self.progress.publish_lag(self.kind, &self.topic, partition);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Reaching a partition's end is expected (enable.partition.eof), not an error.
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            return;
        }
        tracing::warn!(projector = self.kind.name(), error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for ProjectorContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (assigned, tpl) = match rebalance {
            Rebalance::Assign(tpl) => (true, tpl),
            Rebalance::Revoke(tpl) => (false, tpl),
            Rebalance::Error(err) => {
                tracing::warn!(projector = self.kind.name(), error = %err, "rebalance error");
                return;
            }
        };
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        tracing::info!(
            projector = self.kind.name(),
            assigned,
            ?partitions,
            "rebalance"
        );
        if !assigned {
            for &partition in &partitions {
                self.progress.forget(self.kind, &self.topic, partition);
            }
        }
        self.rebalanced
            .lock()
            .expect("rebalance lock")
            .push((assigned, partitions));
    }
}
pub(super) fn live_consumer(
    kind: ProjectorKind,
    bootstrap: &str,
    config: &Config,
    topics: &Topics,
    progress: &Progress,
) -> Result<Arc<StreamConsumer<ProjectorContext>>, Error> {
    let topic = kind.topic(topics);
    let context = ProjectorContext {
        kind,
        topic: topic.clone(),
        progress: progress.clone(),
        rebalanced: Mutex::new(Vec::new()),
    };
    let mut client = kafka::group_consumer(
        bootstrap,
        &format!("orderpipe-projections-{}", kind.name()),
        // Behind the topic prefix, as the stages' groups are: pipelines sharing a cluster under
        // different prefixes must not share (and split) one projector group.
        &format!(
            "{}{}.{}",
            topics.prefix(),
            config.projector.group,
            kind.name()
        ),
        &format!("{}.{}", config.projector.instance_id(), kind.name()),
        config.projector.stats_interval,
    );
    client.set("enable.partition.eof", "true");
    let consumer: StreamConsumer<ProjectorContext> =
        kafka::with_options(client, &config.projector.kafka_options)
            .create_with_context(context)
            .map_err(|e| Error::kafka("creating consumer", e))?;
    consumer
        .subscribe(&[&topic])
        .map_err(|e| Error::kafka(format!("subscribing to {topic}"), e))?;
    Ok(Arc::new(consumer))
}

pub(super) fn dlq_producer(bootstrap: &str, config: &Config) -> Result<FutureProducer, Error> {
    let mut client = kafka::idempotent_producer(bootstrap, "orderpipe-projections-dlq");
    client.set("message.timeout.ms", "10000");
    kafka::with_options(client, &config.projector.kafka_options)
        .create()
        .map_err(|e| Error::kafka("creating dead-letter producer", e))
}
