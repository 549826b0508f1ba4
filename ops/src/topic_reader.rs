//! Reading topics from their beginning up to the end offsets they have when the read starts,
//! read_committed, by manual assignment (no group is joined or moved): what `verify` audits and
//! what `dlq` lists. Positions, not messages, say when a partition is done: they move past
//! transaction markers, which are never delivered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use orderpipe_runtime::kafka;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use uuid::Uuid;

/// Calls `each` with every committed record of `topics` up to their ends at the call, failing
/// when that takes longer than `within` (an open transaction holds a read_committed reader back).
/// A missing topic reads as empty. `client_id` names the reader in the broker's logs; `options`
/// are the operator's Kafka client options (`--kafka-option`).
pub fn read_to_end(
    bootstrap: &str,
    options: &[(String, String)],
    client_id: &str,
    topics: &[&str],
    within: Duration,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<()> {
    let group = format!("{client_id}-{}", Uuid::new_v4().simple());
    let mut reader = kafka::assigned_reader(bootstrap, client_id, &group);
    reader.set("fetch.wait.max.ms", "50");
    let consumer: BaseConsumer = kafka::with_options(reader, options)
        .create()
        .context("creating a topic reader")?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for &topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .with_context(|| format!("reading metadata of {topic}"))?;
        let partitions = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .flat_map(|t| t.partitions());
        for partition in partitions {
            let (_, high) = crate::lag::watermarks(&consumer, topic, partition.id())?;
            if high > 0 {
                assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
                ends.insert((topic.to_owned(), partition.id()), high);
            }
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + within;
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => each(&message),
            // The reader reports partition ends; the positions below say when to stop.
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(err @ KafkaError::MessageConsumptionFatal(_))) => {
                return Err(err).context("reading the topics")
            }
            // A broker down or restarting (BrokerTransportFailure, AllBrokersDown...) is reported
            // here too; librdkafka reconnects and the read goes on. The deadline bounds it.
            Some(Err(err)) => {
                tracing::warn!(error = %err, "reading the topics: transient consumer error");
            }
        }
        let positions = consumer.position()?;
        let done = positions.elements().iter().all(|e| match e.offset() {
            Offset::Offset(position) => ends
                .get(&(e.topic().to_owned(), e.partition()))
                .is_none_or(|end| position >= *end),
            _ => false,
        });
        if done {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "reading {topics:?} did not reach their end within {within:?} (an open transaction?)"
            );
        }
    }
}
