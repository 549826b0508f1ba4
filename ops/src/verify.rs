//! `orderpipe verify`: audits the invariants of DESIGN.md by reading the topics (read_committed),
//! independently of the stages' own state. The same [`audit`] backs the end-to-end tests'
//! assertions, so the tool operators run after an incident is the one the tests trust.
//!
//! What is checked, per order placed in the window (`--from` / `--to` on `order_placed` time):
//! - exactly one terminal event (`order_confirmed`, `order_rejected`, `order_cancelled`; repeats
//!   with the same `event_id` count once); none yet is "in flight" while younger than `--settle`,
//!   a violation after;
//! - a rejected or cancelled order holds nothing: every reserved line has a `release_requested`;
//! - at most one settled charge (distinct charge ids); a rejected or cancelled order that was
//!   charged has a `refunded`;
//! - exactly one customer notification per terminal order, each delivered or failed (only when
//!   the notifications topic is in use);
//!
//! - with `--views KEYSPACE`: the order's status in the views (read by the query API's own
//!   handler) is the one its events give (first terminal outcome, else the furthest stage);
//!   orders still in flight are skipped, as they may move between the two reads;
//!
//! and per SKU, over all time: confirmed units never exceed the units ever offered (every `set`
//! quantity plus positive deltas: an upper bound, so a violation is a certain oversell), the
//! stock stage's last `stock_levels.sold` equals the confirmed units, and nothing stays reserved
//! once no order is in flight; with `--views`, the stock view equals the stock stage's last
//! `stock_levels` (available, reserved, sold). The views follow the topics within the projectors'
//! lag: check them once `orderpipe lag` shows the projectors caught up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use orderpipe_schemas::{
    NotificationEnvelope, NotificationEvent, NotificationKind, OrderEnvelope, OrderEvent,
    StockAdjustment, StockEnvelope, StockEvent, StockLevels, Topics,
};
use rdkafka::Message;
use serde::Serialize;
use uuid::Uuid;

mod views;

pub use views::{audit_views, read_views, Views};

/// Everything the audit needs, read from the three topics.
#[derive(Debug, Default)]
pub struct History {
    /// Events of each order, in topic order (one partition per order).
    pub orders: HashMap<Uuid, Vec<OrderEnvelope>>,
    /// Events of each SKU on the stock topic, in topic order.
    pub stock: BTreeMap<String, Vec<StockEvent>>,
    /// Notification events per order.
    pub notifications: HashMap<Uuid, Vec<NotificationEnvelope>>,
    /// Records that did not decode (topic, partition, offset, reason): reported, never skipped silently.
    pub undecodable: Vec<String>,
}

/// Which orders to audit, and when a missing terminal state stops being "in flight".
#[derive(Debug, Clone)]
pub struct Window {
    /// Only orders placed at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only orders placed before this time.
    pub to: Option<DateTime<Utc>>,
    /// An order placed less than this long before `now` may still be on its way.
    pub settle: Duration,
    /// The audit's notion of now.
    pub now: DateTime<Utc>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            from: None,
            to: None,
            settle: Duration::from_secs(60),
            now: Utc::now(),
        }
    }
}

/// One broken invariant, with what it involves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// Which check (`terminal`, `release`, `charge`, `refund`, `notification`, `oversell`,
    /// `stock_levels`, `undecodable`, `view_order`, `view_stock`).
    pub check: &'static str,
    /// The order, when the violation is about one.
    pub order_id: Option<Uuid>,
    /// The SKU, when the violation is about one.
    pub sku: Option<String>,
    /// What is wrong, in words.
    pub detail: String,
}

/// Counts of what was audited, and the violations.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Orders placed in the window.
    pub orders: usize,
    /// ... of which confirmed.
    pub confirmed: usize,
    /// ... rejected.
    pub rejected: usize,
    /// ... cancelled.
    pub cancelled: usize,
    /// ... still without a terminal state but younger than the settle time.
    pub in_flight: usize,
    /// SKUs seen on the stock topic.
    pub skus: usize,
    /// Whether the notifications topic held anything (its checks run only then).
    pub notifications_checked: bool,
    /// The keyspace whose views were compared with the topics (`--views`), if any.
    pub views_checked: Option<String>,
    /// Every broken invariant.
    pub violations: Vec<Violation>,
}

impl Report {
    /// No invariant broken.
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Violations per check, for the summary table.
    pub fn counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts: BTreeMap<&'static str, usize> = CHECKS.iter().map(|c| (*c, 0)).collect();
        for v in &self.violations {
            *counts.entry(v.check).or_default() += 1;
        }
        counts
    }
}

/// Every check's name, in the order the summary lists them.
pub const CHECKS: [&str; 10] = [
    "terminal",
    "release",
    "charge",
    "refund",
    "notification",
    "oversell",
    "stock_levels",
    "undecodable",
    "view_order",
    "view_stock",
];

fn violation(
    check: &'static str,
    order_id: Option<Uuid>,
    sku: Option<&str>,
    detail: String,
) -> Violation {
    Violation {
        check,
        order_id,
        sku: sku.map(str::to_owned),
        detail,
    }
}

/// Audits `history`: pure, so tests can feed it histories they built.
pub fn audit(history: &History, window: &Window) -> Report {
    let mut report = Report::default();
    for reason in &history.undecodable {
        report
            .violations
            .push(violation("undecodable", None, None, reason.clone()));
    }
    report.notifications_checked = !history.notifications.is_empty();
    let mut confirmed_units: BTreeMap<String, u64> = BTreeMap::new();
    let mut any_in_flight = false;

    for (order_id, events) in &history.orders {
        let Some(placed) = events.iter().find_map(|e| match &e.event {
            OrderEvent::OrderPlaced(p) => Some((e.occurred_at, p)),
            _ => None,
        }) else {
            continue;
        };
        let (placed_at, placed) = placed;
        let in_window = window.from.is_none_or(|from| placed_at >= from)
            && window.to.is_none_or(|to| placed_at < to);
        let terminals = distinct(
            events
                .iter()
                .filter(|e| e.event.terminal_status().is_some()),
        );
        let confirmed = terminals
            .iter()
            .any(|e| matches!(e.event, OrderEvent::OrderConfirmed(_)));
        if confirmed {
            for line in &placed.lines {
                *confirmed_units.entry(line.sku.clone()).or_default() += u64::from(line.quantity);
            }
        }
        let young = window
            .now
            .signed_duration_since(placed_at)
            .to_std()
            .unwrap_or_default()
            < window.settle;
        if terminals.is_empty() && young {
            any_in_flight = true;
        }
        if !in_window {
            continue;
        }
        report.orders += 1;
        let id = Some(*order_id);
        match terminals.as_slice() {
            [] if young => report.in_flight += 1,
            [] => report.violations.push(violation(
                "terminal",
                id,
                None,
                format!(
                    "no terminal event {}s after it was placed",
                    window.settle.as_secs()
                ),
            )),
            [only] => match only.event {
                OrderEvent::OrderConfirmed(_) => report.confirmed += 1,
                OrderEvent::OrderRejected(_) => report.rejected += 1,
                _ => report.cancelled += 1,
            },
            many => report.violations.push(violation(
                "terminal",
                id,
                None,
                format!(
                    "{} terminal events: {}",
                    many.len(),
                    many.iter()
                        .map(|e| e.event_type())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }

        let charges: BTreeSet<&str> = events
            .iter()
            .filter_map(|e| match &e.event {
                OrderEvent::PaymentSettled(s) => Some(s.charge_id.as_str()),
                _ => None,
            })
            .collect();
        if charges.len() > 1 {
            report.violations.push(violation(
                "charge",
                id,
                None,
                format!("{} distinct charges: {charges:?}", charges.len()),
            ));
        }
        let ended_unconfirmed = !terminals.is_empty() && !confirmed;
        if ended_unconfirmed {
            let refunded = events
                .iter()
                .any(|e| matches!(e.event, OrderEvent::Refunded(_)));
            if !charges.is_empty() && !refunded {
                report.violations.push(violation(
                    "refund",
                    id,
                    None,
                    "charged, not confirmed, never refunded".into(),
                ));
            }
            let released: BTreeSet<u32> = history
                .stock
                .values()
                .flatten()
                .filter_map(|e| match e {
                    StockEvent::ReleaseRequested(r) if r.order_id == *order_id => {
                        Some(r.line_index)
                    }
                    _ => None,
                })
                .collect();
            for e in events {
                if let OrderEvent::StockLineReserved(r) = &e.event {
                    if !released.contains(&r.line_index) {
                        report.violations.push(violation(
                            "release",
                            id,
                            Some(&r.sku),
                            format!("line {} reserved and never released", r.line_index),
                        ));
                    }
                }
            }
        }
        if report.notifications_checked && !terminals.is_empty() {
            check_notification(history, *order_id, &mut report);
        }
    }

    report.skus = history.stock.len();
    for (sku, events) in &history.stock {
        let offered: u64 = events
            .iter()
            .map(|e| match e {
                StockEvent::StockAdjusted(a) => match a.adjustment {
                    StockAdjustment::Set { quantity } => u64::from(quantity),
                    StockAdjustment::Delta { delta } => delta.max(0) as u64,
                },
                _ => 0,
            })
            .sum();
        let confirmed = confirmed_units.get(sku).copied().unwrap_or(0);
        if confirmed > offered {
            report.violations.push(violation(
                "oversell",
                None,
                Some(sku),
                format!("{confirmed} units confirmed, at most {offered} ever offered"),
            ));
        }
        let last: Option<&StockLevels> = events.iter().rev().find_map(|e| match e {
            StockEvent::StockLevels(l) => Some(l),
            _ => None,
        });
        if let (Some(levels), false) = (last, any_in_flight) {
            if levels.sold != confirmed {
                report.violations.push(violation(
                    "stock_levels",
                    None,
                    Some(sku),
                    format!(
                        "stock stage says {} sold, orders confirm {confirmed}",
                        levels.sold
                    ),
                ));
            }
            if levels.reserved != 0 {
                report.violations.push(violation(
                    "stock_levels",
                    None,
                    Some(sku),
                    format!(
                        "{} units still reserved with no order in flight",
                        levels.reserved
                    ),
                ));
            }
        }
    }
    for sku in confirmed_units
        .keys()
        .filter(|sku| !history.stock.contains_key(*sku))
    {
        report.violations.push(violation(
            "oversell",
            None,
            Some(sku),
            "units confirmed for a SKU never stocked".into(),
        ));
    }
    report
        .violations
        .sort_by(|a, b| (a.check, &a.sku, a.order_id).cmp(&(b.check, &b.sku, b.order_id)));
    report
}

/// One notification of the order's outcome was requested, and it was delivered or given up on.
fn check_notification(history: &History, order_id: Uuid, report: &mut Report) {
    let events = history
        .notifications
        .get(&order_id)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let requests = distinct(events.iter().filter(|e| {
        matches!(&e.event, NotificationEvent::NotificationRequested(r)
            if matches!(r.kind, NotificationKind::OrderConfirmed | NotificationKind::OrderRejected | NotificationKind::OrderCancelled))
    }));
    let id = Some(order_id);
    if requests.len() != 1 {
        report.violations.push(violation(
            "notification",
            id,
            None,
            format!("{} outcome notifications requested", requests.len()),
        ));
        return;
    }
    let request_id = requests[0].event_id;
    let outcome = events.iter().any(|e| match &e.event {
        NotificationEvent::NotificationSent(s) => s.request_id == request_id,
        NotificationEvent::NotificationFailed(f) => f.request_id == request_id,
        _ => false,
    });
    if !outcome {
        report.violations.push(violation(
            "notification",
            id,
            None,
            "requested, neither sent nor failed".into(),
        ));
    }
}

/// Events with distinct `event_id`s (at-least-once repeats count once).
fn distinct<'a, E: orderpipe_schemas::Envelope + 'a>(
    events: impl Iterator<Item = &'a E>,
) -> Vec<&'a E> {
    let mut seen = BTreeSet::new();
    events.filter(|e| seen.insert(e.event_id())).collect()
}

/// Reads the orders, stock and notifications topics (read_committed) from the beginning up to
/// their end offsets at the time of the call. Fails when that end is not reached within
/// `within` (e.g. a transaction left open holds the last stable offset back).
/// `options` are the operator's Kafka client options (`--kafka-option`).
pub fn read_history(
    bootstrap: &str,
    options: &[(String, String)],
    topics: &Topics,
    within: Duration,
) -> anyhow::Result<History> {
    let mut history = History::default();
    let read = [
        topics.orders.as_str(),
        topics.stock.as_str(),
        topics.notifications.as_str(),
    ];
    crate::topic_reader::read_to_end(
        bootstrap,
        options,
        "orderpipe-verify",
        &read,
        within,
        |message| {
            let payload = message.payload().unwrap_or_default();
            let place = || {
                format!(
                    "{}/{}@{}",
                    message.topic(),
                    message.partition(),
                    message.offset()
                )
            };
            if message.topic() == topics.orders {
                match OrderEnvelope::decode(payload) {
                    Ok(e) => history.orders.entry(e.order_id).or_default().push(e),
                    Err(err) => history.undecodable.push(format!("{}: {err}", place())),
                }
            } else if message.topic() == topics.stock {
                match StockEnvelope::decode(payload) {
                    Ok(e) => history
                        .stock
                        .entry(e.sku.clone())
                        .or_default()
                        .push(e.event),
                    Err(err) => history.undecodable.push(format!("{}: {err}", place())),
                }
            } else {
                match NotificationEnvelope::decode(payload) {
                    Ok(e) => history.notifications.entry(e.order_id).or_default().push(e),
                    Err(err) => history.undecodable.push(format!("{}: {err}", place())),
                }
            }
        },
    )?;
    Ok(history)
}

/// The human summary: one line per check, then each violation.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "orders {} (confirmed {}, rejected {}, cancelled {}, in flight {}), SKUs {}{}{}\n\n{:<14} violations\n",
        report.orders,
        report.confirmed,
        report.rejected,
        report.cancelled,
        report.in_flight,
        report.skus,
        if report.notifications_checked { "" } else { ", notifications not in use (not checked)" },
        report.views_checked.as_ref().map_or(", views not checked (no --views)".to_string(), |k| format!(", views of {k} checked")),
        "check"
    );
    for (check, count) in report.counts() {
        out.push_str(&format!("{check:<14} {count}\n"));
    }
    for v in &report.violations {
        let subject = match (&v.order_id, &v.sku) {
            (Some(order), Some(sku)) => format!("order {order} sku {sku}"),
            (Some(order), None) => format!("order {order}"),
            (None, Some(sku)) => format!("sku {sku}"),
            (None, None) => String::new(),
        };
        out.push_str(&format!("\n{}: {subject}: {}", v.check, v.detail));
    }
    out.push_str(if report.ok() {
        "\n\nOK: every invariant holds\n"
    } else {
        "\n\nFAILED: invariants broken\n"
    });
    out
}
