//! The saga as a runner [`Stage`]: consumes the orders topic, keeps one [`OrderState`] per order
//! (per input partition, mirrored in `saga.changelog` keyed by `order_id`), emits what
//! [`decide`] says on the orders and stock topics.

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
}

impl SagaStage {
    /// Stage name: group `orderpipe-saga`, topics `saga.changelog` and `saga.dlq`.
    pub const NAME: &'static str = "saga";

    /// A saga stage reading and writing `topics`.
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            partitions: HashMap::new(),
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

    fn handle(&mut self, input: &Input<'_>, out: &mut Effects) {
        let event = match OrderEnvelope::decode(input.bytes()) {
            Ok(event) => event,
            Err(err) => return out.dead_letter_decode(input, &err),
        };
        let orders = self.partitions.entry(input.partition).or_default();
        let state = orders.get(&event.order_id);
        let decision = decide(state, &event);
        match &decision.verdict {
            Verdict::Applied => {}
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
        let Some(new_state) = decision.new_state else {
            return;
        };
        for output in decision.outputs {
            match output.into_envelope(event.order_id, event.event_id, new_state.correlation_id) {
                OutputEnvelope::Order(e) => out.emit_order(&self.topics.orders, &e),
                OutputEnvelope::Stock(e) => out.emit_stock(&self.topics.stock, &e),
            }
        }
        out.put(
            input.partition,
            event.order_id.to_string(),
            new_state.to_json(),
        );
        orders.insert(event.order_id, new_state);
    }
}

impl Stage for SagaStage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn input_topic(&self) -> String {
        self.topics.orders.clone()
    }

    fn restore(&mut self, partition: i32, key: &str, value: Option<&[u8]>) {
        let Ok(order_id) = key.parse::<Uuid>() else {
            tracing::warn!(
                partition,
                key,
                "saga changelog: key is not an order id; skipped"
            );
            return;
        };
        let orders = self.partitions.entry(partition).or_default();
        match value.map(OrderState::from_json) {
            None => {
                orders.remove(&order_id);
            }
            Some(Ok(state)) => {
                orders.insert(order_id, state);
            }
            Some(Err(err)) => {
                tracing::warn!(partition, %order_id, error = %err,
                    "saga changelog: unreadable state; skipped");
            }
        }
    }

    fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        for input in batch {
            self.handle(input, out);
        }
    }
}
