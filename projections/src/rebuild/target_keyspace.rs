//! What a replay reads and writes in its target keyspace besides the views: the
//! `replay_positions` record (how far every partition is in the views), and whether a
//! projection's views are already there.

use std::sync::Arc;

use chrono::Utc;
use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::CqlTimestamp;

use super::topic_reader::Positions;
use crate::error::{CqlContext, Error};
use crate::projector::ProjectorKind;

/// Writes of the record of one replay into a keyspace.
pub(super) struct PositionRecord {
    session: Arc<Session>,
    insert: PreparedStatement,
    /// The replay's `--from`, kept beside each position.
    base: String,
}

impl PositionRecord {
    /// Prepares the writes of the record in `keyspace`.
    pub(super) async fn prepare(
        session: Arc<Session>,
        keyspace: &str,
        base: String,
    ) -> Result<Self, Error> {
        let insert = session
            .prepare(format!(
                "INSERT INTO {keyspace}.replay_positions (topic, partition, next_offset, base, updated_at) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await
            .cql("preparing the replay record")?;
        Ok(Self {
            session,
            insert,
            base,
        })
    }

    /// Records that every event of `topic`/`partition` before `next` is in the views.
    pub(super) async fn write(&self, topic: &str, partition: i32, next: i64) -> Result<(), Error> {
        let now = CqlTimestamp(Utc::now().timestamp_millis());
        // Stamped with the position itself: the furthest position wins whatever the order in
        // which writes land, and every stamp lies in the past (offsets are tiny as microseconds).
        self.session
            .execute_unpaged(
                &self.insert,
                (topic, partition, next, self.base.as_str(), now, next),
            )
            .await
            .cql("recording the replay position")?;
        Ok(())
    }
}

/// The record of earlier replays into `keyspace`: next offset per (topic, partition).
pub(super) async fn read_record(session: &Session, keyspace: &str) -> Result<Positions, Error> {
    let context = "reading the replay record";
    let rows = session
        .query_unpaged(
            format!("SELECT topic, partition, next_offset FROM {keyspace}.replay_positions"),
            &[],
        )
        .await
        .cql(context)?
        .into_rows_result()
        .cql(context)?;
    rows.rows::<(String, i32, i64)>()
        .cql(context)?
        .map(|row| row.map(|(topic, partition, next)| ((topic, partition), next)))
        .collect::<Result<_, _>>()
        .cql(context)
}

/// Whether `keyspace` holds any row of the projection's main view.
pub(super) async fn holds_views(
    session: &Session,
    keyspace: &str,
    kind: ProjectorKind,
) -> Result<bool, Error> {
    let table = match kind {
        ProjectorKind::Orders => "orders",
        ProjectorKind::Stock => "stock_by_sku",
    };
    let context = format!("reading {keyspace}.{table}");
    let rows = session
        .query_unpaged(format!("SELECT * FROM {keyspace}.{table} LIMIT 1"), &[])
        .await
        .cql(&context)?
        .into_rows_result()
        .cql(&context)?;
    Ok(rows.rows_num() > 0)
}
