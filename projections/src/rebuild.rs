//! Replays and rebuilds: write the views of chosen projections into another keyspace from the
//! topics, without touching the live consumer groups: one consumer with manual assignment of the
//! partitions, a throw-away group id that never commits, stopping at the partition ends seen at
//! start.
//!
//! The writes are the projectors' own (same planning, same offset-derived write timestamps),
//! so a rebuild of the same topics yields the same cells as the live views.
//!
//! # Where a replay starts, and why that is correct for aggregates
//! The views are not sums of the events read: each cell is the value of one event, stamped with
//! that event's offset (see the crate docs, "Idempotency"), and the stock view holds the stock
//! stage's absolute `stock_levels` snapshots. So applying an event twice changes nothing, but
//! leaving an event out leaves its cells out: replaying only the events after a time into an
//! empty keyspace would miss every order placed and every SKU last changed before it. Hence:
//! - The target keyspace records, in `replay_positions`, per topic and partition, the offset
//!   before which every event is in its views, after every applied batch. A replay into a
//!   keyspace with a record continues from it (an interrupted replay resumes; `--from` is then
//!   only the base of the first run). Re-applying the last batch after a SIGKILL is harmless.
//! - Without a record, [`ReplayFrom::Beginning`] starts at offset 0 (a full rebuild), and
//!   [`ReplayFrom::Time`] starts at the first offset at or after the time (`offsets_for_times`)
//!   only if the keyspace already holds the views as of that time: a restored backup of the
//!   views. An empty keyspace is refused. Choosing a time earlier than the backup is always
//!   safe (the overlap is re-applied idempotently); a later one would leave a gap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orderpipe_runtime::kafka;
use orderpipe_schemas::Topics;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use tokio_util::sync::CancellationToken;

use crate::config::{check_keyspace, Config};
use crate::error::{CqlContext, Error};
use crate::projector::{Applier, ProjectorKind};
use crate::schema::{connect, migrate};
use crate::store::Writer;

/// How often the progress callback is called (and once at the end).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How long the rebuild waits for a message before checking positions again.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// Longest wait for the broker's metadata, watermarks and time lookups.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Where a replay starts in a keyspace that holds no record of an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Offset 0 of every partition: a full rebuild (any keyspace, empty or not).
    Beginning,
    /// The first offset at or after this time, onto a keyspace that already holds the views as
    /// of that time (a restored backup); refused for a keyspace without views.
    Time(DateTime<Utc>),
}

impl std::fmt::Display for ReplayFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplayFrom::Beginning => f.write_str("beginning"),
            ReplayFrom::Time(t) => f.write_str(&t.to_rfc3339()),
        }
    }
}

/// What to replay, from where, into which keyspace.
#[derive(Debug, Clone)]
pub struct ReplaySpec {
    /// Start of a first run (a keyspace with a record continues from it).
    pub from: ReplayFrom,
    /// The projections to replay (their topics are read, their views written).
    pub projections: Vec<ProjectorKind>,
    /// The keyspace written; never the live one (`config.cql.keyspace`).
    pub target_keyspace: String,
    /// Pace of the replay (events per second), so a replay during a sale leaves the cluster
    /// room for the live traffic; `None`: as fast as it goes.
    pub max_events_per_second: Option<u32>,
}

/// Why a partition starts where it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOrigin {
    /// The target keyspace's record of an earlier (interrupted or finished) replay.
    Recorded,
    /// Offset 0 (or the first offset retention kept).
    Beginning,
    /// The first offset at or after `--from TIME`.
    Time,
}

/// One partition of a replay plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset read.
    pub start: i64,
    /// End offset (exclusive) read up to: the partition's end when the replay started.
    pub end: i64,
    /// Why it starts at `start`.
    pub origin: StartOrigin,
}

/// What a prepared replay will do; shown to the operator before it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayPlan {
    /// The keyspace written.
    pub keyspace: String,
    /// Every partition read.
    pub partitions: Vec<PartitionPlan>,
    /// Projections whose views the keyspace already held without a record (a restored
    /// backup): the replay writes onto them. Callers ask the operator first.
    pub onto_existing_views: Vec<ProjectorKind>,
}

impl ReplayPlan {
    /// Offsets to read (an upper bound of the events: transaction markers count too).
    pub fn total(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| u64::try_from(p.end - p.start).unwrap_or(0))
            .sum()
    }

    /// Whether any partition continues an earlier replay.
    pub fn resumes(&self) -> bool {
        self.partitions
            .iter()
            .any(|p| p.origin == StartOrigin::Recorded)
    }
}

/// Where a rebuild stands.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildProgress {
    /// Events applied so far.
    pub events: u64,
    /// Undecodable events skipped so far (the live projectors dead-letter them).
    pub poison: u64,
    /// Offsets to read in this run when it started (the progress bar's length).
    pub total: u64,
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
    /// Every partition was read to its end; `false` when stopped by `shutdown` (run again to
    /// continue from the recorded positions).
    pub complete: bool,
}

/// Reads `topics` (orders and stock) from offset 0 to their current ends and writes every view
/// into `target_keyspace` (created with `config.cql.replication` when missing), calling
/// `progress` about once a second and at the end. `config.cql.keyspace` (the live views) is
/// never written; `target_keyspace` must differ from it. Rebuilding into a keyspace that already
/// holds these views is safe (the writes are idempotent) but slower than into a fresh one; into a
/// keyspace with the record of an earlier replay it continues from there.
pub async fn rebuild(
    config: &Config,
    bootstrap: &str,
    nodes: &[String],
    topics: &Topics,
    target_keyspace: &str,
    progress: impl FnMut(&RebuildProgress) + Send,
) -> Result<RebuildReport, Error> {
    let spec = ReplaySpec {
        from: ReplayFrom::Beginning,
        projections: ProjectorKind::ALL.to_vec(),
        target_keyspace: target_keyspace.to_owned(),
        max_events_per_second: None,
    };
    Replay::prepare(config, bootstrap, nodes, topics, &spec)
        .await?
        .run(progress, CancellationToken::new())
        .await
}

/// A replay ready to run: connected, migrated, partitions planned. See the module docs.
pub struct Replay {
    plan: ReplayPlan,
    started: Instant,
    session: Arc<Session>,
    record: PreparedStatement,
    base: String,
    applier: Applier,
    consumer: Arc<StreamConsumer<RebuildContext>>,
    batch_max: usize,
    max_events_per_second: Option<u32>,
}

impl Replay {
    /// Connects, migrates `spec.target_keyspace` (created with `config.cql.replication` when
    /// missing), reads its record and the topics' ends, and plans where each partition starts.
    /// Nothing is written to the views yet (the record of a first run's start is).
    pub async fn prepare(
        config: &Config,
        bootstrap: &str,
        nodes: &[String],
        topics: &Topics,
        spec: &ReplaySpec,
    ) -> Result<Self, Error> {
        let target = spec.target_keyspace.as_str();
        check_keyspace(target).map_err(Error::Config)?;
        if target == config.cql.keyspace {
            return Err(Error::Config(format!(
                "replay target {target} is the live keyspace (--keyspace); choose another one"
            )));
        }
        if spec.projections.is_empty() {
            return Err(Error::Config("no projection to replay".into()));
        }
        let started = Instant::now();
        let session = connect(nodes, &config.cql).await?;
        let migrated = migrate(&session, target, &config.cql.replication).await?;
        let recorded = read_record(&session, target).await?;

        // Never joined (manual assignment) and never committed: the live groups are untouched.
        let group = format!(
            "{}.replay-{}",
            config.projector.group,
            uuid::Uuid::new_v4().simple()
        );
        let client = kafka::with_options(
            kafka::assigned_reader(bootstrap, "orderpipe-replay", &group),
            &config.projector.kafka_options,
        );
        let consumer: Arc<StreamConsumer<RebuildContext>> = Arc::new(
            client
                .create_with_context(RebuildContext)
                .map_err(|e| Error::kafka("creating the replay consumer", e))?,
        );

        let mut partitions = Vec::new();
        let mut onto_existing_views = Vec::new();
        for kind in &spec.projections {
            let topic = match kind {
                ProjectorKind::Orders => topics.orders.clone(),
                ProjectorKind::Stock => topics.stock.clone(),
            };
            let watermarks = {
                let (consumer, topic) = (consumer.clone(), topic.clone());
                tokio::task::spawn_blocking(move || watermarks(&consumer, &topic))
                    .await
                    .map_err(|e| Error::Config(format!("listing partitions failed: {e}")))??
            };
            let unrecorded: Vec<i32> = watermarks
                .keys()
                .filter(|p| !recorded.contains_key(&(topic.clone(), **p)))
                .copied()
                .collect();
            let mut from_time = BTreeMap::new();
            if let (ReplayFrom::Time(time), false) = (spec.from, unrecorded.is_empty()) {
                if !holds_views(&session, target, *kind).await? {
                    return Err(Error::Config(format!(
                        "keyspace {target} holds no {} views and no record of an earlier replay: \
                         replaying only the events after {} would leave out every order and stock \
                         level written before it. Replay --from beginning into it, or first \
                         restore into it a backup of the views taken after that time",
                        kind.name(),
                        time.to_rfc3339()
                    )));
                }
                onto_existing_views.push(*kind);
                let (consumer, topic, partitions) =
                    (consumer.clone(), topic.clone(), unrecorded.clone());
                from_time = tokio::task::spawn_blocking(move || {
                    offsets_at(&consumer, &topic, &partitions, time)
                })
                .await
                .map_err(|e| Error::Config(format!("looking up offsets failed: {e}")))??;
            }
            for (partition, (low, high)) in watermarks {
                let (start, origin) = match recorded.get(&(topic.clone(), partition)) {
                    Some(next) => (*next, StartOrigin::Recorded),
                    None => match from_time.get(&partition) {
                        Some(offset) => (*offset, StartOrigin::Time),
                        None => (low, StartOrigin::Beginning),
                    },
                };
                partitions.push(PartitionPlan {
                    topic: topic.clone(),
                    partition,
                    // Retention may have deleted what a record or a time points at.
                    start: start.clamp(low, high.max(low)),
                    end: high,
                    origin,
                });
            }
        }

        let writer = Arc::new(Writer::new(session.clone(), target).await?);
        let mut applier = Applier::new(
            "replay",
            writer,
            topics,
            config.projector.state_cache,
            config.projector.write_concurrency as usize,
        );
        if migrated.already_applied.is_empty() {
            applier.assume_fresh();
        }
        let record = session
            .prepare(format!(
                "INSERT INTO {target}.replay_positions (topic, partition, next_offset, base, updated_at) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await
            .cql("preparing the replay record")?;
        Ok(Self {
            plan: ReplayPlan {
                keyspace: target.to_owned(),
                partitions,
                onto_existing_views,
            },
            started,
            session,
            record,
            base: spec.from.to_string(),
            applier,
            consumer,
            batch_max: config.projector.batch_max as usize,
            max_events_per_second: spec.max_events_per_second,
        })
    }

    /// Where each partition starts and ends.
    pub fn plan(&self) -> &ReplayPlan {
        &self.plan
    }

    /// Reads every planned partition to its end, applying batches and recording how far it got
    /// after each; calls `progress` about once a second and at the end. Stops between batches
    /// when `shutdown` is cancelled (the report says `complete: false`; run again to continue).
    pub async fn run(
        mut self,
        mut progress: impl FnMut(&RebuildProgress) + Send,
        shutdown: CancellationToken,
    ) -> Result<RebuildReport, Error> {
        let target = self.plan.keyspace.clone();
        let end_offsets: BTreeMap<(String, i32), i64> = self
            .plan
            .partitions
            .iter()
            .map(|p| ((p.topic.clone(), p.partition), p.end))
            .collect();
        let mut positions: BTreeMap<(String, i32), i64> = self
            .plan
            .partitions
            .iter()
            .map(|p| ((p.topic.clone(), p.partition), p.start))
            .collect();
        // Pin a first run's start in the record at once: a rerun continues from it whatever
        // its --from says (a later start would leave a gap).
        for p in &self.plan.partitions {
            if p.origin != StartOrigin::Recorded {
                self.record_position(&p.topic, p.partition, p.start).await?;
            }
        }
        let mut assignment = TopicPartitionList::new();
        for p in &self.plan.partitions {
            if p.end > p.start {
                assignment
                    .add_partition_offset(&p.topic, p.partition, Offset::Offset(p.start))
                    .map_err(|e| Error::kafka("building the assignment", e))?;
            }
        }
        self.consumer
            .assign(&assignment)
            .map_err(|e| Error::kafka("assigning partitions", e))?;

        let total = self.plan.total();
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
        let report = |events: u64, poison: u64, remaining: u64, done: bool| {
            let elapsed = read_started.elapsed();
            RebuildProgress {
                events,
                poison,
                total,
                remaining,
                elapsed,
                events_per_second: events as f64 / elapsed.as_secs_f64().max(1e-9),
                done,
            }
        };
        progress(&report(0, 0, remaining(&positions), false));
        let mut complete = true;
        loop {
            if remaining(&positions) == 0 {
                break;
            }
            if shutdown.is_cancelled() {
                complete = false;
                break;
            }
            let mut batch: Vec<OwnedMessage> = Vec::with_capacity(self.batch_max);
            let mut check_positions = false;
            while batch.len() < self.batch_max {
                let wait = if batch.is_empty() {
                    IDLE_POLL
                } else {
                    Duration::from_millis(1)
                };
                match tokio::time::timeout(wait, self.consumer.recv()).await {
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
                        tracing::warn!(error = %err, "replay consumer error");
                        check_positions = true;
                        break;
                    }
                }
            }
            let before = positions.clone();
            if !batch.is_empty() {
                let applied = apply_with_retries(&mut self.applier, &batch).await?;
                events += applied.events;
                poison += applied.poison.len() as u64;
                for p in &applied.poison {
                    let m = &batch[p.index];
                    tracing::warn!(
                        topic = m.topic(),
                        partition = m.partition(),
                        offset = m.offset(),
                        reason = p.reason,
                        "replay skips an undecodable event"
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
                if let Ok(list) = self.consumer.position() {
                    for element in list.elements() {
                        if let Offset::Offset(position) = element.offset() {
                            let key = (element.topic().to_owned(), element.partition());
                            if let (Some(entry), Some(end)) =
                                (positions.get_mut(&key), end_offsets.get(&key))
                            {
                                *entry = (*entry).max(position.min(*end));
                            }
                        }
                    }
                }
            }
            // Recorded only once the batch's writes are acknowledged: the record never claims
            // an event that is not in the views.
            for (key, position) in &positions {
                if before.get(key) != Some(position) {
                    self.record_position(&key.0, key.1, *position).await?;
                }
            }
            if let Some(rate) = self.max_events_per_second {
                // Pacing, not synchronisation: hold the average at `rate`.
                let due = Duration::from_secs_f64(events as f64 / f64::from(rate.max(1)));
                let ahead = due.saturating_sub(read_started.elapsed());
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(ahead) => {}
                }
            }
            if last_report.elapsed() >= PROGRESS_EVERY {
                progress(&report(events, poison, remaining(&positions), false));
                last_report = Instant::now();
            }
        }
        let left = remaining(&positions);
        let last = report(events, poison, left, complete);
        progress(&last);
        tracing::info!(
            keyspace = %target,
            events,
            poison,
            complete,
            remaining = left,
            seconds = last.elapsed.as_secs_f64(),
            events_per_second = last.events_per_second.round(),
            "replay {}",
            if complete { "done" } else { "stopped" }
        );
        Ok(RebuildReport {
            keyspace: target,
            events,
            poison,
            elapsed: self.started.elapsed(),
            events_per_second: last.events_per_second,
            end_offsets,
            complete,
        })
    }

    async fn record_position(&self, topic: &str, partition: i32, next: i64) -> Result<(), Error> {
        let now = CqlTimestamp(Utc::now().timestamp_millis());
        // Stamped with the position itself: the furthest position wins whatever the order in
        // which writes land, and every stamp lies in the past (offsets are tiny as microseconds).
        self.session
            .execute_unpaged(
                &self.record,
                (topic, partition, next, self.base.as_str(), now, next),
            )
            .await
            .cql("recording the replay position")?;
        Ok(())
    }
}

/// The record of earlier replays into `keyspace`: next offset per (topic, partition).
async fn read_record(
    session: &Session,
    keyspace: &str,
) -> Result<BTreeMap<(String, i32), i64>, Error> {
    let context = "reading the replay record";
    let rows = session
        .query_unpaged(
            format!("SELECT topic, partition, next_offset FROM {keyspace}.replay_positions"),
            &[],
        )
        .await
        .cql(context)?
        .into_rows_result()
        .cql(context)?;
    rows.rows::<(String, i32, i64)>()
        .cql(context)?
        .map(|row| row.map(|(topic, partition, next)| ((topic, partition), next)))
        .collect::<Result<_, _>>()
        .cql(context)
}

/// Whether `keyspace` holds any row of the projection's main view.
async fn holds_views(
    session: &Session,
    keyspace: &str,
    kind: ProjectorKind,
) -> Result<bool, Error> {
    let table = match kind {
        ProjectorKind::Orders => "orders",
        ProjectorKind::Stock => "stock_by_sku",
    };
    let context = format!("reading {keyspace}.{table}");
    let rows = session
        .query_unpaged(format!("SELECT * FROM {keyspace}.{table} LIMIT 1"), &[])
        .await
        .cql(&context)?
        .into_rows_result()
        .cql(&context)?;
    Ok(rows.rows_num() > 0)
}

/// Attempts at writing one batch before the rebuild gives up (the writes are idempotent, so a
/// timeout of an overloaded cluster is simply retried).
const ATTEMPTS: u32 = 8;

async fn apply_with_retries(
    applier: &mut Applier,
    batch: &[OwnedMessage],
) -> Result<crate::projector::BatchOutcome, Error> {
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match applier.apply(batch).await {
            Ok(applied) => return Ok(applied),
            Err(err) if attempt < ATTEMPTS => {
                tracing::warn!(error = %err, attempt, retry_in = ?backoff, "replay write failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// (low, high) watermarks of every partition of `topic`.
fn watermarks(
    consumer: &StreamConsumer<RebuildContext>,
    topic: &str,
) -> Result<BTreeMap<i32, (i64, i64)>, Error> {
    let metadata = consumer
        .fetch_metadata(Some(topic), BROKER_TIMEOUT)
        .map_err(|e| Error::kafka(format!("reading metadata of {topic}"), e))?;
    let mut out = BTreeMap::new();
    for t in metadata.topics() {
        if let Some(err) = t.error() {
            return Err(Error::Config(format!("topic {topic}: {err:?}")));
        }
        for p in t.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), BROKER_TIMEOUT)
                .map_err(|e| Error::kafka(format!("reading the end of {topic}"), e))?;
            out.insert(p.id(), (low, high));
        }
    }
    Ok(out)
}

/// The first offset at or after `time` of each of `partitions` (record timestamps; a partition
/// with nothing that late is absent, so the caller starts it at its end).
fn offsets_at(
    consumer: &StreamConsumer<RebuildContext>,
    topic: &str,
    partitions: &[i32],
    time: DateTime<Utc>,
) -> Result<BTreeMap<i32, i64>, Error> {
    let mut query = TopicPartitionList::new();
    for partition in partitions {
        query
            .add_partition_offset(topic, *partition, Offset::Offset(time.timestamp_millis()))
            .map_err(|e| Error::kafka("building the time lookup", e))?;
    }
    let found = consumer
        .offsets_for_times(query, BROKER_TIMEOUT)
        .map_err(|e| Error::kafka(format!("looking up offsets of {topic} at {time}"), e))?;
    let mut out = BTreeMap::new();
    for element in found.elements() {
        match element.offset() {
            Offset::Offset(offset) => {
                out.insert(element.partition(), offset);
            }
            // Nothing at or after the time: start at the end (nothing to replay).
            _ => {
                out.insert(element.partition(), i64::MAX);
            }
        }
    }
    Ok(out)
}
