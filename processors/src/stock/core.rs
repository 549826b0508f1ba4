//! The stock decisions of one SKU, pure: no IO, no clock, no randomness (event ids and times
//! come in as arguments), so every rule is a given/when/then test.
//!
//! The state is `capacity` (units the operator made available, i.e. `available + reserved +
//! sold`), the per-customer limit, and one [`Line`] per (order, line) the SKU was asked about.
//! `reserved`, `sold` and each customer's held units are *derived* from the lines. Every
//! decision therefore changes exactly one record (one line, or the counters on an adjustment),
//! which is what makes the at-least-once mode safe: whatever prefix of a batch's changelog
//! records survives a crash, the restored counters agree with the restored lines, and a
//! redelivered request finds its line and repeats its decision instead of deciding twice.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use orderpipe_schemas::{StockAdjustment, StockLevels, StockRejectReason};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How many recent `stock_adjusted` event ids a SKU remembers, so a redelivered relative
/// adjustment (`delta`) is not applied twice.
const RECENT_ADJUSTMENTS: usize = 64;

/// One line of one order: the dedup key of every per-line request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LineId {
    /// The order.
    pub order_id: Uuid,
    /// Position of the line in the order.
    pub line_index: u32,
}

/// Where a line stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", content = "reason", rename_all = "snake_case")]
pub enum LineStatus {
    /// Units held for the order.
    Reserved,
    /// Units sold (the order was confirmed).
    Sold,
    /// Units given back (the order was rejected).
    Released,
    /// Nothing held: the reservation was refused.
    Rejected(StockRejectReason),
}

/// What the SKU knows about one line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Customer the units are (or were) held for.
    pub customer_id: String,
    /// Units asked for (and, unless rejected, held).
    pub quantity: u32,
    /// Current status.
    #[serde(flatten)]
    pub status: LineStatus,
    /// `event_id` of the answer (`stock_line_reserved` / `stock_line_rejected`), repeated when a
    /// duplicate request is answered again, so consumers deduplicating by event id see one answer.
    pub answer_event_id: Uuid,
    /// When the line last changed (ms since the epoch, from the input's timestamp); done lines
    /// older than the retention are pruned.
    pub changed_at_ms: i64,
    /// The request the answer replied to: its `causation_id` and `occurred_at`, so a repeated
    /// answer is byte-identical to the first (`None` in records written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_cause: Option<AnswerCause>,
}

/// Causation and time of a line's answer (see [`Line::answer_cause`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnswerCause {
    /// `event_id` of the `reservation_requested` answered.
    pub causation_id: Uuid,
    /// Its `occurred_at`, which is also the answer's.
    pub occurred_at: DateTime<Utc>,
}

impl Line {
    /// Units this line holds (counted in `reserved` or `sold` and in the customer's usage).
    pub fn holds(&self) -> u64 {
        match self.status {
            LineStatus::Reserved | LineStatus::Sold => u64::from(self.quantity),
            LineStatus::Released | LineStatus::Rejected(_) => 0,
        }
    }
}

/// A `reservation_requested`, as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The line.
    pub line: LineId,
    /// Customer, for the per-customer limit.
    pub customer_id: String,
    /// Units asked for.
    pub quantity: u32,
}

/// The answer to a reservation request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The units are held for the order.
    Reserved,
    /// Refused, nothing held.
    Rejected(StockRejectReason),
}

/// Outcome of [`SkuState::reserve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The decision (for a duplicate: the original one).
    pub answer: Answer,
    /// Units asked for (for a duplicate: the original request's).
    pub quantity: u32,
    /// Event id of the answer: the original one for a duplicate.
    pub answer_event_id: Uuid,
    /// False when this was a duplicate request: no state changed.
    pub changed: bool,
}

/// Outcome of [`SkuState::release`] and [`SkuState::sell`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineChange {
    /// The line changed (units released or sold).
    Applied {
        /// Units moved.
        quantity: u32,
    },
    /// Nothing to do: already in the requested state, or (release) the line held nothing.
    Unchanged,
    /// The request contradicts what the SKU knows: dead-letter it.
    Invalid(Violation),
}

/// A request that contradicts the SKU's state (a bug upstream, or a line pruned long ago).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// No reservation request was ever seen for this line.
    UnknownLine,
    /// Release of a line that was already sold.
    ReleaseAfterSale,
    /// Sale of a line that holds nothing (rejected or released).
    SaleOfUnreservedLine,
}

impl Violation {
    /// Dead-letter reason.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnknownLine => "unknown_line",
            Self::ReleaseAfterSale => "release_after_sale",
            Self::SaleOfUnreservedLine => "sale_of_unreserved_line",
        }
    }
}

/// The counters record of a SKU: what adjustments set (lines hold the rest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// The SKU was stocked by at least one `stock_adjusted`.
    pub stocked: bool,
    /// `available + reserved + sold`.
    pub capacity: u64,
    /// Per-customer limit in force.
    pub per_customer_limit: Option<u32>,
    /// Event ids of the most recent adjustments (dedup of redelivered deltas).
    pub recent_adjustments: VecDeque<Uuid>,
}

/// Everything the stock stage knows about one SKU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SkuState {
    counters: Counters,
    lines: HashMap<LineId, Line>,
    // Derived from `lines`, kept in step by `set_line`.
    reserved: u64,
    sold: u64,
    held: HashMap<String, u64>,
}

impl SkuState {
    /// A SKU never stocked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Units that can still be reserved.
    pub fn available(&self) -> u64 {
        self.counters
            .capacity
            .saturating_sub(self.reserved + self.sold)
    }

    /// Units held for open orders.
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// Units of confirmed orders.
    pub fn sold(&self) -> u64 {
        self.sold
    }

    /// `available + reserved + sold`.
    pub fn capacity(&self) -> u64 {
        self.counters.capacity
    }

    /// Units `customer` holds (reserved or bought).
    pub fn held_by(&self, customer: &str) -> u64 {
        self.held.get(customer).copied().unwrap_or(0)
    }

    /// The counters record (for the changelog).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// A line, if known.
    pub fn line(&self, id: &LineId) -> Option<&Line> {
        self.lines.get(id)
    }

    /// Number of lines remembered.
    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    /// True when nothing is known: never stocked and no line remembered.
    pub fn is_empty(&self) -> bool {
        !self.counters.stocked && self.lines.is_empty()
    }

    /// The `stock_levels` snapshot.
    pub fn levels(&self) -> StockLevels {
        StockLevels {
            available: self.available(),
            reserved: self.reserved,
            sold: self.sold,
            per_customer_limit: self.counters.per_customer_limit,
        }
    }

    /// Apply a `stock_adjusted` (event `event_id`); false if that event was already applied.
    /// `set` makes `available` exactly `quantity`; `delta` changes it, floored at 0. Reserved and
    /// sold units are never touched by an adjustment.
    pub fn adjust(
        &mut self,
        event_id: Uuid,
        adjustment: StockAdjustment,
        per_customer_limit: Option<u32>,
    ) -> bool {
        if self.counters.recent_adjustments.contains(&event_id) {
            return false;
        }
        let held = self.reserved + self.sold;
        let available = match adjustment {
            StockAdjustment::Set { quantity } => u64::from(quantity),
            StockAdjustment::Delta { delta } => {
                let now = i128::from(self.available());
                u64::try_from((now + i128::from(delta)).max(0)).unwrap_or(u64::MAX)
            }
        };
        self.counters.capacity = held.saturating_add(available);
        self.counters.per_customer_limit = per_customer_limit;
        self.counters.stocked = true;
        self.counters.recent_adjustments.push_back(event_id);
        while self.counters.recent_adjustments.len() > RECENT_ADJUSTMENTS {
            self.counters.recent_adjustments.pop_front();
        }
        true
    }

    /// Decide a reservation request. A line seen before gets its original answer and nothing
    /// changes. Otherwise: never stocked → `unknown_sku`; over the customer's limit (counting
    /// every unit they hold across earlier orders) → `limit_exceeded`; fewer units available than
    /// asked → `out_of_stock`; else the units are held. `answer_event_id` names the new answer.
    pub fn reserve(
        &mut self,
        request: &ReserveRequest,
        answer_event_id: Uuid,
        now_ms: i64,
    ) -> Reservation {
        if let Some(line) = self.lines.get(&request.line) {
            let answer = match line.status {
                LineStatus::Rejected(reason) => Answer::Rejected(reason),
                LineStatus::Reserved | LineStatus::Sold | LineStatus::Released => Answer::Reserved,
            };
            return Reservation {
                answer,
                quantity: line.quantity,
                answer_event_id: line.answer_event_id,
                changed: false,
            };
        }
        let quantity = u64::from(request.quantity);
        let answer =
            if !self.counters.stocked {
                Answer::Rejected(StockRejectReason::UnknownSku)
            } else if self.counters.per_customer_limit.is_some_and(|limit| {
                self.held_by(&request.customer_id) + quantity > u64::from(limit)
            }) {
                Answer::Rejected(StockRejectReason::LimitExceeded)
            } else if self.available() < quantity {
                Answer::Rejected(StockRejectReason::OutOfStock)
            } else {
                Answer::Reserved
            };
        let status = match answer {
            Answer::Reserved => LineStatus::Reserved,
            Answer::Rejected(reason) => LineStatus::Rejected(reason),
        };
        self.set_line(
            request.line,
            Line {
                customer_id: request.customer_id.clone(),
                quantity: request.quantity,
                status,
                answer_event_id,
                changed_at_ms: now_ms,
                answer_cause: None,
            },
        );
        Reservation {
            answer,
            quantity: request.quantity,
            answer_event_id,
            changed: true,
        }
    }

    /// Give a reserved line's units back. Idempotent: releasing a released or rejected line
    /// changes nothing.
    pub fn release(&mut self, id: LineId, now_ms: i64) -> LineChange {
        let Some(line) = self.lines.get(&id) else {
            return LineChange::Invalid(Violation::UnknownLine);
        };
        match line.status {
            LineStatus::Reserved => {
                let quantity = line.quantity;
                self.set_status(id, LineStatus::Released, now_ms);
                LineChange::Applied { quantity }
            }
            LineStatus::Released | LineStatus::Rejected(_) => LineChange::Unchanged,
            LineStatus::Sold => LineChange::Invalid(Violation::ReleaseAfterSale),
        }
    }

    /// Turn a reserved line into a sale. Idempotent: selling a sold line changes nothing.
    pub fn sell(&mut self, id: LineId, now_ms: i64) -> LineChange {
        let Some(line) = self.lines.get(&id) else {
            return LineChange::Invalid(Violation::UnknownLine);
        };
        match line.status {
            LineStatus::Reserved => {
                let quantity = line.quantity;
                self.set_status(id, LineStatus::Sold, now_ms);
                LineChange::Applied { quantity }
            }
            LineStatus::Sold => LineChange::Unchanged,
            LineStatus::Released | LineStatus::Rejected(_) => {
                LineChange::Invalid(Violation::SaleOfUnreservedLine)
            }
        }
    }

    /// Forget done lines (rejected or released) unchanged since before `cutoff_ms`; returns them
    /// (the caller tombstones their changelog records). They hold no units, so the counters do
    /// not move; only a duplicate request older than the retention would be decided afresh.
    /// Reserved and sold lines are kept: they are the reserved and sold counts.
    pub fn prune(&mut self, cutoff_ms: i64) -> Vec<LineId> {
        let done: Vec<LineId> = self
            .lines
            .iter()
            .filter(|(_, l)| l.holds() == 0 && l.changed_at_ms < cutoff_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in &done {
            self.remove_line(id);
        }
        done
    }

    /// Restore: the counters record.
    pub fn restore_counters(&mut self, counters: Counters) {
        self.counters = counters;
    }

    /// Remember the request a new line's answer replied to (see [`Line::answer_cause`]).
    pub fn set_answer_cause(&mut self, id: &LineId, cause: AnswerCause) {
        if let Some(line) = self.lines.get_mut(id) {
            line.answer_cause = Some(cause);
        }
    }

    /// Restore: a line record (insert or replace).
    pub fn restore_line(&mut self, id: LineId, line: Line) {
        self.set_line(id, line);
    }

    /// Restore: a line tombstone.
    pub fn remove_line(&mut self, id: &LineId) {
        if let Some(old) = self.lines.remove(id) {
            self.unaccount(&old);
        }
    }

    fn set_status(&mut self, id: LineId, status: LineStatus, now_ms: i64) {
        if let Some(line) = self.lines.get(&id).cloned() {
            self.set_line(
                id,
                Line {
                    status,
                    changed_at_ms: now_ms,
                    ..line
                },
            );
        }
    }

    /// The one place lines change, so the derived counts always follow them.
    fn set_line(&mut self, id: LineId, line: Line) {
        if let Some(old) = self.lines.remove(&id) {
            self.unaccount(&old);
        }
        match line.status {
            LineStatus::Reserved => self.reserved += u64::from(line.quantity),
            LineStatus::Sold => self.sold += u64::from(line.quantity),
            LineStatus::Released | LineStatus::Rejected(_) => {}
        }
        if line.holds() > 0 {
            *self.held.entry(line.customer_id.clone()).or_insert(0) += line.holds();
        }
        self.lines.insert(id, line);
    }

    fn unaccount(&mut self, line: &Line) {
        match line.status {
            LineStatus::Reserved => self.reserved -= u64::from(line.quantity),
            LineStatus::Sold => self.sold -= u64::from(line.quantity),
            LineStatus::Released | LineStatus::Rejected(_) => {}
        }
        let holds = line.holds();
        if holds > 0 {
            if let Some(h) = self.held.get_mut(&line.customer_id) {
                *h -= holds;
                if *h == 0 {
                    self.held.remove(&line.customer_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use StockRejectReason::*;

    fn id(n: u128, line: u32) -> LineId {
        LineId {
            order_id: Uuid::from_u128(n),
            line_index: line,
        }
    }

    fn ask(n: u128, customer: &str, quantity: u32) -> ReserveRequest {
        ReserveRequest {
            line: id(n, 0),
            customer_id: customer.to_owned(),
            quantity,
        }
    }

    fn stocked(quantity: u32, limit: Option<u32>) -> SkuState {
        let mut sku = SkuState::new();
        assert!(sku.adjust(
            Uuid::from_u128(9_000),
            StockAdjustment::Set { quantity },
            limit
        ));
        sku
    }

    fn answer(sku: &mut SkuState, request: &ReserveRequest) -> Answer {
        sku.reserve(request, Uuid::now_v7(), 0).answer
    }

    #[test]
    fn reserves_while_stock_lasts_then_out_of_stock() {
        // Given 3 units
        let mut sku = stocked(3, None);
        // When four customers ask for one each
        let answers: Vec<Answer> = (0..4)
            .map(|i| answer(&mut sku, &ask(i, &format!("c{i}"), 1)))
            .collect();
        // Then three are reserved and the last is out of stock
        assert_eq!(
            answers,
            vec![
                Answer::Reserved,
                Answer::Reserved,
                Answer::Reserved,
                Answer::Rejected(OutOfStock)
            ]
        );
        assert_eq!((sku.available(), sku.reserved(), sku.sold()), (0, 3, 0));
    }

    #[test]
    fn never_stocked_sku_is_unknown() {
        let mut sku = SkuState::new();
        assert_eq!(
            answer(&mut sku, &ask(1, "c", 1)),
            Answer::Rejected(UnknownSku)
        );
    }

    #[test]
    fn partial_quantity_is_refused_whole() {
        // Given 2 units, when a line asks for 3, then it is refused and nothing is held
        let mut sku = stocked(2, None);
        assert_eq!(
            answer(&mut sku, &ask(1, "c", 3)),
            Answer::Rejected(OutOfStock)
        );
        assert_eq!(sku.available(), 2);
    }

    #[test]
    fn limit_counts_units_held_across_earlier_orders() {
        // Given a limit of 2 per customer and plenty of stock
        let mut sku = stocked(100, Some(2));
        // When the same customer orders 1, then 1 (both sold or reserved), then 1 more
        assert_eq!(answer(&mut sku, &ask(1, "bot", 1)), Answer::Reserved);
        assert_eq!(sku.sell(id(1, 0), 0), LineChange::Applied { quantity: 1 });
        assert_eq!(answer(&mut sku, &ask(2, "bot", 1)), Answer::Reserved);
        // Then the third order exceeds the limit, while another customer is still served
        assert_eq!(
            answer(&mut sku, &ask(3, "bot", 1)),
            Answer::Rejected(LimitExceeded)
        );
        assert_eq!(answer(&mut sku, &ask(4, "human", 2)), Answer::Reserved);
        assert_eq!(sku.held_by("bot"), 2);
    }

    #[test]
    fn released_units_free_the_limit_and_the_stock() {
        let mut sku = stocked(1, Some(1));
        assert_eq!(answer(&mut sku, &ask(1, "c", 1)), Answer::Reserved);
        assert_eq!(
            answer(&mut sku, &ask(2, "c", 1)),
            Answer::Rejected(LimitExceeded)
        );
        // When the first order is released
        assert_eq!(
            sku.release(id(1, 0), 0),
            LineChange::Applied { quantity: 1 }
        );
        // Then the same customer can reserve again
        assert_eq!(answer(&mut sku, &ask(3, "c", 1)), Answer::Reserved);
    }

    #[test]
    fn duplicate_request_repeats_the_original_answer_without_changing_state() {
        let mut sku = stocked(1, None);
        let first = sku.reserve(&ask(1, "c", 1), Uuid::from_u128(1), 0);
        let before = sku.clone();
        // When the same line is asked again (redelivery or retry)
        let again = sku.reserve(&ask(1, "c", 1), Uuid::from_u128(2), 5);
        // Then the answer and its event id are the original ones and nothing changed
        assert_eq!(again.answer, Answer::Reserved);
        assert_eq!(again.answer_event_id, first.answer_event_id);
        assert!(!again.changed);
        assert_eq!(sku, before);
        // A rejected line stays rejected even once stock is back
        assert_eq!(
            answer(&mut sku, &ask(2, "d", 1)),
            Answer::Rejected(OutOfStock)
        );
        sku.release(id(1, 0), 0);
        assert_eq!(
            answer(&mut sku, &ask(2, "d", 1)),
            Answer::Rejected(OutOfStock)
        );
    }

    #[test]
    fn release_and_sale_are_idempotent_per_line() {
        let mut sku = stocked(5, None);
        answer(&mut sku, &ask(1, "c", 2));
        answer(&mut sku, &ask(2, "c", 1));
        assert_eq!(
            sku.release(id(1, 0), 0),
            LineChange::Applied { quantity: 2 }
        );
        assert_eq!(sku.release(id(1, 0), 0), LineChange::Unchanged);
        assert_eq!(sku.sell(id(2, 0), 0), LineChange::Applied { quantity: 1 });
        assert_eq!(sku.sell(id(2, 0), 0), LineChange::Unchanged);
        assert_eq!((sku.available(), sku.reserved(), sku.sold()), (4, 0, 1));
    }

    #[test]
    fn contradicting_requests_are_violations() {
        let mut sku = stocked(5, None);
        assert_eq!(
            sku.release(id(7, 0), 0),
            LineChange::Invalid(Violation::UnknownLine)
        );
        answer(&mut sku, &ask(1, "c", 1));
        sku.sell(id(1, 0), 0);
        assert_eq!(
            sku.release(id(1, 0), 0),
            LineChange::Invalid(Violation::ReleaseAfterSale)
        );
        answer(&mut sku, &ask(2, "c", 9));
        assert_eq!(
            sku.sell(id(2, 0), 0),
            LineChange::Invalid(Violation::SaleOfUnreservedLine)
        );
    }

    #[test]
    fn adjustments_set_or_move_available_and_dedupe_by_event_id() {
        let mut sku = stocked(10, None);
        answer(&mut sku, &ask(1, "c", 4));
        // Set means "available becomes", whatever is reserved
        assert!(sku.adjust(
            Uuid::from_u128(1),
            StockAdjustment::Set { quantity: 3 },
            Some(5)
        ));
        assert_eq!((sku.available(), sku.reserved(), sku.capacity()), (3, 4, 7));
        // A delta applies once even if redelivered, and floors at zero
        assert!(sku.adjust(
            Uuid::from_u128(2),
            StockAdjustment::Delta { delta: -10 },
            None
        ));
        assert!(!sku.adjust(
            Uuid::from_u128(2),
            StockAdjustment::Delta { delta: -10 },
            None
        ));
        assert_eq!((sku.available(), sku.reserved()), (0, 4));
        assert!(sku.adjust(
            Uuid::from_u128(3),
            StockAdjustment::Delta { delta: 2 },
            None
        ));
        assert_eq!(sku.available(), 2);
        assert_eq!(sku.levels().per_customer_limit, None);
    }

    #[test]
    fn prune_forgets_only_old_lines_that_hold_nothing() {
        let mut sku = stocked(1, None);
        sku.reserve(&ask(1, "c", 1), Uuid::nil(), 10); // reserved: kept
        sku.reserve(&ask(2, "c", 1), Uuid::nil(), 10); // rejected, old: pruned
        sku.reserve(&ask(3, "c", 1), Uuid::nil(), 500); // rejected, recent: kept
        assert_eq!(sku.prune(100), vec![id(2, 0)]);
        assert_eq!(sku.line_count(), 2);
        assert_eq!((sku.available(), sku.reserved()), (0, 1));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set(u32, Option<u32>),
        Delta(i64),
        Reserve(u128, u8, u32),
        Release(u128),
        Sell(u128),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0u32..50, proptest::option::of(1u32..6)).prop_map(|(q, l)| Op::Set(q, l)),
            1 => (-20i64..20).prop_map(Op::Delta),
            8 => (0u128..40, 0u8..6, 1u32..5).prop_map(|(o, c, q)| Op::Reserve(o, c, q)),
            3 => (0u128..40).prop_map(Op::Release),
            3 => (0u128..40).prop_map(Op::Sell),
        ]
    }

    proptest! {
        /// Never oversell; available + reserved + sold only moves by adjustments; no accepted
        /// reservation breaks the limit in force; the derived counts match the lines; and a
        /// state rebuilt from its records (what the changelog holds) equals the live one.
        #[test]
        fn never_oversell_and_conserve_units(ops in proptest::collection::vec(op(), 1..200)) {
            let mut sku = SkuState::new();
            for (n, op) in ops.into_iter().enumerate() {
                let capacity = sku.capacity();
                let available = sku.available();
                match op {
                    Op::Set(q, limit) => {
                        sku.adjust(Uuid::from_u128(n as u128 + 1_000_000), StockAdjustment::Set { quantity: q }, limit);
                        prop_assert_eq!(sku.available(), u64::from(q));
                    }
                    Op::Delta(d) => {
                        sku.adjust(Uuid::from_u128(n as u128 + 1_000_000), StockAdjustment::Delta { delta: d }, sku.counters().per_customer_limit);
                    }
                    Op::Reserve(o, c, q) => {
                        let customer = format!("c{c}");
                        let held = sku.held_by(&customer);
                        let r = sku.reserve(&ReserveRequest { line: id(o, 0), customer_id: customer, quantity: q }, Uuid::from_u128(n as u128), n as i64);
                        prop_assert_eq!(sku.capacity(), capacity);
                        if r.changed && r.answer == Answer::Reserved {
                            prop_assert!(available >= u64::from(q), "oversold");
                            if let Some(limit) = sku.counters().per_customer_limit {
                                prop_assert!(held + u64::from(q) <= u64::from(limit));
                            }
                        }
                    }
                    Op::Release(o) => { sku.release(id(o, 0), n as i64); prop_assert_eq!(sku.capacity(), capacity); }
                    Op::Sell(o) => { sku.sell(id(o, 0), n as i64); prop_assert_eq!(sku.capacity(), capacity); }
                }
                prop_assert_eq!(sku.available() + sku.reserved() + sku.sold(), sku.capacity());
                let reserved: u64 = sku.lines.values().filter(|l| l.status == LineStatus::Reserved).map(|l| u64::from(l.quantity)).sum();
                let sold: u64 = sku.lines.values().filter(|l| l.status == LineStatus::Sold).map(|l| u64::from(l.quantity)).sum();
                prop_assert_eq!((reserved, sold), (sku.reserved(), sku.sold()));
            }
            let mut rebuilt = SkuState::new();
            rebuilt.restore_counters(sku.counters().clone());
            for (id, line) in sku.lines.clone() {
                rebuilt.restore_line(id, line);
            }
            prop_assert_eq!(rebuilt, sku);
        }
    }
}
