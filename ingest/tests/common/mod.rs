//! Harness of the ingest integration tests: an ingest server in-process on port 0 under a unique
//! topic prefix on the test broker, an HTTP client, sample orders, and reading the orders topic.

#![allow(dead_code, unreachable_pub)]

pub use orderpipe_testkit::http;

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use orderpipe_ingest::auth::sha256_hex;
use orderpipe_ingest::{Config, Problem, Server, ServerError};
use orderpipe_runtime::kafka::TopicSettings;
use orderpipe_schemas::Topics;
use orderpipe_testkit::kafka::{bootstrap, consume_n, consumer, TestTopics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use http::{Conn, Reply};

/// Settings for tests: small topics, a short deadline, no rate limit unless a test sets one.
pub fn test_config() -> Config {
    Config {
        topics: TopicSettings::with_partitions(2),
        ack_deadline: Duration::from_secs(2),
        rate_limit_per_second: 0,
        ..Config::default()
    }
}

/// An ingest server running in this process.
pub struct TestIngest {
    pub addr: SocketAddr,
    pub topics: Topics,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), ServerError>>,
    /// Deletes the test's topics when dropped.
    pub test_topics: Option<TestTopics>,
}

impl TestIngest {
    /// Starts ingest on port 0 against the test broker, under a fresh topic prefix.
    pub async fn start(config: Config) -> Self {
        let mut test_topics = TestTopics::new().expect("test topics");
        let topics = Topics::with_prefix(test_topics.prefix.clone());
        for spec in topics.plan(config.topics.partitions, 1) {
            test_topics.adopt(&spec.name);
        }
        let mut ingest = Self::start_on(config, &bootstrap(), topics).await;
        ingest.test_topics = Some(test_topics);
        ingest
    }

    /// Starts ingest like [`TestIngest::start`] with an API keys file of `keys`, each
    /// `(client id, key, disabled)` (the file is read at start).
    pub async fn with_keys(keys: &[(&str, &str, bool)], config: Config) -> Self {
        let entries: Vec<Value> = keys
            .iter()
            .map(|(client, key, disabled)| {
                json!({"client_id": client, "key_sha256": sha256_hex(key), "disabled": disabled})
            })
            .collect();
        let mut file = tempfile::NamedTempFile::new().expect("keys file");
        file.write_all(Value::from(entries).to_string().as_bytes())
            .expect("keys written");
        Self::start(Config {
            api_keys_file: Some(file.path().to_owned()),
            ..config
        })
        .await
    }

    /// Starts ingest on port 0 against `bootstrap` with `topics` (no topic cleanup).
    pub async fn start_on(config: Config, bootstrap: &str, topics: Topics) -> Self {
        orderpipe_runtime::telemetry::init("orderpipe_ingest=debug,warn");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let server = Server::with_listener(listener, config, bootstrap, topics.clone())
            .await
            .expect("ingest starts");
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(shutdown.clone()));
        Self {
            addr,
            topics,
            shutdown,
            task,
            test_topics: None,
        }
    }

    /// A new connection to the server.
    pub fn conn(&self) -> Conn {
        Conn::new(self.addr)
    }

    /// Stops the server and returns what `serve` returned.
    pub async fn stop(self) -> Result<(), ServerError> {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("ingest stops within 15 s")
            .expect("serve task did not panic")
    }

    /// Waits until `/readyz` answers `want` (at most `timeout`).
    pub async fn wait_ready(&self, want: u16, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut conn = self.conn();
        loop {
            let reply = conn.get("/readyz").await;
            if reply.status.as_u16() == want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz still {} after {timeout:?}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// An address nothing listens on: a port bound and released.
pub fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

/// A valid order body (total 2 * 1999 + 500 = 4498).
pub fn order_json() -> Value {
    json!({
        "customer_id": "c-1",
        "currency": "EUR",
        "lines": [
            {"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999},
            {"sku": "SKU-2", "quantity": 1, "unit_price_minor": 500}
        ],
        "total_minor": 4498,
        "payment": {"method": "card", "token": "tok_test_4242"}
    })
}

/// The sample order as text.
pub fn order_body() -> String {
    order_json().to_string()
}

/// The order id of a 202 answer (panics on anything else).
pub fn accepted_id(reply: &Reply) -> String {
    assert_eq!(reply.status, 202, "expected 202, got {reply:?}");
    let body = reply.json();
    assert_eq!(body["status"], "accepted", "{body}");
    body["order_id"]
        .as_str()
        .expect("order_id is a string")
        .to_owned()
}

/// The problem document of an error answer, checked for the media type and `status` field.
pub fn problem(reply: &Reply) -> Problem {
    assert!(
        http::is_problem(reply),
        "expected application/problem+json, got {:?}: {:?}",
        reply.headers.get("content-type"),
        String::from_utf8_lossy(&reply.body)
    );
    let problem: Problem = serde_json::from_slice(&reply.body).expect("problem document");
    assert_eq!(
        problem.status,
        reply.status.as_u16(),
        "status field = HTTP status: {problem:?}"
    );
    assert!(
        problem.type_.starts_with("urn:orderpipe:problem:"),
        "{problem:?}"
    );
    assert!(
        !problem.title.is_empty() && !problem.detail.is_empty(),
        "{problem:?}"
    );
    problem
}

/// A consumer reading every partition of `topic` from the beginning (no group join to wait for).
pub fn topic_reader(topic: &str, partitions: i32) -> StreamConsumer {
    let group = format!("reader-{}", orderpipe_testkit::unique_suffix());
    let reader = consumer(&group, false).expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    reader.assign(&assignment).expect("assign");
    reader
}

/// Reads up to `n` messages of `topic` (all partitions), waiting at most `timeout`.
pub async fn read_topic(
    topic: &str,
    partitions: i32,
    n: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let reader = topic_reader(topic, partitions);
    consume_n(&reader, n, timeout).await
}

/// Sum of the end offsets of `topic`'s partitions on the test broker.
pub fn end_offsets(topic: &str, partitions: i32) -> i64 {
    let reader = topic_reader(topic, partitions);
    (0..partitions)
        .map(|p| orderpipe_testkit::kafka::high_watermark(&reader, topic, p).expect("watermark"))
        .sum()
}

/// Message key as text.
pub fn key_str(message: &OwnedMessage) -> &str {
    use rdkafka::Message;
    message
        .key()
        .map(|k| std::str::from_utf8(k).expect("UTF-8 key"))
        .unwrap_or("")
}
