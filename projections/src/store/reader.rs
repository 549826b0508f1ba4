//! The query API's reads: [`Reader`] prepares them once and answers with the records below
//! (an order with its lines and timeline, its status, a customer's orders, a SKU's stock,
//! sales rows).

use std::sync::Arc;

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use scylla::DeserializeRow;
use uuid::Uuid;

use super::{prepare, read_lines, ts, READ_LINES};
use crate::error::{CqlContext, Error};
use crate::model::{hour_of, Line};

/// An order as the query API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OrderRecord {
    pub(crate) customer_id: Option<String>,
    pub(crate) currency: Option<String>,
    pub(crate) total_minor: Option<i64>,
    pub(crate) placed_at: Option<i64>,
    pub(crate) reserved_at: Option<i64>,
    pub(crate) paid_at: Option<i64>,
    pub(crate) declined_at: Option<i64>,
    pub(crate) terminal_status: Option<String>,
    pub(crate) terminal_reason: Option<String>,
    pub(crate) terminal_at: Option<i64>,
    pub(crate) cancelled_at: Option<i64>,
    pub(crate) refunded_at: Option<i64>,
    pub(crate) refunded_minor: Option<i64>,
    pub(crate) lines: Vec<Line>,
    pub(crate) timeline: Vec<TimelineEntry>,
}

/// One timeline row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimelineEntry {
    pub(crate) occurred_at: i64,
    pub(crate) event_id: Uuid,
    pub(crate) event_type: String,
    pub(crate) detail: String,
}

/// The status columns of an order (what a long-poll watches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusRecord {
    pub(crate) placed: bool,
    pub(crate) reserved: bool,
    pub(crate) paid: bool,
    pub(crate) terminal_status: Option<String>,
    pub(crate) terminal_reason: Option<String>,
}

/// One row of `orders_by_customer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CustomerOrderRecord {
    pub(crate) placed_at: i64,
    pub(crate) order_id: Uuid,
    pub(crate) currency: Option<String>,
    pub(crate) total_minor: Option<i64>,
    pub(crate) line_count: Option<i32>,
}

/// One row of `stock_by_sku`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StockRecord {
    pub(crate) available: i64,
    pub(crate) reserved: i64,
    pub(crate) sold: i64,
    pub(crate) per_customer_limit: Option<i32>,
    pub(crate) updated_at: Option<i64>,
    /// Offset on the `stock` topic of the snapshot the row holds (grows per SKU).
    pub(crate) offset: Option<i64>,
}

/// One sales row (per order, or per order line for a SKU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SaleRecord {
    pub(crate) minute: i64,
    pub(crate) order_id: Uuid,
    pub(crate) currency: String,
    pub(crate) units: i64,
    pub(crate) revenue_minor: i64,
}

#[derive(DeserializeRow)]
struct OrderRow {
    occurred_at: Option<CqlTimestamp>,
    event_id: Option<Uuid>,
    event_type: Option<String>,
    detail: Option<String>,
    customer_id: Option<String>,
    currency: Option<String>,
    total_minor: Option<i64>,
    placed_at: Option<CqlTimestamp>,
    reserved_at: Option<CqlTimestamp>,
    paid_at: Option<CqlTimestamp>,
    declined_at: Option<CqlTimestamp>,
    terminal_status: Option<String>,
    terminal_reason: Option<String>,
    terminal_at: Option<CqlTimestamp>,
    cancelled_at: Option<CqlTimestamp>,
    refunded_at: Option<CqlTimestamp>,
    refunded_minor: Option<i64>,
}

/// Most timeline rows one order answer shows (an order has a dozen events; this bounds a
/// pathological partition).
const MAX_TIMELINE: usize = 1000;

/// Prepared reads of the query API.
pub(crate) struct Reader {
    session: Arc<Session>,
    order: PreparedStatement,
    lines: PreparedStatement,
    status: PreparedStatement,
    customer_first: PreparedStatement,
    customer_after: PreparedStatement,
    stock: PreparedStatement,
    sales: PreparedStatement,
    sku_sales: PreparedStatement,
}

fn ms(t: Option<CqlTimestamp>) -> Option<i64> {
    t.map(|t| t.0)
}

impl Reader {
    /// Prepares every read of the views in `keyspace` (which must be migrated).
    pub(crate) async fn new(session: Arc<Session>, keyspace: &str) -> Result<Self, Error> {
        let s = &session;
        let ks = keyspace;
        Ok(Self {
            order: prepare(s, ks, "SELECT occurred_at, event_id, event_type, detail, customer_id, currency, total_minor, placed_at, reserved_at, paid_at, declined_at, terminal_status, terminal_reason, terminal_at, cancelled_at, refunded_at, refunded_minor FROM {ks}.orders WHERE order_id = ?").await?,
            lines: prepare(s, ks, READ_LINES).await?,
            status: prepare(s, ks, "SELECT placed_at, reserved_at, paid_at, terminal_status, terminal_reason FROM {ks}.orders WHERE order_id = ? LIMIT 1").await?,
            customer_first: prepare(s, ks, "SELECT placed_at, order_id, currency, total_minor, line_count FROM {ks}.orders_by_customer WHERE customer_id = ? LIMIT ?").await?,
            customer_after: prepare(s, ks, "SELECT placed_at, order_id, currency, total_minor, line_count FROM {ks}.orders_by_customer WHERE customer_id = ? AND (placed_at, order_id) < (?, ?) LIMIT ?").await?,
            stock: prepare(s, ks, "SELECT available, reserved, sold, per_customer_limit, updated_at, event_offset FROM {ks}.stock_by_sku WHERE sku = ?").await?,
            sales: prepare(s, ks, "SELECT minute, order_id, currency, units, revenue_minor FROM {ks}.sales_by_minute WHERE hour = ? AND minute >= ? AND minute < ?").await?,
            sku_sales: prepare(s, ks, "SELECT minute, order_id, currency, units, revenue_minor FROM {ks}.sales_by_sku_minute WHERE sku = ? AND hour = ? AND minute >= ? AND minute < ?").await?,
            session,
        })
    }

    /// The order with its lines and timeline, or `None` when the views have no event of it.
    pub(crate) async fn order(&self, order_id: Uuid) -> Result<Option<OrderRecord>, Error> {
        let context = "reading an order";
        let mut rows = self
            .session
            .execute_iter(self.order.clone(), (order_id,))
            .await
            .cql(context)?
            .rows_stream::<OrderRow>()
            .cql(context)?;
        let mut record: Option<OrderRecord> = None;
        while let Some(row) = rows.next().await {
            let row = row.cql(context)?;
            let record = record.get_or_insert_with(|| OrderRecord {
                customer_id: row.customer_id.clone(),
                currency: row.currency.clone(),
                total_minor: row.total_minor,
                placed_at: ms(row.placed_at),
                reserved_at: ms(row.reserved_at),
                paid_at: ms(row.paid_at),
                declined_at: ms(row.declined_at),
                terminal_status: row.terminal_status.clone(),
                terminal_reason: row.terminal_reason.clone(),
                terminal_at: ms(row.terminal_at),
                cancelled_at: ms(row.cancelled_at),
                refunded_at: ms(row.refunded_at),
                refunded_minor: row.refunded_minor,
                lines: Vec::new(),
                timeline: Vec::new(),
            });
            if let (Some(at), Some(event_id)) = (row.occurred_at, row.event_id) {
                record.timeline.push(TimelineEntry {
                    occurred_at: at.0,
                    event_id,
                    event_type: row.event_type.unwrap_or_default(),
                    detail: row.detail.unwrap_or_default(),
                });
            }
            if record.timeline.len() >= MAX_TIMELINE {
                break;
            }
        }
        let Some(mut record) = record else {
            return Ok(None);
        };
        record.lines = read_lines(&self.session, &self.lines, order_id).await?;
        Ok(Some(record))
    }

    /// The status columns of an order, or `None` when the views have no event of it.
    pub(crate) async fn status(&self, order_id: Uuid) -> Result<Option<StatusRecord>, Error> {
        let context = "reading an order's status";
        let rows = self
            .session
            .execute_unpaged(&self.status, (order_id,))
            .await
            .cql(context)?
            .into_rows_result()
            .cql(context)?;
        let row = rows
            .maybe_first_row::<(
                Option<CqlTimestamp>,
                Option<CqlTimestamp>,
                Option<CqlTimestamp>,
                Option<String>,
                Option<String>,
            )>()
            .cql(context)?;
        Ok(
            row.map(|(placed, reserved, paid, terminal, reason)| StatusRecord {
                placed: placed.is_some(),
                reserved: reserved.is_some(),
                paid: paid.is_some(),
                terminal_status: terminal,
                terminal_reason: reason,
            }),
        )
    }

    /// Up to `limit` orders of a customer, newest first, strictly after `after`
    /// (`(placed_at, order_id)` of the last one seen).
    pub(crate) async fn customer_orders(
        &self,
        customer_id: &str,
        after: Option<(i64, Uuid)>,
        limit: i32,
    ) -> Result<Vec<CustomerOrderRecord>, Error> {
        let context = "reading a customer's orders";
        type CustomerRow = (CqlTimestamp, Uuid, Option<String>, Option<i64>, Option<i32>);
        let result = match after {
            None => {
                self.session
                    .execute_unpaged(&self.customer_first, (customer_id, limit))
                    .await
            }
            Some((at, id)) => {
                self.session
                    .execute_unpaged(&self.customer_after, (customer_id, ts(at), id, limit))
                    .await
            }
        };
        result
            .cql(context)?
            .into_rows_result()
            .cql(context)?
            .rows::<CustomerRow>()
            .cql(context)?
            .map(|row| {
                row.map(|(placed_at, order_id, currency, total_minor, line_count)| {
                    CustomerOrderRecord {
                        placed_at: placed_at.0,
                        order_id,
                        currency,
                        total_minor,
                        line_count,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .cql(context)
    }

    /// The stock view of a SKU.
    pub(crate) async fn stock(&self, sku: &str) -> Result<Option<StockRecord>, Error> {
        let context = "reading stock";
        let rows = self
            .session
            .execute_unpaged(&self.stock, (sku,))
            .await
            .cql(context)?
            .into_rows_result()
            .cql(context)?;
        let row = rows
            .maybe_first_row::<(
                Option<i64>,
                Option<i64>,
                Option<i64>,
                Option<i32>,
                Option<CqlTimestamp>,
                Option<i64>,
            )>()
            .cql(context)?;
        Ok(row.map(
            |(available, reserved, sold, limit, updated_at, offset)| StockRecord {
                available: available.unwrap_or(0),
                reserved: reserved.unwrap_or(0),
                sold: sold.unwrap_or(0),
                per_customer_limit: limit,
                updated_at: ms(updated_at),
                offset,
            },
        ))
    }

    /// Sales rows with `from <= minute < to` (milliseconds), for every SKU or one.
    pub(crate) async fn sales(
        &self,
        from: i64,
        to: i64,
        sku: Option<&str>,
    ) -> Result<Vec<SaleRecord>, Error> {
        let context = "reading sales";
        type SaleRow = (CqlTimestamp, Uuid, Option<String>, Option<i64>, Option<i64>);
        let mut out = Vec::new();
        let mut hour = hour_of(from);
        while hour < to {
            let pager = match sku {
                None => {
                    self.session
                        .execute_iter(self.sales.clone(), (ts(hour), ts(from), ts(to)))
                        .await
                }
                Some(sku) => {
                    self.session
                        .execute_iter(self.sku_sales.clone(), (sku, ts(hour), ts(from), ts(to)))
                        .await
                }
            };
            let mut rows = pager.cql(context)?.rows_stream::<SaleRow>().cql(context)?;
            while let Some(row) = rows.next().await {
                let (minute, order_id, currency, units, revenue) = row.cql(context)?;
                out.push(SaleRecord {
                    minute: minute.0,
                    order_id,
                    currency: currency.unwrap_or_default(),
                    units: units.unwrap_or(0),
                    revenue_minor: revenue.unwrap_or(0),
                });
            }
            hour += 3_600_000;
        }
        Ok(out)
    }
}
