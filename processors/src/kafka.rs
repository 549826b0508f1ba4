//! The stages' Kafka clients, from the presets of `orderpipe_runtime::kafka`: the group consumer,
//! the transactional or idempotent producer, the changelog restore reader, and the creation of a
//! stage's own changelog and dead-letter topics (tests and benches; `orderpipe run` creates the
//! whole topic plan).

use std::time::Duration;

use orderpipe_runtime::kafka::{self, SETUP_TIMEOUT};
use orderpipe_schemas::Topics;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::runner::{Config, Error, ProcessingMode};

/// `message.timeout.ms` of stage producers; below the transaction timeout, as librdkafka requires.
const MESSAGE_TIMEOUT_MS: &str = "30000";

/// Consumer group of a stage: `<prefix>orderpipe-<stage>`.
pub fn group_id(topics: &Topics, stage: &str) -> String {
    format!("{}orderpipe-{stage}", topics.prefix())
}

/// `transactional.id` of one stage instance: `<prefix>orderpipe-<stage>-<instance>`.
pub fn transactional_id(topics: &Topics, stage: &str, instance: &str) -> String {
    format!("{}orderpipe-{stage}-{instance}", topics.prefix())
}

/// The stage's group consumer (`group.instance.id = <stage>-<instance>`: static membership, also
/// because the testbed broker never expires a SIGKILLed dynamic member).
pub(crate) fn consumer_config(
    bootstrap: &str,
    topics: &Topics,
    stage: &str,
    config: &Config,
) -> ClientConfig {
    let client = kafka::group_consumer(
        bootstrap,
        &format!("orderpipe-{stage}-{}", config.instance_id),
        &group_id(topics, stage),
        &format!("{stage}-{}", config.instance_id),
        config.stats_interval,
    );
    kafka::with_options(client, &config.kafka_options)
}

/// The stage's producer: transactional (`exactly-once`) or idempotent with `acks=all`
/// (`at-least-once`).
pub(crate) fn producer_config(
    bootstrap: &str,
    topics: &Topics,
    stage: &str,
    config: &Config,
) -> ClientConfig {
    let client_id = format!("orderpipe-{stage}-{}-producer", config.instance_id);
    let mut client = if config.processing == ProcessingMode::ExactlyOnce {
        let id = transactional_id(topics, stage, &config.instance_id);
        kafka::transactional_producer(bootstrap, &client_id, &id)
    } else {
        kafka::idempotent_producer(bootstrap, &client_id)
    };
    client
        // The runner enqueues a whole batch, then waits for it: lingering only adds latency.
        .set("linger.ms", "1")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
    kafka::with_options(client, &config.kafka_options)
}

/// A manually assigned reader of changelog partitions from the beginning to their end
/// (read_committed: aborted state updates are never restored).
pub(crate) fn restore_consumer_config(
    bootstrap: &str,
    topics: &Topics,
    stage: &str,
    config: &Config,
) -> ClientConfig {
    let mut client = kafka::assigned_reader(
        bootstrap,
        &format!("orderpipe-{stage}-{}-restore", config.instance_id),
        &format!("{}-restore", group_id(topics, stage)),
    );
    // The broker holds a fetch for up to fetch.wait.max.ms when there is nothing new, and the
    // end of the partition is only reported after such a fetch: keep restore from paying it.
    client.set("fetch.wait.max.ms", "10");
    kafka::with_options(client, &config.kafka_options)
}

/// Partition count of `topic`, or `None` if it does not exist. A topic created a moment ago may
/// not be in every broker's metadata yet (Apache Kafka answers CreateTopics once the controller
/// has it; brokers learn of it shortly after): an unknown topic is asked about again for up to
/// `TOPIC_VISIBLE_WAIT` before it counts as missing.
pub(crate) fn partition_count<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
) -> Result<Option<i32>, Error> {
    let deadline = std::time::Instant::now() + TOPIC_VISIBLE_WAIT;
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), SETUP_TIMEOUT)
            .map_err(|source| Error::Kafka {
                context: "fetching topic metadata",
                source,
            })?;
        let count = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.partitions().len() as i32);
        if count.is_some() || std::time::Instant::now() >= deadline {
            return Ok(count);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long a stage waits for a topic that is not (yet) in the broker's metadata.
const TOPIC_VISIBLE_WAIT: Duration = Duration::from_secs(10);

/// Creates the stage's own topics ([`Topics::stage_plan`]: changelog and dead-letter topic) with
/// `partitions` partitions each and replication 1, unless they exist. Returns the names actually
/// created (tests adopt them for deletion).
pub async fn ensure_topics(
    bootstrap: &str,
    topics: &Topics,
    stage: &str,
    partitions: i32,
) -> Result<Vec<String>, Error> {
    Ok(kafka::create_topics(bootstrap, &[], &topics.stage_plan(stage, partitions, 1)).await?)
}
