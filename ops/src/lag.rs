//! `orderpipe lag`: per consumer group and partition, for every stage and both projectors, the
//! committed offset against the end of the partition, and how old the oldest unprocessed record
//! is (the timestamp of the record at the committed offset).
//!
//! Read-only: the groups' committed offsets are fetched with a consumer that never joins them, and
//! the records at those offsets are read with manual assignment (read_committed). A gap made only
//! of transaction markers or aborted records counts as no lag.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use orderpipe_runtime::kafka;
use orderpipe_schemas::Topics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;
use uuid::Uuid;

use crate::cli::LagArgs;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The stages with a consumer group, and what they read.
pub const STAGES: [&str; 4] = ["stock", "payments", "saga", "notifications"];

/// One group on one partition.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionLag {
    /// Who reads: a stage name or `projections.orders` / `projections.stock`.
    pub consumer: String,
    /// Consumer group id.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset the group will process (`None`: the group never committed here; it starts
    /// at the beginning).
    pub committed: Option<i64>,
    /// End of the partition (last stable offset, read_committed).
    pub end: i64,
    /// Offsets from the first unprocessed record to the end (0 when only transaction markers or
    /// aborted records lie between the committed position and the end). Markers further on
    /// count: an upper bound of the records waiting.
    pub lag: i64,
    /// Age of the oldest unprocessed record, in milliseconds (`None` when nothing is waiting).
    pub oldest_unprocessed_age_ms: Option<i64>,
}

/// Every group the pipeline runs, with the topic it reads: (consumer name, group id, topic).
pub fn groups(topics: &Topics, projections_group: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = STAGES
        .iter()
        .map(|stage| {
            let topic = if *stage == "stock" {
                &topics.stock
            } else {
                &topics.orders
            };
            (
                (*stage).to_owned(),
                orderpipe_processors::kafka::group_id(topics, stage),
                topic.clone(),
            )
        })
        .collect();
    for (kind, topic) in [("orders", &topics.orders), ("stock", &topics.stock)] {
        out.push((
            format!("projections.{kind}"),
            format!("{}{projections_group}.{kind}", topics.prefix()),
            topic.clone(),
        ));
    }
    out
}

/// Low and high watermarks of a partition, asking again for a few seconds while it has no
/// leader (a topic just created, a leader election).
pub(crate) fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
) -> anyhow::Result<(i64, i64)> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match consumer.fetch_watermarks(topic, partition, TIMEOUT) {
            Ok(w) => return Ok(w),
            Err(err)
                if Instant::now() < deadline
                    && matches!(
                        err.rdkafka_error_code(),
                        Some(
                            rdkafka::types::RDKafkaErrorCode::NotLeaderForPartition
                                | rdkafka::types::RDKafkaErrorCode::LeaderNotAvailable
                                | rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition
                        )
                    ) =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(err) => return Err(err).with_context(|| format!("offsets of {topic}/{partition}")),
        }
    }
}

/// A reader that names `group` (to fetch its committed offsets) without joining it, with the
/// operator's `options` over the preset.
fn consumer(
    bootstrap: &str,
    options: &[(String, String)],
    group: &str,
) -> anyhow::Result<BaseConsumer> {
    let mut reader = kafka::assigned_reader(bootstrap, "orderpipe-lag", group);
    reader.set("fetch.wait.max.ms", "50");
    kafka::with_options(reader, options)
        .create()
        .context("creating a consumer")
}

/// The lag of every group in [`groups`], one row per partition. `options` are the operator's
/// Kafka client options (`--kafka-option`).
pub fn measure(
    bootstrap: &str,
    options: &[(String, String)],
    topics: &Topics,
    projections_group: &str,
) -> anyhow::Result<Vec<PartitionLag>> {
    let probe = consumer(
        bootstrap,
        options,
        &format!("orderpipe-lag-{}", Uuid::new_v4().simple()),
    )?;
    let mut partitions: BTreeMap<String, Vec<(i32, i64, i64)>> = BTreeMap::new();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut rows = Vec::new();
    for (name, group, topic) in groups(topics, projections_group) {
        if !partitions.contains_key(&topic) {
            let metadata = probe
                .fetch_metadata(Some(&topic), TIMEOUT)
                .with_context(|| format!("reading metadata of {topic}"))?;
            let mut list = Vec::new();
            for t in metadata.topics() {
                if let Some(err) = t.error() {
                    anyhow::bail!(
                        "topic {topic}: {err:?} (create it with `orderpipe topics create`)"
                    );
                }
                for p in t.partitions() {
                    let (low, high) = watermarks(&probe, &topic, p.id())?;
                    list.push((p.id(), low, high));
                }
            }
            list.sort_unstable();
            partitions.insert(topic.clone(), list);
        }
        let list = &partitions[&topic];
        // Committed offsets of the group, fetched without joining it.
        let group_consumer = consumer(bootstrap, options, &group)?;
        let mut tpl = TopicPartitionList::new();
        for (p, _, _) in list {
            tpl.add_partition(&topic, *p);
        }
        let committed = group_consumer
            .committed_offsets(tpl, TIMEOUT)
            .with_context(|| format!("committed offsets of group {group}"))?;
        let mut waiting: Vec<(i32, i64, i64)> = Vec::new();
        for (p, low, high) in list {
            let offset = committed
                .find_partition(&topic, *p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            let from = offset.unwrap_or(*low).max(*low);
            if from < *high {
                waiting.push((*p, from, *high));
            }
            rows.push(PartitionLag {
                consumer: name.clone(),
                group: group.clone(),
                topic: topic.clone(),
                partition: *p,
                committed: offset,
                end: *high,
                lag: (*high - from).max(0),
                oldest_unprocessed_age_ms: None,
            });
        }
        let first = first_records(bootstrap, options, &topic, &waiting)?;
        for row in rows.iter_mut().filter(|r| r.group == group) {
            if row.lag == 0 {
                continue;
            }
            match first.get(&row.partition) {
                Some(Some((offset, timestamp))) => {
                    // Transaction markers before the first record are nothing to process.
                    row.lag = (row.end - offset).max(1);
                    row.oldest_unprocessed_age_ms = Some((now_ms - timestamp).max(0));
                }
                // Only markers or aborted records up to the end: nothing to process.
                Some(None) => row.lag = 0,
                // Not read in time: keep the offset lag, age unknown.
                None => {}
            }
        }
    }
    Ok(rows)
}

/// Offset and timestamp of the first committed record at or after each (partition, offset, end): `Some(None)`
/// when the consumer's position reaches the end first (only transaction markers or aborted
/// records in between); missing when it could not be read in time.
fn first_records(
    bootstrap: &str,
    options: &[(String, String)],
    topic: &str,
    from: &[(i32, i64, i64)],
) -> anyhow::Result<BTreeMap<i32, Option<(i64, i64)>>> {
    let mut found = BTreeMap::new();
    if from.is_empty() {
        return Ok(found);
    }
    let reader = consumer(
        bootstrap,
        options,
        &format!("orderpipe-lag-{}", Uuid::new_v4().simple()),
    )?;
    let mut tpl = TopicPartitionList::new();
    for (p, offset, _) in from {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))?;
    }
    reader.assign(&tpl)?;
    let ends: BTreeMap<i32, i64> = from.iter().map(|(p, _, end)| (*p, *end)).collect();
    let deadline = Instant::now() + TIMEOUT;
    while found.len() < from.len() && Instant::now() < deadline {
        // Partition ends (the preset reports them) are told by the positions below.
        if let Some(message) = reader
            .poll(Duration::from_millis(100))
            .filter(|m| !matches!(m, Err(KafkaError::PartitionEOF(_))))
        {
            let message = message.with_context(|| format!("reading {topic}"))?;
            found.entry(message.partition()).or_insert_with(|| {
                Some((
                    message.offset(),
                    message.timestamp().to_millis().unwrap_or(0),
                ))
            });
        }
        // Positions move past transaction markers too: at the end with no record, nothing waits.
        for element in reader.position()?.elements() {
            if let (Offset::Offset(position), Some(end)) =
                (element.offset(), ends.get(&element.partition()))
            {
                if position >= *end {
                    found.entry(element.partition()).or_insert(None);
                }
            }
        }
    }
    Ok(found)
}

fn age(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) => {
            humantime::format_duration(Duration::from_secs(u64::try_from(ms / 1000).unwrap_or(0)))
                .to_string()
        }
    }
}

/// The table: one line per partition, then a total per group.
pub fn render(rows: &[PartitionLag]) -> String {
    let mut out = format!(
        "{:<20} {:<34} {:>4} {:>12} {:>12} {:>10}  {}\n",
        "consumer", "topic", "part", "committed", "end", "lag", "oldest unprocessed"
    );
    let mut totals: BTreeMap<&str, (i64, Option<i64>)> = BTreeMap::new();
    for r in rows {
        out.push_str(&format!(
            "{:<20} {:<34} {:>4} {:>12} {:>12} {:>10}  {}\n",
            r.consumer,
            r.topic,
            r.partition,
            r.committed.map_or("-".into(), |c| c.to_string()),
            r.end,
            r.lag,
            age(r.oldest_unprocessed_age_ms)
        ));
        let total = totals.entry(&r.consumer).or_default();
        total.0 += r.lag;
        total.1 = total.1.max(r.oldest_unprocessed_age_ms);
    }
    out.push('\n');
    for r in rows {
        if let Some((lag, oldest)) = totals.remove(r.consumer.as_str()) {
            out.push_str(&format!(
                "{:<20} group {:<40} lag {:>10}  oldest {}\n",
                r.consumer,
                r.group,
                lag,
                age(oldest)
            ));
        }
    }
    out
}

/// `orderpipe lag`.
pub async fn lag(args: LagArgs) -> anyhow::Result<()> {
    let topics = Topics::with_prefix(args.connections.topic_prefix.clone());
    let bootstrap = args.connections.kafka_bootstrap.clone();
    let options = args.connections.kafka_options.clone();
    let group = args.projections_group.clone();
    let rows = tokio::task::spawn_blocking(move || measure(&bootstrap, &options, &topics, &group))
        .await
        .context("lag task panicked")??;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render(&rows));
    }
    Ok(())
}
