//! The broker stops and comes back: requests get 503 while it is gone and succeed again once it
//! is back, without restarting ingest; orders acknowledged before the restart are still there.
//!
//! Runs an Apache Kafka broker of its own (the testbed's, through `ops/testbed/up` and
//! `ops/testbed/broker` with a private testbed directory and ports), so that stopping it disturbs
//! no other test.

mod common;

use std::time::{Duration, Instant};

use common::*;
use orderpipe_ingest::Config;
use orderpipe_runtime::kafka::TopicSettings;
use orderpipe_schemas::Topics;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};

#[tokio::test]
async fn ingest_recovers_by_itself_when_the_broker_comes_back() {
    // Given a broker of our own and ingest on it
    let broker = orderpipe_testkit::broker::PrivateBroker::start();
    let bootstrap = broker.bootstrap();
    let deadline = Duration::from_secs(1);
    let config = Config {
        ack_deadline: deadline,
        topics: TopicSettings::with_partitions(1),
        ..test_config()
    };
    let topics = Topics::with_prefix("restart.");
    let ingest = TestIngest::start_on(config, &bootstrap, topics.clone()).await;
    let mut conn = ingest.conn();
    ingest.wait_ready(200, Duration::from_secs(5)).await;
    // A broker started a moment ago may still be loading its transaction coordinator, which
    // hands the idempotent producer its id ("coordinator load in progress"): until then orders
    // get 503, as they should. Wait for the first acknowledgement (bounded).
    let warm_up = Instant::now();
    let mut acked = loop {
        let reply = conn.post_order(&[], &order_body()).await;
        if reply.status == 202 {
            break vec![accepted_id(&reply)];
        }
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            warm_up.elapsed() < Duration::from_secs(30),
            "no order acknowledged 30 s after start: {}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // When the broker stops
    broker.stop();

    // Then orders get 503 with Retry-After within the deadline, and ingest reports not ready
    for _ in 0..2 {
        let started = Instant::now();
        let reply = conn.post_order(&[], &order_body()).await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(reply.header("retry-after").is_some());
        problem(&reply);
        assert!(
            started.elapsed() < deadline + Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
    }
    ingest.wait_ready(503, Duration::from_secs(5)).await;

    // When the broker comes back on the same port and data
    broker.restart();

    // Then, without restarting ingest, orders are accepted again within seconds
    let back = Instant::now();
    loop {
        let reply = conn.post_order(&[], &order_body()).await;
        if reply.status == 202 {
            acked.push(accepted_id(&reply));
            break;
        }
        assert_eq!(reply.status, 503, "{reply:?}");
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "still 503 after 20 s: {}",
            broker.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for _ in 0..3 {
        acked.push(accepted_id(&conn.post_order(&[], &order_body()).await));
    }
    eprintln!("recovered {:?} after the broker was back", back.elapsed());
    ingest.wait_ready(200, Duration::from_secs(5)).await;

    // And every acknowledged order is on the topic, including the one from before the restart
    let reader: StreamConsumer = rdkafka::config::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "restart-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topics.orders, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&assignment).unwrap();
    let messages = orderpipe_testkit::kafka::consume_n(&reader, 100, Duration::from_secs(3)).await;
    let keys: Vec<&str> = messages.iter().map(key_str).collect();
    for id in &acked {
        assert!(
            keys.contains(&id.as_str()),
            "acknowledged order {id} lost; topic has {keys:?}"
        );
    }

    ingest.stop().await.expect("clean shutdown");
    drop(broker);
}
