//! Everything ingest says to Kafka: the idempotent producer that writes `order_placed` and waits
//! for its acknowledgement within the deadline, and the broker probe behind `/readyz`. Client
//! presets and topic creation are `orderpipe_runtime::kafka`'s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use orderpipe_runtime::kafka;
use orderpipe_schemas::OrderEnvelope;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::config::Config;
use crate::error::ApiError;
use crate::metrics;

/// How long one readiness probe waits for the broker's metadata.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of the `order_placed` producer (also the ingest load benchmark's raw baseline).
pub fn producer_config(bootstrap: &str, config: &Config) -> ClientConfig {
    // Never acknowledge before the event is durable: every in-sync replica has it (acks=all),
    // and librdkafka's retries cannot duplicate or reorder it (idempotence).
    let mut client = kafka::idempotent_producer(bootstrap, "orderpipe-ingest");
    client
        // librdkafka gives up on a message after this long, counted from `send`. It equals
        // our ack deadline, so that when we answer 503 librdkafka also stops retrying the
        // message instead of writing it minutes later. A message whose produce request was
        // already on the wire can still land after the 503 (the broker wrote it, its answer
        // was lost or late): the client was told "unknown outcome, retry with the same
        // Idempotency-Key", and a retry derives the same order id, which downstream stages
        // deduplicate. Without a key such a retry is a second order: clients should send one.
        .set(
            "message.timeout.ms",
            config.ack_deadline.as_millis().to_string(),
        )
        .set(
            "linger.ms",
            format!("{:.3}", config.producer_linger.as_secs_f64() * 1000.0),
        )
        .set(
            "queue.buffering.max.messages",
            config.producer_queue_messages.to_string(),
        )
        .set(
            "queue.buffering.max.kbytes",
            config.producer_queue_kbytes.to_string(),
        );
    kafka::with_options(client, &config.kafka_options)
}

/// The producer of `order_placed` events and what it knows about the broker.
pub(crate) struct Publisher {
    config: ClientConfig,
    /// Replaced when librdkafka reports a fatal error (the idempotent producer cannot continue
    /// after one); requests clone the current one out.
    producer: RwLock<FutureProducer>,
    topic: String,
    deadline: Duration,
    retry_after: Duration,
    broker_up: AtomicBool,
    last_probe_error: Mutex<String>,
}

impl Publisher {
    /// A producer for `topic` on `bootstrap`. Does not contact the broker (librdkafka connects
    /// in the background), so this succeeds while the broker is down.
    pub(crate) fn new(bootstrap: &str, topic: &str, config: &Config) -> Result<Self, KafkaError> {
        let client = producer_config(bootstrap, config);
        let producer = client.create()?;
        // Down until a probe says otherwise, like readiness.
        metrics::broker_up(false);
        Ok(Self {
            config: client,
            producer: RwLock::new(producer),
            topic: topic.to_owned(),
            deadline: config.ack_deadline,
            retry_after: config.retry_after,
            broker_up: AtomicBool::new(false),
            last_probe_error: Mutex::new("no probe yet".into()),
        })
    }

    fn producer(&self) -> FutureProducer {
        self.producer.read().expect("producer lock").clone()
    }

    /// Produces `envelope` keyed by its order id and waits for the broker's acknowledgement, at
    /// most the ack deadline. Never blocks on a full queue: that is a 503 at once.
    pub(crate) async fn publish(&self, envelope: &OrderEnvelope) -> Result<(), ApiError> {
        let producer = self.producer();
        let key = envelope.key();
        let payload = envelope.encode();
        let record = FutureRecord::to(&self.topic).key(&key).payload(&payload);
        let started = Instant::now();
        let delivery = match producer.send_result(record) {
            Ok(delivery) => delivery,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // Expected under overload or a broker outage: counted by status, not logged per
                // request (a flash sale would flood the log).
                tracing::debug!(order_id = %envelope.order_id, "producer queue full");
                metrics::queue_depth(producer.in_flight_count());
                return Err(ApiError::Overloaded {
                    retry_after: self.retry_after,
                });
            }
            Err((err, _)) => {
                tracing::warn!(error = %err, order_id = %envelope.order_id, "producer refused order_placed");
                return Err(self.not_acknowledged());
            }
        };
        metrics::queue_depth(producer.in_flight_count());
        // Dropping `delivery` on timeout does not cancel the message (see message.timeout.ms).
        let outcome = tokio::time::timeout(self.deadline, delivery).await;
        metrics::queue_depth(producer.in_flight_count());
        match outcome {
            Ok(Ok(Ok(_))) => {
                metrics::acknowledged(started.elapsed());
                Ok(())
            }
            Ok(Ok(Err((err, _)))) => {
                tracing::warn!(error = %err, order_id = %envelope.order_id, "order_placed not acknowledged");
                Err(self.not_acknowledged())
            }
            Ok(Err(_canceled)) => {
                tracing::warn!(order_id = %envelope.order_id, "producer dropped order_placed");
                Err(self.not_acknowledged())
            }
            Err(_elapsed) => {
                // Per request at debug only: an outage is reported once by the broker probe.
                tracing::debug!(order_id = %envelope.order_id, deadline = ?self.deadline, "order_placed not acknowledged within the deadline");
                Err(self.not_acknowledged())
            }
        }
    }

    fn not_acknowledged(&self) -> ApiError {
        ApiError::NotAcknowledged {
            retry_after: self.retry_after,
        }
    }

    /// Whether the last probe reached the broker and found the orders topic; why not otherwise.
    pub(crate) fn ready(&self) -> Result<(), String> {
        if self.broker_up.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(self
                .last_probe_error
                .lock()
                .expect("probe error lock")
                .clone())
        }
    }

    /// One probe: rebuilds a producer that hit a fatal error, then fetches the orders topic's
    /// metadata. Blocks up to [`PROBE_TIMEOUT`]: run it on a blocking thread.
    pub(crate) fn probe_blocking(&self) {
        self.replace_if_fatal();
        let producer = self.producer();
        metrics::queue_depth(producer.in_flight_count());
        let outcome = producer
            .client()
            .fetch_metadata(Some(&self.topic), PROBE_TIMEOUT)
            .map_err(|err| format!("broker unreachable: {err}"))
            .and_then(|metadata| {
                let topic = metadata
                    .topics()
                    .iter()
                    .find(|t| t.name() == self.topic)
                    .ok_or_else(|| format!("topic {} missing from metadata", self.topic))?;
                match topic.error() {
                    Some(err) => Err(format!(
                        "topic {}: {}",
                        self.topic,
                        RDKafkaErrorCode::from(err)
                    )),
                    None if topic.partitions().is_empty() => {
                        Err(format!("topic {} has no partitions", self.topic))
                    }
                    None => Ok(()),
                }
            });
        let up = outcome.is_ok();
        if up != self.broker_up.swap(up, Ordering::Relaxed) {
            match &outcome {
                Ok(()) => tracing::info!(topic = %self.topic, "broker reachable"),
                Err(why) => tracing::warn!(reason = %why, "broker not reachable"),
            }
        }
        if let Err(why) = outcome {
            *self.last_probe_error.lock().expect("probe error lock") = why;
        }
        metrics::broker_up(up);
    }

    fn replace_if_fatal(&self) {
        let Some((code, reason)) = self.producer().client().fatal_error() else {
            return;
        };
        tracing::error!(%code, %reason, "producer hit a fatal error: replacing it");
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => *self.producer.write().expect("producer lock") = fresh,
            Err(err) => tracing::error!(error = %err, "could not create a new producer"),
        }
    }

    /// Waits up to `timeout` for queued messages to be delivered (shutdown). Blocking.
    pub(crate) fn flush_blocking(&self, timeout: Duration) {
        let producer = self.producer();
        if let Err(err) = producer.flush(timeout) {
            tracing::warn!(error = %err, left = producer.in_flight_count(), "producer flush incomplete");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_settings_follow_the_deadline() {
        let config = Config {
            ack_deadline: Duration::from_millis(1500),
            kafka_options: vec![("batch.num.messages".into(), "500".into())],
            ..Config::default()
        };
        let publisher = Publisher::new("127.0.0.1:1", "t", &config).unwrap();
        assert_eq!(publisher.config.get("message.timeout.ms"), Some("1500"));
        assert_eq!(publisher.config.get("acks"), Some("all"));
        assert_eq!(publisher.config.get("enable.idempotence"), Some("true"));
        assert_eq!(publisher.config.get("batch.num.messages"), Some("500"));
        assert!(publisher.ready().is_err());
    }
}
