//! The measurement harness: fresh topics, loading the input, and the output reader that stops the
//! clock.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context};
use orderpipe_benches::kafka as bench_kafka;
use orderpipe_schemas::Topics;
use orderpipe_testkit::kafka::TestTopics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use uuid::Uuid;

/// Produce `payloads` keyed by `key` to `topic` and wait for every acknowledgement.
pub(crate) async fn load(
    bootstrap: &str,
    topic: &str,
    key: &str,
    payloads: &[Vec<u8>],
) -> anyhow::Result<()> {
    let producer: FutureProducer = bench_kafka::loader(bootstrap).create()?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(payloads.len());
    for payload in payloads {
        loop {
            match producer.send_result(FutureRecord::to(topic).key(key).payload(payload)) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    for delivery in pending {
        delivery
            .await
            .context("delivery canceled")?
            .map_err(|(e, _)| e)?;
    }
    eprintln!(
        "    loaded {} messages into {topic} in {:.2} s",
        payloads.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// What a reader received, and when the first and the last output arrived.
pub(crate) struct Outputs {
    pub(crate) payloads: Vec<Vec<u8>>,
    pub(crate) last: SystemTime,
}

/// A read_committed reader of the output topic on its own thread, joined to its group before
/// the clock starts (so its group join is not measured); prints progress.
pub(crate) struct Reader {
    thread: std::thread::JoinHandle<anyhow::Result<Outputs>>,
}

impl Reader {
    /// Starts reading `n` messages of `topic`; returns once the reader owns its partitions.
    pub(crate) fn start(
        bootstrap: &str,
        topic: &str,
        n: usize,
        label: &str,
    ) -> anyhow::Result<Self> {
        let reader: BaseConsumer = bench_kafka::output_reader(
            bootstrap,
            &format!("bench-reader-{}", Uuid::new_v4().simple()),
        )
        .create()?;
        reader.subscribe(&[topic])?;
        let label = label.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            let mut got = Vec::with_capacity(n);
            let mut last = SystemTime::now();
            let mut next_report = Instant::now() + Duration::from_secs(1);
            let deadline = Instant::now() + Duration::from_secs(600);
            while got.len() < n {
                ensure!(
                    Instant::now() < deadline,
                    "{label}: only {} of {n} outputs after 10 minutes",
                    got.len()
                );
                if let Some(message) = reader.poll(Duration::from_millis(10)) {
                    let message = message?;
                    got.push(message.payload().unwrap_or_default().to_vec());
                    last = SystemTime::now();
                }
                if ready.is_some() && !reader.assignment()?.elements().is_empty() {
                    let _ = ready.take().expect("checked").send(());
                }
                if Instant::now() >= next_report {
                    eprintln!("    {label}: {}/{n} outputs", got.len());
                    next_report += Duration::from_secs(1);
                }
            }
            Ok(Outputs {
                payloads: got,
                last,
            })
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("output reader did not join its group within 60 s")?;
        Ok(Self { thread })
    }

    /// Waits for all outputs.
    pub(crate) async fn finish(self) -> anyhow::Result<Outputs> {
        tokio::task::spawn_blocking(move || self.thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("reader thread panicked"))?
    }
}

/// Fresh topics for one measurement.
pub(crate) async fn topics_for(name: &str) -> anyhow::Result<(TestTopics, Topics)> {
    let mut test_topics = TestTopics::new()?;
    test_topics.prefix = format!("bench-{name}-{}", test_topics.prefix);
    // The saga stage writes to (and the reader reads) these; both exist before the stage starts.
    test_topics.create("orders", 1).await?;
    test_topics.create("stock", 1).await?;
    let topics = Topics::with_prefix(test_topics.prefix.clone());
    Ok((test_topics, topics))
}
