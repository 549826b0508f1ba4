//! The live loop of one projector: gather a batch, apply it (retrying while the cluster
//! fails), dead-letter its poison events, then commit its offsets; rebalances and caught-up
//! partitions handled between batches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::applier::{Applier, BatchOutcome};
use super::clients::ProjectorContext;
use super::{Progress, ProjectorKind, MAX_BACKOFF};
use crate::config::Config;
use crate::error::Error;
use crate::metrics;

/// One projector following its topic live (replays use an `Applier` alone): its consumer, applier and dead-letter producer.
pub(super) struct LiveProjector {
    pub(super) kind: ProjectorKind,
    pub(super) consumer: Arc<StreamConsumer<ProjectorContext>>,
    pub(super) applier: Applier,
    pub(super) producer: Arc<FutureProducer>,
    pub(super) dlq_topic: String,
    pub(super) config: Config,
    pub(super) progress: Progress,
}

/// A gathered batch and whether shutdown was asked for while gathering.
struct GatheredBatch {
    messages: Vec<OwnedMessage>,
    stop: bool,
}

impl LiveProjector {
    pub(super) async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
        let name = self.kind.name();
        tracing::info!(projector = name, "projector started");
        let mut eof: BTreeSet<i32> = BTreeSet::new();
        let mut owned: BTreeSet<i32> = BTreeSet::new();
        let mut last_log = Instant::now();
        let mut since_log = 0u64;
        loop {
            let gathered = self.gather(&shutdown, &mut eof).await;
            tracing::trace!(
                projector = name,
                events = gathered.messages.len(),
                ?eof,
                "batch gathered"
            );
            self.drain_rebalances(&mut eof, &mut owned);
            let started = Instant::now();
            let mut commit: BTreeMap<(String, i32), i64> = BTreeMap::new();
            if !gathered.messages.is_empty() {
                let Some(applied) = self.apply_until_done(&gathered.messages, &shutdown).await
                else {
                    // Shutdown while the cluster refuses writes: leave the batch uncommitted.
                    break;
                };
                if !applied.poison.is_empty()
                    && !self
                        .dead_letter(&gathered.messages, &applied.poison, &shutdown)
                        .await
                {
                    break;
                }
                for message in &gathered.messages {
                    let next = commit
                        .entry((message.topic().to_owned(), message.partition()))
                        .or_default();
                    *next = (*next).max(message.offset() + 1);
                }
                metrics::batch(name, started.elapsed().as_secs_f64());
                self.progress.add_applied(self.kind, applied.events);
                since_log += gathered.messages.len() as u64;
            }
            // A caught-up partition's position may be past control records (transaction
            // markers) that are never delivered: commit it, so the lag reaches zero.
            if !eof.is_empty() {
                if let Ok(positions) = self.consumer.position() {
                    for element in positions.elements() {
                        if let Offset::Offset(position) = element.offset() {
                            if eof.contains(&element.partition()) {
                                let next = commit
                                    .entry((element.topic().to_owned(), element.partition()))
                                    .or_default();
                                *next = (*next).max(position);
                            }
                        }
                    }
                }
                commit.retain(|(topic, partition), next| {
                    self.progress
                        .committed(topic, *partition)
                        .is_none_or(|c| c < *next)
                });
            }
            // Partitions revoked while gathering belong to another replica now: their events
            // were applied (harmlessly, idempotently) but their offsets are not ours to commit.
            commit.retain(|(_, partition), _| owned.contains(partition));
            tracing::trace!(projector = name, ?commit, "committing");
            if !commit.is_empty() {
                self.commit(&commit).await;
            }
            if last_log.elapsed() >= self.config.projector.progress_interval && since_log > 0 {
                let rate = since_log as f64 / last_log.elapsed().as_secs_f64();
                tracing::info!(
                    projector = name,
                    events = since_log,
                    events_per_second = rate.round(),
                    lag = self.progress.lag(self.kind),
                    "projector progress"
                );
                since_log = 0;
                last_log = Instant::now();
            }
            if gathered.stop {
                break;
            }
        }
        tracing::info!(projector = name, "projector stopped");
        Ok(())
    }

    /// Applies a batch, retrying with backoff while the cluster fails; `None` on shutdown.
    async fn apply_until_done(
        &mut self,
        messages: &[OwnedMessage],
        shutdown: &CancellationToken,
    ) -> Option<BatchOutcome> {
        let name = self.kind.name();
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.applier.apply(messages).await {
                Ok(applied) => return Some(applied),
                Err(err) => {
                    metrics::write_error(name);
                    tracing::warn!(projector = name, error = %err, retry_in = ?backoff, "writing a batch failed");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn drain_rebalances(&mut self, eof: &mut BTreeSet<i32>, owned: &mut BTreeSet<i32>) {
        let events = std::mem::take(
            &mut *self
                .consumer
                .context()
                .rebalanced
                .lock()
                .expect("rebalance lock"),
        );
        if events.is_empty() {
            return;
        }
        // Another replica may have written orders of partitions that moved: cached state
        // could be stale, so it goes.
        self.applier.clear_cache();
        for (assigned, partitions) in events {
            for partition in partitions {
                if assigned {
                    owned.insert(partition);
                } else {
                    owned.remove(&partition);
                    eof.remove(&partition);
                }
            }
        }
    }

    /// Up to `batch_max` messages: waits for the first, then `batch_linger` for more; a
    /// partition reaching its end closes the batch early (it is caught up: write now).
    async fn gather(&self, shutdown: &CancellationToken, eof: &mut BTreeSet<i32>) -> GatheredBatch {
        let max = self.config.projector.batch_max as usize;
        let mut messages = Vec::new();
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let linger = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return GatheredBatch { messages, stop: true },
                _ = linger => return GatheredBatch { messages, stop: false },
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        eof.remove(&message.partition());
                        messages.push(message.detach());
                        if messages.len() >= max {
                            return GatheredBatch { messages, stop: false };
                        }
                        if deadline.is_none() {
                            deadline = Some(tokio::time::Instant::now() + self.config.projector.batch_linger);
                        }
                    }
                    Err(KafkaError::PartitionEOF(partition)) => {
                        eof.insert(partition);
                        return GatheredBatch { messages, stop: false };
                    }
                    Err(err) => {
                        tracing::warn!(projector = self.kind.name(), error = %err, "consumer error");
                        if messages.is_empty() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                },
            }
        }
    }

    /// Commits `next` offsets and waits for the broker's answer (librdkafka reports
    /// asynchronous commits only through a callback the client library does not install, and
    /// progress must be exact). On failure the events are re-applied later, which is harmless.
    async fn commit(&self, next: &BTreeMap<(String, i32), i64>) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            if let Err(err) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(error = %err, "building the commit list");
            }
        }
        let consumer = self.consumer.clone();
        let result = tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .unwrap_or_else(|join| {
                tracing::warn!(error = %join, "commit task failed");
                Err(KafkaError::Canceled)
            });
        match result {
            Ok(()) => {
                for ((topic, partition), offset) in next {
                    self.progress
                        .set_committed(self.kind, topic, *partition, *offset);
                }
            }
            Err(err) => {
                tracing::warn!(projector = self.kind.name(), error = %err, "offset commit failed (events will be re-applied)");
            }
        }
    }
}
