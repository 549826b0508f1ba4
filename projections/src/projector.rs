//! The projectors: one Kafka consumer per event topic (`orders`, `stock`), each in its own
//! group, turning batches of events into view writes.
//!
//! Per batch: gather up to `batch_max` events (or `batch_linger` after the first, or until a
//! partition is caught up), decode them (undecodable ones go to `projections.dlq` and the
//! partition moves on), plan and apply the writes, and only then commit the batch's offsets.
//! Redelivery after a crash re-applies events whose writes already landed, which changes nothing
//! (see the crate docs, "Idempotency"): at-least-once delivery plus idempotent writes gives effectively-once
//! views.
//!
//! Consumers are `read_committed` (aborted transactions of the processors are never seen), use
//! static membership (`group.instance.id`) and the cooperative-sticky assignor, and never commit
//! automatically.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use orderpipe_runtime::health::Readiness;
use orderpipe_runtime::kafka::{self, DeadLetterSource};
use orderpipe_schemas::{DecodeError, OrderEnvelope, StockEnvelope, Topics};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientContext, Message};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::error::Error;
use crate::metrics;
use crate::model::{needs_state, plan_order, plan_stock, OrderState, Write};
use crate::schema::{connect, migrate};
use crate::store::Writer;

/// The stage name of the dead-letter topic: `<prefix>projections.dlq`.
pub const DLQ_STAGE_NAME: &str = "projections";
/// Longest pause between attempts of a failing write or dead-letter delivery.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The two projectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProjectorKind {
    /// Follows the `orders` topic: orders, timelines, orders by customer, sales.
    Orders,
    /// Follows the `stock` topic: stock by SKU.
    Stock,
}

impl ProjectorKind {
    /// Both projectors.
    pub const ALL: [ProjectorKind; 2] = [ProjectorKind::Orders, ProjectorKind::Stock];

    /// Name in logs, metrics, group ids.
    pub fn name(self) -> &'static str {
        match self {
            ProjectorKind::Orders => "orders",
            ProjectorKind::Stock => "stock",
        }
    }

    fn topic(self, topics: &Topics) -> String {
        match self {
            ProjectorKind::Orders => topics.orders.clone(),
            ProjectorKind::Stock => topics.stock.clone(),
        }
    }
}

/// Where one partition of a projector stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Next offset to process, as last committed by this process (`None`: nothing committed yet).
    pub committed: Option<i64>,
    /// End of the partition (last stable offset under `read_committed`), from the last statistics.
    pub end: Option<i64>,
    /// First offset still in the partition, from the last statistics.
    pub start: Option<i64>,
}

impl PartitionProgress {
    /// Events not yet committed (0 when unknown).
    pub fn lag(&self) -> u64 {
        match self.end {
            Some(end) => {
                let from = self.committed.or(self.start).unwrap_or(0);
                u64::try_from(end - from).unwrap_or(0)
            }
            None => 0,
        }
    }
}

#[derive(Debug, Default)]
struct ProgressInner {
    partitions: BTreeMap<(ProjectorKind, String, i32), PartitionProgress>,
    stats_seen: BTreeSet<ProjectorKind>,
    applied: BTreeMap<ProjectorKind, u64>,
}

/// Live progress of the projectors of this process: committed offsets, partition ends, lag.
/// Cheap to clone; readiness checks and tests read it.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    inner: Arc<Mutex<ProgressInner>>,
}

impl Progress {
    fn with<R>(&self, f: impl FnOnce(&mut ProgressInner) -> R) -> R {
        f(&mut self.inner.lock().expect("progress lock"))
    }

    /// The next offset to process of `topic`/`partition`, as committed by this process.
    pub fn committed(&self, topic: &str, partition: i32) -> Option<i64> {
        self.with(|p| {
            p.partitions
                .iter()
                .find(|((_, t, n), _)| t == topic && *n == partition)
                .and_then(|(_, progress)| progress.committed)
        })
    }

    /// Total lag of a projector over its assigned partitions; `None` before its first statistics.
    pub fn lag(&self, kind: ProjectorKind) -> Option<u64> {
        self.with(|p| {
            p.stats_seen.contains(&kind).then(|| {
                p.partitions
                    .iter()
                    .filter(|((k, _, _), _)| *k == kind)
                    .map(|(_, progress)| progress.lag())
                    .sum()
            })
        })
    }

    /// Events applied by a projector since it started.
    pub fn applied(&self, kind: ProjectorKind) -> u64 {
        self.with(|p| p.applied.get(&kind).copied().unwrap_or(0))
    }

    /// Every partition's progress (projector, topic, partition).
    pub fn partitions(&self) -> Vec<(ProjectorKind, String, i32, PartitionProgress)> {
        self.with(|p| {
            p.partitions
                .iter()
                .map(|((k, t, n), progress)| (*k, t.clone(), *n, progress.clone()))
                .collect()
        })
    }

    fn publish_lag(&self, kind: ProjectorKind, topic: &str, partition: i32) {
        let lag = self.with(|p| {
            p.partitions
                .get(&(kind, topic.to_owned(), partition))
                .map(PartitionProgress::lag)
        });
        if let Some(lag) = lag {
            metrics::lag(kind.name(), topic, partition, lag);
        }
    }

    fn set_committed(&self, kind: ProjectorKind, topic: &str, partition: i32, offset: i64) {
        self.with(|p| {
            let entry = p
                .partitions
                .entry((kind, topic.to_owned(), partition))
                .or_default();
            entry.committed = Some(entry.committed.map_or(offset, |c| c.max(offset)));
        });
        self.publish_lag(kind, topic, partition);
    }

    fn forget(&self, kind: ProjectorKind, topic: &str, partition: i32) {
        self.with(|p| p.partitions.remove(&(kind, topic.to_owned(), partition)));
        metrics::lag(kind.name(), topic, partition, 0);
    }

    fn add_applied(&self, kind: ProjectorKind, n: u64) {
        self.with(|p| *p.applied.entry(kind).or_default() += n);
    }
}

/// Consumer context: exports lag from librdkafka statistics, records rebalances.
struct ProjectorContext {
    kind: ProjectorKind,
    topic: String,
    progress: Progress,
    rebalanced: Mutex<Vec<(bool, Vec<i32>)>>,
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

/// A poison event: why it could not be applied.
#[derive(Debug)]
pub(crate) struct Poison {
    pub(crate) index: usize,
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

/// What applying a batch did.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub(crate) events: u64,
    pub(crate) poison: Vec<Poison>,
}

enum Decoded {
    Order(Box<OrderEnvelope>),
    Stock(Box<StockEnvelope>),
}

/// Decodes, plans and writes batches of events of either topic. Keeps a bounded cache of
/// orders' placement and outcome (the state planning needs), filled from the views on a miss.
pub(crate) struct Applier {
    name: &'static str,
    writer: Arc<Writer>,
    orders_topic: String,
    stock_topic: String,
    cache: HashMap<Uuid, OrderState>,
    cache_capacity: usize,
    concurrency: usize,
    /// The views held nothing when this applier started and every write since is in `cache`:
    /// a cache miss is an order never seen, no read needed (rebuilds into a fresh keyspace).
    fresh: bool,
}

impl Applier {
    pub(crate) fn new(
        name: &'static str,
        writer: Arc<Writer>,
        topics: &Topics,
        cache_capacity: usize,
        concurrency: usize,
    ) -> Self {
        Self {
            name,
            writer,
            orders_topic: topics.orders.clone(),
            stock_topic: topics.stock.clone(),
            cache: HashMap::new(),
            cache_capacity,
            concurrency: concurrency.max(1),
            fresh: false,
        }
    }

    /// Declares the target views empty at start (see `fresh`).
    pub(crate) fn assume_fresh(&mut self) {
        self.fresh = true;
    }

    /// Forget cached order state (after a rebalance another replica may have written).
    pub(crate) fn clear_cache(&mut self) {
        self.cache.clear();
        self.fresh = false;
    }

    /// Applies `messages` (in per-partition offset order). Poison events are returned, not
    /// written; an error means nothing is known about which writes landed: apply again.
    pub(crate) async fn apply(&mut self, messages: &[OwnedMessage]) -> Result<Applied, Error> {
        let mut applied = Applied::default();
        let mut decoded = Vec::with_capacity(messages.len());
        for (index, message) in messages.iter().enumerate() {
            let payload = message.payload().unwrap_or_default();
            let result = if message.topic() == self.orders_topic {
                OrderEnvelope::decode(payload).map(|e| Decoded::Order(Box::new(e)))
            } else if message.topic() == self.stock_topic {
                StockEnvelope::decode(payload).map(|e| Decoded::Stock(Box::new(e)))
            } else {
                Err(DecodeError::Malformed(format!(
                    "topic {} is not projected",
                    message.topic()
                )))
            };
            match result {
                Ok(event) => decoded.push((message.offset(), event)),
                Err(err) => applied.poison.push(Poison {
                    index,
                    reason: err.reason(),
                    detail: err.to_string(),
                }),
            }
        }

        // Read the state of orders this batch needs and the cache lacks, concurrently.
        let mut missing: Vec<Uuid> = decoded
            .iter()
            .filter_map(|(_, event)| match event {
                Decoded::Order(e) if needs_state(&e.event) => Some(e.order_id),
                _ => None,
            })
            .filter(|id| !self.cache.contains_key(id))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if self.cache.len() + missing.len() > self.cache_capacity {
            self.clear_cache();
        }
        if self.fresh {
            missing.clear();
        }
        let writer = &self.writer;
        let loaded: Vec<(Uuid, OrderState)> = futures::stream::iter(missing)
            .map(|id| async move { writer.load_state(id).await.map(|s| (id, s)) })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        self.cache.extend(loaded);

        let mut writes: Vec<Write> = Vec::with_capacity(decoded.len() * 3);
        for (offset, event) in &decoded {
            match event {
                Decoded::Order(e) => {
                    let note = if needs_state(&e.event) {
                        let state = self.cache.entry(e.order_id).or_default();
                        plan_order(state, e, *offset, &mut writes)
                    } else {
                        plan_order(&mut OrderState::default(), e, *offset, &mut writes)
                    };
                    if let Some(note) = note {
                        metrics::note(self.name, note);
                    }
                    metrics::events(self.name, e.event_type(), 1);
                }
                Decoded::Stock(e) => {
                    writes.extend(plan_stock(e, *offset));
                    metrics::events(self.name, e.event_type(), 1);
                }
            }
        }
        if let Err(err) = self.writer.apply(writes, self.concurrency).await {
            // Cached state may now be ahead of the views; reloading is always right.
            self.clear_cache();
            return Err(err);
        }
        applied.events = decoded.len() as u64;
        Ok(applied)
    }
}

/// Retries `f` with exponential backoff until it succeeds or `shutdown` is cancelled
/// (`None` then).
pub(crate) async fn retry<T, F, Fut>(
    what: &str,
    projector: &'static str,
    shutdown: &CancellationToken,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(value) => return Some(value),
            Err(err) => {
                metrics::write_error(projector);
                tracing::warn!(projector, error = %err, retry_in = ?backoff, "{what} failed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The running projectors of this process.
pub struct Projectors {
    progress: Progress,
    tasks: JoinSet<(ProjectorKind, Result<(), Error>)>,
    stop: CancellationToken,
}

impl Projectors {
    /// Their live progress.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Waits until every projector stopped (after the shutdown token was cancelled, or one
    /// failed, which stops the others); the first failure, if any.
    pub async fn wait(mut self) -> Result<(), Error> {
        let mut result = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            let outcome = match done {
                Ok((kind, outcome)) => outcome.inspect_err(|err| {
                    tracing::error!(projector = kind.name(), error = %err, "projector failed");
                }),
                Err(join) => Err(Error::Config(format!("projector task panicked: {join}"))),
            };
            if outcome.is_err() {
                self.stop.cancel();
                if result.is_ok() {
                    result = outcome;
                }
            }
        }
        result
    }
}

/// Runs both projectors until `shutdown` is cancelled (then each finishes and commits its
/// current batch) or one fails. Connects to the CQL `nodes`, applies the schema migrations,
/// and registers a readiness check per projector in `readiness` (ready while its lag is at
/// most `config.projector.lag_threshold`).
pub async fn run_projectors(
    config: Config,
    bootstrap: &str,
    nodes: &[String],
    topics: Topics,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    start_projectors(&config, bootstrap, nodes, &topics, &readiness, shutdown)
        .await?
        .wait()
        .await
}

/// Starts both projectors (see [`run_projectors`]) and returns at once, with their progress.
pub async fn start_projectors(
    config: &Config,
    bootstrap: &str,
    nodes: &[String],
    topics: &Topics,
    readiness: &Readiness,
    shutdown: CancellationToken,
) -> Result<Projectors, Error> {
    config.check().map_err(Error::Config)?;
    // Metrics recorded before the process-wide recorder exists would be lost.
    orderpipe_runtime::metrics::handle();
    let session = connect(nodes, &config.cql).await?;
    migrate(&session, &config.cql.keyspace, &config.cql.replication).await?;
    let writer = Arc::new(Writer::new(session, &config.cql.keyspace).await?);
    let dlq_topic = topics.dlq(DLQ_STAGE_NAME);
    let settings = &config.topics;
    if settings.create {
        let dlq = topics.dlq_spec(
            DLQ_STAGE_NAME,
            settings.partitions,
            settings.replication_factor,
        );
        kafka::create_topics(bootstrap, &config.projector.kafka_options, &[dlq]).await?;
    }
    let producer = Arc::new(dlq_producer(bootstrap, config)?);

    let progress = Progress::default();
    let stop = shutdown.child_token();
    let mut tasks = JoinSet::new();
    for kind in ProjectorKind::ALL {
        let consumer = live_consumer(kind, bootstrap, config, topics, &progress)?;
        let threshold = config.projector.lag_threshold;
        let check_progress = progress.clone();
        readiness.add(
            format!("projector {}", kind.name()),
            move || match check_progress.lag(kind) {
                None => Err("no partition statistics yet".into()),
                Some(lag) if lag > threshold => {
                    Err(format!("lag {lag} events exceeds {threshold}"))
                }
                Some(_) => Ok(()),
            },
        );
        let applier = Applier::new(
            kind.name(),
            writer.clone(),
            topics,
            config.projector.state_cache,
            config.projector.write_concurrency as usize,
        );
        let live = Live {
            kind,
            consumer,
            applier,
            producer: producer.clone(),
            dlq_topic: dlq_topic.clone(),
            config: config.clone(),
            progress: progress.clone(),
        };
        let token = stop.clone();
        tasks.spawn(async move { (kind, live.run(token).await) });
    }
    Ok(Projectors {
        progress,
        tasks,
        stop,
    })
}

fn live_consumer(
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

fn dlq_producer(bootstrap: &str, config: &Config) -> Result<FutureProducer, Error> {
    let mut client = kafka::idempotent_producer(bootstrap, "orderpipe-projections-dlq");
    client.set("message.timeout.ms", "10000");
    kafka::with_options(client, &config.projector.kafka_options)
        .create()
        .map_err(|e| Error::kafka("creating dead-letter producer", e))
}

/// One live projector: its consumer, applier and dead-letter producer.
struct Live {
    kind: ProjectorKind,
    consumer: Arc<StreamConsumer<ProjectorContext>>,
    applier: Applier,
    producer: Arc<FutureProducer>,
    dlq_topic: String,
    config: Config,
    progress: Progress,
}

/// A gathered batch and whether shutdown was asked for while gathering.
struct Gathered {
    messages: Vec<OwnedMessage>,
    stop: bool,
}

impl Live {
    async fn run(mut self, shutdown: CancellationToken) -> Result<(), Error> {
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
    ) -> Option<Applied> {
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
    async fn gather(&self, shutdown: &CancellationToken, eof: &mut BTreeSet<i32>) -> Gathered {
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
                _ = shutdown.cancelled() => return Gathered { messages, stop: true },
                _ = linger => return Gathered { messages, stop: false },
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        eof.remove(&message.partition());
                        messages.push(message.detach());
                        if messages.len() >= max {
                            return Gathered { messages, stop: false };
                        }
                        if deadline.is_none() {
                            deadline = Some(tokio::time::Instant::now() + self.config.projector.batch_linger);
                        }
                    }
                    Err(KafkaError::PartitionEOF(partition)) => {
                        eof.insert(partition);
                        return Gathered { messages, stop: false };
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

    /// Sends poison events to the dead-letter topic and waits for the broker's acks (the batch
    /// is committed only after). `false` when shutdown interrupted the retries.
    async fn dead_letter(
        &self,
        messages: &[OwnedMessage],
        poison: &[Poison],
        shutdown: &CancellationToken,
    ) -> bool {
        let name = self.kind.name();
        for p in poison {
            let message = &messages[p.index];
            tracing::warn!(
                projector = name,
                topic = message.topic(),
                partition = message.partition(),
                offset = message.offset(),
                reason = p.reason,
                detail = %p.detail,
                "dead-lettering an undecodable event"
            );
            let sent = retry("dead-lettering an event", name, shutdown, || async {
                let headers = kafka::dead_letter_headers(DeadLetterSource {
                    reason: p.reason,
                    detail: &p.detail,
                    stage: DLQ_STAGE_NAME,
                    topic: message.topic(),
                    partition: message.partition(),
                    offset: message.offset(),
                });
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.dlq_topic).headers(headers);
                if let Some(key) = message.key() {
                    record = record.key(key);
                }
                if let Some(payload) = message.payload() {
                    record = record.payload(payload);
                }
                self.producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| Error::kafka("producing a dead letter", e))
            })
            .await;
            if sent.is_none() {
                return false;
            }
            metrics::dead_letter(name, p.reason);
        }
        true
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
