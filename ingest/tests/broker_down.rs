//! Ingest pointed at a broker that is not there: it must answer 503 with Retry-After within the
//! deadline, report not ready, and still answer in-flight requests when shut down.

mod common;

use std::time::{Duration, Instant};

use common::*;
use orderpipe_ingest::Config;
use orderpipe_runtime::kafka::TopicSettings;
use orderpipe_schemas::Topics;

#[tokio::test]
async fn unreachable_broker_gets_503_within_the_deadline() {
    // Given ingest whose broker is unreachable (topics cannot be created there: not asked to)
    let deadline = Duration::from_secs(1);
    let config = Config {
        ack_deadline: deadline,
        topics: TopicSettings {
            create: false,
            ..TopicSettings::default()
        },
        ..test_config()
    };
    let ingest = TestIngest::start_on(config, &closed_port(), Topics::with_prefix("down.")).await;
    let mut conn = ingest.conn();

    // When an order is posted
    let started = Instant::now();
    let reply = conn
        .post_order(&[("idempotency-key", "k-1")], &order_body())
        .await;
    let took = started.elapsed();

    // Then it gets 503 with Retry-After, once the deadline passed and not much later
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        problem(&reply).type_,
        "urn:orderpipe:problem:not-acknowledged"
    );
    assert!(took >= deadline - Duration::from_millis(50), "{took:?}");
    assert!(took < deadline + Duration::from_millis(1000), "{took:?}");

    // And the service is alive but not ready
    assert_eq!(conn.get("/healthz").await.status, 200);
    ingest.wait_ready(503, Duration::from_secs(5)).await;
    let metrics = conn.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("orderpipe_ingest_broker_up 0"), "{text}");
    assert!(
        text.contains(r#"orderpipe_ingest_requests_total{status="503"} 1"#),
        "{text}"
    );

    // When shutdown starts while a request waits for the broker
    let mut waiting = ingest.conn();
    let in_flight = tokio::spawn(async move {
        waiting
            .post_order(&[("idempotency-key", "k-2")], &order_body())
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shutdown = ingest.shutdown.clone();
    shutdown.cancel();

    // Then that request is still answered, and the server stops
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 503);
    problem(&reply);
    ingest.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn topic_creation_failure_stops_start_up_with_a_clear_error() {
    let config = Config {
        topics: TopicSettings::with_partitions(2),
        ..test_config()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = Instant::now();
    let result = orderpipe_ingest::Server::with_listener(
        listener,
        config,
        &closed_port(),
        Topics::with_prefix("down."),
    )
    .await;
    let err = result.err().expect("start-up fails without a broker");
    assert!(format!("{err:#}").contains("creating topics"), "{err:#}");
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[tokio::test]
async fn full_producer_queue_is_answered_503_at_once() {
    // Given a producer queue of one message and no broker to drain it
    let config = Config {
        ack_deadline: Duration::from_secs(1),
        topics: TopicSettings {
            create: false,
            ..TopicSettings::default()
        },
        producer_queue_messages: 1,
        ..test_config()
    };
    let ingest = TestIngest::start_on(config, &closed_port(), Topics::with_prefix("full.")).await;
    let mut first = ingest.conn();
    let waiting = tokio::spawn(async move { first.post_order(&[], &order_body()).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    // When another order arrives while the first one fills the queue
    let started = Instant::now();
    let reply = ingest.conn().post_order(&[], &order_body()).await;

    // Then it is refused at once with 503 and Retry-After, not queued behind the first
    assert_eq!(reply.status, 503, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(problem(&reply).type_, "urn:orderpipe:problem:overloaded");
    assert_eq!(waiting.await.unwrap().status, 503);
    ingest.stop().await.expect("clean shutdown");
}
