//! Restoring a stage's state: replay its changelog partitions from the beginning to their end.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::contexts::RestoreContext;
use super::run::{Runner, RESTORE_TIMEOUT};
use super::Error;
use crate::metrics;

impl Runner {
    /// Replay changelog `partitions` from the beginning to their end into the stage.
    pub(super) fn restore(&mut self, partitions: &[i32]) -> Result<(), Error> {
        if partitions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let consumer: BaseConsumer<RestoreContext> = self
            .restore_config
            .create_with_context(RestoreContext)
            .map_err(|source| Error::Kafka {
                context: "creating changelog restore consumer",
                source,
            })?;
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(&self.changelog_topic, p, Offset::Beginning)
                .map_err(|source| Error::Kafka {
                    context: "building restore assignment",
                    source,
                })?;
        }
        consumer.assign(&tpl).map_err(|source| Error::Kafka {
            context: "assigning changelog partitions",
            source,
        })?;
        let mut pending: HashSet<i32> = partitions.iter().copied().collect();
        let mut records = 0u64;
        let deadline = started + RESTORE_TIMEOUT;
        while !pending.is_empty() {
            if Instant::now() > deadline {
                return Err(Error::Fatal(format!(
                    "restoring {} partitions {pending:?} took over {RESTORE_TIMEOUT:?}",
                    self.changelog_topic
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    let partition = message.partition();
                    let restored = match message.key().map(std::str::from_utf8) {
                        Some(Ok(key)) => self.stage.restore(partition, key, message.payload()),
                        Some(Err(err)) => Err(format!("key is not UTF-8: {err}")),
                        None => Err("record without a key".to_owned()),
                    };
                    match restored {
                        Ok(()) => records += 1,
                        Err(reason) => {
                            metrics::restore_failure(self.name, partition);
                            let err = Error::Restore {
                                stage: self.name,
                                topic: self.changelog_topic.clone(),
                                partition,
                                offset: message.offset(),
                                key: String::from_utf8_lossy(message.key().unwrap_or_default())
                                    .into_owned(),
                                reason,
                            };
                            tracing::error!(stage = self.name, partition, error = %err, "changelog restore failed: stopping the stage");
                            self.ready.store(false, Ordering::Relaxed);
                            return Err(err);
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    pending.remove(&partition);
                }
                Some(Err(err)) => {
                    tracing::warn!(stage = self.name, error = %err, "changelog restore: consumer error");
                }
                None => {}
            }
        }
        metrics::restored(self.name, records);
        tracing::info!(
            stage = self.name,
            instance = %self.config.instance_id,
            ?partitions,
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state restored from changelog"
        );
        Ok(())
    }
}
