//! The projectors' writes: every view's write statements prepared once ([`Writer`]), a batch of
//! [`Write`]s bound and sent as one unlogged batch per partition, and the read of an order's
//! state the orders projector plans with.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use super::{prepare, read_lines, ts, READ_LINES};
use crate::error::{CqlContext, Error};
use crate::model::{hour_of, OrderState, PartitionKey, Placed, StageColumn, Terminal, Write};
use crate::stock_stream::WriteNotices;

/// Most statements in one unlogged batch (bigger partitions' writes are split).
const MAX_BATCH_STATEMENTS: usize = 64;

type Values = Box<dyn SerializeRow + Send + Sync>;

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
            read_lines: prepare(s, ks, READ_LINES).await?,
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
