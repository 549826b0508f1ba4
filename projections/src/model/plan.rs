//! Planning: which writes one event of `orders` or `stock` becomes, given what is known of its
//! order ([`OrderState`]), and with which write timestamps. Pure: no IO.

use orderpipe_schemas::{OrderEnvelope, OrderEvent, StockEnvelope, StockEvent};
use serde::Serialize;
use uuid::Uuid;

use super::{
    first_wins, latest_wins, minute_of, Line, OrderState, Placed, StageColumn, Terminal, Write,
};

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

/// An irregular sequence of events that planning noticed and tolerated (the caller counts it:
/// `orderpipe_projection_notes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anomaly {
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
) -> Option<Anomaly> {
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
                return Some(Anomaly::DuplicatePlacement);
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
            let status = envelope.event.terminal_status().unwrap_or("rejected");
            if state.terminal.as_ref().is_some_and(|t| t.offset < offset) {
                return Some(Anomaly::LateTerminal);
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
            let mut anomaly = None;
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
                    None => anomaly = Some(Anomaly::ConfirmedWithoutPlacement),
                }
            }
            state.terminal = Some(Terminal {
                offset,
                confirmed,
                at_ms: at,
            });
            anomaly
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
