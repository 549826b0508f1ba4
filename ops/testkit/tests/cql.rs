//! Against the real CQL server (testbed: Apache Cassandra 5.0; or ScyllaDB via
//! SCYLLA_NODES): what the projections rely on works through the `scylla` driver.
//! Every statement here is valid on ScyllaDB and on Cassandra alike.

use orderpipe_testkit::cql::{session, TestKeyspace};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::response::query_result::QueryResult;
use scylla::response::PagingState;
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Statement;
use scylla::value::{Counter, CqlTimestamp, CqlValue, Row};
use std::ops::ControlFlow;
use std::sync::Arc;
use tokio::task::JoinSet;
use uuid::Uuid;

/// The `[applied]` column of a conditional statement's result.
fn applied(result: QueryResult) -> anyhow::Result<bool> {
    let rows = result.into_rows_result()?;
    let row: Row = rows.first_row()?;
    match row.columns.first() {
        Some(Some(CqlValue::Boolean(b))) => Ok(*b),
        other => anyhow::bail!("no [applied] column: {other:?}"),
    }
}

/// The racers (indexes of `results`) whose conditional statement was applied.
fn winners(results: Vec<QueryResult>) -> anyhow::Result<Vec<i32>> {
    let mut winners = Vec::new();
    for (w, result) in (0..).zip(results) {
        if applied(result)? {
            winners.push(w);
        }
    }
    Ok(winners)
}

/// Creates table `name` in `ks` with `columns` (what CREATE TABLE's parentheses hold); its
/// qualified name.
async fn create_table(ks: &TestKeyspace, name: &str, columns: &str) -> anyhow::Result<String> {
    let table = ks.table(name);
    ks.session()
        .query_unpaged(format!("CREATE TABLE {table} ({columns})"), &[])
        .await?;
    Ok(table)
}

/// The one row `query` selects.
async fn single_row<R>(s: &Session, query: String) -> anyhow::Result<R>
where
    R: for<'frame> DeserializeRow<'frame, 'frame>,
{
    let rows = s.query_unpaged(query, &[]).await?.into_rows_result()?;
    Ok(rows.single_row::<R>()?)
}

/// Executes `statement` once with each of `values`, from concurrent tasks with at most
/// `in_flight` running at a time; the results in the order of `values`.
async fn execute_concurrently<V>(
    s: &Arc<Session>,
    statement: &PreparedStatement,
    values: impl IntoIterator<Item = V>,
    in_flight: usize,
) -> anyhow::Result<Vec<QueryResult>>
where
    V: SerializeRow + Send + 'static,
{
    let (mut pending, mut results) = (JoinSet::new(), Vec::new());
    for (i, values) in values.into_iter().enumerate() {
        let (s, statement) = (Arc::clone(s), statement.clone());
        pending.spawn(async move { anyhow::Ok((i, s.execute_unpaged(&statement, values).await?)) });
        if pending.len() >= in_flight {
            results.push(pending.join_next().await.expect("task")??);
        }
    }
    while let Some(r) = pending.join_next().await {
        results.push(r??);
    }
    results.sort_by_key(|&(i, _)| i);
    Ok(results.into_iter().map(|(_, result)| result).collect())
}

#[tokio::test]
async fn ddl_prepared_insert_select_and_schema_agreement() -> anyhow::Result<()> {
    let ks = TestKeyspace::new().await?;
    let s = ks.session();
    let orders = create_table(
        &ks,
        "orders",
        "order_id uuid, seq bigint, status text, qty int, at timestamp, paid boolean, \
         skus list<text>, PRIMARY KEY (order_id, seq)",
    )
    .await?;
    // The driver waits for schema agreement after DDL; check it explicitly as well.
    assert!(s.check_schema_agreement().await?.is_some());
    s.query_unpaged(format!("ALTER TABLE {orders} ADD note text"), &[])
        .await?;

    let insert = s
        .prepare(format!(
            "INSERT INTO {orders} (order_id, seq, status, qty, at, paid, skus, note) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?) USING TIMESTAMP ?"
        ))
        .await?;
    let id = Uuid::new_v4();
    let at = CqlTimestamp(1_700_000_000_123);
    let skus = vec!["sku-1".to_owned(), "sku-2".to_owned()];
    for seq in 0..3i64 {
        let status = format!("status-{seq}");
        let note: Option<&str> = None; // null, not unset: unset values do not exist in 2.1
        s.execute_unpaged(
            &insert,
            (id, seq, status, 7i32, at, seq == 2, &skus, note, 1000 + seq),
        )
        .await?;
    }
    // An older write to the same cell loses: USING TIMESTAMP makes replays idempotent.
    s.execute_unpaged(
        &insert,
        (id, 2i64, "stale", 0i32, at, false, &skus, Some("old"), 1i64),
    )
    .await?;

    let select = s
        .prepare(format!(
            "SELECT seq, status, qty, at, paid, skus, note FROM {orders} WHERE order_id = ?"
        ))
        .await?;
    let rows = s
        .execute_unpaged(&select, (id,))
        .await?
        .into_rows_result()?;
    type R = (
        i64,
        String,
        i32,
        CqlTimestamp,
        bool,
        Vec<String>,
        Option<String>,
    );
    let got: Vec<R> = rows.rows::<R>()?.collect::<Result<_, _>>()?;
    assert_eq!(got.len(), 3);
    for (seq, row) in got.iter().enumerate() {
        let seq = seq as i64;
        assert_eq!(
            row,
            &(
                seq,
                format!("status-{seq}"),
                7,
                at,
                seq == 2,
                skus.clone(),
                None
            )
        );
    }

    // The keyspace is really gone after drop_keyspace.
    let name = ks.name().to_owned();
    let s = Arc::clone(ks.session());
    ks.drop_keyspace().await?;
    let err = s
        .query_unpaged(format!("SELECT seq FROM {name}.orders"), &[])
        .await;
    assert!(err.is_err(), "keyspace {name} still readable after drop");
    Ok(())
}

#[tokio::test]
async fn paging_over_1000_rows() -> anyhow::Result<()> {
    let ks = TestKeyspace::new().await?;
    let s = ks.session();
    let t = create_table(&ks, "events", "p int, c int, v text, PRIMARY KEY (p, c)").await?;
    let insert = s
        .prepare(format!("INSERT INTO {t} (p, c, v) VALUES (?, ?, ?)"))
        .await?;
    // 10 partitions x 100 rows, written 50 at a time.
    let rows = (0..1000i32).map(|i| (i % 10, i, format!("v{i}")));
    execute_concurrently(s, &insert, rows, 50).await?;

    let select = s
        .prepare(Statement::new(format!("SELECT p, c, v FROM {t}")).with_page_size(100))
        .await?;
    let (mut rows, mut pages, mut state) = (Vec::new(), 0, PagingState::start());
    loop {
        let (result, next) = s.execute_single_page(&select, (), state).await?;
        let page = result.into_rows_result()?;
        assert!(page.rows_num() <= 100, "page of {} rows", page.rows_num());
        for row in page.rows::<(i32, i32, String)>()? {
            rows.push(row?);
        }
        pages += 1;
        match next.into_paging_control_flow() {
            ControlFlow::Continue(s) => state = s,
            ControlFlow::Break(()) => break,
        }
    }
    assert_eq!(rows.len(), 1000);
    assert!(pages >= 10, "only {pages} pages");
    rows.sort_by_key(|&(_, c, _)| c);
    for (i, (p, c, v)) in rows.iter().enumerate() {
        assert_eq!(
            (*p, *c, v.as_str()),
            (i as i32 % 10, i as i32, format!("v{i}").as_str())
        );
    }

    ks.drop_keyspace().await
}

#[tokio::test]
async fn insert_if_not_exists_has_exactly_one_winner() -> anyhow::Result<()> {
    let ks = TestKeyspace::new().await?;
    let s = ks.session();
    let t = create_table(&ks, "claims", "k text PRIMARY KEY, owner int").await?;
    let insert = s
        .prepare(format!(
            "INSERT INTO {t} (k, owner) VALUES (?, ?) IF NOT EXISTS"
        ))
        .await?;
    let racers = (0..32i32).map(|w| ("the-key", w));
    let winners = winners(execute_concurrently(s, &insert, racers, 32).await?)?;
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let select = format!("SELECT owner FROM {t} WHERE k = 'the-key'");
    let (owner,) = single_row::<(i32,)>(s, select).await?;
    assert_eq!(owner, winners[0]);
    ks.drop_keyspace().await
}

#[tokio::test]
async fn update_if_column_equals_has_exactly_one_winner() -> anyhow::Result<()> {
    let ks = TestKeyspace::new().await?;
    let s = ks.session();
    let t = create_table(
        &ks,
        "stock",
        "sku text PRIMARY KEY, version int, holder int",
    )
    .await?;
    s.query_unpaged(
        format!("INSERT INTO {t} (sku, version, holder) VALUES ('sku-1', 0, -1)"),
        &[],
    )
    .await?;
    let update = s
        .prepare(format!(
            "UPDATE {t} SET version = ?, holder = ? WHERE sku = ? IF version = ?"
        ))
        .await?;
    let racers = (0..32i32).map(|w| (1i32, w, "sku-1", 0i32));
    let winners = winners(execute_concurrently(s, &update, racers, 32).await?)?;
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let select = format!("SELECT version, holder FROM {t} WHERE sku = 'sku-1'");
    let (version, holder) = single_row::<(i32, i32)>(s, select).await?;
    assert_eq!((version, holder), (1, winners[0]));
    ks.drop_keyspace().await
}

#[tokio::test]
async fn counters_and_batches() -> anyhow::Result<()> {
    let ks = TestKeyspace::new().await?;
    let s = ks.session();
    let c = create_table(
        &ks,
        "sales_per_minute",
        "minute bigint PRIMARY KEY, orders counter",
    )
    .await?;
    let incr = s
        .prepare(format!(
            "UPDATE {c} SET orders = orders + ? WHERE minute = ?"
        ))
        .await?;
    let increments = (1..=20i64).map(|i| (Counter(i), 42i64));
    execute_concurrently(s, &incr, increments, 20).await?;
    s.execute_unpaged(&incr, (Counter(-10), 42i64)).await?;
    let select = format!("SELECT orders FROM {c} WHERE minute = 42");
    let (total,) = single_row::<(Counter,)>(s, select).await?;
    assert_eq!(total.0, (1..=20).sum::<i64>() - 10);

    // A logged batch of prepared inserts is applied as a whole.
    let columns = "customer text, order_id int, PRIMARY KEY (customer, order_id)";
    let t = create_table(&ks, "by_customer", columns).await?;
    let ins = s
        .prepare(format!(
            "INSERT INTO {t} (customer, order_id) VALUES (?, ?)"
        ))
        .await?;
    let mut batch = Batch::new(BatchType::Logged);
    for _ in 0..3 {
        batch.append_statement(ins.clone());
    }
    s.batch(&batch, (("c1", 1i32), ("c1", 2i32), ("c1", 3i32)))
        .await?;
    let ids: Vec<i32> = s
        .query_unpaged(
            format!("SELECT order_id FROM {t} WHERE customer = 'c1'"),
            &[],
        )
        .await?
        .into_rows_result()?
        .rows::<(i32,)>()?
        .map(|r| r.map(|(id,)| id))
        .collect::<Result<_, _>>()?;
    assert_eq!(ids, vec![1, 2, 3]);
    ks.drop_keyspace().await
}

#[tokio::test]
async fn a_separate_session_sees_the_same_single_node() -> anyhow::Result<()> {
    let s = session().await?;
    let select = "SELECT cluster_name FROM system.local WHERE key='local'".to_owned();
    let (cluster_name,) = single_row::<(Option<String>,)>(&s, select).await?;
    assert!(cluster_name.is_some());
    assert!(!s.get_cluster_state().get_nodes_info().is_empty());
    assert!(s.await_schema_agreement().await.is_ok());
    Ok(())
}

#[tokio::test]
async fn a_keyspace_left_behind_is_dropped_by_drop() -> anyhow::Result<()> {
    let ks = TestKeyspace::new().await?;
    let t = create_table(&ks, "t", "k int PRIMARY KEY").await?;
    let s = Arc::clone(ks.session());
    s.query_unpaged(format!("SELECT k FROM {t}"), &[]).await?;
    drop(ks); // as when a test fails before drop_keyspace
    let gone = s.query_unpaged(format!("SELECT k FROM {t}"), &[]).await;
    assert!(gone.is_err(), "{t} still readable after Drop");
    Ok(())
}
