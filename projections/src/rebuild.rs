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
//!
//! Here: what the operator asks for and sees ([`ReplaySpec`], [`ReplayPlan`], [`RebuildProgress`],
//! [`RebuildReport`]) and [`rebuild()`]. Beside it: `replay.rs` ([`Replay`]: plan, then read,
//! apply and record batch by batch), `topic_reader.rs` (the replay's consumer: partition ends,
//! offsets at a time, batches up to the ends) and `target_keyspace.rs` (the `replay_positions`
//! record, whether views are already there).

mod replay;
mod target_keyspace;
mod topic_reader;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use orderpipe_schemas::Topics;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Error;
use crate::projector::ProjectorKind;

pub use replay::Replay;

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
