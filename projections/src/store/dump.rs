//! A full dump of the views ([`dump_views`]): every cell with its write timestamp, for
//! comparing two keyspaces (tests, verification), not for serving.

use futures::StreamExt;
use scylla::client::session::Session;
use scylla::value::Row;

use super::PAGE_SIZE;
use crate::error::{CqlContext, Error};
use crate::schema::{view_columns, VIEW_TABLES};

/// Every row of every view table in `keyspace`, each rendered as one line of text with its
/// cells' write timestamps, sorted: two dumps are equal exactly when the views hold the same
/// cells. A full scan (paged): for tests and verification tools, not for serving.
pub async fn dump_views(
    session: &Session,
    keyspace: &str,
) -> Result<Vec<(String, Vec<String>)>, Error> {
    let mut out = Vec::new();
    for table in VIEW_TABLES {
        let (keys, values) = view_columns(table);
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
