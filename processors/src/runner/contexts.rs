//! The Kafka client contexts of a stage: the group consumer's (rebalances for the loop, lag
//! metrics), the producer's (failed deliveries) and the restore consumer's.

use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::ClientContext;

use orderpipe_runtime::kafka;

use crate::metrics;

/// What the rebalance callbacks tell the loop; drained after every poll.
#[derive(Debug)]
pub(crate) enum GroupEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Consumer context: records rebalances for the loop and exports consumer lag.
pub(crate) struct RunnerContext {
    pub(crate) stage: &'static str,
    pub(crate) input_topic: String,
    pub(crate) events: Mutex<Vec<GroupEvent>>,
}

impl ClientContext for RunnerContext {
    fn stats(&self, statistics: Statistics) {
        metrics::consumer_lag(
            self.stage,
            kafka::consumer_lag(&statistics, &self.input_topic),
        );
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(stage = self.stage, error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for RunnerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements_for_topic(&self.input_topic)
                .iter()
                .map(|e| e.partition())
                .collect()
        };
        let event = match rebalance {
            Rebalance::Assign(tpl) => GroupEvent::Assigned(partitions(tpl)),
            Rebalance::Revoke(tpl) => GroupEvent::Revoked(partitions(tpl)),
            Rebalance::Error(err) => {
                tracing::warn!(stage = self.stage, error = %err, "rebalance error");
                return;
            }
        };
        self.events.lock().expect("group events lock").push(event);
    }
}

/// Producer context: counts failed deliveries (at-least-once checks them after each flush; in a
/// transaction a failed delivery already makes the commit fail).
#[derive(Default)]
pub(crate) struct DeliveryContext {
    failed: Mutex<Option<String>>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka producer error");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, _)) = result {
            let mut failed = self.failed.lock().expect("delivery lock");
            if failed.is_none() {
                *failed = Some(err.to_string());
            }
        }
    }
}

impl DeliveryContext {
    pub(crate) fn take_failure(&self) -> Option<String> {
        self.failed.lock().expect("delivery lock").take()
    }
}

/// Restore consumer context: partition EOF is how a restore ends, not an error worth a log line.
pub(crate) struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::warn!(error = %error, reason, "kafka restore consumer error");
        }
    }
}

impl ConsumerContext for RestoreContext {}

pub(crate) type StageConsumer = BaseConsumer<RunnerContext>;
pub(crate) type StageProducer = BaseProducer<DeliveryContext>;
