//! The shared idempotency store (`--ingest-idempotency-store cql`) on the test CQL server: the
//! "same key, other body: 422" check holds across instances and restarts, and a configured store
//! that cannot be reached refuses keyed orders with 503 instead of accepting them unchecked.

mod common;

use std::time::Duration;

use common::*;
use orderpipe_ingest::{Config, IdempotencyStore};
use orderpipe_testkit::cql::{nodes, TestKeyspace};
use orderpipe_testkit::kafka::bootstrap;

fn store_config(nodes: Vec<String>, keyspace: &str) -> Config {
    Config {
        idempotency_store: IdempotencyStore::Cql,
        cql_nodes: nodes,
        cql_keyspace: keyspace.to_owned(),
        ..test_config()
    }
}

/// The sample order with another quantity: same key, other body.
fn other_body() -> String {
    let mut order = order_json();
    order["lines"][0]["quantity"] = 3.into();
    order["total_minor"] = (3 * 1999 + 500).into();
    order.to_string()
}

#[tokio::test]
async fn other_body_is_refused_across_instances_and_restarts() {
    // Given two instances sharing topics and the store's keyspace
    let keyspace = TestKeyspace::new().await.expect("test keyspace");
    let config = store_config(nodes(), keyspace.name());
    let first = TestIngest::start(config.clone()).await;
    let second = TestIngest::start_on(config.clone(), &bootstrap(), first.topics.clone()).await;
    let key = [("idempotency-key", "shared-key-1")];
    let body_a = order_body();
    let body_b = other_body();

    // When key K is used with body A on the first instance
    let x = accepted_id(&first.conn().post_order(&key, &body_a).await);

    // Then the second instance accepts the same body as the same order
    let mut conn2 = second.conn();
    assert_eq!(accepted_id(&conn2.post_order(&key, &body_a).await), x);
    // And refuses another body under K (it never saw K in memory)
    let reply = conn2.post_order(&key, &body_b).await;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(
        problem(&reply).type_,
        "urn:orderpipe:problem:idempotency-key-reused"
    );

    // When a fresh instance starts (a restart: nothing in memory)
    let third = TestIngest::start_on(config, &bootstrap(), first.topics.clone()).await;
    let mut conn3 = third.conn();
    // Then body B is still refused and body A is still the same order
    let reply = conn3.post_order(&key, &body_b).await;
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(accepted_id(&conn3.post_order(&key, &body_a).await), x);
    // Twice: the second time from the memory fast path
    assert_eq!(accepted_id(&conn3.post_order(&key, &body_a).await), x);
    let reply = conn3.post_order(&key, &body_b).await;
    assert_eq!(reply.status, 422, "{reply:?}");

    // And only accepted requests produced: 4 x order_placed, all for order X
    let orders = first.topics.orders.clone();
    let messages = read_topic(&orders, 2, 5, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 4);
    assert!(messages.iter().all(|m| key_str(m) == x), "{messages:?}");

    // And the row is in the store's table, with the derived order id
    let rows = keyspace
        .session()
        .query_unpaged(
            format!(
                "SELECT order_id FROM {} WHERE client_id = ? AND idem_key = ?",
                keyspace.table("idempotency_keys")
            ),
            ("anonymous", "shared-key-1"),
        )
        .await
        .expect("select")
        .into_rows_result()
        .expect("rows");
    let (stored,): (uuid::Uuid,) = rows.single_row().expect("one row");
    assert_eq!(stored.to_string(), x);

    for ingest in [third, second, first] {
        ingest.stop().await.expect("clean stop");
    }
    keyspace.drop_keyspace().await.expect("drop keyspace");
}

#[tokio::test]
async fn unreachable_store_gets_503_and_produces_nothing() {
    // Given an instance whose configured store is unreachable (a closed port)
    let config = Config {
        ack_deadline: Duration::from_secs(1),
        ..store_config(vec![closed_port()], "orderpipe_ingest")
    };
    let ingest = TestIngest::start(config).await;
    ingest.wait_ready(200, Duration::from_secs(10)).await;
    let mut conn = ingest.conn();

    // When a keyed order is posted
    let reply = conn
        .post_order(&[("idempotency-key", "k-down")], &order_body())
        .await;

    // Then it is refused with 503 and Retry-After, not accepted unchecked
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        problem(&reply).type_,
        "urn:orderpipe:problem:idempotency-store-unavailable"
    );
    // Again: a failed check leaves nothing in memory to skip the store with
    let reply = conn
        .post_order(&[("idempotency-key", "k-down")], &order_body())
        .await;
    assert_eq!(reply.status, 503, "{reply:?}");

    // And an order without a key does not need the store
    let unkeyed = accepted_id(&conn.post_order(&[], &order_body()).await);

    // And only that order was produced
    let orders = ingest.topics.orders.clone();
    let messages = read_topic(&orders, 2, 2, Duration::from_secs(3)).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(key_str(&messages[0]), unkeyed);
    ingest.stop().await.expect("clean stop");
}
