//! The contract between the runner and a stage: [`Stage`] (what a stage does with a batch),
//! [`Input`] (one consumed message) and [`Effects`] (what a batch produces: output records,
//! changelog updates, dead letters). The runner writes a batch's effects and its input offsets
//! atomically (exactly-once) or effects first, then offsets (at-least-once).

use std::time::SystemTime;

use orderpipe_schemas::{DecodeError, NotificationEnvelope, OrderEnvelope, StockEnvelope};

/// A consume-transform-produce stage driven by the runner on a dedicated thread.
///
/// State lives in memory, partitioned like the input topic, and is mirrored in the stage's
/// compacted changelog topic (`<prefix><name>.changelog`, same partition number as the input
/// partition). The runner never lets in-memory state keep effects of a batch that did not commit:
/// after a failed write it calls [`Stage::revoke`] then [`Stage::restore`] for the partitions the
/// batch touched (those of its inputs and of its changelog records; every assigned partition
/// when a panic lost the effects) and re-reads their input from the committed offsets.
///
/// So every state change a [`Stage::process`] or [`Stage::tick`] makes must be mirrored by a
/// changelog record of its partition in the same [`Effects`] (or belong to a partition of the
/// batch's inputs): a change without one would survive a failed write of that batch.
pub trait Stage: Send + 'static {
    /// Stage name, e.g. `"stock"`: consumer group `<prefix>orderpipe-<name>`, transactional.id
    /// `<prefix>orderpipe-<name>-<instance>`, topics `<prefix><name>.changelog` and `<prefix><name>.dlq`.
    fn name(&self) -> &'static str;

    /// The one topic this stage consumes (full name, prefix included).
    fn input_topic(&self) -> String;

    /// A partition was assigned: called once per changelog record of that partition, in offset
    /// order, before any input of it; `value` is `None` for a tombstone (delete `key`). Compaction
    /// may or may not have removed older records of a key: apply each record as an upsert.
    ///
    /// A record the stage cannot read (undecodable value, unknown key) is an `Err` with the
    /// reason, never skipped: the runner stops the stage with [`crate::Error::Restore`] and
    /// counts it in `orderpipe_changelog_restore_failures_total`, because state restored without
    /// it would be wrong (e.g. a dropped reserved line frees units and oversells).
    fn restore(&mut self, partition: i32, key: &str, value: Option<&[u8]>) -> Result<(), String>;

    /// Partition revoked or lost, or its state must be rebuilt: forget everything about it.
    fn revoke(&mut self, partition: i32);

    /// Handle a batch (messages of assigned partitions; per partition in offset order). For each
    /// message: emit outputs and changelog updates into `out`, or dead-letter it with a reason.
    /// Only mutate state for messages that succeed. Never panic on bad input: dead-letter it.
    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects);

    /// Called about once per poll interval, also when no input arrived, for time-driven work
    /// (e.g. timeouts). Effects are written like those of a batch. Default: nothing.
    fn tick(&mut self, now: SystemTime, out: &mut Effects) {
        let _ = (now, out);
    }
}

/// One consumed message, borrowed from the consumer for the duration of [`Stage::process`].
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Topic the message came from.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Message key, if any.
    pub key: Option<&'a [u8]>,
    /// Message value, if any (a missing value is a poison message for every stage today).
    pub payload: Option<&'a [u8]>,
    /// Broker or producer timestamp in milliseconds since the epoch, if known.
    pub timestamp_ms: Option<i64>,
}

impl Input<'_> {
    /// Key as UTF-8 text (`None` if absent or not UTF-8).
    pub fn key_str(&self) -> Option<&str> {
        self.key.and_then(|k| std::str::from_utf8(k).ok())
    }

    /// Value bytes, empty when the message has none.
    pub fn bytes(&self) -> &[u8] {
        self.payload.unwrap_or(&[])
    }
}

/// One record to produce to an output topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    /// Destination topic (full name).
    pub topic: String,
    /// Message key (decides the partition with the default partitioner).
    pub key: String,
    /// Message value.
    pub payload: Vec<u8>,
}

/// One changelog update: a put (`Some`) or a tombstone (`None`) of `key` in `partition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangelogRecord {
    /// Changelog partition = the input partition the state belongs to.
    pub partition: i32,
    /// State key within the stage (e.g. `sku`, `sku|order|line`).
    pub key: String,
    /// New value, or `None` to delete the key.
    pub value: Option<Vec<u8>>,
}

/// A message the stage could not handle, sent to `<prefix><name>.dlq` with its original bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Short machine-readable reason, e.g. `malformed`, `unknown_event_type` (a metric label).
    pub reason: String,
    /// Human detail (error text), sent as a header.
    pub detail: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original value bytes.
    pub payload: Option<Vec<u8>>,
}

/// What a batch produces; the runner writes it all in one transaction (or, at-least-once, before
/// committing the batch's offsets).
#[derive(Debug, Default)]
pub struct Effects {
    pub(crate) outputs: Vec<OutputRecord>,
    pub(crate) changelog: Vec<ChangelogRecord>,
    pub(crate) dead_letters: Vec<DeadLetter>,
}

impl Effects {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Produce `payload` to `topic` with `key`.
    pub fn emit(&mut self, topic: &str, key: impl Into<String>, payload: Vec<u8>) {
        self.outputs.push(OutputRecord {
            topic: topic.to_owned(),
            key: key.into(),
            payload,
        });
    }

    /// Produce an orders-topic event, keyed by its `order_id`.
    pub fn emit_order(&mut self, topic: &str, event: &OrderEnvelope) {
        self.emit(topic, event.key(), event.encode());
    }

    /// Produce a stock-topic event, keyed by its `sku`.
    pub fn emit_stock(&mut self, topic: &str, event: &StockEnvelope) {
        self.emit(topic, event.key(), event.encode());
    }

    /// Produce a notifications-topic event, keyed by its `order_id`.
    pub fn emit_notification(&mut self, topic: &str, event: &NotificationEnvelope) {
        self.emit(topic, event.key(), event.encode());
    }

    /// Set state `key` of input `partition` to `value` in the changelog.
    pub fn put(&mut self, partition: i32, key: impl Into<String>, value: Vec<u8>) {
        self.changelog.push(ChangelogRecord {
            partition,
            key: key.into(),
            value: Some(value),
        });
    }

    /// Delete state `key` of input `partition` from the changelog (a tombstone).
    pub fn delete(&mut self, partition: i32, key: impl Into<String>) {
        self.changelog.push(ChangelogRecord {
            partition,
            key: key.into(),
            value: None,
        });
    }

    /// Send `input` to the dead-letter topic with a short `reason` and a human `detail`.
    pub fn dead_letter(&mut self, input: &Input<'_>, reason: &str, detail: impl Into<String>) {
        self.dead_letters.push(DeadLetter {
            reason: reason.to_owned(),
            detail: detail.into(),
            topic: input.topic.to_owned(),
            partition: input.partition,
            offset: input.offset,
            key: input.key.map(<[u8]>::to_vec),
            payload: input.payload.map(<[u8]>::to_vec),
        });
    }

    /// Dead-letter `input` because it could not be decoded (reason = [`DecodeError::reason`]).
    pub fn dead_letter_decode(&mut self, input: &Input<'_>, err: &DecodeError) {
        self.dead_letter(input, err.reason(), err.to_string());
    }

    /// Output records so far.
    pub fn outputs(&self) -> &[OutputRecord] {
        &self.outputs
    }

    /// Changelog updates so far.
    pub fn changelog(&self) -> &[ChangelogRecord] {
        &self.changelog
    }

    /// Dead letters so far.
    pub fn dead_letters(&self) -> &[DeadLetter] {
        &self.dead_letters
    }

    /// True when the batch produced nothing at all.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.changelog.is_empty() && self.dead_letters.is_empty()
    }
}
