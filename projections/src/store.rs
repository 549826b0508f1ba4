//! CQL side of the views: the projectors' writes ([`Writer`]), the query API's reads
//! ([`Reader`]), and a full dump of the views for comparisons ([`dump_views`]).
//!
//! Every statement is prepared once, when the writer or reader is created. Writes to one
//! partition go out as one unlogged batch (atomic and isolated within the partition, no batch
//! log); batches of different partitions run concurrently.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, Row};
use scylla::DeserializeRow;
use uuid::Uuid;

use crate::error::{CqlContext, Error};
use crate::model::{hour_of, Line, OrderState, PartitionKey, Placed, StageColumn, Terminal, Write};
use crate::schema::VIEW_TABLES;
use crate::stock_stream::WriteNotices;

/// Most statements in one unlogged batch (bigger partitions' writes are split).
const MAX_BATCH_STATEMENTS: usize = 64;
/// Page size of the paged reads (timeline, sales, dumps).
const PAGE_SIZE: i32 = 500;

type Values = Box<dyn SerializeRow + Send + Sync>;

fn ts(ms: i64) -> CqlTimestamp {
    CqlTimestamp(ms)
}

/// Prepared write statements of every view, plus the reads the orders projector needs.
pub(crate) struct Writer {
    session: Arc<Session>,
    timeline: PreparedStatement,
    placed: PreparedStatement,
    line: PreparedStatement,
    delete_line: PreparedStatement,
    reserved: PreparedStatement,
    paid: PreparedStatement,
    declined: PreparedStatement,
    cancelled: PreparedStatement,
    refunded: PreparedStatement,
    terminal: PreparedStatement,
    customer: PreparedStatement,
    delete_customer: PreparedStatement,
    sale: PreparedStatement,
    delete_sale: PreparedStatement,
    sku_sale: PreparedStatement,
    delete_sku_sale: PreparedStatement,
    stock: PreparedStatement,
    read_state: PreparedStatement,
    read_lines: PreparedStatement,
    /// Tells readers in this process what was written (see `crate::stock_stream`).
    notices: WriteNotices,
}

async fn prepare(session: &Session, ks: &str, text: &str) -> Result<PreparedStatement, Error> {
    let text = text.replace("{ks}", ks);
    let mut statement = session
        .prepare(text.clone())
        .await
        .cql(&format!("preparing `{text}`"))?;
    statement.set_page_size(PAGE_SIZE);
    Ok(statement)
}

impl Writer {
    /// Prepares every write of the views in `keyspace` (which must be migrated).
    pub(crate) async fn new(session: Arc<Session>, keyspace: &str) -> Result<Self, Error> {
        let s = &session;
        let ks = keyspace;
        let stage = |column: &str| {
            format!("UPDATE {{ks}}.orders USING TIMESTAMP ? SET {column} = ? WHERE order_id = ?")
        };
        Ok(Self {
            timeline: prepare(s, ks, "INSERT INTO {ks}.orders (order_id, occurred_at, event_id, event_type, detail, event_offset) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?").await?,
            placed: prepare(s, ks, "UPDATE {ks}.orders USING TIMESTAMP ? SET customer_id = ?, currency = ?, total_minor = ?, line_count = ?, placed_at = ?, placed_offset = ? WHERE order_id = ?").await?,
            line: prepare(s, ks, "INSERT INTO {ks}.order_lines (order_id, line_index, sku, quantity, unit_price_minor) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?").await?,
            delete_line: prepare(s, ks, "DELETE FROM {ks}.order_lines USING TIMESTAMP ? WHERE order_id = ? AND line_index = ?").await?,
            reserved: prepare(s, ks, &stage("reserved_at")).await?,
            paid: prepare(s, ks, &stage("paid_at")).await?,
            declined: prepare(s, ks, &stage("declined_at")).await?,
            cancelled: prepare(s, ks, &stage("cancelled_at")).await?,
            refunded: prepare(s, ks, "UPDATE {ks}.orders USING TIMESTAMP ? SET refunded_at = ?, refunded_minor = ? WHERE order_id = ?").await?,
            terminal: prepare(s, ks, "UPDATE {ks}.orders USING TIMESTAMP ? SET terminal_status = ?, terminal_reason = ?, terminal_at = ?, terminal_offset = ? WHERE order_id = ?").await?,
            customer: prepare(s, ks, "INSERT INTO {ks}.orders_by_customer (customer_id, placed_at, order_id, currency, total_minor, line_count) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?").await?,
            delete_customer: prepare(s, ks, "DELETE FROM {ks}.orders_by_customer USING TIMESTAMP ? WHERE customer_id = ? AND placed_at = ? AND order_id = ?").await?,
            sale: prepare(s, ks, "INSERT INTO {ks}.sales_by_minute (hour, minute, order_id, currency, units, revenue_minor) VALUES (?, ?, ?, ?, ?, ?) USING TIMESTAMP ?").await?,
            delete_sale: prepare(s, ks, "DELETE FROM {ks}.sales_by_minute USING TIMESTAMP ? WHERE hour = ? AND minute = ? AND order_id = ?").await?,
            sku_sale: prepare(s, ks, "INSERT INTO {ks}.sales_by_sku_minute (sku, hour, minute, order_id, line_index, currency, units, revenue_minor) VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?").await?,
            delete_sku_sale: prepare(s, ks, "DELETE FROM {ks}.sales_by_sku_minute USING TIMESTAMP ? WHERE sku = ? AND hour = ? AND minute = ? AND order_id = ? AND line_index = ?").await?,
            stock: prepare(s, ks, "INSERT INTO {ks}.stock_by_sku (sku, available, reserved, sold, per_customer_limit, updated_at, event_offset) VALUES (?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?").await?,
            read_state: prepare(s, ks, "SELECT placed_offset, placed_at, customer_id, currency, total_minor, terminal_offset, terminal_status, terminal_at FROM {ks}.orders WHERE order_id = ? LIMIT 1").await?,
            read_lines: prepare(s, ks, "SELECT line_index, sku, quantity, unit_price_minor FROM {ks}.order_lines WHERE order_id = ?").await?,
            notices: WriteNotices::new(ks),
            session,
        })
    }

    /// The statement and bound values of one write.
    fn bind(&self, write: Write) -> (&PreparedStatement, Values) {
        match write {
            Write::Timeline {
                order_id,
                occurred_at,
                event_id,
                event_type,
                detail,
                offset,
                stamp,
            } => (
                &self.timeline,
                Box::new((
                    order_id,
                    ts(occurred_at),
                    event_id,
                    event_type,
                    detail,
                    offset,
                    stamp,
                )),
            ),
            Write::Placed {
                order_id,
                customer_id,
                currency,
                total_minor,
                line_count,
                placed_at,
                offset,
                stamp,
            } => (
                &self.placed,
                Box::new((
                    stamp,
                    customer_id,
                    currency,
                    total_minor,
                    line_count,
                    ts(placed_at),
                    offset,
                    order_id,
                )),
            ),
            Write::Line {
                order_id,
                line_index,
                line,
                stamp,
            } => (
                &self.line,
                Box::new((
                    order_id,
                    line_index,
                    line.sku,
                    line.quantity,
                    line.unit_price_minor,
                    stamp,
                )),
            ),
            Write::DeleteLine {
                order_id,
                line_index,
                stamp,
            } => (&self.delete_line, Box::new((stamp, order_id, line_index))),
            Write::Stage {
                order_id,
                column,
                at,
                stamp,
            } => {
                let statement = match column {
                    StageColumn::Reserved => &self.reserved,
                    StageColumn::Paid => &self.paid,
                    StageColumn::Declined => &self.declined,
                    StageColumn::Cancelled => &self.cancelled,
                };
                (statement, Box::new((stamp, ts(at), order_id)))
            }
            Write::Refunded {
                order_id,
                at,
                amount_minor,
                stamp,
            } => (
                &self.refunded,
                Box::new((stamp, ts(at), amount_minor, order_id)),
            ),
            Write::Terminal {
                order_id,
                status,
                reason,
                at,
                offset,
                stamp,
            } => (
                &self.terminal,
                Box::new((stamp, status, reason, ts(at), offset, order_id)),
            ),
            Write::CustomerOrder {
                customer_id,
                placed_at,
                order_id,
                currency,
                total_minor,
                line_count,
                stamp,
            } => (
                &self.customer,
                Box::new((
                    customer_id,
                    ts(placed_at),
                    order_id,
                    currency,
                    total_minor,
                    line_count,
                    stamp,
                )),
            ),
            Write::DeleteCustomerOrder {
                customer_id,
                placed_at,
                order_id,
                stamp,
            } => (
                &self.delete_customer,
                Box::new((stamp, customer_id, ts(placed_at), order_id)),
            ),
            Write::Sale {
                minute,
                order_id,
                currency,
                units,
                revenue_minor,
                stamp,
            } => (
                &self.sale,
                Box::new((
                    ts(hour_of(minute)),
                    ts(minute),
                    order_id,
                    currency,
                    units,
                    revenue_minor,
                    stamp,
                )),
            ),
            Write::DeleteSale {
                minute,
                order_id,
                stamp,
            } => (
                &self.delete_sale,
                Box::new((stamp, ts(hour_of(minute)), ts(minute), order_id)),
            ),
            Write::SkuSale {
                sku,
                minute,
                order_id,
                line_index,
                currency,
                units,
                revenue_minor,
                stamp,
            } => (
                &self.sku_sale,
                Box::new((
                    sku,
                    ts(hour_of(minute)),
                    ts(minute),
                    order_id,
                    line_index,
                    currency,
                    units,
                    revenue_minor,
                    stamp,
                )),
            ),
            Write::DeleteSkuSale {
                sku,
                minute,
                order_id,
                line_index,
                stamp,
            } => (
                &self.delete_sku_sale,
                Box::new((
                    stamp,
                    sku,
                    ts(hour_of(minute)),
                    ts(minute),
                    order_id,
                    line_index,
                )),
            ),
            Write::StockLevels {
                sku,
                available,
                reserved,
                sold,
                per_customer_limit,
                updated_at,
                offset,
                stamp,
            } => (
                &self.stock,
                Box::new((
                    sku,
                    available,
                    reserved,
                    sold,
                    per_customer_limit,
                    ts(updated_at),
                    offset,
                    stamp,
                )),
            ),
        }
    }

    /// Applies `writes`: one unlogged batch per partition (split past
    /// [`MAX_BATCH_STATEMENTS`]), `concurrency` batches in flight. Every write is idempotent,
    /// so a failed call can simply be repeated.
    pub(crate) async fn apply(&self, writes: Vec<Write>, concurrency: usize) -> Result<(), Error> {
        let written = self.notices.collect(&writes);
        let mut groups: HashMap<PartitionKey, Vec<Write>> = HashMap::new();
        for write in writes {
            groups.entry(write.partition()).or_default().push(write);
        }
        let mut chunks: Vec<Vec<Write>> = Vec::with_capacity(groups.len());
        for mut group in groups.into_values() {
            while group.len() > MAX_BATCH_STATEMENTS {
                let rest = group.split_off(MAX_BATCH_STATEMENTS);
                chunks.push(std::mem::replace(&mut group, rest));
            }
            chunks.push(group);
        }
        futures::stream::iter(chunks)
            .map(|chunk| self.apply_partition(chunk))
            .buffer_unordered(concurrency.max(1))
            .try_collect::<()>()
            .await?;
        self.notices.publish(written);
        Ok(())
    }

    async fn apply_partition(&self, mut writes: Vec<Write>) -> Result<(), Error> {
        if writes.len() == 1 {
            let (statement, values) = self.bind(writes.remove(0));
            self.session
                .execute_unpaged(statement, values)
                .await
                .cql("writing a view row")?;
            return Ok(());
        }
        let mut batch = Batch::new(BatchType::Unlogged);
        let mut values: Vec<Values> = Vec::with_capacity(writes.len());
        for write in writes {
            let (statement, value) = self.bind(write);
            batch.append_statement(statement.clone());
            values.push(value);
        }
        self.session
            .batch(&batch, values)
            .await
            .cql("writing a batch of view rows")?;
        Ok(())
    }

    /// What the views know of an order's placement and outcome (for planning its events).
    pub(crate) async fn load_state(&self, order_id: Uuid) -> Result<OrderState, Error> {
        type StateRow = (
            Option<i64>,
            Option<CqlTimestamp>,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<i64>,
            Option<String>,
            Option<CqlTimestamp>,
        );
        let rows = self
            .session
            .execute_unpaged(&self.read_state, (order_id,))
            .await
            .cql("reading an order's state")?
            .into_rows_result()
            .cql("reading an order's state")?;
        let Some(row) = rows
            .maybe_first_row::<StateRow>()
            .cql("reading an order's state")?
        else {
            return Ok(OrderState::default());
        };
        let (placed_offset, placed_at, customer_id, currency, total, t_offset, t_status, t_at) =
            row;
        let mut state = OrderState::default();
        if let (Some(offset), Some(at)) = (placed_offset, placed_at) {
            let lines = read_lines(&self.session, &self.read_lines, order_id).await?;
            state.placed = Some(Placed {
                offset,
                at_ms: at.0,
                customer_id: customer_id.unwrap_or_default(),
                currency: currency.unwrap_or_default(),
                total_minor: total.unwrap_or(0),
                lines,
            });
        }
        if let (Some(offset), Some(status), Some(at)) = (t_offset, t_status, t_at) {
            state.terminal = Some(Terminal {
                offset,
                confirmed: status == "confirmed",
                at_ms: at.0,
            });
        }
        Ok(state)
    }
}

/// The lines of an order, in line order (`statement` selects line_index, sku, quantity,
/// unit_price_minor by order_id; the writer and the reader each prepare it on their session).
async fn read_lines(
    session: &Session,
    statement: &PreparedStatement,
    order_id: Uuid,
) -> Result<Vec<Line>, Error> {
    session
        .execute_unpaged(statement, (order_id,))
        .await
        .cql("reading an order's lines")?
        .into_rows_result()
        .cql("reading an order's lines")?
        .rows::<(i32, Option<String>, Option<i32>, Option<i64>)>()
        .cql("reading an order's lines")?
        .map(|row| {
            row.map(|(_, sku, quantity, price)| Line {
                sku: sku.unwrap_or_default(),
                quantity: quantity.unwrap_or(0),
                unit_price_minor: price.unwrap_or(0),
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .cql("reading an order's lines")
}

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
            lines: prepare(s, ks, "SELECT line_index, sku, quantity, unit_price_minor FROM {ks}.order_lines WHERE order_id = ?").await?,
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

/// Key and value columns of each view table; dumps select both plus `writetime` of each value.
fn table_columns(table: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match table {
        "orders" => (
            &["order_id", "occurred_at", "event_id"],
            &[
                "event_type",
                "detail",
                "event_offset",
                "customer_id",
                "currency",
                "total_minor",
                "line_count",
                "placed_at",
                "placed_offset",
                "reserved_at",
                "paid_at",
                "declined_at",
                "terminal_status",
                "terminal_reason",
                "terminal_at",
                "terminal_offset",
                "cancelled_at",
                "refunded_at",
                "refunded_minor",
            ],
        ),
        "order_lines" => (
            &["order_id", "line_index"],
            &["sku", "quantity", "unit_price_minor"],
        ),
        "orders_by_customer" => (
            &["customer_id", "placed_at", "order_id"],
            &["currency", "total_minor", "line_count"],
        ),
        "stock_by_sku" => (
            &["sku"],
            &[
                "available",
                "reserved",
                "sold",
                "per_customer_limit",
                "updated_at",
                "event_offset",
            ],
        ),
        "sales_by_minute" => (
            &["hour", "minute", "order_id"],
            &["currency", "units", "revenue_minor"],
        ),
        "sales_by_sku_minute" => (
            &["sku", "hour", "minute", "order_id", "line_index"],
            &["currency", "units", "revenue_minor"],
        ),
        _ => (&[], &[]),
    }
}

/// Every row of every view table in `keyspace`, each rendered as one line of text with its
/// cells' write timestamps, sorted: two dumps are equal exactly when the views hold the same
/// cells. A full scan (paged): for tests and verification tools, not for serving.
pub async fn dump_views(
    session: &Session,
    keyspace: &str,
) -> Result<Vec<(String, Vec<String>)>, Error> {
    let mut out = Vec::new();
    for table in VIEW_TABLES {
        let (keys, values) = table_columns(table);
        let mut columns: Vec<String> = keys.iter().chain(values).map(|c| c.to_string()).collect();
        columns.extend(values.iter().map(|c| format!("writetime({c})")));
        let mut statement = scylla::statement::Statement::new(format!(
            "SELECT {} FROM {keyspace}.{table}",
            columns.join(", ")
        ));
        statement.set_page_size(PAGE_SIZE);
        let context = format!("dumping {keyspace}.{table}");
        let mut rows = session
            .query_iter(statement, &[])
            .await
            .cql(&context)?
            .rows_stream::<Row>()
            .cql(&context)?;
        let mut lines = Vec::new();
        while let Some(row) = rows.next().await {
            let row = row.cql(&context)?;
            let cells: Vec<String> = row
                .columns
                .iter()
                .zip(&columns)
                .map(|(value, name)| format!("{name}={value:?}"))
                .collect();
            lines.push(cells.join(" "));
        }
        lines.sort();
        out.push((table.to_string(), lines));
    }
    Ok(out)
}
