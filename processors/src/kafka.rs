//! Kafka client setup shared by every stage (one place, so all stages agree on the settings that
//! make exactly-once work): the group consumer, the transactional or idempotent producer, the
//! changelog restore consumer, and idempotent creation of a stage's changelog and dead-letter topics.

use std::time::Duration;

use orderpipe_schemas::Topics;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::runner::{Config, Error, ProcessingMode};

/// How long setup calls (metadata, topic creation, init_transactions) wait for the broker.
pub(crate) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// `message.timeout.ms` of stage producers; below the transaction timeout, as librdkafka requires.
const MESSAGE_TIMEOUT_MS: &str = "30000";

/// Settings every client shares.
pub(crate) fn base_config(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("client.id", client_id)
        // Retry broker reconnects every second at most (the default backs off up to 10 s).
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000");
    config
}

/// The operator's extra settings (`Config::kafka_options`), applied last so they win.
fn with_options(mut client: ClientConfig, config: &Config) -> ClientConfig {
    for (key, value) in &config.kafka_options {
        client.set(key, value);
    }
    client
}

/// Consumer group of a stage: `<prefix>orderpipe-<stage>`.
pub fn group_id(topics: &Topics, stage: &str) -> String {
    format!("{}orderpipe-{stage}", topics.prefix())
}

/// `transactional.id` of one stage instance: `<prefix>orderpipe-<stage>-<instance>`.
pub fn transactional_id(topics: &Topics, stage: &str, instance: &str) -> String {
    format!("{}orderpipe-{stage}-{instance}", topics.prefix())
}

/// The stage's group consumer: read_committed, manual offsets, cooperative-sticky assignment and
/// static membership (`group.instance.id = <stage>-<instance>`), so that a restarted instance gets
/// its partitions back at once instead of waiting for a session timeout (and because the testbed
/// broker never expires a SIGKILLed dynamic member).
pub(crate) fn consumer_config(
    bootstrap: &str,
    topics: &Topics,
    stage: &str,
    config: &Config,
) -> ClientConfig {
    let mut client = base_config(
        bootstrap,
        &format!("orderpipe-{stage}-{}", config.instance_id),
    );
    client
        .set("group.id", group_id(topics, stage))
        .set(
            "group.instance.id",
            format!("{stage}-{}", config.instance_id),
        )
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "statistics.interval.ms",
            config.stats_interval.as_millis().to_string(),
        );
    with_options(client, config)
}

/// The stage's producer: transactional (`exactly-once`) or idempotent with `acks=all`
/// (`at-least-once`).
pub(crate) fn producer_config(
    bootstrap: &str,
    topics: &Topics,
    stage: &str,
    config: &Config,
) -> ClientConfig {
    let mut client = base_config(
        bootstrap,
        &format!("orderpipe-{stage}-{}-producer", config.instance_id),
    );
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The runner enqueues a whole batch, then waits for it: lingering only adds latency.
        .set("linger.ms", "1")
        .set("message.timeout.ms", MESSAGE_TIMEOUT_MS);
    if config.processing == ProcessingMode::ExactlyOnce {
        client
            .set(
                "transactional.id",
                transactional_id(topics, stage, &config.instance_id),
            )
            .set("transaction.timeout.ms", "60000");
    }
    with_options(client, config)
}

/// A manually assigned consumer that reads changelog partitions from the beginning to their end
/// (read_committed: aborted state updates are never restored). It never joins or commits in the
/// group it names (librdkafka wants a `group.id` for `assign`).
pub(crate) fn restore_consumer_config(
    bootstrap: &str,
    topics: &Topics,
    stage: &str,
    config: &Config,
) -> ClientConfig {
    let mut client = base_config(
        bootstrap,
        &format!("orderpipe-{stage}-{}-restore", config.instance_id),
    );
    client
        .set("group.id", format!("{}-restore", group_id(topics, stage)))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // The broker holds a fetch for up to fetch.wait.max.ms when there is nothing new, and the
        // end of the partition is only reported after such a fetch: keep restore from paying it.
        .set("fetch.wait.max.ms", "10");
    with_options(client, config)
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

/// Creates the stage's `<prefix><stage>.changelog` (compacted) and `<prefix><stage>.dlq` topics
/// with `partitions` partitions each, unless they exist. The changelog must have as many
/// partitions as the stage's input topic (state of input partition N lives in changelog
/// partition N). Returns the names actually created (tests adopt them for deletion).
pub async fn ensure_topics(
    bootstrap: &str,
    topics: &Topics,
    stage: &str,
    partitions: i32,
) -> Result<Vec<String>, Error> {
    let admin: AdminClient<DefaultClientContext> = base_config(bootstrap, "orderpipe-admin")
        .create()
        .map_err(|source| Error::Kafka {
            context: "creating admin client",
            source,
        })?;
    let options = AdminOptions::new()
        .request_timeout(Some(SETUP_TIMEOUT))
        .operation_timeout(Some(SETUP_TIMEOUT));
    let changelog = topics.changelog(stage);
    let dlq = topics.dlq(stage);
    let new_topics = [
        NewTopic::new(&changelog, partitions, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact")
            // Compaction only cleans closed segments: roll them hourly so that a hot SKU's
            // reservation records (tombstoned once done) do not pile up for a week.
            .set("segment.ms", "3600000"),
        NewTopic::new(&dlq, partitions, TopicReplication::Fixed(1)),
    ];
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .map_err(|source| Error::Kafka {
            context: "creating topics",
            source,
        })?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(Error::CreateTopic { topic: name, code }),
        }
    }
    if !created.is_empty() {
        tracing::info!(stage, topics = ?created, "created stage topics");
    }
    Ok(created)
}
