//! Writing a batch's effects with its input offsets: one Kafka transaction (exactly-once), or
//! changelog, then outputs, then offsets (at-least-once), and creating the stage producer.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use orderpipe_runtime::kafka::{self, DeadLetterSource};

use super::contexts::{DeliveryContext, StageProducer};
use super::recover::Failure;
use super::run::{Runner, TXN_TIMEOUT};
use super::{Effects, Error};
use crate::metrics;

impl Runner {
    /// Write effects and the batch's next offsets: one transaction, or produce, await
    /// delivery, then commit offsets.
    pub(super) fn write(
        &mut self,
        effects: Effects,
        batch: &[OwnedMessage],
    ) -> Result<(), Failure> {
        let offsets = self.next_offsets(batch);
        let outputs = effects.outputs.len();
        let dead = effects.dead_letters.clone();
        if self.exactly_once() {
            self.write_transaction(&effects, &offsets)?;
        } else {
            self.write_at_least_once(&effects, &offsets)?;
        }
        metrics::transaction(self.name, true);
        metrics::events_in(self.name, batch.len());
        metrics::events_out(self.name, outputs);
        for letter in &dead {
            metrics::dead_letter(self.name, &letter.reason);
            tracing::warn!(
                stage = self.name,
                reason = %letter.reason,
                detail = %letter.detail,
                partition = letter.partition,
                offset = letter.offset,
                "dead-lettered"
            );
        }
        Ok(())
    }

    pub(super) fn next_offsets(&self, batch: &[OwnedMessage]) -> TopicPartitionList {
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        for m in batch {
            let e = next.entry(m.partition()).or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in next {
            tpl.add_partition_offset(&self.input_topic, p, Offset::Offset(o))
                .expect("offsets are valid");
        }
        tpl
    }

    pub(super) fn write_transaction(
        &mut self,
        effects: &Effects,
        offsets: &TopicPartitionList,
    ) -> Result<(), Failure> {
        {
            let _call = self.watchdog.call("begin_transaction");
            self.producer
                .begin_transaction()
                .map_err(|e| self.classify(e))?;
        }
        let result = self.send_all(effects).and_then(|()| {
            if offsets.count() > 0 {
                let group = self.consumer.group_metadata().ok_or_else(|| {
                    Failure::Abortable("no consumer group metadata yet".to_owned())
                })?;
                let _call = self.watchdog.call("send_offsets_to_transaction");
                self.producer
                    .send_offsets_to_transaction(offsets, &group, TXN_TIMEOUT)
                    .map_err(|e| self.classify(e))?;
            }
            self.commit_transaction()
        });
        if let Err(failure) = result {
            if let Failure::Abortable(why) = &failure {
                tracing::warn!(stage = self.name, reason = %why, "aborting transaction");
                // Abort waits for the records already sent to be acknowledged, and their delivery
                // reports are only served by polling this producer: serve them first, or abort
                // times out (30 s) and the producer is rebuilt for nothing.
                let _ = self.drain();
                let _call = self.watchdog.call("abort_transaction");
                if let Err(err) = self.producer.abort_transaction(TXN_TIMEOUT) {
                    return Err(match self.classify(err) {
                        Failure::Fenced => Failure::Fenced,
                        other => Failure::Fatal(format!("abort failed: {}", failure_text(&other))),
                    });
                }
            }
            return Err(failure);
        }
        Ok(())
    }

    pub(super) fn commit_transaction(&self) -> Result<(), Failure> {
        // commit_transaction flushes first, but rdkafka's flush polls in 100 ms steps (BaseProducer
        // `poll` waits out its whole timeout): drain in 1 ms steps so it finds nothing to wait for.
        self.drain()
            .map_err(|e| Failure::Abortable(format!("waiting for deliveries: {e}")))?;
        let mut attempts = 0;
        loop {
            let _call = self.watchdog.call("commit_transaction");
            match self.producer.commit_transaction(TXN_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => {
                    attempts += 1;
                    tracing::warn!(stage = self.name, error = %e, "retrying transaction commit");
                }
                Err(err) => return Err(self.classify(err)),
            }
        }
    }

    pub(super) fn write_at_least_once(
        &mut self,
        effects: &Effects,
        offsets: &TopicPartitionList,
    ) -> Result<(), Failure> {
        // State before effects: an output that reached its topic always has its changelog
        // record, so a redelivered input finds the state it made and repeats its decision.
        self.producer.context().take_failure();
        if !effects.changelog.is_empty() {
            self.send_changelog(effects)?;
            self.await_deliveries()?;
        }
        self.send_outputs(effects)?;
        self.await_deliveries()?;
        if offsets.count() > 0 {
            self.consumer
                .commit(offsets, CommitMode::Sync)
                .map_err(|e| Failure::Abortable(format!("committing offsets: {e}")))?;
        }
        Ok(())
    }

    /// Wait until every enqueued record is acknowledged (or failed) and its delivery report served.
    /// Not `Producer::flush`: that polls in 100 ms steps, which would cap a stage at ~10 batches/s.
    pub(super) fn drain(&self) -> Result<(), String> {
        let deadline = Instant::now() + TXN_TIMEOUT;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} records still in flight after {TXN_TIMEOUT:?}",
                    self.producer.in_flight_count()
                ));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        Ok(())
    }

    pub(super) fn await_deliveries(&self) -> Result<(), Failure> {
        self.drain()
            .map_err(|e| Failure::Abortable(format!("waiting for deliveries: {e}")))?;
        match self.producer.context().take_failure() {
            Some(err) => Err(Failure::Abortable(format!("delivery failed: {err}"))),
            None => Ok(()),
        }
    }

    /// Enqueue every record of `effects`; a full queue is backpressure: serve deliveries, retry.
    pub(super) fn send_all(&self, effects: &Effects) -> Result<(), Failure> {
        self.send_changelog(effects)?;
        self.send_outputs(effects)
    }

    pub(super) fn send_changelog(&self, effects: &Effects) -> Result<(), Failure> {
        for change in &effects.changelog {
            let record = BaseRecord::<str, [u8]>::to(&self.changelog_topic)
                .partition(change.partition)
                .key(change.key.as_str());
            let record = match &change.value {
                Some(value) => record.payload(value.as_slice()),
                None => record,
            };
            self.send(record)?;
        }
        Ok(())
    }

    pub(super) fn send_outputs(&self, effects: &Effects) -> Result<(), Failure> {
        for out in &effects.outputs {
            self.send(
                BaseRecord::to(&out.topic)
                    .key(out.key.as_str())
                    .payload(out.payload.as_slice()),
            )?;
        }
        for letter in &effects.dead_letters {
            let headers = kafka::dead_letter_headers(DeadLetterSource {
                reason: &letter.reason,
                detail: &letter.detail,
                stage: self.name,
                topic: &letter.topic,
                partition: letter.partition,
                offset: letter.offset,
            });
            let mut record = BaseRecord::<[u8], [u8]>::to(&self.dlq_topic).headers(headers);
            if let Some(key) = &letter.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &letter.payload {
                record = record.payload(payload.as_slice());
            }
            self.send(record)?;
        }
        Ok(())
    }

    pub(super) fn send<K, P>(&self, mut record: BaseRecord<'_, K, P>) -> Result<(), Failure>
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(50));
                }
                Err((err, _)) => return Err(self.classify(err)),
            }
        }
    }

    pub(super) fn classify(&self, err: KafkaError) -> Failure {
        if let KafkaError::Transaction(e) = &err {
            if matches!(
                e.code(),
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            ) {
                return Failure::Fenced;
            }
            if e.is_fatal() {
                return Failure::Fatal(err.to_string());
            }
        }
        if let Some(code) = self.producer.client().fatal_error().map(|(code, _)| code) {
            if matches!(
                code,
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            ) {
                return Failure::Fenced;
            }
            return Failure::Fatal(err.to_string());
        }
        Failure::Abortable(err.to_string())
    }
}

/// Create the stage producer; transactional ones are initialised (which fences any older
/// instance with the same `transactional.id` and aborts its open transaction).
pub(crate) fn create_producer(
    config: &ClientConfig,
    transactional: bool,
) -> Result<StageProducer, Error> {
    let producer: StageProducer = config
        .create_with_context(DeliveryContext::default())
        .map_err(|source| Error::Kafka {
            context: "creating producer",
            source,
        })?;
    if transactional {
        // A transaction coordinator that is still loading (a broker started a moment ago) or
        // moving answers with a retriable error: ask again for a while before giving up.
        use backon::BlockingRetryable as _;
        (|| producer.init_transactions(kafka::SETUP_TIMEOUT))
            .retry(orderpipe_runtime::kafka::startup_backoff())
            .sleep(std::thread::sleep)
            .when(|err| match err {
                KafkaError::Transaction(err) => err.is_retriable(),
                other => other
                    .rdkafka_error_code()
                    .is_some_and(|code| orderpipe_runtime::kafka::is_retriable_code(&code)),
            })
            .notify(|err, after| {
                tracing::warn!(error = %err, retry_in = ?after, "initialising transactions: retrying")
            })
            .call()
            .map_err(|source| Error::Kafka {
                context: "initialising transactions",
                source,
            })?;
    }
    Ok(producer)
}

fn failure_text(failure: &Failure) -> String {
    match failure {
        Failure::Abortable(s) | Failure::Fatal(s) => s.clone(),
        Failure::Fenced => "fenced".to_owned(),
    }
}
