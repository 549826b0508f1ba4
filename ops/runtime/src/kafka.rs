//! The one Kafka layer every library uses, so that all clients agree on the settings that make
//! durability and exactly-once work: client presets (idempotent and transactional producers,
//! read_committed group consumers with static membership, manually assigned readers), the
//! operator's `key=value` options, topic creation from the topic plan
//! ([`orderpipe_schemas::Topics::plan`]), dead-letter headers and consumer lag from librdkafka
//! statistics. It knows no stage: names and settings come from the callers.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use orderpipe_schemas::TopicSpec;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::statistics::Statistics;

/// How long setup calls (metadata, topic creation, init_transactions) wait for the broker.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a Kafka setup call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client could not be created or the broker refused a call: check the settings and the
    /// broker, then restart.
    #[error("kafka: {context}: {source}")]
    Client {
        /// What was being done.
        context: &'static str,
        /// The client's error.
        source: KafkaError,
    },
    /// The broker did not answer a topic creation in time: check that it is up, then restart.
    #[error("creating topics: the broker did not answer within {0:?}")]
    Timeout(Duration),
    /// The broker refused to create a topic: check permissions and settings.
    #[error("creating topic {topic}: {code}")]
    CreateTopic {
        /// Topic name.
        topic: String,
        /// Broker error.
        code: RDKafkaErrorCode,
    },
}

/// Parses an operator option `key=value` (clap `value_parser` of `--kafka-option` and every
/// `--*-kafka-option`).
pub fn parse_option(option: &str) -> Result<(String, String), String> {
    match option.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("kafka option {option:?} is not key=value")),
    }
}

/// Applies the operator's options (security settings and the like) last, so that they win over
/// the presets (e.g. a larger batch size).
pub fn with_options(mut client: ClientConfig, options: &[(String, String)]) -> ClientConfig {
    for (key, value) in options {
        client.set(key, value);
    }
    client
}

/// Settings every client shares: bootstrap servers, client id, reconnect backoff.
pub fn client(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", bootstrap)
        .set("client.id", client_id)
        // librdkafka backs off reconnects exponentially up to 10 s by default; after a broker
        // restart that would keep ingest answering 503 and stages idle for up to 10 s. Retry
        // every second at most.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "1000");
    client
}

/// A producer that never reports a write before every in-sync replica has it (`acks=all`), and
/// whose retries cannot duplicate or reorder it (idempotence).
pub fn idempotent_producer(bootstrap: &str, client_id: &str) -> ClientConfig {
    let mut client = client(bootstrap, client_id);
    client.set("enable.idempotence", "true").set("acks", "all");
    client
}

/// An idempotent producer with a `transactional.id`: one per stage instance, stable across
/// restarts, so that a restarted instance fences its predecessor.
pub fn transactional_producer(
    bootstrap: &str,
    client_id: &str,
    transactional_id: &str,
) -> ClientConfig {
    let mut client = idempotent_producer(bootstrap, client_id);
    client
        .set("transactional.id", transactional_id)
        .set("transaction.timeout.ms", "60000");
    client
}

/// A group consumer: read_committed (aborted transactions are never seen), manual offsets,
/// cooperative-sticky assignment and static membership (`group.instance.id`), so that a restarted
/// instance gets its partitions back at once instead of after a rebalance storm, plus
/// statistics every `stats_interval` (consumer lag; zero turns them off).
pub fn group_consumer(
    bootstrap: &str,
    client_id: &str,
    group: &str,
    instance_id: &str,
    stats_interval: Duration,
) -> ClientConfig {
    let mut client = client(bootstrap, client_id);
    client
        .set("group.id", group)
        .set("group.instance.id", instance_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "statistics.interval.ms",
            stats_interval.as_millis().to_string(),
        );
    client
}

/// A manually assigned read_committed consumer that reads partitions to their end (restore,
/// rebuild). It never joins or commits in the group it names (librdkafka wants a `group.id` for
/// `assign`), so live groups keep their place.
pub fn assigned_reader(bootstrap: &str, client_id: &str, group: &str) -> ClientConfig {
    let mut client = client(bootstrap, client_id);
    client
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    client
}

/// [`create_topics`] for a process starting up: a broker that is restarting, or a cluster still
/// electing its controller, times out or answers with a retriable code, so ask again for about a
/// minute before failing the start (`orderpipe run` uses this; libraries fail fast).
pub async fn create_topics_at_start_up(
    bootstrap: &str,
    options: &[(String, String)],
    plan: &[TopicSpec],
) -> Result<Vec<String>, Error> {
    (|| create_topics(bootstrap, options, plan))
        .retry(startup_backoff())
        .when(Error::is_retriable)
        .notify(|err, after| tracing::warn!(error = %err, retry_in = ?after, "creating topics: retrying"))
        .await
}

/// Backoff of start-up calls that meet a broker not (yet) able to answer: up to about a minute.
pub fn startup_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
        .with_total_delay(Some(Duration::from_secs(60)))
}

impl Error {
    /// Whether asking again later may succeed (the broker is down, busy or moving leadership).
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Timeout(_) => true,
            // rdkafka reports an admin call's own failure as AdminOp, without an error code.
            Error::Client {
                source: KafkaError::AdminOp(code),
                ..
            } => is_retriable_code(code),
            Error::Client { source, .. } => source
                .rdkafka_error_code()
                .is_some_and(|code| is_retriable_code(&code)),
            Error::CreateTopic { code, .. } => is_retriable_code(code),
        }
    }
}

/// Broker answers that mean "not now" rather than "no".
pub fn is_retriable_code(code: &RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode::*;
    matches!(
        code,
        OperationTimedOut
            | RequestTimedOut
            | BrokerTransportFailure
            | AllBrokersDown
            | NotController
            | CoordinatorLoadInProgress
            | CoordinatorNotAvailable
            | NotCoordinator
            | LeaderNotAvailable
            | NotLeaderForPartition
            | NotEnoughReplicas
            | ConcurrentTransactions
    )
}

/// Apache Kafka answers CreateTopics once the controller has the topics; brokers serve them a
/// moment later. Wait (bounded) until every created topic lists a leader for each partition, so
/// callers may describe, produce to or consume from them at once.
async fn wait_until_served<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    topics: &[String],
) {
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    for topic in topics {
        loop {
            let served = client
                .fetch_metadata(Some(topic), Duration::from_secs(2))
                .ok()
                .and_then(|m| {
                    m.topics().iter().find(|t| t.name() == topic).map(|t| {
                        t.error().is_none()
                            && !t.partitions().is_empty()
                            && t.partitions()
                                .iter()
                                .all(|p| p.leader() >= 0 && p.error().is_none())
                    })
                })
                .unwrap_or(false);
            if served || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Creates the topics of `plan` that do not exist yet; existing ones are left as they are, and
/// returns once the created ones are served. Returns the names actually created (tests adopt them
/// for deletion).
pub async fn create_topics(
    bootstrap: &str,
    options: &[(String, String)],
    plan: &[TopicSpec],
) -> Result<Vec<String>, Error> {
    let admin: AdminClient<DefaultClientContext> =
        with_options(client(bootstrap, "orderpipe-admin"), options)
            .create()
            .map_err(|source| Error::Client {
                context: "creating the admin client",
                source,
            })?;
    let admin_options = AdminOptions::new()
        .request_timeout(Some(SETUP_TIMEOUT))
        .operation_timeout(Some(SETUP_TIMEOUT));
    let new_topics: Vec<NewTopic<'_>> = plan
        .iter()
        .map(|spec| {
            spec.configs().iter().fold(
                NewTopic::new(
                    &spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(spec.replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let wait = SETUP_TIMEOUT + Duration::from_secs(5);
    let results = tokio::time::timeout(wait, admin.create_topics(&new_topics, &admin_options))
        .await
        .map_err(|_| Error::Timeout(wait))?
        .map_err(|source| Error::Client {
            context: "creating topics",
            source,
        })?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => created.push(name),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(Error::CreateTopic { topic, code }),
        }
    }
    wait_until_served(admin.inner(), &created).await;
    if !created.is_empty() {
        tracing::info!(topics = ?created, "created topics");
    }
    Ok(created)
}

/// Pipeline-wide topic settings of `orderpipe run` (and of libraries started alone in tests).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct TopicSettings {
    /// Create missing topics at start (`--create-topics=false` where topics are managed elsewhere).
    #[arg(id = "create_topics", long = "create-topics", env = "ORDERPIPE_CREATE_TOPICS",
          aliases = ["ingest-create-topics", "projections-create-dlq"], default_value_t = true,
          action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub create: bool,

    /// Partitions of every topic created at start (events, changelogs, dead letters): one count,
    /// so that changelogs are co-partitioned with the topics they follow.
    #[arg(id = "partitions", long = "partitions", env = "ORDERPIPE_PARTITIONS",
          alias = "ingest-partitions", default_value_t = 12,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,

    /// Replication factor of every topic created at start (3 on a production cluster).
    #[arg(id = "replication_factor", long = "replication-factor", env = "ORDERPIPE_REPLICATION_FACTOR",
          aliases = ["ingest-replication-factor", "projections-dlq-replication-factor"],
          default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: i32,
}

impl Default for TopicSettings {
    /// The documented defaults (the same as the command line's).
    fn default() -> Self {
        Self {
            create: true,
            partitions: 12,
            replication_factor: 1,
        }
    }
}

impl TopicSettings {
    /// Topic creation on, `partitions` partitions, replication 1 (tests, benches).
    pub fn with_partitions(partitions: i32) -> Self {
        Self {
            partitions,
            ..Self::default()
        }
    }

    /// The same settings, topic creation off (for a component whose topics someone else creates).
    pub fn without_creation(&self) -> Self {
        Self {
            create: false,
            ..self.clone()
        }
    }
}

/// Dead-letter header names: why and where from. Tools that inspect or redrive dead letters
/// read these; every stage and projector writes them through [`dead_letter_headers`].
pub mod dlq {
    /// Machine-readable reason (snake_case).
    pub const REASON: &str = "orderpipe.dlq.reason";
    /// Human-readable detail.
    pub const DETAIL: &str = "orderpipe.dlq.detail";
    /// Stage (or projector) that dead-lettered the event.
    pub const STAGE: &str = "orderpipe.dlq.stage";
    /// Topic the event came from.
    pub const TOPIC: &str = "orderpipe.dlq.source.topic";
    /// Its partition.
    pub const PARTITION: &str = "orderpipe.dlq.source.partition";
    /// Its offset.
    pub const OFFSET: &str = "orderpipe.dlq.source.offset";
    /// Every header above, in the order they are written.
    pub const HEADERS: [&str; 6] = [REASON, DETAIL, STAGE, TOPIC, PARTITION, OFFSET];
}

/// Where a dead letter came from and why.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetterSource<'a> {
    /// Machine-readable reason.
    pub reason: &'a str,
    /// Human-readable detail.
    pub detail: &'a str,
    /// Stage or projector name.
    pub stage: &'a str,
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

/// The headers of a dead letter (names in [`dlq`]).
pub fn dead_letter_headers(source: DeadLetterSource<'_>) -> OwnedHeaders {
    let partition = source.partition.to_string();
    let offset = source.offset.to_string();
    let values = [
        source.reason,
        source.detail,
        source.stage,
        source.topic,
        partition.as_str(),
        offset.as_str(),
    ];
    dlq::HEADERS
        .iter()
        .zip(values)
        .fold(OwnedHeaders::new(), |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
            })
        })
}

/// Consumer lag of `topic` summed over the partitions the statistics report a lag for.
pub fn consumer_lag(statistics: &Statistics, topic: &str) -> i64 {
    statistics
        .topics
        .get(topic)
        .map(|topic| {
            topic
                .partitions
                .iter()
                .filter(|(&p, part)| p >= 0 && part.consumer_lag >= 0)
                .map(|(_, part)| part.consumer_lag)
                .sum::<i64>()
        })
        .unwrap_or(0)
}

/// What the statistics say about one partition this consumer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Partition number.
    pub partition: i32,
    /// End of the partition: the last stable offset under read_committed, else the high watermark.
    pub end: Option<i64>,
    /// First offset still in the partition.
    pub start: Option<i64>,
    /// The group's committed offset.
    pub committed: Option<i64>,
}

/// Offsets of the partitions of `topic` this consumer wants; `None` when the statistics do not
/// mention the topic.
pub fn partition_offsets(statistics: &Statistics, topic: &str) -> Option<Vec<PartitionOffsets>> {
    let known = |offset: i64| (offset >= 0).then_some(offset);
    let topic = statistics.topics.get(topic)?;
    Some(
        topic
            .partitions
            .iter()
            .filter(|(&partition, stats)| partition >= 0 && stats.desired)
            .map(|(&partition, stats)| PartitionOffsets {
                partition,
                end: known(stats.ls_offset).or(known(stats.hi_offset)),
                start: known(stats.lo_offset),
                committed: known(stats.committed_offset),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn options_are_key_value() {
        assert_eq!(
            parse_option(" security.protocol = SASL_SSL "),
            Ok(("security.protocol".into(), "SASL_SSL".into()))
        );
        assert!(parse_option("acks").unwrap_err().contains("key=value"));
        assert!(parse_option("=1").is_err());
        let client = with_options(
            idempotent_producer("b:9092", "c"),
            &[("acks".into(), "1".into())],
        );
        assert_eq!(client.get("acks"), Some("1"));
        assert_eq!(client.get("enable.idempotence"), Some("true"));
        assert_eq!(client.get("reconnect.backoff.max.ms"), Some("1000"));
    }

    #[test]
    fn dead_letter_headers_name_every_field() {
        let headers = dead_letter_headers(DeadLetterSource {
            reason: "undecodable",
            detail: "bad json",
            stage: "saga",
            topic: "orders",
            partition: 2,
            offset: 41,
        });
        let pairs: Vec<(&str, &[u8])> = headers
            .iter()
            .map(|h| (h.key, h.value.unwrap_or_default()))
            .collect();
        assert_eq!(pairs.len(), 6);
        assert_eq!(pairs[0], (dlq::REASON, &b"undecodable"[..]));
        assert_eq!(pairs[4], (dlq::PARTITION, &b"2"[..]));
        assert_eq!(pairs[5], (dlq::OFFSET, &b"41"[..]));
    }
}
