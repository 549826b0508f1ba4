//! Kafka side of the harness: unique topic names and groups per test, clients configured for the
//! broker in `KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`), and topic deletion when the test ends.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use orderpipe_runtime::kafka;
use orderpipe_schemas::TopicSpec;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::Message;

/// The broker address list tests use.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// A client configuration pointing at the test broker (the product's shared client settings).
pub fn client_config() -> ClientConfig {
    kafka::client(&bootstrap(), "orderpipe-test")
}

/// An idempotent producer with `acks=all`: the product's preset.
pub fn producer() -> anyhow::Result<FutureProducer> {
    kafka::idempotent_producer(&bootstrap(), "orderpipe-test")
        .set("message.timeout.ms", "10000")
        .create()
        .context("creating producer")
}

/// A transactional producer with the given `transactional.id` (the product's preset),
/// transactions already initialised.
pub fn transactional_producer(transactional_id: &str) -> anyhow::Result<FutureProducer> {
    let producer: FutureProducer =
        kafka::transactional_producer(&bootstrap(), "orderpipe-test", transactional_id)
            .set("message.timeout.ms", "10000")
            .create()
            .context("creating transactional producer")?;
    rdkafka::producer::Producer::init_transactions(&producer, Duration::from_secs(10))?;
    Ok(producer)
}

/// A consumer in `group` reading from the earliest offset, `read_committed` or not.
pub fn consumer(group: &str, read_committed: bool) -> anyhow::Result<StreamConsumer> {
    client_config()
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .context("creating consumer")
}

/// Receive until `n` messages arrived or `timeout` passed; returns what arrived.
pub async fn consume_n(
    consumer: &StreamConsumer,
    n: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, consumer.recv()).await {
            Ok(Ok(message)) => out.push(message.detach()),
            Ok(Err(err)) => panic!("consumer error: {err}"),
            Err(_) => break,
        }
    }
    out
}

/// Payload of a message as UTF-8 text (empty when absent).
pub fn payload_str(message: &OwnedMessage) -> &str {
    message
        .payload()
        .map(|bytes| std::str::from_utf8(bytes).expect("payload is UTF-8"))
        .unwrap_or("")
}

/// The topics and groups of one test, all under a unique prefix; created topics are deleted on drop.
pub struct TestTopics {
    /// The unique prefix, e.g. `t-1a2b3c4d5e6f.`; pass it to components as their topic prefix.
    pub prefix: String,
    created: Vec<String>,
}

impl TestTopics {
    /// A fresh, unique prefix on the test broker.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            prefix: format!("t-{}.", crate::unique_suffix()),
            created: Vec::new(),
        })
    }

    /// The full name of a topic (or group) under this test's prefix.
    pub fn name(&self, base: &str) -> String {
        format!("{}{}", self.prefix, base)
    }

    /// Create `base` under the prefix with `partitions` partitions (replication 1) through the
    /// product's topic creation, which returns once the broker serves every partition; returns
    /// the full name.
    pub async fn create(&mut self, base: &str, partitions: i32) -> anyhow::Result<String> {
        let name = self.name(base);
        let spec = TopicSpec::new(name.clone(), partitions, 1);
        let created = kafka::create_topics(&bootstrap(), &[], &[spec]).await?;
        if created.is_empty() {
            bail!("topic {name} exists already: the prefix is meant to be unique to this test");
        }
        self.created.push(name.clone());
        Ok(name)
    }

    /// Record topics created by the code under test, so that they are deleted too.
    pub fn adopt(&mut self, full_name: &str) {
        self.created.push(full_name.to_string());
    }
}

impl Drop for TestTopics {
    fn drop(&mut self) {
        if self.created.is_empty() {
            return;
        }
        // Drop cannot await; delete on a thread of its own so this works inside or outside a runtime.
        let names = std::mem::take(&mut self.created);
        let config = client_config();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let admin: AdminClient<DefaultClientContext> = config.create().ok()?;
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(5)));
                admin.delete_topics(&refs, &options).await.ok()
            })
        })
        .join();
    }
}

/// Commit-free helper: the high watermark (end offset) of a partition. Asks again for a few
/// seconds while the partition has no leader yet (a topic created a moment ago).
pub fn high_watermark(
    consumer: &StreamConsumer,
    topic: &str,
    partition: i32,
) -> anyhow::Result<i64> {
    use rdkafka::error::RDKafkaErrorCode::{
        LeaderNotAvailable, NotLeaderForPartition, UnknownTopicOrPartition,
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
            Ok((_, high)) => return Ok(high),
            Err(err)
                if matches!(
                    err.rdkafka_error_code(),
                    Some(NotLeaderForPartition | LeaderNotAvailable | UnknownTopicOrPartition)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(err) => return Err(err.into()),
        }
    }
}
