//! The saga as a runner [`Stage`]: consumes the orders topic, keeps one [`OrderState`] per order
//! (per input partition, mirrored in `saga.changelog` keyed by `order_id`), emits what
//! [`decide`] says on the orders and stock topics, and what [`decide_timeout`] says when an
//! order's phase deadline passes (driven by [`Stage::tick`]).
//!
//! Compaction: a terminal order keeps its details until none of its inputs can be redelivered,
//! then shrinks to a small record. The state records the input offset that last changed the
//! terminal order (`terminal_offset`); the stage tracks, per partition, an offset below which
//! every input is committed (the runner commits a batch before it hands over the next one, and
//! after a failure revokes and restores state, then re-reads from the committed offsets; so the
//! first offset of a batch, and every offset of a batch a later call follows, are committed). An
//! order is compacted only once that floor is past its `terminal_offset`: a redelivery split
//! over several batches still finds the details it needs to repeat its outputs. An order made
//! terminal by a deadline (no input) is compacted once the tick that decided it is written.
//!
//! Deadline decisions after a restore: in at-least-once mode the runner writes state before
//! outputs, and a deadline decision has no input that could be redelivered; so a restored order
//! that a deadline made terminal and that still has its details (not compacted: its outputs may
//! not have been written) emits the deadline's outputs again, byte-identical, in the first
//! handle after the restore ([`deadline_outputs`]). Compaction waits for the tick after that.
//!
//! Retention: a terminal order's state is tombstoned `--saga-retention` after it became
//! terminal, so the changelog's live key count stays bounded by the orders of one retention.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use orderpipe_schemas::{OrderEnvelope, Topics};
use uuid::Uuid;

use super::config::SagaArgs;
use super::deadlines::{after, deadline, deadline_outputs, decide_timeout, TimedOut, Timeouts};
use super::decide::{decide, Output, OutputEnvelope, Verdict};
use super::state::OrderState;
use crate::runner::{Effects, Input, Stage};

/// A terminal order waiting to be compacted.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    partition: i32,
    order_id: Uuid,
    /// For an order without `terminal_offset`: the tick generation it was registered in.
    generation: u64,
}

/// The order saga stage.
#[derive(Debug)]
pub struct SagaStage {
    topics: Topics,
    timeouts: Timeouts,
    retention: Duration,
    /// State per input partition, per order.
    partitions: HashMap<i32, HashMap<Uuid, OrderState>>,
    /// When to look at an order again (phase deadline, or end of retention); entries may be
    /// stale (the order moved on): checked when they fire.
    timers: BTreeSet<(DateTime<Utc>, i32, Uuid)>,
    /// Terminal orders still holding their details.
    candidates: Vec<Candidate>,
    /// Per partition: every input offset below this one is committed.
    committed: HashMap<i32, i64>,
    /// Per partition: next offset after the inputs processed since the last tick.
    in_flight: HashMap<i32, i64>,
    /// Per partition: next offset after the inputs of the handle the last tick ended (written
    /// with it).
    written: HashMap<i32, i64>,
    /// Number of ticks so far (each ends one runner handle, which is written after it).
    generation: u64,
    /// Restored orders whose deadline outputs are emitted again in the next handle.
    restored_deadlines: BTreeSet<(i32, Uuid)>,
}

impl SagaStage {
    /// Stage name: group `orderpipe-saga`, topics `saga.changelog` and `saga.dlq`.
    pub const NAME: &'static str = "saga";

    /// A saga stage reading and writing `topics`, with the default deadlines and retention.
    pub fn new(topics: Topics) -> Self {
        let args = SagaArgs::default();
        crate::metrics::register_saga();
        Self {
            topics,
            timeouts: args.timeouts(),
            retention: args.retention,
            partitions: HashMap::new(),
            timers: BTreeSet::new(),
            candidates: Vec::new(),
            committed: HashMap::new(),
            in_flight: HashMap::new(),
            written: HashMap::new(),
            generation: 0,
            restored_deadlines: BTreeSet::new(),
        }
    }

    /// The stage as `args` configure it.
    pub fn from_args(args: &SagaArgs, topics: Topics) -> Self {
        Self::new(topics)
            .with_timeouts(args.timeouts())
            .with_retention(args.retention)
    }

    /// Phase deadlines.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// How long terminal state is kept before it is tombstoned.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// State of `order_id` if this instance holds it (tests, admin tools).
    pub fn order(&self, order_id: Uuid) -> Option<&OrderState> {
        self.partitions.values().find_map(|p| p.get(&order_id))
    }

    /// Number of orders held in memory, terminal ones included.
    pub fn order_count(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }

    /// Everything before this call is committed (or was revoked): promote what was in flight.
    fn promote(&mut self, in_flight_too: bool) {
        let mut done: Vec<(i32, i64)> = self.written.drain().collect();
        if in_flight_too {
            done.extend(self.in_flight.drain());
        }
        for (partition, next) in done {
            let floor = self.committed.entry(partition).or_insert(next);
            *floor = (*floor).max(next);
        }
    }

    /// Registers `state` for compaction (if it needs it) and its next timer.
    fn track(&mut self, partition: i32, order_id: Uuid, state: &OrderState) {
        if state.is_compactable() {
            self.candidates.push(Candidate {
                partition,
                order_id,
                generation: self.generation,
            });
        }
        let due = match deadline(state, &self.timeouts) {
            Some(at) => Some(at),
            None if state.is_terminal() => state.since.map(|since| after(since, self.retention)),
            None => None,
        };
        if let Some(at) = due {
            self.timers.insert((at, partition, order_id));
        }
    }

    /// Compacts the terminal orders none of whose inputs can be redelivered any more.
    fn compact(&mut self, out: &mut Effects) {
        let generation = self.generation;
        let committed = &self.committed;
        let partitions = &mut self.partitions;
        self.candidates.retain(|c| {
            let Some(state) = partitions
                .get_mut(&c.partition)
                .and_then(|orders| orders.get_mut(&c.order_id))
            else {
                return false;
            };
            if !state.is_compactable() {
                return false;
            }
            let safe = match state.terminal_offset {
                Some(offset) => committed
                    .get(&c.partition)
                    .is_some_and(|&floor| floor > offset),
                None => c.generation < generation,
            };
            if safe {
                state.compact();
                out.put(c.partition, c.order_id.to_string(), state.to_json());
            }
            !safe
        });
    }

    /// Acts on every timer due at `now`: phase deadlines and the end of retention.
    fn fire_timers(&mut self, now: DateTime<Utc>, out: &mut Effects) {
        while let Some(&(at, partition, order_id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(state) = self
                .partitions
                .get(&partition)
                .and_then(|orders| orders.get(&order_id))
            else {
                continue;
            };
            if state.is_terminal() {
                let expired = state
                    .since
                    .is_some_and(|since| after(since, self.retention) <= now);
                if expired {
                    out.delete(partition, order_id.to_string());
                    if let Some(orders) = self.partitions.get_mut(&partition) {
                        orders.remove(&order_id);
                    }
                }
                continue;
            }
            let Some(timed_out) = decide_timeout(state, order_id, now, &self.timeouts) else {
                continue;
            };
            tracing::info!(%order_id, phase = state.phase_name(), deadline = %timed_out.at,
                "saga: phase deadline passed; rejecting the order");
            crate::metrics::saga_deadline(state.phase_name());
            for output in &timed_out.decision.outputs {
                if let Output::Order(event) = output {
                    crate::metrics::saga_terminal(event);
                }
            }
            let correlation_id = state.correlation_id;
            let new_state = timed_out.decision.new_state.clone();
            self.emit_deadline(order_id, correlation_id, timed_out, out);
            if let Some(new_state) = new_state {
                out.put(partition, order_id.to_string(), new_state.to_json());
                self.track(partition, order_id, &new_state);
                self.partitions
                    .entry(partition)
                    .or_default()
                    .insert(order_id, new_state);
            }
        }
    }

    /// Emits the outputs of a deadline decision (ids and time from the deadline).
    fn emit_deadline(
        &self,
        order_id: Uuid,
        correlation_id: Uuid,
        timed_out: TimedOut,
        out: &mut Effects,
    ) {
        for (index, output) in (0u32..).zip(timed_out.decision.outputs) {
            match output.into_envelope_at(
                order_id,
                timed_out.cause,
                timed_out.at,
                correlation_id,
                index,
            ) {
                OutputEnvelope::Order(e) => out.emit_order(&self.topics.orders, &e),
                OutputEnvelope::Stock(e) => out.emit_stock(&self.topics.stock, &e),
            }
        }
    }

    /// Emits again the deadline outputs of the orders restored since the last handle.
    fn repeat_restored_deadlines(&mut self, out: &mut Effects) {
        for (partition, order_id) in std::mem::take(&mut self.restored_deadlines) {
            let Some(state) = self
                .partitions
                .get(&partition)
                .and_then(|orders| orders.get(&order_id))
            else {
                continue;
            };
            if let Some(timed_out) = deadline_outputs(state, order_id) {
                tracing::debug!(%order_id, "saga: repeating the outputs of a restored deadline decision");
                self.emit_deadline(order_id, state.correlation_id, timed_out, out);
            }
        }
    }

    fn handle(&mut self, input: &Input<'_>, out: &mut Effects) {
        let next = self.in_flight.entry(input.partition).or_insert(0);
        *next = (*next).max(input.offset + 1);
        let event = match OrderEnvelope::decode(input.bytes()) {
            Ok(event) => event,
            Err(err) => return out.dead_letter_decode(input, &err),
        };
        let orders = self.partitions.entry(input.partition).or_default();
        let decision = decide(orders.get(&event.order_id), &event);
        match &decision.verdict {
            Verdict::Applied | Verdict::Repeated => {}
            Verdict::Ignored(why) => {
                tracing::debug!(order_id = %event.order_id, event_type = event.event_type(),
                    reason = why.as_str(), "saga ignored event");
                return;
            }
            Verdict::Invalid(detail) => {
                tracing::warn!(order_id = %event.order_id, event_type = event.event_type(),
                    detail = %detail, "saga dead-letters an event that contradicts its order");
                return out.dead_letter(input, "invariant_violation", detail.clone());
            }
        }
        let correlation_id = decision
            .new_state
            .as_ref()
            .or_else(|| orders.get(&event.order_id))
            .map_or(event.correlation_id, |s| s.correlation_id);
        let applied = matches!(decision.verdict, Verdict::Applied);
        for (index, output) in (0u32..).zip(decision.outputs) {
            match output.into_envelope(event.order_id, &event, correlation_id, index) {
                OutputEnvelope::Order(e) => {
                    if applied {
                        crate::metrics::saga_terminal(&e.event);
                    }
                    out.emit_order(&self.topics.orders, &e)
                }
                OutputEnvelope::Stock(e) => out.emit_stock(&self.topics.stock, &e),
            }
        }
        if let Some(mut new_state) = decision.new_state {
            if new_state.is_terminal() {
                // Compacted only once the committed offset is past this input.
                new_state.terminal_offset = Some(input.offset);
            }
            out.put(
                input.partition,
                event.order_id.to_string(),
                new_state.to_json(),
            );
            self.track(input.partition, event.order_id, &new_state);
            self.partitions
                .entry(input.partition)
                .or_default()
                .insert(event.order_id, new_state);
        }
    }
}

impl Stage for SagaStage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn input_topic(&self) -> String {
        self.topics.orders.clone()
    }

    fn restore(&mut self, partition: i32, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let Ok(order_id) = key.parse::<Uuid>() else {
            return Err("saga changelog: key is not an order id".to_owned());
        };
        let orders = self.partitions.entry(partition).or_default();
        match value.map(OrderState::from_json) {
            None => {
                orders.remove(&order_id);
            }
            Some(Ok(state)) => {
                let mut state = state;
                if state.since.is_none() {
                    // Written before deadlines existed: its clock starts now.
                    state.since = Some(Utc::now());
                }
                if deadline_outputs(&state, order_id).is_some() {
                    self.restored_deadlines.insert((partition, order_id));
                }
                orders.insert(order_id, state.clone());
                self.track(partition, order_id, &state);
            }
            Some(Err(err)) => {
                return Err(format!("saga changelog: unreadable state: {err}"));
            }
        }
        Ok(())
    }

    fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.candidates.retain(|c| c.partition != partition);
        self.timers.retain(|(_, p, _)| *p != partition);
        self.committed.remove(&partition);
        self.in_flight.remove(&partition);
        self.written.remove(&partition);
        self.restored_deadlines.retain(|(p, _)| *p != partition);
    }

    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        self.repeat_restored_deadlines(out);
        // Whatever came before this batch is committed, and so is every offset below the first
        // one of a partition in it (the runner reads on from the committed offsets).
        self.promote(true);
        // Only the first offset of each partition: the rest of the batch is not committed yet,
        // and a restored terminal order whose input comes later in it must keep its details
        // until that input is handled again (a crash after its state but before its outputs).
        let mut first_offsets: HashMap<i32, i64> = HashMap::new();
        for input in batch {
            first_offsets.entry(input.partition).or_insert(input.offset);
        }
        for (partition, first) in first_offsets {
            let floor = self.committed.entry(partition).or_insert(first);
            *floor = (*floor).max(first);
        }
        self.compact(out);
        for input in batch {
            self.handle(input, out);
        }
    }

    fn tick(&mut self, now: SystemTime, out: &mut Effects) {
        self.repeat_restored_deadlines(out);
        self.promote(false);
        self.compact(out);
        self.fire_timers(now.into(), out);
        // What this handle processed is written right after this call.
        for (partition, next) in self.in_flight.drain() {
            let w = self.written.entry(partition).or_insert(next);
            *w = (*w).max(next);
        }
        self.generation += 1;
    }
}
