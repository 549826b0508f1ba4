//! CQL side of the views: the projectors' writes ([`Writer`]), the query API's reads
//! ([`Reader`]), and a full dump of the views for comparisons ([`dump_views`]).
//!
//! Every statement is prepared once, when the writer or reader is created. Writes to one
//! partition go out as one unlogged batch (atomic and isolated within the partition, no batch
//! log); batches of different partitions run concurrently.
//!
//! Here: what the writer and the reader share (preparing, the order lines read). Beside it:
//! `writer` ([`Writer`]), `reader` ([`Reader`] and the records it answers) and `dump`
//! ([`dump_views`]).

mod dump;
mod reader;
mod writer;

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;
use uuid::Uuid;

use crate::error::{CqlContext, Error};
use crate::model::Line;

pub use dump::dump_views;
pub(crate) use reader::{OrderRecord, Reader, SaleRecord, StatusRecord, StockRecord};
pub(crate) use writer::Writer;

/// Page size of the paged reads (timeline, sales, dumps).
const PAGE_SIZE: i32 = 500;

fn ts(ms: i64) -> CqlTimestamp {
    CqlTimestamp(ms)
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

/// The read of an order's lines that [`read_lines`] runs; the writer and the reader each
/// prepare it on their session.
const READ_LINES: &str =
    "SELECT line_index, sku, quantity, unit_price_minor FROM {ks}.order_lines WHERE order_id = ?";

/// The lines of an order, in line order (`statement` is [`READ_LINES`], prepared).
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
