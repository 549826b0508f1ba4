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
//!
//! Here: the projectors' kinds, their [`Progress`], and starting them ([`start_projectors`]).
//! Beside it: `applier` (decode, plan and write a batch; replays use it too), `live` (the loop of
//! one projector), `dead_letter` (undecodable events to the dead-letter topic) and `clients`
//! (consumer context, consumer and dead-letter producer setup).

mod applier;
mod clients;
mod dead_letter;
mod live;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orderpipe_runtime::health::Readiness;
use orderpipe_runtime::kafka;
use orderpipe_schemas::Topics;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Error;
use crate::metrics;
use crate::schema::{connect, migrate};
use crate::store::Writer;

pub(crate) use applier::{Applier, BatchOutcome};
use clients::{dlq_producer, live_consumer};
use live::LiveProjector;

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
        let live = LiveProjector {
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
