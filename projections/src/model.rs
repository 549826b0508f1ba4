//! Pure core of the projectors: which CQL writes an event turns into, and with which write
//! timestamps. No IO: functions of (what is known about the order, the event, its offset).
//!
//! Write timestamps (`USING TIMESTAMP`) come from the event's Kafka offset, never from a clock,
//! so a replay or a rebuild writes identical cells:
//! - [`latest_wins`] (`offset + 1`): a later event overwrites an earlier one (stock levels,
//!   timeline rows, which are immutable anyway);
//! - [`first_wins`] (`ANCHOR - offset`): an earlier event wins over a later one (the order's
//!   placement, each stage's first time, the terminal outcome, sales rows).
//!
//! Every stamp lies in the past, whatever the offset: [`ANCHOR`] is 2020-01-01 in microseconds
//! (CQL write timestamps are microseconds), and ScyllaDB refuses a timestamp more than 3 days in
//! the future (`restrict_future_timestamp`). Offsets up to [`MAX_OFFSET`] (2^40) keep both
//! mappings strictly ordered, positive, and every `latest_wins` stamp below every `first_wins` one.
//!
//! Offsets compare only within one partition; keys pin an order's events and a SKU's snapshots
//! to one partition, which is all the comparisons here need.

use orderpipe_schemas::{OrderEnvelope, OrderEvent, StockEnvelope, StockEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Mirror of [`first_wins`] stamps: 2020-01-01T00:00:00Z in microseconds since the epoch, a
/// fixed instant in the past, so that no write timestamp is ever in the future.
pub(crate) const ANCHOR: i64 = 1_577_836_800_000_000;

/// Largest offset the mappings keep in order (2^40, about 10^12 events per partition).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const MAX_OFFSET: i64 = 1 << 40;

/// Write timestamp for cells where the earliest event wins: `ANCHOR - offset`, in the past.
pub(crate) fn first_wins(offset: i64) -> i64 {
    ANCHOR - offset
}

/// Write timestamp for cells where the latest event wins.
pub(crate) fn latest_wins(offset: i64) -> i64 {
    offset + 1
}

/// Milliseconds in a minute and an hour (sales buckets).
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

/// Start of the minute holding `ms`.
pub(crate) fn minute_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(MINUTE_MS)
}

/// Start of the hour holding `ms` (the sales partition).
pub(crate) fn hour_of(ms: i64) -> i64 {
    ms - ms.rem_euclid(HOUR_MS)
}

/// Status of an order in the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// `order_placed` seen.
    Placed,
    /// Every line reserved.
    StockReserved,
    /// Payment settled.
    Paid,
    /// Terminal: confirmed.
    Confirmed,
    /// Terminal: rejected (see `reason`).
    Rejected,
    /// Terminal: cancelled on a client's request before it was confirmed (`order_cancelled`).
    Cancelled,
}

impl Status {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Placed => "placed",
            Status::StockReserved => "stock_reserved",
            Status::Paid => "paid",
            Status::Confirmed => "confirmed",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Placed,
            Status::StockReserved,
            Status::Paid,
            Status::Confirmed,
            Status::Rejected,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
    }

    /// The status from the order's stage columns: the first terminal outcome if any (so a late
    /// `payment_settled` never turns a rejected order into a paid one), else the furthest stage.
    pub(crate) fn derive(terminal: Option<&str>, paid: bool, reserved: bool) -> Status {
        match terminal {
            Some("confirmed") => Status::Confirmed,
            Some("rejected") => Status::Rejected,
            Some("cancelled") => Status::Cancelled,
            _ if paid => Status::Paid,
            _ if reserved => Status::StockReserved,
            _ => Status::Placed,
        }
    }
}

/// One line of an order as the views keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) sku: String,
    pub(crate) quantity: i32,
    pub(crate) unit_price_minor: i64,
}

/// The placement that counts (the first `order_placed` of the order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Placed {
    pub(crate) offset: i64,
    pub(crate) at_ms: i64,
    pub(crate) customer_id: String,
    pub(crate) currency: String,
    pub(crate) total_minor: i64,
    pub(crate) lines: Vec<Line>,
}

/// The outcome that counts (the first terminal event of the order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Terminal {
    pub(crate) offset: i64,
    pub(crate) confirmed: bool,
    pub(crate) at_ms: i64,
}

/// What the orders projector must know about an order to plan an event: its placement and
/// outcome, as merged so far (earliest offset wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OrderState {
    pub(crate) placed: Option<Placed>,
    pub(crate) terminal: Option<Terminal>,
}

/// Whether planning `event` needs the order's [`OrderState`] (others are planned blind).
pub(crate) fn needs_state(event: &OrderEvent) -> bool {
    matches!(
        event,
        OrderEvent::OrderPlaced(_)
            | OrderEvent::OrderConfirmed(_)
            | OrderEvent::OrderRejected(_)
            | OrderEvent::OrderCancelled(_)
    )
}

/// A stage column of `orders` set once, by the first event of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StageColumn {
    Reserved,
    Paid,
    Declined,
    Cancelled,
}

/// The partition a write goes to: writes to one partition share an unlogged batch.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum PartitionKey {
    Order(Uuid),
    OrderLines(Uuid),
    Customer(String),
    Sales(i64),
    SkuSales(String, i64),
    Stock(String),
}

/// One CQL write, with its `USING TIMESTAMP` (`stamp`). Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Write {
    Timeline {
        order_id: Uuid,
        occurred_at: i64,
        event_id: Uuid,
        event_type: &'static str,
        detail: String,
        offset: i64,
        stamp: i64,
    },
    Placed {
        order_id: Uuid,
        customer_id: String,
        currency: String,
        total_minor: i64,
        line_count: i32,
        placed_at: i64,
        offset: i64,
        stamp: i64,
    },
    Line {
        order_id: Uuid,
        line_index: i32,
        line: Line,
        stamp: i64,
    },
    DeleteLine {
        order_id: Uuid,
        line_index: i32,
        stamp: i64,
    },
    Stage {
        order_id: Uuid,
        column: StageColumn,
        at: i64,
        stamp: i64,
    },
    Refunded {
        order_id: Uuid,
        at: i64,
        amount_minor: i64,
        stamp: i64,
    },
    Terminal {
        order_id: Uuid,
        status: &'static str,
        reason: Option<String>,
        at: i64,
        offset: i64,
        stamp: i64,
    },
    CustomerOrder {
        customer_id: String,
        placed_at: i64,
        order_id: Uuid,
        currency: String,
        total_minor: i64,
        line_count: i32,
        stamp: i64,
    },
    DeleteCustomerOrder {
        customer_id: String,
        placed_at: i64,
        order_id: Uuid,
        stamp: i64,
    },
    Sale {
        minute: i64,
        order_id: Uuid,
        currency: String,
        units: i64,
        revenue_minor: i64,
        stamp: i64,
    },
    DeleteSale {
        minute: i64,
        order_id: Uuid,
        stamp: i64,
    },
    SkuSale {
        sku: String,
        minute: i64,
        order_id: Uuid,
        line_index: i32,
        currency: String,
        units: i64,
        revenue_minor: i64,
        stamp: i64,
    },
    DeleteSkuSale {
        sku: String,
        minute: i64,
        order_id: Uuid,
        line_index: i32,
        stamp: i64,
    },
    StockLevels {
        sku: String,
        available: i64,
        reserved: i64,
        sold: i64,
        per_customer_limit: Option<i32>,
        updated_at: i64,
        offset: i64,
        stamp: i64,
    },
}

impl Write {
    /// The partition this write lands on.
    pub(crate) fn partition(&self) -> PartitionKey {
        match self {
            Write::Timeline { order_id, .. }
            | Write::Placed { order_id, .. }
            | Write::Stage { order_id, .. }
            | Write::Refunded { order_id, .. }
            | Write::Terminal { order_id, .. } => PartitionKey::Order(*order_id),
            Write::Line { order_id, .. } | Write::DeleteLine { order_id, .. } => {
                PartitionKey::OrderLines(*order_id)
            }
            Write::CustomerOrder { customer_id, .. }
            | Write::DeleteCustomerOrder { customer_id, .. } => {
                PartitionKey::Customer(customer_id.clone())
            }
            Write::Sale { minute, .. } | Write::DeleteSale { minute, .. } => {
                PartitionKey::Sales(hour_of(*minute))
            }
            Write::SkuSale { sku, minute, .. } | Write::DeleteSkuSale { sku, minute, .. } => {
                PartitionKey::SkuSales(sku.clone(), hour_of(*minute))
            }
            Write::StockLevels { sku, .. } => PartitionKey::Stock(sku.clone()),
        }
    }
}

/// Something worth counting that planning noticed (the caller turns these into metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Note {
    /// A later `order_placed` of an order already placed: only its timeline row is written.
    DuplicatePlacement,
    /// A terminal event after the order's first one: ignored but for the timeline.
    LateTerminal,
    /// `order_confirmed` of an order never placed: no sales rows.
    ConfirmedWithoutPlacement,
}

fn saturating_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn lines_of(placed: &orderpipe_schemas::OrderPlaced) -> Vec<Line> {
    placed
        .lines
        .iter()
        .map(|l| Line {
            sku: l.sku.clone(),
            quantity: saturating_i32(l.quantity),
            unit_price_minor: l.unit_price_minor,
        })
        .collect()
}

fn wire<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// A short human description of an event for the timeline (never the payment token).
pub(crate) fn detail(event: &OrderEvent) -> String {
    match event {
        OrderEvent::OrderPlaced(p) => format!(
            "{} line(s), total {} {}",
            p.lines.len(),
            p.total_minor,
            p.currency
        ),
        OrderEvent::StockLineReserved(l) => {
            format!("line {}: {} x {}", l.line_index, l.quantity, l.sku)
        }
        OrderEvent::StockLineRejected(l) => format!(
            "line {}: {} x {} ({})",
            l.line_index,
            l.quantity,
            l.sku,
            wire(&l.reason)
        ),
        OrderEvent::StockReserved(_) => "every line reserved".into(),
        OrderEvent::StockRejected(r) => format!("{} ({})", r.sku, wire(&r.reason)),
        OrderEvent::PaymentRequested(p) => format!(
            "{} {} by {}",
            p.amount_minor,
            p.currency,
            truncate(&p.payment.method, 32)
        ),
        OrderEvent::PaymentSettled(p) => format!(
            "{} {}, charge {}",
            p.amount_minor,
            p.currency,
            truncate(&p.charge_id, 64)
        ),
        OrderEvent::PaymentDeclined(p) => truncate(p.reason.as_str(), 200),
        OrderEvent::OrderConfirmed(_) => "confirmed".into(),
        OrderEvent::OrderRejected(r) => wire(&r.reason),
        OrderEvent::CancellationRequested(c) => format!("by {}", truncate(&c.client_id, 200)),
        OrderEvent::OrderCancelled(_) => "cancelled".into(),
        OrderEvent::Refunded(r) => format!("{} {}", r.amount_minor, r.currency),
    }
}

/// Sales rows of a confirmed order (one per order, one per line), or their deletions.
fn sales_writes(
    order_id: Uuid,
    placed: &Placed,
    confirmed_at: i64,
    stamp: i64,
    delete: bool,
    out: &mut Vec<Write>,
) {
    let minute = minute_of(confirmed_at);
    if delete {
        out.push(Write::DeleteSale {
            minute,
            order_id,
            stamp,
        });
    } else {
        out.push(Write::Sale {
            minute,
            order_id,
            currency: placed.currency.clone(),
            units: placed.lines.iter().map(|l| i64::from(l.quantity)).sum(),
            revenue_minor: placed.total_minor,
            stamp,
        });
    }
    for (index, line) in placed.lines.iter().enumerate() {
        let line_index = i32::try_from(index).unwrap_or(i32::MAX);
        if delete {
            out.push(Write::DeleteSkuSale {
                sku: line.sku.clone(),
                minute,
                order_id,
                line_index,
                stamp,
            });
        } else {
            out.push(Write::SkuSale {
                sku: line.sku.clone(),
                minute,
                order_id,
                line_index,
                currency: placed.currency.clone(),
                units: i64::from(line.quantity),
                revenue_minor: i64::from(line.quantity) * line.unit_price_minor,
                stamp,
            });
        }
    }
}

/// Plans the writes of one `orders` event at `offset`, updating `state` (the order's placement
/// and outcome, merged so far). The same (state, event, offset) always gives the same writes;
/// re-planning an event already applied gives writes identical to the first ones.
pub(crate) fn plan_order(
    state: &mut OrderState,
    envelope: &OrderEnvelope,
    offset: i64,
    out: &mut Vec<Write>,
) -> Option<Note> {
    let order_id = envelope.order_id;
    let at = envelope.occurred_at.timestamp_millis();
    let first = first_wins(offset);
    out.push(Write::Timeline {
        order_id,
        occurred_at: at,
        event_id: envelope.event_id,
        event_type: envelope.event.event_type(),
        detail: detail(&envelope.event),
        offset,
        stamp: latest_wins(offset),
    });
    let stage = |column, out: &mut Vec<Write>| {
        out.push(Write::Stage {
            order_id,
            column,
            at,
            stamp: first,
        });
    };
    match &envelope.event {
        OrderEvent::OrderPlaced(p) => {
            let previous = state.placed.as_ref();
            if previous.is_some_and(|prev| prev.offset < offset) {
                return Some(Note::DuplicatePlacement);
            }
            let placed = Placed {
                offset,
                at_ms: at,
                customer_id: p.customer_id.clone(),
                currency: p.currency.clone(),
                total_minor: p.total_minor,
                lines: lines_of(p),
            };
            let line_count = i32::try_from(placed.lines.len()).unwrap_or(i32::MAX);
            // An earlier placement showing up after a later one (the consumer once started past
            // it): its rows replace the later one's, which are deleted where keys differ.
            if let Some(prev) = previous.filter(|prev| prev.offset > offset) {
                for index in placed.lines.len()..prev.lines.len() {
                    out.push(Write::DeleteLine {
                        order_id,
                        line_index: i32::try_from(index).unwrap_or(i32::MAX),
                        stamp: first,
                    });
                }
                if (prev.customer_id.as_str(), prev.at_ms) != (p.customer_id.as_str(), at) {
                    out.push(Write::DeleteCustomerOrder {
                        customer_id: prev.customer_id.clone(),
                        placed_at: prev.at_ms,
                        order_id,
                        stamp: first,
                    });
                }
            }
            out.push(Write::Placed {
                order_id,
                customer_id: placed.customer_id.clone(),
                currency: placed.currency.clone(),
                total_minor: placed.total_minor,
                line_count,
                placed_at: at,
                offset,
                stamp: first,
            });
            for (index, line) in placed.lines.iter().enumerate() {
                out.push(Write::Line {
                    order_id,
                    line_index: i32::try_from(index).unwrap_or(i32::MAX),
                    line: line.clone(),
                    stamp: first,
                });
            }
            out.push(Write::CustomerOrder {
                customer_id: placed.customer_id.clone(),
                placed_at: at,
                order_id,
                currency: placed.currency.clone(),
                total_minor: placed.total_minor,
                line_count,
                stamp: first,
            });
            state.placed = Some(placed);
            None
        }
        OrderEvent::OrderConfirmed(_)
        | OrderEvent::OrderRejected(_)
        | OrderEvent::OrderCancelled(_) => {
            let confirmed = matches!(envelope.event, OrderEvent::OrderConfirmed(_));
            let status = match &envelope.event {
                OrderEvent::OrderConfirmed(_) => "confirmed",
                OrderEvent::OrderCancelled(_) => "cancelled",
                _ => "rejected",
            };
            if state.terminal.as_ref().is_some_and(|t| t.offset < offset) {
                return Some(Note::LateTerminal);
            }
            let reason = match &envelope.event {
                OrderEvent::OrderRejected(r) => Some(wire(&r.reason)),
                _ => None,
            };
            if status == "cancelled" {
                stage(StageColumn::Cancelled, out);
            }
            out.push(Write::Terminal {
                order_id,
                status,
                reason,
                at,
                offset,
                stamp: first,
            });
            let mut note = None;
            // A later confirmation applied before this earlier outcome: its sales rows go.
            if let (Some(prev), Some(placed)) = (state.terminal.as_ref(), state.placed.as_ref()) {
                let same_rows = confirmed && minute_of(prev.at_ms) == minute_of(at);
                if prev.offset > offset && prev.confirmed && !same_rows {
                    sales_writes(order_id, placed, prev.at_ms, first, true, out);
                }
            }
            if confirmed {
                match state.placed.as_ref() {
                    Some(placed) => sales_writes(order_id, placed, at, first, false, out),
                    None => note = Some(Note::ConfirmedWithoutPlacement),
                }
            }
            state.terminal = Some(Terminal {
                offset,
                confirmed,
                at_ms: at,
            });
            note
        }
        OrderEvent::StockReserved(_) => {
            stage(StageColumn::Reserved, out);
            None
        }
        OrderEvent::PaymentSettled(_) => {
            stage(StageColumn::Paid, out);
            None
        }
        OrderEvent::PaymentDeclined(_) => {
            stage(StageColumn::Declined, out);
            None
        }
        OrderEvent::Refunded(r) => {
            out.push(Write::Refunded {
                order_id,
                at,
                amount_minor: r.amount_minor,
                stamp: first,
            });
            None
        }
        OrderEvent::StockLineReserved(_)
        | OrderEvent::StockLineRejected(_)
        | OrderEvent::StockRejected(_)
        | OrderEvent::PaymentRequested(_)
        | OrderEvent::CancellationRequested(_) => None,
    }
}

/// Plans the write of one `stock` event at `offset`: only `stock_levels` snapshots feed the view
/// (latest offset wins); requests and adjustments are the stock stage's inputs, not its state.
pub(crate) fn plan_stock(envelope: &StockEnvelope, offset: i64) -> Option<Write> {
    match &envelope.event {
        StockEvent::StockLevels(levels) => Some(Write::StockLevels {
            sku: envelope.sku.clone(),
            available: i64::try_from(levels.available).unwrap_or(i64::MAX),
            reserved: i64::try_from(levels.reserved).unwrap_or(i64::MAX),
            sold: i64::try_from(levels.sold).unwrap_or(i64::MAX),
            per_customer_limit: levels.per_customer_limit.map(saturating_i32),
            updated_at: envelope.occurred_at.timestamp_millis(),
            offset,
            stamp: latest_wins(offset),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use orderpipe_schemas::{
        OrderConfirmed, OrderLine, OrderPlaced, OrderRejected, PaymentRef, PaymentSettled,
        RejectReason, StockLevels,
    };

    fn envelope(order_id: Uuid, secs: i64, event: OrderEvent) -> OrderEnvelope {
        let mut e = OrderEnvelope::new(order_id, event, None, order_id);
        e.occurred_at = Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap();
        e
    }

    fn placed(customer: &str, qty: u32) -> OrderEvent {
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: customer.into(),
            currency: "EUR".into(),
            lines: vec![
                OrderLine {
                    sku: "A".into(),
                    quantity: qty,
                    unit_price_minor: 100,
                },
                OrderLine {
                    sku: "B".into(),
                    quantity: 1,
                    unit_price_minor: 50,
                },
            ],
            total_minor: i64::from(qty) * 100 + 50,
            payment: PaymentRef {
                method: "card".into(),
                token: "tok_secret".into(),
            },
        })
    }

    fn count(writes: &[Write], f: impl Fn(&Write) -> bool) -> usize {
        writes.iter().filter(|w| f(w)).count()
    }

    #[test]
    fn stamps_order_first_and_latest() {
        assert!(first_wins(1) > first_wins(2));
        assert!(latest_wins(2) > latest_wins(1));
        assert!(latest_wins(i64::from(u32::MAX) * 1000) < first_wins(i64::from(u32::MAX) * 1000));
    }

    /// Every stamp lies in the past (ScyllaDB refuses timestamps over 3 days ahead) and both
    /// mappings keep their order for every offset up to 2^40.
    #[test]
    fn stamps_stay_in_the_past_and_ordered_up_to_2_pow_40() {
        let now_micros = Utc::now().timestamp_micros();
        let mut offsets: Vec<i64> = vec![0, 1, 2, 3, 1_000, MAX_OFFSET - 1, MAX_OFFSET];
        offsets.extend((0..=40).map(|b| 1i64 << b));
        offsets.extend((1..=40).map(|b| (1i64 << b) - 1));
        offsets.extend((0..1000).map(|i| i * (MAX_OFFSET / 1000)));
        offsets.sort_unstable();
        offsets.dedup();
        for pair in offsets.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(
                first_wins(a) > first_wins(b),
                "first_wins order at {a} < {b}"
            );
            assert!(
                latest_wins(a) < latest_wins(b),
                "latest_wins order at {a} < {b}"
            );
        }
        for &o in &offsets {
            for stamp in [first_wins(o), latest_wins(o)] {
                assert!(stamp > 0, "stamp of offset {o} is not positive");
                assert!(stamp < now_micros, "stamp of offset {o} is not in the past");
            }
            // Any latest-wins stamp is below any first-wins stamp.
            assert!(latest_wins(MAX_OFFSET) < first_wins(o));
        }
        assert!(first_wins(0) <= ANCHOR);
    }

    #[test]
    fn status_never_regresses_from_a_terminal_outcome() {
        // Given a rejected order that later sees payment_settled
        assert_eq!(
            Status::derive(Some("rejected"), true, true),
            Status::Rejected
        );
        assert_eq!(
            Status::derive(Some("confirmed"), true, true),
            Status::Confirmed
        );
        assert_eq!(Status::derive(None, true, true), Status::Paid);
        assert_eq!(Status::derive(None, false, true), Status::StockReserved);
        assert_eq!(Status::derive(None, false, false), Status::Placed);
        assert_eq!(
            Status::derive(Some("cancelled"), true, true),
            Status::Cancelled
        );
        for s in [
            "placed",
            "stock_reserved",
            "paid",
            "confirmed",
            "rejected",
            "cancelled",
        ] {
            assert_eq!(Status::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(Status::parse("bogus"), None);
    }

    #[test]
    fn duplicate_placement_only_adds_a_timeline_row() {
        // Given an order placed at offset 3
        let id = Uuid::now_v7();
        let mut state = OrderState::default();
        let mut first = Vec::new();
        assert_eq!(
            plan_order(&mut state, &envelope(id, 0, placed("c1", 2)), 3, &mut first),
            None
        );
        assert_eq!(
            count(&first, |w| matches!(w, Write::CustomerOrder { .. })),
            1
        );
        assert_eq!(count(&first, |w| matches!(w, Write::Line { .. })), 2);
        // When a retry of the same order arrives later
        let mut dup = Vec::new();
        let note = plan_order(&mut state, &envelope(id, 5, placed("c1", 2)), 7, &mut dup);
        // Then only its timeline row is written
        assert_eq!(note, Some(Note::DuplicatePlacement));
        assert_eq!(dup.len(), 1);
        assert!(matches!(dup[0], Write::Timeline { offset: 7, .. }));
        assert_eq!(state.placed.as_ref().unwrap().offset, 3);
    }

    #[test]
    fn replanning_an_applied_event_gives_identical_writes() {
        // Given the state after applying a placement and a confirmation
        let id = Uuid::now_v7();
        let place = envelope(id, 0, placed("c1", 2));
        let confirm = envelope(id, 90, OrderEvent::OrderConfirmed(OrderConfirmed {}));
        let mut state = OrderState::default();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        plan_order(&mut state, &place, 1, &mut a);
        plan_order(&mut state, &confirm, 9, &mut a);
        // When both are planned again from that (later) state, as a replay does
        plan_order(&mut state, &place, 1, &mut b);
        plan_order(&mut state, &confirm, 9, &mut b);
        // Then the writes are the same
        assert_eq!(a, b);
    }

    #[test]
    fn confirmation_writes_sales_rows_from_the_placement() {
        let id = Uuid::now_v7();
        let mut state = OrderState::default();
        let mut w = Vec::new();
        plan_order(&mut state, &envelope(id, 0, placed("c1", 3)), 1, &mut w);
        w.clear();
        let note = plan_order(
            &mut state,
            &envelope(id, 125, OrderEvent::OrderConfirmed(OrderConfirmed {})),
            4,
            &mut w,
        );
        assert_eq!(note, None);
        let sale = w.iter().find(|w| matches!(w, Write::Sale { .. })).unwrap();
        let Write::Sale {
            minute,
            units,
            revenue_minor,
            ..
        } = sale
        else {
            unreachable!()
        };
        assert_eq!(*minute % 60_000, 0);
        assert_eq!((*units, *revenue_minor), (4, 350));
        assert_eq!(count(&w, |w| matches!(w, Write::SkuSale { .. })), 2);
    }

    #[test]
    fn order_cancelled_is_a_terminal_cancelled_outcome_without_sales() {
        // Given a placed order whose cancellation was requested
        let id = Uuid::now_v7();
        let mut state = OrderState::default();
        let mut w = Vec::new();
        plan_order(&mut state, &envelope(id, 0, placed("c1", 1)), 1, &mut w);
        w.clear();
        let request = OrderEvent::CancellationRequested(orderpipe_schemas::CancellationRequested {
            client_id: "checkout".into(),
        });
        // Then the request alone only adds a timeline row (the saga may still refuse it)
        assert_eq!(
            plan_order(&mut state, &envelope(id, 5, request), 2, &mut w),
            None
        );
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(matches!(w[0], Write::Timeline { .. }));
        w.clear();
        // When the saga's order_cancelled arrives
        let cancelled = OrderEvent::OrderCancelled(orderpipe_schemas::OrderCancelled {});
        assert!(needs_state(&cancelled));
        assert_eq!(
            plan_order(&mut state, &envelope(id, 6, cancelled), 3, &mut w),
            None
        );
        // Then the order's terminal status is cancelled, with its cancelled_at, and no sales
        assert!(w.iter().any(|w| matches!(
            w,
            Write::Terminal {
                status: "cancelled",
                reason: None,
                offset: 3,
                ..
            }
        )));
        assert_eq!(
            count(&w, |w| matches!(
                w,
                Write::Stage {
                    column: StageColumn::Cancelled,
                    ..
                }
            )),
            1
        );
        assert_eq!(
            count(&w, |w| matches!(
                w,
                Write::Sale { .. } | Write::SkuSale { .. }
            )),
            0
        );
        // And a late confirmation changes nothing
        w.clear();
        let note = plan_order(
            &mut state,
            &envelope(id, 12, OrderEvent::OrderConfirmed(OrderConfirmed {})),
            7,
            &mut w,
        );
        assert_eq!(note, Some(Note::LateTerminal));
        assert_eq!(count(&w, |w| matches!(w, Write::Terminal { .. })), 0);
    }

    #[test]
    fn late_outcome_after_rejection_is_ignored() {
        // Given an order rejected at offset 5
        let id = Uuid::now_v7();
        let mut state = OrderState::default();
        let mut w = Vec::new();
        plan_order(&mut state, &envelope(id, 0, placed("c1", 1)), 1, &mut w);
        let reject = OrderEvent::OrderRejected(OrderRejected {
            reason: RejectReason::PaymentDeclined,
        });
        plan_order(&mut state, &envelope(id, 10, reject), 5, &mut w);
        w.clear();
        // When a confirmation and a payment arrive after it
        let settled = OrderEvent::PaymentSettled(PaymentSettled {
            amount_minor: 150,
            currency: "EUR".into(),
            charge_id: "ch".into(),
        });
        plan_order(&mut state, &envelope(id, 11, settled), 6, &mut w);
        let note = plan_order(
            &mut state,
            &envelope(id, 12, OrderEvent::OrderConfirmed(OrderConfirmed {})),
            7,
            &mut w,
        );
        // Then no sales row and no new outcome is written
        assert_eq!(note, Some(Note::LateTerminal));
        assert_eq!(
            count(&w, |w| matches!(
                w,
                Write::Sale { .. } | Write::Terminal { .. }
            )),
            0
        );
    }

    #[test]
    fn earlier_placement_arriving_late_replaces_the_later_one() {
        // Given a placement at offset 9 applied first (consumer started past offset 4)
        let id = Uuid::now_v7();
        let mut state = OrderState::default();
        let mut w = Vec::new();
        plan_order(&mut state, &envelope(id, 60, placed("c1", 2)), 9, &mut w);
        w.clear();
        // When the earlier one (offset 4, other time) is applied
        plan_order(&mut state, &envelope(id, 0, placed("c1", 2)), 4, &mut w);
        // Then the later one's customer row is deleted and the earlier one written
        assert_eq!(
            count(&w, |w| matches!(w, Write::DeleteCustomerOrder { .. })),
            1
        );
        assert_eq!(count(&w, |w| matches!(w, Write::CustomerOrder { .. })), 1);
        assert_eq!(state.placed.as_ref().unwrap().offset, 4);
    }

    #[test]
    fn timeline_detail_never_shows_the_payment_token() {
        let d = detail(&placed("c1", 1));
        assert!(!d.contains("tok_secret"), "{d}");
        assert_eq!(d, "2 line(s), total 150 EUR");
    }

    #[test]
    fn only_stock_levels_feed_the_stock_view() {
        let levels = StockEnvelope::new(
            "SKU-1",
            StockEvent::StockLevels(StockLevels {
                available: 7,
                reserved: 2,
                sold: 1,
                per_customer_limit: Some(2),
            }),
            None,
            Uuid::now_v7(),
        );
        let w = plan_stock(&levels, 41).unwrap();
        assert!(matches!(
            w,
            Write::StockLevels {
                available: 7,
                reserved: 2,
                sold: 1,
                stamp: 42,
                ..
            }
        ));
    }

    #[test]
    fn buckets() {
        assert_eq!(minute_of(125_000), 120_000);
        assert_eq!(hour_of(3_600_000 * 5 + 7), 3_600_000 * 5);
        assert_eq!(minute_of(-1), -60_000);
    }
}
