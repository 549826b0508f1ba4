//! The applier: decodes a batch of events, plans their writes (with the orders' state, cached
//! or read from the views) and writes them. Shared by the live projectors and by replays.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use orderpipe_schemas::{DecodeError, OrderEnvelope, StockEnvelope, Topics};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use uuid::Uuid;

use crate::error::Error;
use crate::metrics;
use crate::model::{needs_state, plan_order, plan_stock, OrderState, Write};
use crate::store::Writer;

/// A poison event: why it could not be applied.
#[derive(Debug)]
pub(crate) struct Poison {
    pub(crate) index: usize,
    pub(crate) reason: &'static str,
    pub(crate) detail: String,
}

/// What applying a batch did: how many events were applied, which ones were poison.
#[derive(Debug, Default)]
pub(crate) struct BatchOutcome {
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
    pub(crate) async fn apply(&mut self, messages: &[OwnedMessage]) -> Result<BatchOutcome, Error> {
        let mut applied = BatchOutcome::default();
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
                    let anomaly = if needs_state(&e.event) {
                        let state = self.cache.entry(e.order_id).or_default();
                        plan_order(state, e, *offset, &mut writes)
                    } else {
                        plan_order(&mut OrderState::default(), e, *offset, &mut writes)
                    };
                    if let Some(anomaly) = anomaly {
                        metrics::anomaly(self.name, anomaly);
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
