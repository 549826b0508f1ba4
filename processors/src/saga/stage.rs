//! The saga as a runner [`Stage`]: consumes the orders topic, keeps one [`OrderState`] per order
//! (per input partition, mirrored in `saga.changelog` keyed by `order_id`), emits what
//! [`decide`] says on the orders and stock topics.
//!
//! Compaction: a terminal order keeps its details until none of its inputs can be redelivered,
//! then shrinks to a small record. The runner commits a batch (offsets included) before it hands
//! over the next one and, after a failure, revokes and restores state before re-reading from
//! the committed offsets. So an order that became terminal (or was restored) before batch k
//! started cannot see a redelivered input once batch k+1 starts: that is when it is compacted.

use std::collections::HashMap;

use orderpipe_schemas::{OrderEnvelope, Topics};
use uuid::Uuid;

use super::decide::{decide, OutputEnvelope, Verdict};
use super::state::OrderState;
use crate::runner::{Effects, Input, Stage};

/// The order saga stage.
#[derive(Debug)]
pub struct SagaStage {
    topics: Topics,
    /// State per input partition, per order.
    partitions: HashMap<i32, HashMap<Uuid, OrderState>>,
    /// Terminal orders registered before the current batch started: compacted when the next starts.
    ready: Vec<(i32, Uuid)>,
    /// Terminal orders registered since the current batch started (or restored before it).
    pending: Vec<(i32, Uuid)>,
}

impl SagaStage {
    /// Stage name: group `orderpipe-saga`, topics `saga.changelog` and `saga.dlq`.
    pub const NAME: &'static str = "saga";

    /// A saga stage reading and writing `topics`.
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            partitions: HashMap::new(),
            ready: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// State of `order_id` if this instance holds it (tests, admin tools).
    pub fn order(&self, order_id: Uuid) -> Option<&OrderState> {
        self.partitions.values().find_map(|p| p.get(&order_id))
    }

    /// Number of orders held in memory, terminal ones included.
    pub fn order_count(&self) -> usize {
        self.partitions.values().map(HashMap::len).sum()
    }

    /// Compacts the terminal orders whose inputs can no longer be redelivered.
    fn compact_ready(&mut self, out: &mut Effects) {
        for (partition, order_id) in std::mem::take(&mut self.ready) {
            let Some(state) = self
                .partitions
                .get_mut(&partition)
                .and_then(|orders| orders.get_mut(&order_id))
            else {
                continue;
            };
            if state.is_compactable() {
                state.compact();
                out.put(partition, order_id.to_string(), state.to_json());
            }
        }
        self.ready = std::mem::take(&mut self.pending);
    }

    fn handle(&mut self, input: &Input<'_>, out: &mut Effects) {
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
        for (index, output) in (0u32..).zip(decision.outputs) {
            match output.into_envelope(event.order_id, &event, correlation_id, index) {
                OutputEnvelope::Order(e) => out.emit_order(&self.topics.orders, &e),
                OutputEnvelope::Stock(e) => out.emit_stock(&self.topics.stock, &e),
            }
        }
        if let Some(new_state) = decision.new_state {
            out.put(
                input.partition,
                event.order_id.to_string(),
                new_state.to_json(),
            );
            if new_state.is_compactable() {
                self.pending.push((input.partition, event.order_id));
            }
            orders.insert(event.order_id, new_state);
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
                if state.is_compactable() {
                    self.pending.push((partition, order_id));
                }
                orders.insert(order_id, state);
            }
            Some(Err(err)) => {
                return Err(format!("saga changelog: unreadable state: {err}"));
            }
        }
        Ok(())
    }

    fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
        self.ready.retain(|(p, _)| *p != partition);
        self.pending.retain(|(p, _)| *p != partition);
    }

    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        self.compact_ready(out);
        for input in batch {
            self.handle(input, out);
        }
    }
}
