//! Recovering from a failed batch: what it may have touched ([`Scope`]), how it failed
//! ([`Failure`]), and putting the touched partitions back as the changelog and the committed
//! offsets have them.

use std::collections::BTreeSet;

use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::Producer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::run::{Runner, TXN_TIMEOUT};
use super::write::create_producer;
use super::{Effects, Error};
use crate::metrics;

/// Which partitions a failed batch may have changed: their state is rebuilt from the
/// changelog and their input re-read from the committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Scope {
    /// Unknown (a panic lost the effects): every assigned partition.
    All,
    /// The partitions of the batch's inputs and of its changelog records.
    Partitions(BTreeSet<i32>),
}

impl Scope {
    /// The partitions of `batch` and of `effects`' changelog records.
    pub(super) fn of(batch: &[OwnedMessage], effects: &Effects) -> Self {
        Scope::Partitions(
            batch
                .iter()
                .map(|m| m.partition())
                .chain(effects.changelog.iter().map(|c| c.partition))
                .collect(),
        )
    }
}

/// A failed batch: how it failed, and what it may have touched.
pub(super) struct Failed {
    pub(super) failure: Failure,
    pub(super) scope: Scope,
}

impl Failed {
    pub(super) fn all(failure: Failure) -> Self {
        Self {
            failure,
            scope: Scope::All,
        }
    }
}

/// How a batch failed, i.e. what recovery needs.
pub(super) enum Failure {
    /// Abort (already done or not needed) and rebuild state.
    Abortable(String),
    /// The producer is unusable: rebuild it, then rebuild state.
    Fatal(String),
    /// Another instance owns our transactional id: stop.
    Fenced,
}
impl Runner {
    /// After a failed batch: stop if fenced, rebuild the producer if it is unusable, then drop
    /// the state of the partitions in `scope`, restore it from the changelog and seek them back
    /// to their committed offsets.
    pub(super) fn recover(&mut self, failure: Failure, scope: &Scope) -> Result<(), Error> {
        metrics::transaction(self.name, false);
        let cause = match &failure {
            Failure::Abortable(why) => {
                tracing::warn!(stage = self.name, reason = %why, "batch abandoned: rebuilding state");
                "abort"
            }
            Failure::Fatal(why) => {
                tracing::error!(stage = self.name, reason = %why, "producer unusable: rebuilding it and the state");
                "fatal"
            }
            Failure::Fenced => {
                tracing::error!(
                    stage = self.name,
                    transactional_id = %self.transactional_id,
                    "fenced by a newer instance with the same transactional.id: stopping"
                );
                return Err(Error::Fenced {
                    id: self.transactional_id.clone(),
                });
            }
        };
        metrics::recovery(self.name, cause);
        if !self.exactly_once() {
            // At-least-once, part of the failed batch may still be in flight: let it land (or
            // fail) before restoring, so the restore sees every record that will ever land.
            let _ = self.drain();
            self.producer.context().take_failure();
        }
        if matches!(failure, Failure::Fatal(_)) {
            self.producer = create_producer(&self.producer_config, self.exactly_once())?;
        }
        self.rebuild_state(scope)?;
        self.seek_to_committed(scope)
    }

    /// The assigned partitions in `scope`.
    pub(super) fn in_scope(&self, scope: &Scope) -> Vec<i32> {
        match scope {
            Scope::All => self.assigned.iter().copied().collect(),
            Scope::Partitions(touched) => self.assigned.intersection(touched).copied().collect(),
        }
    }

    /// Forget the state of the assigned partitions in `scope` and restore it from the changelog.
    pub(super) fn rebuild_state(&mut self, scope: &Scope) -> Result<(), Error> {
        let partitions = self.in_scope(scope);
        for &p in &partitions {
            self.stage.revoke(p);
        }
        self.restore(&partitions)
    }

    /// Seek the assigned partitions in `scope` to their committed offsets, so that a lost batch
    /// is read again (the others are at their committed offsets: none of their input was in it).
    pub(super) fn seek_to_committed(&mut self, scope: &Scope) -> Result<(), Error> {
        let partitions = self.in_scope(scope);
        if partitions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition(&self.input_topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, TXN_TIMEOUT)
            .map_err(|source| Error::Kafka {
                context: "reading committed offsets",
                source,
            })?;
        let mut seek = TopicPartitionList::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            seek.add_partition_offset(e.topic(), e.partition(), offset)
                .expect("offsets are valid");
        }
        let result = self
            .consumer
            .seek_partitions(seek, TXN_TIMEOUT)
            .map_err(|source| Error::Kafka {
                context: "seeking to committed offsets",
                source,
            })?;
        for e in result.elements() {
            if let Err(err) = e.error() {
                return Err(Error::Kafka {
                    context: "seeking a partition to its committed offset",
                    source: err,
                });
            }
        }
        Ok(())
    }
}
