//! Rebuild every view from offset 0 into another keyspace, without touching the live consumer
//! groups: one consumer with manual assignment of every partition of both topics, a throw-away
//! group id that never commits, stopping at the partition ends seen at start.
//!
//! The writes are the projectors' own (same planning, same offset-derived write timestamps),
//! so a rebuild of the same topics yields the same cells as the live views.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orderpipe_runtime::kafka;
use orderpipe_schemas::Topics;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};

use crate::config::{check_keyspace, Config};
use crate::error::Error;
use crate::projector::Applier;
use crate::schema::{connect, migrate};
use crate::store::Writer;

/// How often the progress callback is called (and once at the end).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long the rebuild waits for a message before checking positions again.
const IDLE_POLL: Duration = Duration::from_millis(200);

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

/// Where a rebuild stands.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildProgress {
    /// Events applied so far.
    pub events: u64,
    /// Undecodable events skipped so far (the live projectors dead-letter them).
    pub poison: u64,
    /// Events left before the partition ends seen at start.
    pub remaining: u64,
    /// Time since the rebuild started.
    pub elapsed: Duration,
    /// `events / elapsed`.
    pub events_per_second: f64,
    /// Whether every partition has been read to its end.
    pub done: bool,
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    /// The keyspace written.
    pub keyspace: String,
    /// Events applied.
    pub events: u64,
    /// Undecodable events skipped.
    pub poison: u64,
    /// Wall time, connection and migrations included.
    pub elapsed: Duration,
    /// Events applied per second of reading and writing.
    pub events_per_second: f64,
    /// The end offsets read up to, per (topic, partition).
    pub end_offsets: BTreeMap<(String, i32), i64>,
}

/// Reads `topics` (orders and stock) from offset 0 to their current ends and writes every view
/// into `target_keyspace` (created with `config.cql.replication` when missing), calling
/// `progress` about once a second and at the end. `config.cql.keyspace` (the live views) is
/// never written; `target_keyspace` must differ from it. Rebuilding into a keyspace that already
/// holds these views is safe (the writes are idempotent) but slower than into a fresh one.
pub async fn rebuild(
    config: &Config,
    bootstrap: &str,
    nodes: &[String],
    topics: &Topics,
    target_keyspace: &str,
    mut progress: impl FnMut(&RebuildProgress) + Send,
) -> Result<RebuildReport, Error> {
    check_keyspace(target_keyspace).map_err(Error::Config)?;
    if target_keyspace == config.cql.keyspace {
        return Err(Error::Config(format!(
            "rebuild target {target_keyspace} is the live keyspace; choose a fresh one"
        )));
    }
    let started = Instant::now();
    let session = connect(nodes, &config.cql).await?;
    let migrated = migrate(&session, target_keyspace, &config.cql.replication).await?;
    let writer = Arc::new(Writer::new(session, target_keyspace).await?);
    let mut applier = Applier::new(
        "rebuild",
        writer,
        topics,
        config.projector.state_cache,
        config.projector.write_concurrency as usize,
    );
    if migrated.already_applied.is_empty() {
        applier.assume_fresh();
    }

    // Never joined (manual assignment) and never committed: the live groups are untouched.
    let group = format!(
        "{}.rebuild-{}",
        config.projector.group,
        uuid::Uuid::new_v4().simple()
    );
    let client = kafka::with_options(
        kafka::assigned_reader(bootstrap, "orderpipe-rebuild", &group),
        &config.projector.kafka_options,
    );
    let consumer: Arc<StreamConsumer<RebuildContext>> = Arc::new(
        client
            .create_with_context(RebuildContext)
            .map_err(|e| Error::kafka("creating rebuild consumer", e))?,
    );

    let names = [topics.orders.clone(), topics.stock.clone()];
    let ends = {
        let consumer = consumer.clone();
        tokio::task::spawn_blocking(move || end_offsets(&consumer, &names))
            .await
            .map_err(|e| Error::Config(format!("listing partitions failed: {e}")))??
    };
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), (low, high)) in &ends {
        if high > low {
            assignment
                .add_partition_offset(topic, *partition, Offset::Beginning)
                .map_err(|e| Error::kafka("building the assignment", e))?;
        }
    }
    consumer
        .assign(&assignment)
        .map_err(|e| Error::kafka("assigning partitions", e))?;
    let end_offsets: BTreeMap<(String, i32), i64> = ends
        .iter()
        .map(|(k, (_, high))| (k.clone(), *high))
        .collect();
    let mut positions: BTreeMap<(String, i32), i64> =
        ends.iter().map(|(k, (low, _))| (k.clone(), *low)).collect();

    let batch_max = config.projector.batch_max as usize;
    let read_started = Instant::now();
    let mut events = 0u64;
    let mut poison = 0u64;
    let mut last_report = Instant::now();
    let remaining = |positions: &BTreeMap<(String, i32), i64>| -> u64 {
        end_offsets
            .iter()
            .map(|(k, end)| {
                u64::try_from(end - positions.get(k).copied().unwrap_or(0)).unwrap_or(0)
            })
            .sum()
    };
    loop {
        if remaining(&positions) == 0 {
            break;
        }
        let mut batch: Vec<OwnedMessage> = Vec::with_capacity(batch_max);
        let mut check_positions = false;
        while batch.len() < batch_max {
            let wait = if batch.is_empty() {
                IDLE_POLL
            } else {
                Duration::ZERO
            };
            match tokio::time::timeout(wait.max(Duration::from_millis(1)), consumer.recv()).await {
                Ok(Ok(message)) => {
                    let key = (message.topic().to_owned(), message.partition());
                    let end = end_offsets.get(&key).copied().unwrap_or(0);
                    if message.offset() < end {
                        batch.push(message.detach());
                    }
                }
                Ok(Err(KafkaError::PartitionEOF(_))) | Err(_) => {
                    check_positions = true;
                    break;
                }
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "rebuild consumer error");
                    check_positions = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let applied = apply_with_retries(&mut applier, &batch).await?;
            events += applied.events;
            poison += applied.poison.len() as u64;
            for p in &applied.poison {
                let m = &batch[p.index];
                tracing::warn!(
                    topic = m.topic(),
                    partition = m.partition(),
                    offset = m.offset(),
                    reason = p.reason,
                    "rebuild skips an undecodable event"
                );
            }
            for message in &batch {
                let entry = positions
                    .entry((message.topic().to_owned(), message.partition()))
                    .or_default();
                *entry = (*entry).max(message.offset() + 1);
            }
        }
        if check_positions {
            // Transaction markers are never delivered: the consumer's position tells how far
            // a partition really is.
            if let Ok(list) = consumer.position() {
                for element in list.elements() {
                    if let Offset::Offset(position) = element.offset() {
                        let key = (element.topic().to_owned(), element.partition());
                        if let Some(entry) = positions.get_mut(&key) {
                            *entry = (*entry).max(position);
                        }
                    }
                }
            }
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            let elapsed = read_started.elapsed();
            progress(&RebuildProgress {
                events,
                poison,
                remaining: remaining(&positions),
                elapsed,
                events_per_second: events as f64 / elapsed.as_secs_f64().max(1e-9),
                done: false,
            });
            last_report = Instant::now();
        }
    }
    let read_elapsed = read_started.elapsed();
    let events_per_second = events as f64 / read_elapsed.as_secs_f64().max(1e-9);
    progress(&RebuildProgress {
        events,
        poison,
        remaining: 0,
        elapsed: read_elapsed,
        events_per_second,
        done: true,
    });
    tracing::info!(
        keyspace = target_keyspace,
        events,
        poison,
        seconds = read_elapsed.as_secs_f64(),
        events_per_second = events_per_second.round(),
        "rebuild done"
    );
    Ok(RebuildReport {
        keyspace: target_keyspace.to_owned(),
        events,
        poison,
        elapsed: started.elapsed(),
        events_per_second,
        end_offsets,
    })
}

/// Attempts at writing one batch before the rebuild gives up (the writes are idempotent, so a
/// timeout of an overloaded cluster is simply retried).
const ATTEMPTS: u32 = 8;

async fn apply_with_retries(
    applier: &mut Applier,
    batch: &[OwnedMessage],
) -> Result<crate::projector::Applied, Error> {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match applier.apply(batch).await {
            Ok(applied) => return Ok(applied),
            Err(err) if attempt < ATTEMPTS => {
                tracing::warn!(error = %err, attempt, retry_in = ?backoff, "rebuild write failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// (low, high) watermarks per (topic, partition).
type Watermarks = BTreeMap<(String, i32), (i64, i64)>;

/// (low, high) watermarks of every partition of `topics`.
fn end_offsets(
    consumer: &StreamConsumer<RebuildContext>,
    topics: &[String],
) -> Result<Watermarks, Error> {
    let timeout = Duration::from_secs(10);
    let mut out = BTreeMap::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| Error::kafka(format!("reading metadata of {topic}"), e))?;
        for t in metadata.topics() {
            if let Some(err) = t.error() {
                return Err(Error::Config(format!("topic {topic}: {err:?}")));
            }
            for p in t.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(topic, p.id(), timeout)
                    .map_err(|e| Error::kafka(format!("reading the end of {topic}"), e))?;
                out.insert((topic.clone(), p.id()), (low, high));
            }
        }
    }
    Ok(out)
}
