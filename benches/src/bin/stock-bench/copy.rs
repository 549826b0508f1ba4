//! The copy baselines: a plain and a transactional consume -> produce loop.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use orderpipe_benches::kafka as bench_kafka;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::Message;
use uuid::Uuid;

use crate::harness::{load, topics_for, Reader};
use crate::{Args, Measured};

/// A consume -> produce copy of `payloads` (keyed `HOT`), plain or in transactions of the
/// stages' batch size.
pub(crate) async fn copy(
    args: &Args,
    name: &'static str,
    transactional: bool,
    payloads: Vec<Vec<u8>>,
) -> anyhow::Result<Measured> {
    eprintln!(
        "{name}: consume -> produce copy of {} messages",
        payloads.len()
    );
    let (_test_topics, topics) = topics_for(name).await?;
    let n = payloads.len();
    load(&args.bootstrap, &topics.stock, "HOT", &payloads).await?;

    // One warm-up record (below) comes out before the n copies.
    let reader = Reader::start(&args.bootstrap, &topics.orders, n + 1, name)?;
    let bootstrap = args.bootstrap.clone();
    let (input, output) = (topics.stock.clone(), topics.orders.clone());
    let (batch_max, linger) = (args.batch_max_messages.max(1), args.batch_linger);
    let copier = tokio::task::spawn_blocking(move || -> anyhow::Result<SystemTime> {
        let consumer: BaseConsumer = bench_kafka::copy_consumer(
            &bootstrap,
            &format!("bench-copy-{}", Uuid::new_v4().simple()),
        )
        .create()?;
        let transactional_id = format!("bench-copy-{}", Uuid::new_v4().simple());
        let producer: BaseProducer = bench_kafka::copy_producer(
            &bootstrap,
            transactional.then_some(transactional_id.as_str()),
        )
        .create()?;
        const TIMEOUT: Duration = Duration::from_secs(30);
        // Warm up the producer (metadata, producer id, transaction coordinator) outside the
        // clock, as the stage's producer is (spawn_stage initialises it before consuming).
        if transactional {
            producer.init_transactions(TIMEOUT)?;
            producer.begin_transaction()?;
        }
        producer
            .send(
                BaseRecord::<str, str>::to(&output)
                    .key("warm-up")
                    .payload("warm-up"),
            )
            .map_err(|(e, _)| e)?;
        producer.flush(TIMEOUT)?;
        if transactional {
            producer.commit_transaction(TIMEOUT)?;
            producer.begin_transaction()?;
        }
        consumer.subscribe(&[&input])?;
        let mut copied = 0;
        let mut in_batch = 0;
        let mut batch_started: Option<Instant> = None;
        let mut first = None;
        while copied < n {
            let wait = batch_started.map_or(Duration::from_millis(100), |t| {
                linger
                    .saturating_sub(t.elapsed())
                    .max(Duration::from_millis(1))
            });
            match consumer.poll(wait) {
                Some(Ok(message)) => {
                    first.get_or_insert_with(SystemTime::now);
                    batch_started.get_or_insert_with(Instant::now);
                    let payload = message.payload().unwrap_or_default();
                    let mut record = BaseRecord::<[u8], [u8]>::to(&output).payload(payload);
                    if let Some(key) = message.key() {
                        record = record.key(key);
                    }
                    loop {
                        match producer.send(record) {
                            Ok(()) => break,
                            Err((_, back)) => {
                                record = back;
                                producer.poll(Duration::from_millis(5));
                            }
                        }
                    }
                    producer.poll(Duration::ZERO);
                    copied += 1;
                    in_batch += 1;
                }
                Some(Err(err)) => bail!("{name} consumer: {err}"),
                None => {}
            }
            let lingered = batch_started.is_some_and(|t| t.elapsed() >= linger);
            if transactional && in_batch > 0 && (in_batch >= batch_max || lingered || copied == n) {
                // As the runner does: serve delivery reports in 1 ms steps before committing;
                // commit_transaction's own flush polls in 100 ms steps and would make this floor
                // a ceiling of ~10 transactions/s.
                while producer.in_flight_count() > 0 {
                    producer.poll(Duration::from_millis(1));
                }
                let position = consumer.position()?;
                let group = consumer
                    .group_metadata()
                    .context("consumer group metadata")?;
                producer.send_offsets_to_transaction(&position, &group, TIMEOUT)?;
                producer.commit_transaction(TIMEOUT)?;
                producer.begin_transaction()?;
                in_batch = 0;
                batch_started = None;
            } else if !transactional && (in_batch >= batch_max || lingered) {
                in_batch = 0;
                batch_started = None;
            }
        }
        producer.flush(TIMEOUT)?;
        if transactional {
            producer.abort_transaction(TIMEOUT)?;
        } else {
            consumer.commit_consumer_state(CommitMode::Sync)?;
        }
        Ok(first.expect("copied at least one message"))
    });
    let outputs = reader.finish().await?;
    let first_consumed = copier.await??;
    Ok(Measured {
        name: name.into(),
        messages: n,
        elapsed: outputs.last.duration_since(first_consumed)?,
    })
}
