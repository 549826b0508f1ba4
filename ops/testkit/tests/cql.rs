//! Against the real CQL server (testbed: Apache Cassandra 5.0; or ScyllaDB via
//! SCYLLA_NODES): what the projections rely on works through the `scylla` driver.
//! Every statement here is valid on ScyllaDB and on Cassandra alike.

use orderpipe_testkit::cql::{session, TestKeyspace};
use scylla::response::query_result::QueryResult;
use scylla::response::PagingState;
use scylla::statement::batch::{Batch, BatchType};
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

#[tokio::test]
async fn ddl_prepared_insert_select_and_schema_agreement() -> anyhow::Result<()> {
    let ks = TestKeyspace::new().await?;
    let s = ks.session();
    let orders = ks.table("orders");
    s.query_unpaged(
        format!(
            "CREATE TABLE {orders} (order_id uuid, seq bigint, status text, qty int, \
             at timestamp, paid boolean, skus list<text>, PRIMARY KEY (order_id, seq))"
        ),
        &[],
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
    let t = ks.table("events");
    s.query_unpaged(
        format!("CREATE TABLE {t} (p int, c int, v text, PRIMARY KEY (p, c))"),
        &[],
    )
    .await?;
    let insert = s
        .prepare(format!("INSERT INTO {t} (p, c, v) VALUES (?, ?, ?)"))
        .await?;
    // 10 partitions x 100 rows, written 50 at a time.
    let mut pending = JoinSet::new();
    for i in 0..1000i32 {
        let (s, insert) = (Arc::clone(s), insert.clone());
        pending.spawn(async move {
            s.execute_unpaged(&insert, (i % 10, i, format!("v{i}")))
                .await
        });
        if pending.len() >= 50 {
            pending.join_next().await.expect("task")??;
        }
    }
    while let Some(r) = pending.join_next().await {
        r??;
    }

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
    let t = ks.table("claims");
    s.query_unpaged(
        format!("CREATE TABLE {t} (k text PRIMARY KEY, owner int)"),
        &[],
    )
    .await?;
    let insert = s
        .prepare(format!(
            "INSERT INTO {t} (k, owner) VALUES (?, ?) IF NOT EXISTS"
        ))
        .await?;
    let mut racers = JoinSet::new();
    for w in 0..32i32 {
        let (s, insert) = (Arc::clone(s), insert.clone());
        racers.spawn(async move {
            let r = s.execute_unpaged(&insert, ("the-key", w)).await?;
            anyhow::Ok((w, applied(r)?))
        });
    }
    let mut winners = Vec::new();
    while let Some(r) = racers.join_next().await {
        let (w, won) = r??;
        if won {
            winners.push(w);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let (owner,) = s
        .query_unpaged(format!("SELECT owner FROM {t} WHERE k = 'the-key'"), &[])
        .await?
        .into_rows_result()?
        .single_row::<(i32,)>()?;
    assert_eq!(owner, winners[0]);
    ks.drop_keyspace().await
}

#[tokio::test]
async fn update_if_column_equals_has_exactly_one_winner() -> anyhow::Result<()> {
    let ks = TestKeyspace::new().await?;
    let s = ks.session();
    let t = ks.table("stock");
    s.query_unpaged(
        format!("CREATE TABLE {t} (sku text PRIMARY KEY, version int, holder int)"),
        &[],
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
    let mut racers = JoinSet::new();
    for w in 0..32i32 {
        let (s, update) = (Arc::clone(s), update.clone());
        racers.spawn(async move {
            let r = s.execute_unpaged(&update, (1i32, w, "sku-1", 0i32)).await?;
            anyhow::Ok((w, applied(r)?))
        });
    }
    let mut winners = Vec::new();
    while let Some(r) = racers.join_next().await {
        let (w, won) = r??;
        if won {
            winners.push(w);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let (version, holder) = s
        .query_unpaged(
            format!("SELECT version, holder FROM {t} WHERE sku = 'sku-1'"),
            &[],
        )
        .await?
        .into_rows_result()?
        .single_row::<(i32, i32)>()?;
    assert_eq!((version, holder), (1, winners[0]));
    ks.drop_keyspace().await
}

#[tokio::test]
async fn counters_and_batches() -> anyhow::Result<()> {
    let ks = TestKeyspace::new().await?;
    let s = ks.session();
    let c = ks.table("sales_per_minute");
    s.query_unpaged(
        format!("CREATE TABLE {c} (minute bigint PRIMARY KEY, orders counter)"),
        &[],
    )
    .await?;
    let incr = s
        .prepare(format!(
            "UPDATE {c} SET orders = orders + ? WHERE minute = ?"
        ))
        .await?;
    let mut tasks = JoinSet::new();
    for i in 1..=20i64 {
        let (s, incr) = (Arc::clone(s), incr.clone());
        tasks.spawn(async move { s.execute_unpaged(&incr, (Counter(i), 42i64)).await });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    s.execute_unpaged(&incr, (Counter(-10), 42i64)).await?;
    let (total,) = s
        .query_unpaged(format!("SELECT orders FROM {c} WHERE minute = 42"), &[])
        .await?
        .into_rows_result()?
        .single_row::<(Counter,)>()?;
    assert_eq!(total.0, (1..=20).sum::<i64>() - 10);

    // A logged batch of prepared inserts is applied as a whole.
    let t = ks.table("by_customer");
    s.query_unpaged(
        format!("CREATE TABLE {t} (customer text, order_id int, PRIMARY KEY (customer, order_id))"),
        &[],
    )
    .await?;
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
    let (cluster_name,) = s
        .query_unpaged(
            "SELECT cluster_name FROM system.local WHERE key='local'",
            &[],
        )
        .await?
        .into_rows_result()?
        .single_row::<(Option<String>,)>()?;
    assert!(cluster_name.is_some());
    assert!(!s.get_cluster_state().get_nodes_info().is_empty());
    assert!(s.await_schema_agreement().await.is_ok());
    Ok(())
}

#[tokio::test]
async fn a_keyspace_left_behind_is_dropped_by_drop() -> anyhow::Result<()> {
    let ks = TestKeyspace::new().await?;
    let t = ks.table("t");
    let s = Arc::clone(ks.session());
    s.query_unpaged(format!("CREATE TABLE {t} (k int PRIMARY KEY)"), &[])
        .await?;
    s.query_unpaged(format!("SELECT k FROM {t}"), &[]).await?;
    drop(ks); // as when a test fails before drop_keyspace
    let gone = s.query_unpaged(format!("SELECT k FROM {t}"), &[]).await;
    assert!(gone.is_err(), "{t} still readable after Drop");
    Ok(())
}
