//! The projectors and the query API against the real broker and CQL server: a synthetic history
//! in, views and HTTP answers out; replays and rebuilds leave every cell as it was.

mod common;

use std::time::{Duration, Instant};

use common::{get, start_api, start_caught_up, Producers};
use orderpipe_projections::{
    connect, dump_views, migrate, rebuild, start_projectors, view_columns, ProjectorKind,
    DLQ_STAGE_NAME, VIEW_TABLES,
};
use orderpipe_runtime::health::Readiness;
use orderpipe_schemas::{OrderEvent, StockReserved};
use orderpipe_testkit::cql::{self, TestKeyspace};
use orderpipe_testkit::kafka;
use rdkafka::consumer::Consumer;
use rdkafka::message::Headers;
use rdkafka::Message;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn event_types(order: &Value) -> Vec<String> {
    order["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_owned())
        .collect()
}

fn ids(page: &Value) -> Vec<String> {
    page["orders"]
        .as_array()
        .expect("orders")
        .iter()
        .map(|o| o["order_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads `WRITETIME` of every written cell of every view and asserts it is positive and below
/// now + 1 day; returns how many cells it read.
async fn assert_write_times_in_the_past(
    session: &scylla::client::session::Session,
    keyspace: &str,
) -> anyhow::Result<usize> {
    let limit = (chrono::Utc::now() + chrono::Duration::days(1)).timestamp_micros();
    let mut checked = 0;
    for table in VIEW_TABLES {
        for column in view_columns(table).1 {
            let rows = session
                .query_unpaged(
                    format!("SELECT WRITETIME({column}) FROM {keyspace}.{table}"),
                    &[],
                )
                .await?
                .into_rows_result()?;
            for row in rows.rows::<(Option<i64>,)>()? {
                let (Some(stamp),) = row? else { continue };
                assert!(
                    stamp > 0 && stamp < limit,
                    "{table}.{column} written at {stamp} µs, not in the past (limit {limit})"
                );
                checked += 1;
            }
        }
    }
    Ok(checked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_agree_with_the_topics_and_replays_and_rebuilds_change_nothing() -> anyhow::Result<()>
{
    orderpipe_runtime::telemetry::init("orderpipe_projections=info,warn");
    let started = Instant::now();
    // Given a history on fresh topics: orders confirmed, rejected out of stock, rejected after a
    // declined payment (with a late settlement), a duplicated order_placed, stock snapshots and
    // one poison message
    let (test_topics, topics) = common::fresh_topics(3, 2).await?;
    let keyspace = TestKeyspace::new().await?;
    let scenario = common::scenario();
    let mut producers = Producers::new(&test_topics)?;
    producers.produce(&topics, &scenario.messages, 4).await?;

    // When the projectors run until they have caught up
    let config = common::config(keyspace.name(), &test_topics);
    let nodes = cql::nodes();
    let readiness = Readiness::new();
    let (projectors, shutdown) =
        start_caught_up(&config, &topics, &readiness, &producers.delivered).await?;
    let caught_up = started.elapsed();

    let session = connect(&nodes, &config.cql).await?;
    let (addr, stop_api, server) = start_api(&config, readiness.clone()).await?;

    // Then every order has its status, reason, lines, total and timeline
    let order = |id: Uuid| async move {
        let answer = get(addr, &format!("/v1/orders/{id}")).await?;
        assert_eq!(answer.status, 200, "{}", answer.body);
        anyhow::Ok(answer.json())
    };
    let o1 = order(scenario.confirmed).await?;
    assert_eq!(o1["status"], "confirmed");
    assert_eq!(o1["reason"], Value::Null);
    assert_eq!(o1["customer_id"], "alice");
    assert_eq!(o1["currency"], "EUR");
    assert_eq!(o1["total_minor"], 2500);
    assert_eq!(
        o1["lines"],
        serde_json::json!([
            {"sku": "SKU-A", "quantity": 2, "unit_price_minor": 1000},
            {"sku": "SKU-B", "quantity": 1, "unit_price_minor": 500},
        ])
    );
    assert_eq!(
        event_types(&o1),
        [
            "order_placed",
            "stock_line_reserved",
            "stock_line_reserved",
            "stock_reserved",
            "payment_requested",
            "payment_settled",
            "order_confirmed"
        ]
    );
    assert_eq!(o1["timeline"][0]["occurred_at"], "2024-03-01T12:00:00.000Z");
    assert!(
        !o1.to_string().contains("tok_test_secret"),
        "no payment token"
    );

    let o2 = order(scenario.out_of_stock).await?;
    assert_eq!(
        (o2["status"].as_str(), o2["reason"].as_str()),
        (Some("rejected"), Some("out_of_stock"))
    );
    assert_eq!(
        event_types(&o2),
        [
            "order_placed",
            "stock_line_rejected",
            "stock_rejected",
            "order_rejected"
        ]
    );

    let o3 = order(scenario.declined).await?;
    assert_eq!(
        (o3["status"].as_str(), o3["reason"].as_str()),
        (Some("rejected"), Some("payment_declined")),
        "a late payment_settled never revives a rejected order"
    );
    assert!(o3["paid_at"].is_string(), "the late settlement is recorded");
    assert_eq!(o3["refunded_minor"], 1000);
    assert_eq!(
        event_types(&o3),
        [
            "order_placed",
            "stock_line_reserved",
            "stock_reserved",
            "payment_requested",
            "payment_declined",
            "order_rejected",
            "payment_settled",
            "refunded"
        ]
    );

    let o4 = order(scenario.duplicated).await?;
    assert_eq!(o4["status"], "confirmed");
    assert_eq!(o4["total_minor"], 1500);
    assert_eq!(
        o4["placed_at"], "2024-03-01T12:02:10.000Z",
        "the first order_placed counts"
    );
    assert_eq!(
        event_types(&o4)[..2],
        ["order_placed", "order_placed"],
        "the duplicate is on the timeline"
    );
    for id in scenario.placed_only {
        assert_eq!(order(id).await?["status"], "placed");
    }

    // and a customer's orders come newest first, page by page (the duplicate placement once)
    let mut pages = Vec::new();
    let mut path = "/v1/customers/alice/orders?limit=2".to_owned();
    loop {
        let answer = get(addr, &path).await?;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let page = answer.json();
        pages.push(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/customers/alice/orders?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    let s = |id: Uuid| id.to_string();
    assert_eq!(
        pages,
        vec![
            vec![s(scenario.placed_only[1]), s(scenario.placed_only[0])],
            vec![s(scenario.duplicated), s(scenario.declined)],
            vec![s(scenario.confirmed)],
        ]
    );
    let bob = get(addr, "/v1/customers/bob/orders").await?.json();
    assert_eq!(ids(&bob), [s(scenario.out_of_stock)]);
    assert_eq!(bob["orders"][0]["status"], "rejected");
    assert_eq!(bob["orders"][0]["reason"], "out_of_stock");

    // and stock is the latest snapshot: available + reserved + sold is what was stocked
    for (sku, stocked, expected) in [
        ("SKU-A", 10, (8, 0, 2)),
        ("SKU-B", 5, (1, 0, 4)),
        ("SKU-C", 2, (2, 0, 0)),
    ] {
        let stock = get(addr, &format!("/v1/stock/{sku}")).await?.json();
        let got = (
            stock["available"].as_i64().unwrap(),
            stock["reserved"].as_i64().unwrap(),
            stock["sold"].as_i64().unwrap(),
        );
        assert_eq!(got, expected, "{sku}");
        assert_eq!(got.0 + got.1 + got.2, stocked, "{sku}");
    }

    // and every cell was written with a timestamp in the past (ScyllaDB refuses timestamps over
    // 3 days ahead), first-wins cells included
    let checked = assert_write_times_in_the_past(&session, keyspace.name()).await?;
    assert!(checked > 50, "only {checked} write times read");

    // and sales per minute add up to the confirmed orders
    let all: Vec<Value> = [
        scenario.confirmed,
        scenario.out_of_stock,
        scenario.declined,
        scenario.duplicated,
    ]
    .into_iter()
    .chain(scenario.placed_only)
    .map(|id| async move { order(id).await })
    .collect::<futures::future::TryJoinAll<_>>()
    .await?;
    let confirmed: Vec<&Value> = all.iter().filter(|o| o["status"] == "confirmed").collect();
    let revenue: i64 = confirmed
        .iter()
        .map(|o| o["total_minor"].as_i64().unwrap())
        .sum();
    let units: i64 = confirmed
        .iter()
        .flat_map(|o| o["lines"].as_array().unwrap())
        .map(|l| l["quantity"].as_i64().unwrap())
        .sum();
    let sales = get(
        addr,
        "/v1/sales?from=2024-03-01T12:00:00Z&to=2024-03-01T13:00:00Z",
    )
    .await?
    .json();
    assert_eq!(sales["totals"]["orders"], confirmed.len());
    assert_eq!(sales["totals"]["units"], units);
    assert_eq!(sales["totals"]["revenue_minor"], revenue);
    assert_eq!(
        sales["minutes"],
        serde_json::json!([
            {"minute": "2024-03-01T12:00:00.000Z", "orders": 1, "units": 3, "revenue_minor": 2500, "revenue_by_currency": {"EUR": 2500}},
            {"minute": "2024-03-01T12:02:00.000Z", "orders": 1, "units": 3, "revenue_minor": 1500, "revenue_by_currency": {"EUR": 1500}},
        ])
    );
    let sku_b = get(
        addr,
        "/v1/sales?from=2024-03-01T12:00:00Z&to=2024-03-01T12:30:00Z&sku=SKU-B",
    )
    .await?
    .json();
    assert_eq!(
        (
            &sku_b["totals"]["orders"],
            &sku_b["totals"]["units"],
            &sku_b["totals"]["revenue_minor"]
        ),
        (&Value::from(2), &Value::from(4), &Value::from(2000))
    );

    // and the poison message went to the dead-letter topic with its reason
    let dlq = kafka::consumer(&test_topics.name("dlq-reader"), true)?;
    dlq.subscribe(&[&topics.dlq(DLQ_STAGE_NAME)])?;
    let dead = kafka::consume_n(&dlq, 1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload(), Some(&b"{not json"[..]));
    let reason = dead[0]
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "orderpipe.dlq.reason"))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(reason.as_deref(), Some("malformed"));

    // and the lag is a metric and part of readiness
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ready = get(addr, "/readyz").await?;
        if ready.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {}", ready.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = get(addr, "/metrics").await?.body;
    assert!(metrics.contains("orderpipe_projection_lag{"), "{metrics}");
    assert!(
        metrics.contains("orderpipe_projection_dead_letters_total{"),
        "{metrics}"
    );

    // and the migrations, run again, are a no-op
    let again = migrate(&session, keyspace.name(), &config.cql.replication).await?;
    let every_version: Vec<i32> = orderpipe_projections::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(
        (again.applied.len(), again.already_applied),
        (0, every_version)
    );

    let before = dump_views(&session, keyspace.name()).await?;
    let rows: usize = before.iter().map(|(_, rows)| rows.len()).sum();
    assert!(rows > 40, "{before:?}");

    // When the same events are applied again by a fresh group, in other batch sizes
    shutdown.cancel();
    projectors.wait().await?;
    let mut replay = common::config(keyspace.name(), &test_topics);
    replay.projector.batch_max = 3;
    let (projectors, shutdown) =
        start_caught_up(&replay, &topics, &Readiness::new(), &producers.delivered).await?;
    shutdown.cancel();
    projectors.wait().await?;
    // Then no row (and no write timestamp) changed
    let after_replay = dump_views(&session, keyspace.name()).await?;
    assert_eq!(before, after_replay, "replaying changed rows");

    // When every view is rebuilt from offset 0 into a fresh keyspace
    let fresh = TestKeyspace::with_session(session.clone()).await?;
    let mut reports = Vec::new();
    let report = rebuild(
        &config,
        &kafka::bootstrap(),
        &nodes,
        &topics,
        fresh.name(),
        |p| reports.push(p.clone()),
    )
    .await?;
    // Then it holds exactly the same cells, write timestamps included
    let rebuilt = dump_views(&session, fresh.name()).await?;
    assert_eq!(before, rebuilt, "rebuild differs from the live views");
    let messages = scenario.messages.len() as u64;
    assert_eq!((report.events, report.poison), (messages - 1, 1));
    assert!(reports.last().is_some_and(|p| p.done && p.remaining == 0));
    eprintln!(
        "caught up after {caught_up:?}; rebuild {} events in {:?}; whole test {:?}",
        report.events,
        report.elapsed,
        started.elapsed()
    );

    stop_api.cancel();
    server.await?;
    fresh.drop_keyspace().await?;
    keyspace.drop_keyspace().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_api_long_polls_and_answers_problems() -> anyhow::Result<()> {
    orderpipe_runtime::telemetry::init("orderpipe_projections=info,warn");
    // Given a placed order and a stocked SKU, projected
    let (test_topics, topics) = common::fresh_topics(1, 1).await?;
    let keyspace = TestKeyspace::new().await?;
    let order_id = Uuid::now_v7();
    let mut producers = Producers::new(&test_topics)?;
    producers
        .produce(
            &topics,
            &[
                common::order_event(
                    order_id,
                    0,
                    common::placed("dora", vec![common::line("SKU-X", 1, 990)]),
                ),
                common::levels("SKU-X", 0, 4, 1, 0),
            ],
            10,
        )
        .await?;
    let config = common::config(keyspace.name(), &test_topics);
    let (projectors, shutdown) =
        start_caught_up(&config, &topics, &Readiness::new(), &producers.delivered).await?;
    let (addr, stop_api, server) = start_api(&config, Readiness::new()).await?;

    // Then the views answer 200
    let order = get(addr, &format!("/v1/orders/{order_id}")).await?;
    assert_eq!(
        (order.status, order.content_type.as_str()),
        (200, "application/json")
    );
    assert_eq!(order.json()["status"], "placed");
    let stock = get(addr, "/v1/stock/SKU-X").await?;
    assert_eq!(stock.status, 200);
    assert_eq!(
        stock.json(),
        serde_json::json!({"sku": "SKU-X", "available": 4, "reserved": 1, "sold": 0,
            "per_customer_limit": 5, "updated_at": "2024-03-01T12:00:00.000Z"})
    );
    let empty = get(
        addr,
        "/v1/sales?from=2024-03-01T12:00:00Z&to=2024-03-01T12:10:00Z",
    )
    .await?;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.json()["totals"]["orders"], 0);

    // and unknown ids are 404 problems
    for path in [
        format!("/v1/orders/{}", Uuid::now_v7()),
        "/v1/stock/NO-SUCH-SKU".to_owned(),
    ] {
        let answer = get(addr, &path).await?;
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.content_type, "application/problem+json", "{path}");
        assert_eq!(answer.json()["status"], 404, "{path}");
    }
    let unknown = get(addr, "/v1/nothing-here").await?;
    assert_eq!(
        (unknown.status, unknown.content_type.as_str()),
        (404, "application/problem+json")
    );
    // and bad parameters are 400 problems
    let o = format!("/v1/orders/{order_id}");
    for path in [
        "/v1/orders/not-a-uuid".to_owned(),
        format!("{o}?wait=soon"),
        format!("{o}?wait=31s"),
        format!("{o}?wait=1s&status=shipped"),
        "/v1/customers/dora/orders?limit=0".to_owned(),
        "/v1/customers/dora/orders?limit=x".to_owned(),
        "/v1/customers/dora/orders?cursor=zz".to_owned(),
        "/v1/sales?from=2024-03-01T13:00:00Z&to=2024-03-01T12:00:00Z".to_owned(),
        "/v1/sales?from=2024-03-01T00:00:00Z&to=2024-03-02T01:00:00Z".to_owned(),
        "/v1/sales?from=yesterday&to=2024-03-01T12:00:00Z".to_owned(),
        "/v1/sales?to=2024-03-01T12:00:00Z".to_owned(),
    ] {
        let answer = get(addr, &path).await?;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert_eq!(answer.content_type, "application/problem+json", "{path}");
        let problem = answer.json();
        assert_eq!(problem["status"], 400);
        assert!(problem["detail"].is_string() && problem["title"].is_string());
    }

    // When a client long-polls while the next event arrives
    let poll = tokio::spawn(async move {
        let t = Instant::now();
        let answer = get(
            addr,
            &format!("/v1/orders/{order_id}?wait=8s&status=placed"),
        )
        .await;
        (t.elapsed(), answer)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    producers
        .produce(
            &topics,
            &[common::order_event(
                order_id,
                2,
                OrderEvent::StockReserved(StockReserved {}),
            )],
            10,
        )
        .await?;
    // Then it answers with the new status as soon as the view has it
    let (took, answer) = poll.await?;
    let answer = answer?;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["status"], "stock_reserved");
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(6),
        "{took:?}"
    );

    // When nothing changes, it answers the unchanged order when the wait ends
    let t = Instant::now();
    let answer = get(addr, &format!("/v1/orders/{order_id}?wait=1s")).await?;
    let took = t.elapsed();
    assert_eq!(
        (answer.status, answer.json()["status"].as_str()),
        (200, Some("stock_reserved")),
        "{}",
        answer.body
    );
    // The upper bound leaves room for the testbed's Cassandra pausing (small heap, DDL of
    // other tests).
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // When a client waits for an order not in the views yet, it gets it once placed
    let later = Uuid::now_v7();
    let poll = tokio::spawn(async move { get(addr, &format!("/v1/orders/{later}?wait=8s")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    producers
        .produce(
            &topics,
            &[common::order_event(
                later,
                5,
                common::placed("dora", vec![common::line("SKU-X", 1, 990)]),
            )],
            10,
        )
        .await?;
    let answer = poll.await??;
    assert_eq!(
        (answer.status, answer.json()["status"].as_str()),
        (200, Some("placed"))
    );
    // and an order that never comes is a 404 when the wait ends
    let t = Instant::now();
    let answer = get(addr, &format!("/v1/orders/{}?wait=300ms", Uuid::now_v7())).await?;
    assert_eq!(answer.status, 404);
    assert!(t.elapsed() >= Duration::from_millis(300));

    stop_api.cancel();
    server.await?;
    shutdown.cancel();
    projectors.wait().await?;

    // When the same replica restarts (same group, same static member id)
    let shutdown = CancellationToken::new();
    let restarted = start_projectors(
        &config,
        &kafka::bootstrap(),
        &cql::nodes(),
        &topics,
        &Readiness::new(),
        shutdown.clone(),
    )
    .await?;
    // Then it resumes where the last batches were committed: no lag, nothing re-applied
    let deadline = Instant::now() + Duration::from_secs(10);
    while restarted.progress().lag(ProjectorKind::Orders) != Some(0)
        || restarted.progress().lag(ProjectorKind::Stock) != Some(0)
    {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            restarted.progress().partitions()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(restarted.progress().applied(ProjectorKind::Orders), 0);
    shutdown.cancel();
    restarted.wait().await?;
    keyspace.drop_keyspace().await?;
    Ok(())
}
