//! The loop on a stage's dedicated thread: poll a batch, let the stage process it, write its
//! effects and input offsets (one transaction, or produce-then-commit), and on any failure drop
//! the in-memory state of the partitions the batch touched (its inputs' partitions and those of
//! its changelog records), restore them from the changelog and seek them back to their committed
//! offsets. Other partitions keep their state and position: nothing of theirs was in the batch.
//!
//! Everything, rebalance callbacks included (they run inside `poll`), happens on this thread, and
//! no transaction is open while polling: a revocation can never race an open transaction.
//!
//! The loop's parts live beside it: `write` (effects and offsets), `restore` (changelog replay),
//! `recover` (after a failed batch), `contexts` (the Kafka client callbacks).

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;

use super::contexts::{GroupEvent, StageConsumer, StageProducer};
use super::recover::{Failed, Failure, Scope};
use super::watchdog::Watchdog;
use super::{Config, Effects, Error, Input, ProcessingMode, Stage};
use crate::metrics;

/// How long an idle poll waits before the loop runs `tick` and checks for shutdown.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Timeout of transactional calls and of waiting for deliveries.
pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one transactional call may block before the watchdog ends the process: its own
/// timeout plus a margin (librdkafka does not enforce every timeout; see `watchdog`).
pub(super) const STUCK_CALL_LIMIT: Duration = Duration::from_secs(60);
/// How long a changelog restore may take before the stage gives up (and the process restarts).
pub(super) const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest pause between attempts after consecutive failed batches.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    /// Ends the process when a transactional call blocks past its limit (librdkafka#5456).
    pub(crate) watchdog: Watchdog,
}

impl Runner {
    pub(super) fn exactly_once(&self) -> bool {
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
