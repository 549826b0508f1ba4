//! `orderpipe dlq redrive`: letters back to their source topics, each with its marker, in one
//! Kafka transaction, so that a letter is redriven at most once (see the module notes of
//! [`crate::dlq`]).

use std::time::Duration;

use anyhow::{bail, Context};
use orderpipe_runtime::kafka;
use orderpipe_schemas::{TopicSpec, Topics};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use super::{marker_key, read_letters, redriven_topic, select, LetterId, REDRIVE_HEADER};
use crate::prompt::confirm;

/// Timeout of the transactional calls.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends the chosen letters back to their source topics with a marker each, in one transaction.
#[allow(clippy::too_many_arguments)]
pub(super) fn redrive(
    bootstrap: &str,
    options: &[(String, String)],
    topics: &Topics,
    stage: &str,
    ids: &[LetterId],
    all: bool,
    dry_run: bool,
    yes: bool,
    replication: i32,
) -> anyhow::Result<()> {
    let dlq_topic = topics.dlq(stage);
    let marker_topic = redriven_topic(topics, stage);
    let producer = if dry_run {
        None
    } else {
        ensure_marker_topic(bootstrap, options, &marker_topic, replication)?;
        let transactional_id = format!("{}orderpipe-dlq-redrive-{stage}", topics.prefix());
        let producer: BaseProducer = kafka::with_options(
            kafka::transactional_producer(bootstrap, "orderpipe-dlq-redrive", &transactional_id),
            options,
        )
        .create()
        .context("creating the redrive producer")?;
        // Fences any other redriver of this stage and completes its open transaction, so the
        // markers read below include every redrive that will ever commit before ours.
        producer
            .init_transactions(TXN_TIMEOUT)
            .context("initialising the redrive transaction")?;
        Some(producer)
    };
    let letters = read_letters(bootstrap, options, topics, stage)?;
    let chosen = if ids.is_empty() {
        letters
            .into_iter()
            .filter(|l| l.redriven.is_none())
            .collect::<Vec<_>>()
    } else {
        let chosen = select(letters, ids, all)?;
        let done: Vec<String> = chosen
            .iter()
            .filter_map(|l| {
                l.redriven.as_ref().map(|m| {
                    format!(
                        "{} (redriven at {})",
                        l.id,
                        m["redriven_at"].as_str().unwrap_or("?")
                    )
                })
            })
            .collect();
        if !done.is_empty() {
            bail!(
                "refusing to redrive letters of stage {stage} that were already redriven: {}; \
                 a letter is sent back at most once",
                done.join(", ")
            );
        }
        chosen
    };
    if chosen.is_empty() {
        println!("nothing to redrive: every dead letter of stage {stage} was redriven already");
        return Ok(());
    }
    for l in &chosen {
        if l.source_topic.is_empty() {
            bail!(
                "letter {} has no source topic header: cannot tell where to send it",
                l.id
            );
        }
    }
    let verb = if dry_run {
        "would redrive"
    } else {
        "redriving"
    };
    for l in &chosen {
        println!(
            "{verb} {} ({}) -> {} (originally partition {} offset {}), {} bytes",
            l.id,
            l.reason,
            l.source_topic,
            l.source_partition,
            l.source_offset,
            l.payload.as_ref().map_or(0, Vec::len)
        );
    }
    let Some(producer) = producer else {
        println!(
            "dry run: {} letters of stage {stage} would be redriven; nothing sent",
            chosen.len()
        );
        return Ok(());
    };
    if all
        && !yes
        && !confirm(&format!(
            "redrive {} letters of stage {stage}?",
            chosen.len()
        ))?
    {
        bail!("not confirmed: nothing redriven (pass --yes to skip the question)");
    }
    producer
        .begin_transaction()
        .context("beginning the redrive transaction")?;
    let sent = (|| -> anyhow::Result<()> {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for l in &chosen {
            let id = marker_key(&dlq_topic, l.id);
            let headers = OwnedHeaders::new().insert(Header {
                key: REDRIVE_HEADER,
                value: Some(&id),
            });
            let mut record = BaseRecord::<[u8], [u8]>::to(&l.source_topic).headers(headers);
            if let Some(key) = &l.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &l.payload {
                record = record.payload(payload.as_slice());
            }
            send(&producer, record)?;
            let marker = serde_json::json!({
                "letter": id,
                "reason": l.reason,
                "to_topic": l.source_topic,
                "redriven_at": now,
            })
            .to_string();
            send(
                &producer,
                BaseRecord::<str, str>::to(&marker_topic)
                    .key(&id)
                    .payload(&marker),
            )?;
        }
        producer
            .commit_transaction(TXN_TIMEOUT)
            .context("committing the redrive transaction")?;
        Ok(())
    })();
    if let Err(err) = sent {
        let _ = producer.abort_transaction(TXN_TIMEOUT);
        return Err(err.context("nothing redriven (transaction aborted)"));
    }
    println!(
        "redrove {} letters of stage {stage} (marked in {marker_topic})",
        chosen.len()
    );
    Ok(())
}

fn send<K, P>(producer: &BaseProducer, mut record: BaseRecord<'_, K, P>) -> anyhow::Result<()>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                back,
            )) => {
                record = back;
                producer.poll(Duration::from_millis(50));
            }
            Err((err, _)) => return Err(err).context("producing"),
        }
    }
}

/// Creates the compacted marker topic (one partition: markers are few) unless it exists.
fn ensure_marker_topic(
    bootstrap: &str,
    options: &[(String, String)],
    topic: &str,
    replication: i32,
) -> anyhow::Result<()> {
    let spec = TopicSpec {
        name: topic.to_owned(),
        partitions: 1,
        replication_factor: replication,
        compacted: true,
    };
    // We are inside `spawn_blocking`: run the admin future from this thread.
    tokio::runtime::Handle::current()
        .block_on(kafka::create_topics(bootstrap, options, &[spec]))
        .with_context(|| format!("creating {topic}"))?;
    Ok(())
}
