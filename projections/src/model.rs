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
//!
//! Here: the write timestamps and the views' types ([`Status`], [`Write`], [`OrderState`]);
//! `plan` turns one event into its writes.

mod plan;
#[cfg(test)]
mod tests;

pub(crate) use plan::{needs_state, plan_order, plan_stock, Anomaly};
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
