//! The stock stage: consumes the `stock` topic, decides in memory per SKU ([`super::core`]),
//! answers each `reservation_requested` on the `orders` topic (keyed by order), writes one
//! changelog record per changed line or counters, and after each batch publishes one
//! `stock_levels` per touched SKU on the `stock` topic (which it then reads back and ignores).
//!
//! Idempotency under redelivery (at-least-once mode, or a request sent twice):
//! - `reservation_requested`: the line record is the dedup key; a line seen before gets its
//!   original answer again, with the original answer `event_id` (consumers dedupe by event id).
//!   The runner writes changelog records before outputs in at-least-once mode, so an answer that
//!   reached the orders topic always has its line record.
//! - `release_requested` / `sale_requested`: idempotent per line (a released line stays released).
//! - `stock_adjusted`: the SKU remembers its last 64 adjustment event ids, so a redelivered
//!   `delta` is not applied twice.
//! - `stock_levels` are snapshots: a duplicate is harmless.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, StockEnvelope, StockEvent, StockLineRejected, StockLineReserved,
    Topics,
};
use uuid::Uuid;

use super::changelog::{self, Key, Record};
use super::core::{Answer, AnswerCause, LineChange, LineId, ReserveRequest, SkuState};
use crate::metrics;
use crate::runner::{Effects, Input, Stage};
use crate::shared::derived_event_id;

/// The stage name: group `orderpipe-stock`, topics `stock.changelog` and `stock.dlq`.
pub const STAGE_NAME: &str = "stock";

/// Default time a rejected or released line is remembered (dedup of late duplicates).
pub const DEFAULT_LINE_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often done lines past the retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The stock stage; construct with [`StockStage::new`] and run with [`crate::spawn_stage`].
pub struct StockStage {
    topics: Topics,
    line_retention: Duration,
    /// State per input partition, then per SKU.
    partitions: HashMap<i32, HashMap<String, SkuState>>,
    last_prune: Option<SystemTime>,
}

impl StockStage {
    /// A stock stage reading `topics.stock` and answering on `topics.orders`.
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            line_retention: DEFAULT_LINE_RETENTION,
            partitions: HashMap::new(),
            last_prune: None,
        }
    }

    /// Keep rejected and released lines for `retention` (default 7 days). A reservation request
    /// for an unknown line that happened more than about `retention` ago is dead-lettered
    /// (`stale_request`), never decided afresh: memory stays bounded and a late duplicate of a
    /// forgotten line cannot be answered twice.
    pub fn with_line_retention(mut self, retention: Duration) -> Self {
        self.line_retention = retention;
        self
    }

    /// Reservation requests that happened before this (ms since the epoch, `now_ms` being the
    /// wall clock) are refused unless their line is known: a line is pruned once unchanged for
    /// the retention, and it changed after its request happened, so a duplicate of a pruned
    /// line always happened before `now - retention`. The margin (a tenth of the retention, at
    /// most an hour) absorbs clock skew between the requester and the broker.
    fn stale_before_ms(&self, now_ms: i64) -> i64 {
        let retention = i64::try_from(self.line_retention.as_millis()).unwrap_or(i64::MAX);
        let margin = (retention / 10).min(3_600_000);
        now_ms.saturating_sub(retention).saturating_add(margin)
    }

    /// The state of `sku`, if this instance holds it (for tests and diagnostics).
    pub fn sku(&self, sku: &str) -> Option<&SkuState> {
        self.partitions.values().find_map(|skus| skus.get(sku))
    }

    fn handle(
        &mut self,
        input: &Input<'_>,
        out: &mut Effects,
        touched: &mut BTreeMap<(i32, String), (Uuid, Uuid)>,
    ) {
        let envelope = match StockEnvelope::decode(input.bytes()) {
            Ok(envelope) => envelope,
            Err(err) => return out.dead_letter_decode(input, &err),
        };
        let partition = input.partition;
        let stale_before_ms = self.stale_before_ms(now_ms());
        let now_ms = input.timestamp_ms.unwrap_or_else(now_ms);
        let skus = self.partitions.entry(partition).or_default();
        let sku = envelope.sku.clone();
        let cause = (envelope.event_id, envelope.correlation_id);
        match envelope.event {
            StockEvent::StockLevels(_) => {}
            StockEvent::StockAdjusted(adjusted) => {
                let state = skus.entry(sku.clone()).or_default();
                if state.adjust(
                    envelope.event_id,
                    adjusted.adjustment,
                    adjusted.per_customer_limit,
                ) {
                    let record = Record::Counters {
                        sku: sku.clone(),
                        counters: state.counters().clone(),
                    };
                    out.put(
                        partition,
                        changelog::counters_key(&sku),
                        changelog::encode(&record),
                    );
                }
                touched.insert((partition, sku), cause);
            }
            StockEvent::ReservationRequested(request) => {
                if request.quantity == 0 {
                    return out.dead_letter(input, "invalid_quantity", "quantity 0");
                }
                let id = LineId {
                    order_id: request.order_id,
                    line_index: request.line_index,
                };
                let state = skus.entry(sku.clone()).or_default();
                // A request older than the retention may be a late duplicate of a line already
                // pruned: deciding it afresh could answer it twice, differently. Refuse it.
                if state.line(&id).is_none()
                    && envelope.occurred_at.timestamp_millis() < stale_before_ms
                {
                    return out.dead_letter(
                        input,
                        "stale_request",
                        format!(
                            "reservation request of {} is older than the line retention ({:?}): \
                             a late duplicate of a forgotten line is never decided afresh",
                            envelope.occurred_at, self.line_retention
                        ),
                    );
                }
                let decision = state.reserve(
                    &ReserveRequest {
                        line: id,
                        customer_id: request.customer_id,
                        quantity: request.quantity,
                    },
                    // Derived from the request's id only: a repeat gets the same id.
                    derived_event_id(STAGE_NAME, envelope.event_id, 0),
                    now_ms,
                );
                if decision.changed {
                    state.set_answer_cause(
                        &id,
                        AnswerCause {
                            causation_id: envelope.event_id,
                            occurred_at: envelope.occurred_at,
                        },
                    );
                    put_line(out, partition, &sku, state, id);
                }
                // The answer carries the original request's id and time: a repeat is
                // byte-identical to the first answer.
                let cause = state
                    .line(&id)
                    .and_then(|l| l.answer_cause)
                    .unwrap_or(AnswerCause {
                        causation_id: envelope.event_id,
                        occurred_at: envelope.occurred_at,
                    });
                let event = match decision.answer {
                    Answer::Reserved => OrderEvent::StockLineReserved(StockLineReserved {
                        sku: sku.clone(),
                        line_index: id.line_index,
                        quantity: decision.quantity,
                    }),
                    Answer::Rejected(reason) => OrderEvent::StockLineRejected(StockLineRejected {
                        sku: sku.clone(),
                        line_index: id.line_index,
                        quantity: decision.quantity,
                        reason,
                    }),
                };
                metrics::stock_decision(match decision.answer {
                    Answer::Reserved => "reserved",
                    Answer::Rejected(r) => match r {
                        orderpipe_schemas::StockRejectReason::OutOfStock => "out_of_stock",
                        orderpipe_schemas::StockRejectReason::LimitExceeded => "limit_exceeded",
                        orderpipe_schemas::StockRejectReason::UnknownSku => "unknown_sku",
                    },
                });
                let mut answer = OrderEnvelope::new(
                    id.order_id,
                    event,
                    Some(cause.causation_id),
                    envelope.correlation_id,
                );
                answer.event_id = decision.answer_event_id;
                answer.occurred_at = cause.occurred_at;
                out.emit_order(&self.topics.orders, &answer);
                touched.insert(
                    (partition, sku),
                    (envelope.event_id, envelope.correlation_id),
                );
            }
            StockEvent::ReleaseRequested(request) => {
                let id = LineId {
                    order_id: request.order_id,
                    line_index: request.line_index,
                };
                let change = match skus.get_mut(&sku) {
                    Some(state) => state.release(id, now_ms),
                    None => LineChange::Invalid(super::core::Violation::UnknownLine),
                };
                self.line_change(input, out, touched, partition, &sku, id, change, cause);
            }
            StockEvent::SaleRequested(request) => {
                let id = LineId {
                    order_id: request.order_id,
                    line_index: request.line_index,
                };
                let change = match skus.get_mut(&sku) {
                    Some(state) => state.sell(id, now_ms),
                    None => LineChange::Invalid(super::core::Violation::UnknownLine),
                };
                self.line_change(input, out, touched, partition, &sku, id, change, cause);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn line_change(
        &mut self,
        input: &Input<'_>,
        out: &mut Effects,
        touched: &mut BTreeMap<(i32, String), (Uuid, Uuid)>,
        partition: i32,
        sku: &str,
        id: LineId,
        change: LineChange,
        cause: (Uuid, Uuid),
    ) {
        match change {
            LineChange::Applied { .. } => {
                let state = self
                    .partitions
                    .get(&partition)
                    .and_then(|skus| skus.get(sku))
                    .expect("a line just changed in this SKU");
                put_line(out, partition, sku, state, id);
                touched.insert((partition, sku.to_owned()), cause);
            }
            LineChange::Unchanged => {}
            LineChange::Invalid(violation) => out.dead_letter(
                input,
                violation.reason(),
                format!("sku {sku}, order {} line {}", id.order_id, id.line_index),
            ),
        }
    }
}

fn put_line(out: &mut Effects, partition: i32, sku: &str, state: &SkuState, id: LineId) {
    let line = state.line(&id).expect("line exists").clone();
    let record = Record::Line {
        sku: sku.to_owned(),
        id,
        line,
    };
    out.put(
        partition,
        changelog::line_key(sku, &id),
        changelog::encode(&record),
    );
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Stage for StockStage {
    fn name(&self) -> &'static str {
        STAGE_NAME
    }

    fn input_topic(&self) -> String {
        self.topics.stock.clone()
    }

    fn restore(&mut self, partition: i32, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let skus = self.partitions.entry(partition).or_default();
        match value {
            Some(bytes) => match changelog::decode(bytes) {
                Ok(Record::Counters { sku, counters }) => {
                    skus.entry(sku).or_default().restore_counters(counters)
                }
                Ok(Record::Line { sku, id, line }) => {
                    skus.entry(sku).or_default().restore_line(id, line)
                }
                Err(err) => return Err(format!("unreadable stock changelog record: {err}")),
            },
            None => match changelog::parse_key(key) {
                Some(Key::Counters(sku)) => {
                    if let Some(state) = skus.get_mut(&sku) {
                        state.restore_counters(Default::default());
                    }
                }
                Some(Key::Line(sku, id)) => {
                    if let Some(state) = skus.get_mut(&sku) {
                        state.remove_line(&id);
                    }
                }
                None => return Err("tombstone with an unreadable stock changelog key".to_owned()),
            },
        }
        Ok(())
    }

    fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        // Per touched SKU: the event that last touched it (causation and correlation of its levels).
        let mut touched: BTreeMap<(i32, String), (Uuid, Uuid)> = BTreeMap::new();
        for input in batch {
            self.handle(input, out, &mut touched);
        }
        for ((partition, sku), (causation, correlation)) in touched {
            let Some(state) = self.partitions.get(&partition).and_then(|s| s.get(&sku)) else {
                continue;
            };
            let snapshot = state.levels();
            metrics::stock_levels(&sku, &snapshot);
            let levels = StockEnvelope::new(
                sku,
                StockEvent::StockLevels(snapshot),
                Some(causation),
                correlation,
            );
            out.emit_stock(&self.topics.stock, &levels);
        }
    }

    fn tick(&mut self, now: SystemTime, out: &mut Effects) {
        // At least twice per retention, so a short retention (tests) prunes in time.
        let every = PRUNE_EVERY.min(self.line_retention / 2);
        if self
            .last_prune
            .is_some_and(|last| now.duration_since(last).unwrap_or_default() < every)
        {
            return;
        }
        self.last_prune = Some(now);
        let cutoff = now
            .checked_sub(self.line_retention)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for (&partition, skus) in &mut self.partitions {
            for (sku, state) in skus.iter_mut() {
                for id in state.prune(cutoff) {
                    out.delete(partition, changelog::line_key(sku, &id));
                }
            }
            skus.retain(|_, state| !state.is_empty());
        }
    }
}
