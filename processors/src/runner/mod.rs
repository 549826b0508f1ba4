//! The stage runner: exactly-once (or at-least-once) consume-transform-produce on a dedicated
//! OS thread per stage, state restored from changelog topics on partition assignment.
//!
//! Layout:
//! - [`Stage`], [`Input`], [`Effects`]: the contract a stage implements.
//! - [`Config`], [`ProcessingMode`]: runner options (clap `Args`).
//! - [`spawn_stage`], [`StageHandle`]: start a stage, wait for it, ask if it is ready.
//! - `run`: the loop (poll a batch, process, write effects + offsets, recover on failure).
//! - `write`: a batch's effects with its offsets (one transaction, or changelog, outputs, then
//!   offsets); the stage producer.
//! - `restore`: a stage's state from its changelog partitions.
//! - `recover`: after a failed batch, put back the partitions it may have touched.
//! - `contexts`: the Kafka client callbacks (rebalances, lag, failed deliveries).
//! - `watchdog`: ends the process when a transactional call blocks past its limit (librdkafka
//!   does not enforce every timeout), so that its supervisor restarts it.

mod config;
mod contexts;
mod error;
mod recover;
mod restore;
mod run;
mod stage;
mod watchdog;
mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use orderpipe_schemas::Topics;
use rdkafka::config::ClientConfig;
use tokio_util::sync::CancellationToken;

pub use config::{Config, ProcessingMode, AUTO_INSTANCE_ID};
pub use error::Error;
/// Names of the dead-letter headers the runner sets (reason, detail, stage, source topic,
/// partition and offset), for tools that inspect or redrive dead letters.
pub use orderpipe_runtime::kafka::dlq::HEADERS as DLQ_HEADERS;
pub use stage::{ChangelogRecord, DeadLetter, Effects, Input, OutputRecord, Stage};
pub use watchdog::STUCK_EXIT_CODE;

use crate::kafka;
use contexts::{RunnerContext, StageConsumer};
use run::Runner;
use write::create_producer;

/// Starts `stage` on a dedicated thread and returns at once after the setup checks.
///
/// Checks (blocking, bounded by a 10 s timeout each; call it at startup): the input topic, the
/// changelog topic and the dead-letter topic exist, and the changelog has as many partitions as
/// the input. In exactly-once mode it initialises the transactional producer, which fences any
/// older instance with the same `transactional.id` and aborts its open transaction.
pub fn spawn_stage(
    stage: Box<dyn Stage>,
    config: &Config,
    bootstrap: &str,
    topics: &Topics,
    shutdown: CancellationToken,
) -> Result<StageHandle, Error> {
    let name = stage.name();
    let input_topic = stage.input_topic();
    let changelog_topic = topics.changelog(name);
    let dlq_topic = topics.dlq(name);

    let context = RunnerContext {
        stage: name,
        input_topic: input_topic.clone(),
        events: Mutex::new(Vec::new()),
    };
    let consumer: StageConsumer = kafka::consumer_config(bootstrap, topics, name, config)
        .create_with_context(context)
        .map_err(|source| Error::Kafka {
            context: "creating consumer",
            source,
        })?;

    let input_partitions = kafka::partition_count(&consumer, &input_topic)?
        .ok_or_else(|| Error::TopicMissing(input_topic.clone()))?;
    let changelog_partitions = kafka::partition_count(&consumer, &changelog_topic)?
        .ok_or_else(|| Error::TopicMissing(changelog_topic.clone()))?;
    if changelog_partitions != input_partitions {
        return Err(Error::PartitionMismatch {
            input: input_topic,
            input_partitions,
            changelog: changelog_topic,
            changelog_partitions,
        });
    }
    kafka::partition_count(&consumer, &dlq_topic)?
        .ok_or_else(|| Error::TopicMissing(dlq_topic.clone()))?;

    let producer_config: ClientConfig = kafka::producer_config(bootstrap, topics, name, config);
    let exactly_once = config.processing == ProcessingMode::ExactlyOnce;
    let producer = create_producer(&producer_config, exactly_once)?;

    let ready = Arc::new(AtomicBool::new(false));
    let runner = Runner {
        stage,
        name,
        config: config.clone(),
        input_topic,
        changelog_topic,
        dlq_topic,
        transactional_id: kafka::transactional_id(topics, name, &config.instance_id),
        consumer,
        producer,
        producer_config,
        restore_config: kafka::restore_consumer_config(bootstrap, topics, name, config),
        ready: ready.clone(),
        shutdown,
        assigned: Default::default(),
        watchdog: watchdog::Watchdog::spawn(
            name,
            run::STUCK_CALL_LIMIT,
            std::time::Duration::from_secs(1),
            watchdog::Watchdog::exit_process(),
        ),
    };
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name(format!("stage-{name}"))
        .spawn(move || {
            let result = runner.run();
            if let Err(err) = &result {
                tracing::error!(stage = name, error = %err, "stage stopped");
            }
            let _ = done_tx.send(result);
        })
        .map_err(|e| Error::Fatal(format!("spawning the stage thread: {e}")))?;
    Ok(StageHandle {
        name,
        ready,
        done: done_rx,
        thread,
    })
}

/// A running stage: readiness for `/readyz`, and its end (after shutdown or a fatal error).
pub struct StageHandle {
    name: &'static str,
    ready: Arc<AtomicBool>,
    done: tokio::sync::oneshot::Receiver<Result<(), Error>>,
    thread: std::thread::JoinHandle<()>,
}

impl StageHandle {
    /// The stage's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// True once the stage joined its group and restored every assigned partition (and not
    /// while a restore is running).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// A readiness check for `orderpipe_runtime::health::Readiness::add`.
    pub fn readiness_check(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let ready = self.ready.clone();
        let name = self.name;
        move || {
            if ready.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err(format!("{name}: not assigned and restored yet"))
            }
        }
    }

    /// True when the stage thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits (async) for the stage to end: `Ok` after a graceful shutdown.
    pub async fn wait(self) -> Result<(), Error> {
        let result = self.done.await.unwrap_or(Err(Error::Panicked));
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
        result
    }

    /// Waits (blocking) for the stage to end: `Ok` after a graceful shutdown.
    pub fn join(mut self) -> Result<(), Error> {
        let joined = self.thread.join();
        match self.done.try_recv() {
            Ok(result) => result,
            Err(_) => {
                let _ = joined;
                Err(Error::Panicked)
            }
        }
    }
}
