//! [`Replay`]: prepared (connected, migrated, partitions planned), then run batch by batch:
//! read, apply with the projectors' [`Applier`], record how far it got.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, RetryableWithContext as _};
use orderpipe_schemas::Topics;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use super::target_keyspace::{holds_views, read_record, PositionRecord};
use super::topic_reader::{Positions, TopicReader};
use super::{
    PartitionPlan, RebuildProgress, RebuildReport, ReplayFrom, ReplayPlan, ReplaySpec, StartOrigin,
};
use crate::config::{check_keyspace, Config};
use crate::error::Error;
use crate::projector::{Applier, BatchOutcome, ProjectorKind};
use crate::schema::{connect, migrate};
use crate::store::Writer;

/// How often the progress callback is called (and once at the end).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Attempts at writing one batch before the rebuild gives up (the writes are idempotent, so a
/// timeout of an overloaded cluster is simply retried).
const ATTEMPTS: usize = 8;

/// A replay ready to run: connected, migrated, partitions planned. See the module docs.
pub struct Replay {
    plan: ReplayPlan,
    started: Instant,
    record: PositionRecord,
    applier: Applier,
    reader: TopicReader,
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
        let reader = TopicReader::new(config, bootstrap)?;

        let mut partitions = Vec::new();
        let mut onto_existing_views = Vec::new();
        for kind in &spec.projections {
            let topic = match kind {
                ProjectorKind::Orders => topics.orders.clone(),
                ProjectorKind::Stock => topics.stock.clone(),
            };
            let watermarks = reader.watermarks(&topic).await?;
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
                from_time = reader.offsets_at(&topic, unrecorded, time).await?;
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
        let record = PositionRecord::prepare(session, target, spec.from.to_string()).await?;
        Ok(Self {
            plan: ReplayPlan {
                keyspace: target.to_owned(),
                partitions,
                onto_existing_views,
            },
            started,
            record,
            applier,
            reader,
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
        let plan = &self.plan;
        let end_offsets: Positions = plan
            .partitions
            .iter()
            .map(|p| ((p.topic.clone(), p.partition), p.end))
            .collect();
        let mut positions: Positions = plan
            .partitions
            .iter()
            .map(|p| ((p.topic.clone(), p.partition), p.start))
            .collect();
        // Pin a first run's start in the record at once: a rerun continues from it whatever
        // its --from says (a later start would leave a gap).
        for p in &plan.partitions {
            if p.origin != StartOrigin::Recorded {
                self.record.write(&p.topic, p.partition, p.start).await?;
            }
        }
        self.reader.assign(&plan.partitions)?;

        let total = plan.total();
        let read_started = Instant::now();
        let mut events = 0u64;
        let mut poison = 0u64;
        let mut last_report = Instant::now();
        let remaining = |positions: &Positions| -> u64 {
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
            let (batch, check_positions) =
                self.reader.next_batch(&end_offsets, self.batch_max).await;
            let before = positions.clone();
            if !batch.is_empty() {
                let applied;
                (self.applier, applied) = apply_with_retries(self.applier, &batch).await;
                let applied = applied?;
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
                self.reader
                    .advance_to_positions(&mut positions, &end_offsets);
            }
            // Recorded only once the batch's writes are acknowledged: the record never claims
            // an event that is not in the views.
            for (key, position) in &positions {
                if before.get(key) != Some(position) {
                    self.record.write(&key.0, key.1, *position).await?;
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
        let keyspace = self.plan.keyspace;
        tracing::info!(
            keyspace = %keyspace,
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
            keyspace,
            events,
            poison,
            elapsed: self.started.elapsed(),
            events_per_second: last.events_per_second,
            end_offsets,
            complete,
        })
    }
}

/// Applies `batch`, retrying a failed write up to [`ATTEMPTS`] attempts in all, 100 ms apart
/// doubling to at most 5 s; hands the applier back (it keeps its cache across batches).
async fn apply_with_retries(
    applier: Applier,
    batch: &[OwnedMessage],
) -> (Applier, Result<BatchOutcome, Error>) {
    let mut attempt = 0;
    (|mut applier: Applier| async move {
        let applied = applier.apply(batch).await;
        (applier, applied)
    })
    .retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(ATTEMPTS - 1),
    )
    .context(applier)
    .notify(|err: &Error, retry_in| {
        attempt += 1;
        tracing::warn!(error = %err, attempt, retry_in = ?retry_in, "replay write failed");
    })
    .await
}
