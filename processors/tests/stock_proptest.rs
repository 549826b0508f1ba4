//! Property: one SKU's stock decisions (`SkuState`) under random interleavings of many orders of
//! several lines and customers: reservations, releases (a rejection or a cancellation releases
//! every reserved line of the order), sales, adjustments (`set` and `delta`, with a limit that
//! may change under open reservations), redeliveries of any of them, releases and sales of lines
//! never asked for, and pruning, checked step by step against a reference model that recomputes
//! everything from the list of lines (the state under test keeps running counters instead).
//!
//! Invariants: `reserved + sold <= capacity` and `available + reserved + sold == capacity`
//! (never oversold, no unit lost or invented); every answer is the model's (limit counting the
//! units a customer holds across orders, all-or-nothing per line); a redelivered request repeats
//! its first answer and event id and changes nothing; a release or sale of a line the SKU never
//! saw is a violation (dead-lettered by the stage) and changes nothing; release and sale are
//! idempotent; adjustments never touch reserved or sold units and a delta floors at 0; and once
//! every open order is released, nothing is reserved and each customer holds exactly what they
//! bought.

use std::collections::{BTreeMap, BTreeSet};

use orderpipe_processors::stock::core::{
    Answer, LineChange, LineId, ReserveRequest, SkuState, Violation,
};
use orderpipe_schemas::{StockAdjustment, StockRejectReason};
use proptest::prelude::*;
use uuid::Uuid;

const ORDERS: u128 = 24;
const LINES: u32 = 3;
const CUSTOMERS: u8 = 5;

#[derive(Debug, Clone)]
enum Op {
    Set(u32, Option<u32>),
    Delta(i64, Option<u32>),
    /// The `n`-th adjustment again (same event id): a redelivery.
    RedeliverAdjustment(prop::sample::Index),
    /// Order, line, customer, quantity. The customer of an order is fixed by the order, as in a
    /// real order; a second request for the same line is a redelivery (same or other quantity:
    /// the first answer stands).
    Reserve(u128, u32, u32),
    Release(u128, u32),
    /// Every line of the order released (the saga on a rejection, a cancellation or a timeout).
    ReleaseOrder(u128),
    Sell(u128, u32),
    /// Every line of the order sold (the saga on a confirmation).
    SellOrder(u128),
    /// Forget done lines changed before this step (the stage's retention).
    Prune(prop::sample::Index),
}

fn op() -> impl Strategy<Value = Op> {
    let limit = || proptest::option::weighted(0.6, 1u32..6);
    prop_oneof![
        1 => (0u32..40, limit()).prop_map(|(q, l)| Op::Set(q, l)),
        1 => (-15i64..15, limit()).prop_map(|(d, l)| Op::Delta(d, l)),
        1 => any::<prop::sample::Index>().prop_map(Op::RedeliverAdjustment),
        10 => (0..ORDERS, 0..LINES, 1u32..5).prop_map(|(o, l, q)| Op::Reserve(o, l, q)),
        3 => (0..ORDERS + 4, 0..LINES + 1).prop_map(|(o, l)| Op::Release(o, l)),
        2 => (0..ORDERS).prop_map(Op::ReleaseOrder),
        3 => (0..ORDERS + 4, 0..LINES + 1).prop_map(|(o, l)| Op::Sell(o, l)),
        2 => (0..ORDERS).prop_map(Op::SellOrder),
        1 => any::<prop::sample::Index>().prop_map(Op::Prune),
    ]
}

fn line(order: u128, index: u32) -> LineId {
    LineId {
        order_id: Uuid::from_u128(order + 1),
        line_index: index,
    }
}

fn customer(order: u128) -> String {
    format!("customer-{}", order % u128::from(CUSTOMERS))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Reserved,
    Sold,
    Released,
    Rejected(StockRejectReason),
}

/// What the SKU should know, kept the simplest way: every line with its status; every count
/// computed from the lines when asked.
#[derive(Debug, Default, Clone)]
struct Model {
    stocked: bool,
    capacity: u64,
    limit: Option<u32>,
    lines: BTreeMap<LineId, (String, u32, Status, Uuid, usize)>,
}

impl Model {
    fn units(&self, wanted: Status) -> u64 {
        self.lines
            .values()
            .filter(|l| l.2 == wanted)
            .map(|l| u64::from(l.1))
            .sum()
    }
    fn held_by(&self, who: &str) -> u64 {
        self.lines
            .values()
            .filter(|l| l.0 == who && matches!(l.2, Status::Reserved | Status::Sold))
            .map(|l| u64::from(l.1))
            .sum()
    }
    fn available(&self) -> u64 {
        self.capacity - self.units(Status::Reserved) - self.units(Status::Sold)
    }
    fn answer(&self, who: &str, quantity: u32) -> Status {
        if !self.stocked {
            Status::Rejected(StockRejectReason::UnknownSku)
        } else if self
            .limit
            .is_some_and(|l| self.held_by(who) + u64::from(quantity) > u64::from(l))
        {
            Status::Rejected(StockRejectReason::LimitExceeded)
        } else if self.available() < u64::from(quantity) {
            Status::Rejected(StockRejectReason::OutOfStock)
        } else {
            Status::Reserved
        }
    }
}

/// The SKU and the model agree on every count and every customer's holding.
fn agree(sku: &SkuState, model: &Model) -> Result<(), TestCaseError> {
    let (reserved, sold) = (model.units(Status::Reserved), model.units(Status::Sold));
    prop_assert!(
        reserved + sold <= sku.capacity(),
        "oversold: {reserved} + {sold} > {}",
        sku.capacity()
    );
    prop_assert_eq!(
        sku.available() + sku.reserved() + sku.sold(),
        sku.capacity()
    );
    prop_assert_eq!(
        (sku.available(), sku.reserved(), sku.sold(), sku.capacity()),
        (model.available(), reserved, sold, model.capacity)
    );
    prop_assert_eq!(sku.levels().per_customer_limit, model.limit);
    for c in 0..CUSTOMERS {
        let who = customer(u128::from(c));
        prop_assert_eq!(sku.held_by(&who), model.held_by(&who), "{}", who);
    }
    Ok(())
}

/// Release or sell one line on both, checking the SKU's verdict against the model.
fn change(
    sku: &mut SkuState,
    model: &mut Model,
    id: LineId,
    sell: bool,
    step: usize,
) -> Result<(), TestCaseError> {
    let before = sku.clone();
    let got = if sell {
        sku.sell(id, step as i64)
    } else {
        sku.release(id, step as i64)
    };
    let Some(entry) = model.lines.get_mut(&id) else {
        // Never asked for (or pruned): a violation, and nothing changes.
        prop_assert_eq!(got, LineChange::Invalid(Violation::UnknownLine));
        prop_assert_eq!(&*sku, &before);
        return Ok(());
    };
    let quantity = entry.1;
    let expected = match (entry.2, sell) {
        (Status::Reserved, false) => {
            entry.2 = Status::Released;
            entry.4 = step;
            LineChange::Applied { quantity }
        }
        (Status::Reserved, true) => {
            entry.2 = Status::Sold;
            entry.4 = step;
            LineChange::Applied { quantity }
        }
        (Status::Released | Status::Rejected(_), false) | (Status::Sold, true) => {
            LineChange::Unchanged
        }
        (Status::Sold, false) => LineChange::Invalid(Violation::ReleaseAfterSale),
        (Status::Released | Status::Rejected(_), true) => {
            LineChange::Invalid(Violation::SaleOfUnreservedLine)
        }
    };
    prop_assert_eq!(got, expected, "{:?} sell={}", id, sell);
    if !matches!(expected, LineChange::Applied { .. }) {
        prop_assert_eq!(
            &*sku,
            &before,
            "a refused or repeated change changed the SKU"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn interleavings_of_many_orders_never_oversell_and_match_the_model(
        ops in proptest::collection::vec(op(), 1..250),
    ) {
        let mut sku = SkuState::new();
        let mut model = Model::default();
        let mut adjustments: Vec<(Uuid, StockAdjustment, Option<u32>)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Set(quantity, limit) => {
                    let id = Uuid::from_u128(1_000_000 + step as u128);
                    let (reserved, sold) = (sku.reserved(), sku.sold());
                    let applied = sku.adjust(id, StockAdjustment::Set { quantity }, limit);
                    prop_assert!(applied, "a new adjustment applies");
                    prop_assert_eq!((sku.reserved(), sku.sold()), (reserved, sold));
                    prop_assert_eq!(sku.available(), u64::from(quantity));
                    model.stocked = true;
                    model.capacity = reserved + sold + u64::from(quantity);
                    model.limit = limit;
                    adjustments.push((id, StockAdjustment::Set { quantity }, limit));
                }
                Op::Delta(delta, limit) => {
                    let id = Uuid::from_u128(1_000_000 + step as u128);
                    let (available, reserved, sold) = (sku.available(), sku.reserved(), sku.sold());
                    let applied = sku.adjust(id, StockAdjustment::Delta { delta }, limit);
                    prop_assert!(applied, "a new adjustment applies");
                    prop_assert_eq!((sku.reserved(), sku.sold()), (reserved, sold));
                    let floored = (available as i64 + delta).max(0) as u64;
                    prop_assert_eq!(sku.available(), floored, "a delta floors at 0");
                    model.stocked = true;
                    model.capacity = reserved + sold + floored;
                    model.limit = limit;
                    adjustments.push((id, StockAdjustment::Delta { delta }, limit));
                }
                Op::RedeliverAdjustment(which) => {
                    // The SKU remembers the 64 most recent adjustment ids (older redeliveries
                    // cannot happen: they sit behind newer ones in the SKU's partition).
                    let recent = &adjustments[adjustments.len().saturating_sub(64)..];
                    if recent.is_empty() { continue; }
                    let (id, adjustment, limit) = recent[which.index(recent.len())];
                    let before = sku.clone();
                    prop_assert!(!sku.adjust(id, adjustment, limit), "a redelivered adjustment applied twice");
                    prop_assert_eq!(&sku, &before);
                }
                Op::Reserve(order, index, quantity) => {
                    let id = line(order, index);
                    let who = customer(order);
                    let event_id = Uuid::from_u128(2_000_000 + step as u128);
                    let before = sku.clone();
                    let got = sku.reserve(
                        &ReserveRequest { line: id, customer_id: who.clone(), quantity },
                        event_id,
                        step as i64,
                    );
                    match model.lines.get(&id) {
                        Some((_, first_quantity, status, first_id, _)) => {
                            // A redelivery: the first answer, its id, and no change.
                            prop_assert!(!got.changed);
                            prop_assert_eq!(got.answer_event_id, *first_id);
                            prop_assert_eq!(got.quantity, *first_quantity);
                            let first = match status {
                                Status::Rejected(reason) => Answer::Rejected(*reason),
                                _ => Answer::Reserved,
                            };
                            prop_assert_eq!(got.answer, first);
                            prop_assert_eq!(&sku, &before);
                        }
                        None => {
                            let expected = model.answer(&who, quantity);
                            let answer = match expected {
                                Status::Rejected(reason) => Answer::Rejected(reason),
                                _ => Answer::Reserved,
                            };
                            prop_assert!(got.changed);
                            prop_assert_eq!(got.answer, answer, "{:?} by {} for {}", id, who, quantity);
                            prop_assert_eq!(got.answer_event_id, event_id);
                            if answer == Answer::Reserved {
                                if let Some(limit) = model.limit {
                                    prop_assert!(model.held_by(&who) + u64::from(quantity) <= u64::from(limit));
                                }
                            }
                            model.lines.insert(id, (who, quantity, expected, event_id, step));
                        }
                    }
                }
                Op::Release(order, index) => change(&mut sku, &mut model, line(order, index), false, step)?,
                Op::Sell(order, index) => change(&mut sku, &mut model, line(order, index), true, step)?,
                Op::ReleaseOrder(order) | Op::SellOrder(order) => {
                    let sell = matches!(op, Op::SellOrder(_));
                    let lines: Vec<LineId> = model.lines.keys().filter(|l| l.order_id == line(order, 0).order_id).copied().collect();
                    for id in lines {
                        change(&mut sku, &mut model, id, sell, step)?;
                    }
                }
                Op::Prune(at) => {
                    let cutoff = at.index(step + 1) as i64;
                    let (levels, before) = (sku.levels(), sku.line_count());
                    let pruned: BTreeSet<LineId> = sku.prune(cutoff).into_iter().collect();
                    let expected: BTreeSet<LineId> = model.lines.iter()
                        .filter(|(_, l)| matches!(l.2, Status::Released | Status::Rejected(_)) && (l.4 as i64) < cutoff)
                        .map(|(id, _)| *id)
                        .collect();
                    prop_assert_eq!(&pruned, &expected);
                    prop_assert_eq!(sku.levels(), levels, "pruning moved units");
                    prop_assert_eq!(sku.line_count(), before - pruned.len());
                    model.lines.retain(|id, _| !pruned.contains(id));
                }
            }
            agree(&sku, &model)?;
        }

        // Every order still open is released (rejected, cancelled or timed out): nothing stays
        // reserved, the units are available again, and each customer holds what they bought.
        let open: Vec<LineId> = model.lines.iter().filter(|(_, l)| l.2 == Status::Reserved).map(|(id, _)| *id).collect();
        for id in open {
            change(&mut sku, &mut model, id, false, usize::MAX / 2)?;
        }
        agree(&sku, &model)?;
        prop_assert_eq!(sku.reserved(), 0);
        prop_assert_eq!(sku.available(), sku.capacity() - sku.sold());
        for c in 0..CUSTOMERS {
            let who = customer(u128::from(c));
            let bought: u64 = model.lines.values().filter(|l| l.0 == who && l.2 == Status::Sold).map(|l| u64::from(l.1)).sum();
            prop_assert_eq!(sku.held_by(&who), bought);
        }
    }
}
