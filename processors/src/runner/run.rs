//! The loop on a stage's dedicated thread: poll a batch, let the stage process it, write its
//! effects and input offsets (one transaction, or produce-then-commit), and on any failure drop
//! the in-memory state of the partitions the batch touched (its inputs' partitions and those of
//! its changelog records), restore them from the changelog and seek them back to their committed
//! offsets. Other partitions keep their state and position: nothing of theirs was in the batch.
//!
//! Everything, rebalance callbacks included (they run inside `poll`), happens on this thread, and
//! no transaction is open while polling: a revocation can never race an open transaction.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use orderpipe_runtime::kafka::{self, DeadLetterSource};

use super::{Config, Effects, Error, Input, ProcessingMode, Stage};
use crate::metrics;

/// How long an idle poll waits before the loop runs `tick` and checks for shutdown.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Timeout of transactional calls and of waiting for deliveries.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a changelog restore may take before the stage gives up (and the process restarts).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest pause between attempts after consecutive failed batches.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What the rebalance callbacks tell the loop; drained after every poll.
#[derive(Debug)]
pub(crate) enum GroupEvent {
    Assigned(Vec<i32>),
    Revoked(Vec<i32>),
}

/// Consumer context: records rebalances for the loop and exports consumer lag.
pub(crate) struct RunnerContext {
    pub(crate) stage: &'static str,
    pub(crate) input_topic: String,
    pub(crate) events: Mutex<Vec<GroupEvent>>,
}

impl ClientContext for RunnerContext {
    fn stats(&self, statistics: Statistics) {
        metrics::consumer_lag(
            self.stage,
            kafka::consumer_lag(&statistics, &self.input_topic),
        );
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(stage = self.stage, error = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for RunnerContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let partitions = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements_for_topic(&self.input_topic)
                .iter()
                .map(|e| e.partition())
                .collect()
        };
        let event = match rebalance {
            Rebalance::Assign(tpl) => GroupEvent::Assigned(partitions(tpl)),
            Rebalance::Revoke(tpl) => GroupEvent::Revoked(partitions(tpl)),
            Rebalance::Error(err) => {
                tracing::warn!(stage = self.stage, error = %err, "rebalance error");
                return;
            }
        };
        self.events.lock().expect("group events lock").push(event);
    }
}

/// Producer context: counts failed deliveries (at-least-once checks them after each flush; in a
/// transaction a failed delivery already makes the commit fail).
#[derive(Default)]
pub(crate) struct DeliveryContext {
    failed: Mutex<Option<String>>,
}

impl ClientContext for DeliveryContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka producer error");
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, _)) = result {
            let mut failed = self.failed.lock().expect("delivery lock");
            if failed.is_none() {
                *failed = Some(err.to_string());
            }
        }
    }
}

impl DeliveryContext {
    fn take_failure(&self) -> Option<String> {
        self.failed.lock().expect("delivery lock").take()
    }
}

/// Restore consumer context: partition EOF is how a restore ends, not an error worth a log line.
pub(crate) struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            tracing::warn!(error = %error, reason, "kafka restore consumer error");
        }
    }
}

impl ConsumerContext for RestoreContext {}

pub(crate) type StageConsumer = BaseConsumer<RunnerContext>;
pub(crate) type StageProducer = BaseProducer<DeliveryContext>;

/// Which partitions a failed batch may have changed: their state is rebuilt from the
/// changelog and their input re-read from the committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// Unknown (a panic lost the effects): every assigned partition.
    All,
    /// The partitions of the batch's inputs and of its changelog records.
    Partitions(BTreeSet<i32>),
}

impl Scope {
    /// The partitions of `batch` and of `effects`' changelog records.
    fn of(batch: &[OwnedMessage], effects: &Effects) -> Self {
        Scope::Partitions(
            batch
                .iter()
                .map(|m| m.partition())
                .chain(effects.changelog.iter().map(|c| c.partition))
                .collect(),
        )
    }
}

/// A failed batch: how it failed, and what it may have touched.
struct Failed {
    failure: Failure,
    scope: Scope,
}

impl Failed {
    fn all(failure: Failure) -> Self {
        Self {
            failure,
            scope: Scope::All,
        }
    }
}

/// How a batch failed, i.e. what recovery needs.
enum Failure {
    /// Abort (already done or not needed) and rebuild state.
    Abortable(String),
    /// The producer is unusable: rebuild it, then rebuild state.
    Fatal(String),
    /// Another instance owns our transactional id: stop.
    Fenced,
}

/// The state of one running stage; lives on its thread.
pub(crate) struct Runner {
    pub(crate) stage: Box<dyn Stage>,
    pub(crate) name: &'static str,
    pub(crate) config: Config,
    pub(crate) input_topic: String,
    pub(crate) changelog_topic: String,
    pub(crate) dlq_topic: String,
    pub(crate) transactional_id: String,
    pub(crate) consumer: StageConsumer,
    pub(crate) producer: StageProducer,
    pub(crate) producer_config: ClientConfig,
    pub(crate) restore_config: ClientConfig,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) assigned: BTreeSet<i32>,
}

impl Runner {
    fn exactly_once(&self) -> bool {
        self.config.processing == ProcessingMode::ExactlyOnce
    }

    /// The loop; returns when `shutdown` is cancelled (after committing the current batch) or on
    /// an error the stage cannot continue after.
    pub(crate) fn run(mut self) -> Result<(), Error> {
        self.consumer
            .subscribe(&[&self.input_topic])
            .map_err(|source| Error::Kafka {
                context: "subscribing to the input topic",
                source,
            })?;
        tracing::info!(
            stage = self.name,
            input = %self.input_topic,
            mode = %self.config.processing,
            instance = %self.config.instance_id,
            "stage started"
        );
        let mut failures_in_a_row = 0u32;
        while !self.shutdown.is_cancelled() {
            let batch = self.gather()?;
            let started = Instant::now();
            let outcome = self.handle(&batch);
            match outcome {
                Ok(()) => {
                    failures_in_a_row = 0;
                    if !batch.is_empty() {
                        metrics::batch_duration(self.name, started.elapsed());
                    }
                }
                Err(Failed { failure, scope }) => {
                    failures_in_a_row += 1;
                    self.recover(failure, &scope)?;
                    // Repeated failures (broker down, output topic missing): do not spin.
                    let backoff = Duration::from_millis(100 * 2u64.pow(failures_in_a_row.min(6)))
                        .min(MAX_BACKOFF);
                    std::thread::sleep(backoff);
                }
            }
        }
        tracing::info!(stage = self.name, "stage stopping: last batch committed");
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Poll up to `batch_max_messages` messages, waiting at most `batch_linger` after the first
    /// one (or `IDLE_POLL` when none comes). Applies rebalances as they arrive: restores newly
    /// assigned partitions, forgets revoked ones and drops their messages from the batch.
    fn gather(&mut self) -> Result<Vec<OwnedMessage>, Error> {
        let mut batch: Vec<OwnedMessage> = Vec::new();
        let idle_deadline = Instant::now() + IDLE_POLL;
        let mut linger_deadline: Option<Instant> = None;
        loop {
            let deadline = linger_deadline.unwrap_or(idle_deadline);
            let left = deadline.saturating_duration_since(Instant::now());
            let polled = self.consumer.poll(left);
            match polled {
                Some(Ok(message)) => {
                    batch.push(message.detach());
                    linger_deadline
                        .get_or_insert_with(|| Instant::now() + self.config.batch_linger);
                }
                Some(Err(err)) => self.consumer_error(err)?,
                None => {}
            }
            self.apply_group_events(&mut batch)?;
            if batch.len() >= self.config.batch_max_messages
                || Instant::now() >= deadline
                || self.shutdown.is_cancelled()
            {
                return Ok(batch);
            }
        }
    }

    fn consumer_error(&self, err: KafkaError) -> Result<(), Error> {
        match err {
            KafkaError::MessageConsumptionFatal(code) => {
                if code == RDKafkaErrorCode::FencedInstanceId {
                    Err(Error::Fenced {
                        id: format!(
                            "group.instance.id {}-{}",
                            self.name, self.config.instance_id
                        ),
                    })
                } else {
                    Err(Error::Fatal(format!("consumer: {code}")))
                }
            }
            err => {
                tracing::warn!(stage = self.name, error = %err, "consumer error");
                Ok(())
            }
        }
    }

    fn apply_group_events(&mut self, batch: &mut Vec<OwnedMessage>) -> Result<(), Error> {
        let events = std::mem::take(&mut *self.consumer.context().events.lock().expect("lock"));
        for event in events {
            match event {
                GroupEvent::Revoked(partitions) => {
                    tracing::info!(stage = self.name, instance = %self.config.instance_id, ?partitions, "partitions revoked");
                    for &p in &partitions {
                        self.stage.revoke(p);
                        self.assigned.remove(&p);
                    }
                    batch.retain(|m| !partitions.contains(&m.partition()));
                }
                GroupEvent::Assigned(partitions) => {
                    tracing::info!(stage = self.name, instance = %self.config.instance_id, ?partitions, "partitions assigned");
                    let fresh: Vec<i32> = partitions
                        .into_iter()
                        .filter(|p| !self.assigned.contains(p))
                        .collect();
                    self.ready.store(false, Ordering::Relaxed);
                    self.restore(&fresh)?;
                    self.assigned.extend(fresh);
                    self.ready.store(true, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    }

    /// Replay changelog `partitions` from the beginning to their end into the stage.
    fn restore(&mut self, partitions: &[i32]) -> Result<(), Error> {
        if partitions.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let consumer: BaseConsumer<RestoreContext> = self
            .restore_config
            .create_with_context(RestoreContext)
            .map_err(|source| Error::Kafka {
                context: "creating changelog restore consumer",
                source,
            })?;
        let mut tpl = TopicPartitionList::new();
        for &p in partitions {
            tpl.add_partition_offset(&self.changelog_topic, p, Offset::Beginning)
                .map_err(|source| Error::Kafka {
                    context: "building restore assignment",
                    source,
                })?;
        }
        consumer.assign(&tpl).map_err(|source| Error::Kafka {
            context: "assigning changelog partitions",
            source,
        })?;
        let mut pending: HashSet<i32> = partitions.iter().copied().collect();
        let mut records = 0u64;
        let deadline = started + RESTORE_TIMEOUT;
        while !pending.is_empty() {
            if Instant::now() > deadline {
                return Err(Error::Fatal(format!(
                    "restoring {} partitions {pending:?} took over {RESTORE_TIMEOUT:?}",
                    self.changelog_topic
                )));
            }
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    let partition = message.partition();
                    let restored = match message.key().map(std::str::from_utf8) {
                        Some(Ok(key)) => self.stage.restore(partition, key, message.payload()),
                        Some(Err(err)) => Err(format!("key is not UTF-8: {err}")),
                        None => Err("record without a key".to_owned()),
                    };
                    match restored {
                        Ok(()) => records += 1,
                        Err(reason) => {
                            metrics::restore_failure(self.name, partition);
                            let err = Error::Restore {
                                stage: self.name,
                                topic: self.changelog_topic.clone(),
                                partition,
                                offset: message.offset(),
                                key: String::from_utf8_lossy(message.key().unwrap_or_default())
                                    .into_owned(),
                                reason,
                            };
                            tracing::error!(stage = self.name, partition, error = %err, "changelog restore failed: stopping the stage");
                            self.ready.store(false, Ordering::Relaxed);
                            return Err(err);
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    pending.remove(&partition);
                }
                Some(Err(err)) => {
                    tracing::warn!(stage = self.name, error = %err, "changelog restore: consumer error");
                }
                None => {}
            }
        }
        metrics::restored(self.name, records);
        tracing::info!(
            stage = self.name,
            instance = %self.config.instance_id,
            ?partitions,
            records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state restored from changelog"
        );
        Ok(())
    }

    /// Process a batch (plus `tick`) and write its effects with its offsets.
    fn handle(&mut self, batch: &[OwnedMessage]) -> Result<(), Failed> {
        let mut effects = Effects::new();
        if !batch.is_empty() {
            let inputs: Vec<Input<'_>> = batch.iter().map(input).collect();
            let stage = &mut self.stage;
            let processed = catch_unwind(AssertUnwindSafe(|| stage.process(&inputs, &mut effects)));
            if let Err(panic) = processed {
                tracing::error!(
                    stage = self.name,
                    panic = panic_message(&panic),
                    "stage panicked on a batch: isolating the poison message"
                );
                return self.isolate(batch);
            }
        }
        let stage = &mut self.stage;
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| {
            stage.tick(SystemTime::now(), &mut effects)
        })) {
            // Tick has no input to blame: drop what it did and carry on.
            tracing::error!(
                stage = self.name,
                panic = panic_message(&panic),
                "stage panicked in tick"
            );
            return Err(Failed::all(Failure::Abortable(
                "stage panicked in tick".into(),
            )));
        }
        if batch.is_empty() && effects.is_empty() {
            return Ok(());
        }
        let scope = Scope::of(batch, &effects);
        self.write(effects, batch)
            .map_err(|failure| Failed { failure, scope })
    }

    /// The batch made the stage panic: rebuild state, then process its messages one per
    /// transaction (the consumer is already past them, so no seek); the one that panics again is dead-lettered (reason `stage_panic`), so a
    /// poison message costs one isolation pass instead of stopping the partition forever.
    fn isolate(&mut self, batch: &[OwnedMessage]) -> Result<(), Failed> {
        // The panic lost the effects: which partitions the stage changed is unknown.
        self.rebuild_state(&Scope::All)
            .map_err(|e| Failed::all(Failure::Fatal(e.to_string())))?;
        for message in batch {
            let one = input(message);
            let mut effects = Effects::new();
            let stage = &mut self.stage;
            let processed = catch_unwind(AssertUnwindSafe(|| {
                stage.process(std::slice::from_ref(&one), &mut effects)
            }));
            if let Err(panic) = processed {
                self.rebuild_state(&Scope::All)
                    .map_err(|e| Failed::all(Failure::Fatal(e.to_string())))?;
                effects = Effects::new();
                effects.dead_letter(&one, "stage_panic", panic_message(&panic));
            }
            // On failure, the rest of the batch (already polled, not yet written) is re-read too.
            let scope = Scope::of(batch, &effects);
            self.write(effects, std::slice::from_ref(message))
                .map_err(|failure| Failed { failure, scope })?;
        }
        Ok(())
    }

    /// Write effects and the batch's next offsets: one transaction, or produce, await
    /// delivery, then commit offsets.
    fn write(&mut self, effects: Effects, batch: &[OwnedMessage]) -> Result<(), Failure> {
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

    fn next_offsets(&self, batch: &[OwnedMessage]) -> TopicPartitionList {
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

    fn write_transaction(
        &mut self,
        effects: &Effects,
        offsets: &TopicPartitionList,
    ) -> Result<(), Failure> {
        self.producer
            .begin_transaction()
            .map_err(|e| self.classify(e))?;
        let result = self.send_all(effects).and_then(|()| {
            if offsets.count() > 0 {
                let group = self.consumer.group_metadata().ok_or_else(|| {
                    Failure::Abortable("no consumer group metadata yet".to_owned())
                })?;
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

    fn commit_transaction(&self) -> Result<(), Failure> {
        // commit_transaction flushes first, but rdkafka's flush polls in 100 ms steps (BaseProducer
        // `poll` waits out its whole timeout): drain in 1 ms steps so it finds nothing to wait for.
        self.drain()
            .map_err(|e| Failure::Abortable(format!("waiting for deliveries: {e}")))?;
        let mut attempts = 0;
        loop {
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

    fn write_at_least_once(
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
    fn drain(&self) -> Result<(), String> {
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

    fn await_deliveries(&self) -> Result<(), Failure> {
        self.drain()
            .map_err(|e| Failure::Abortable(format!("waiting for deliveries: {e}")))?;
        match self.producer.context().take_failure() {
            Some(err) => Err(Failure::Abortable(format!("delivery failed: {err}"))),
            None => Ok(()),
        }
    }

    /// Enqueue every record of `effects`; a full queue is backpressure: serve deliveries, retry.
    fn send_all(&self, effects: &Effects) -> Result<(), Failure> {
        self.send_changelog(effects)?;
        self.send_outputs(effects)
    }

    fn send_changelog(&self, effects: &Effects) -> Result<(), Failure> {
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

    fn send_outputs(&self, effects: &Effects) -> Result<(), Failure> {
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

    fn send<K, P>(&self, mut record: BaseRecord<'_, K, P>) -> Result<(), Failure>
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

    fn classify(&self, err: KafkaError) -> Failure {
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

    /// After a failed batch: stop if fenced, rebuild the producer if it is unusable, then drop
    /// the state of the partitions in `scope`, restore it from the changelog and seek them back
    /// to their committed offsets.
    fn recover(&mut self, failure: Failure, scope: &Scope) -> Result<(), Error> {
        metrics::transaction(self.name, false);
        let cause = match &failure {
            Failure::Abortable(why) => {
                tracing::warn!(stage = self.name, reason = %why, "batch abandoned: rebuilding state");
                "abort"
            }
            Failure::Fatal(why) => {
                tracing::error!(stage = self.name, reason = %why, "producer unusable: rebuilding it and the state");
                "fatal"
            }
            Failure::Fenced => {
                tracing::error!(
                    stage = self.name,
                    transactional_id = %self.transactional_id,
                    "fenced by a newer instance with the same transactional.id: stopping"
                );
                return Err(Error::Fenced {
                    id: self.transactional_id.clone(),
                });
            }
        };
        metrics::recovery(self.name, cause);
        if !self.exactly_once() {
            // At-least-once, part of the failed batch may still be in flight: let it land (or
            // fail) before restoring, so the restore sees every record that will ever land.
            let _ = self.drain();
            self.producer.context().take_failure();
        }
        if matches!(failure, Failure::Fatal(_)) {
            self.producer = create_producer(&self.producer_config, self.exactly_once())?;
        }
        self.rebuild_state(scope)?;
        self.seek_to_committed(scope)
    }

    /// The assigned partitions in `scope`.
    fn in_scope(&self, scope: &Scope) -> Vec<i32> {
        match scope {
            Scope::All => self.assigned.iter().copied().collect(),
            Scope::Partitions(touched) => self.assigned.intersection(touched).copied().collect(),
        }
    }

    /// Forget the state of the assigned partitions in `scope` and restore it from the changelog.
    fn rebuild_state(&mut self, scope: &Scope) -> Result<(), Error> {
        let partitions = self.in_scope(scope);
        for &p in &partitions {
            self.stage.revoke(p);
        }
        self.restore(&partitions)
    }

    /// Seek the assigned partitions in `scope` to their committed offsets, so that a lost batch
    /// is read again (the others are at their committed offsets: none of their input was in it).
    fn seek_to_committed(&mut self, scope: &Scope) -> Result<(), Error> {
        let partitions = self.in_scope(scope);
        if partitions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for &p in &partitions {
            tpl.add_partition(&self.input_topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, TXN_TIMEOUT)
            .map_err(|source| Error::Kafka {
                context: "reading committed offsets",
                source,
            })?;
        let mut seek = TopicPartitionList::new();
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            seek.add_partition_offset(e.topic(), e.partition(), offset)
                .expect("offsets are valid");
        }
        let result = self
            .consumer
            .seek_partitions(seek, TXN_TIMEOUT)
            .map_err(|source| Error::Kafka {
                context: "seeking to committed offsets",
                source,
            })?;
        for e in result.elements() {
            if let Err(err) = e.error() {
                return Err(Error::Kafka {
                    context: "seeking a partition to its committed offset",
                    source: err,
                });
            }
        }
        Ok(())
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

fn input(m: &OwnedMessage) -> Input<'_> {
    Input {
        topic: m.topic(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key(),
        payload: m.payload(),
        timestamp_ms: m.timestamp().to_millis(),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

fn failure_text(failure: &Failure) -> String {
    match failure {
        Failure::Abortable(s) | Failure::Fatal(s) => s.clone(),
        Failure::Fenced => "fenced".to_owned(),
    }
}
