//! The broker tests' plumbing: one test's topics and producer, stages spawned under one
//! shutdown token, and the stages a sale goes through.

use std::sync::Arc;
use std::time::Duration;

use orderpipe_processors::notifications::{LogSink, NotificationsStage};
use orderpipe_processors::payments::{PaymentGateway, PaymentsStage};
use orderpipe_processors::saga::SagaStage;
use orderpipe_processors::stock::{set_stock, StockStage};
use orderpipe_processors::{
    ensure_topics, spawn_stage, Config, Error, RetryPolicy, Stage, StageHandle,
};
use orderpipe_schemas::{OrderEnvelope, StockAdjustment, Topics};
use orderpipe_testkit::kafka::{bootstrap, consumer, producer, TestTopics};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One test's topics on the test broker (deleted when it ends) and a producer.
pub(crate) struct Env {
    pub(crate) test_topics: TestTopics,
    pub(crate) topics: Topics,
    pub(crate) producer: FutureProducer,
}

impl Env {
    /// Creates the `(base name, partitions)` topics, and what each of `stages` needs besides
    /// (its changelog and dead-letter topics) with `partitions` partitions.
    pub(crate) async fn new(created: &[(&str, i32)], stages: &[&str], partitions: i32) -> Self {
        let mut test_topics = TestTopics::new().unwrap();
        for (topic, partitions) in created {
            test_topics.create(topic, *partitions).await.unwrap();
        }
        let topics = Topics::with_prefix(test_topics.prefix.clone());
        for stage in stages {
            for created in ensure_topics(&bootstrap(), &topics, stage, partitions)
                .await
                .unwrap()
            {
                test_topics.adopt(&created);
            }
        }
        Self {
            test_topics,
            topics,
            producer: producer().unwrap(),
        }
    }

    /// The topics all four stages use, each with `partitions` partitions.
    pub(crate) async fn for_all_stages(partitions: i32) -> Self {
        let created = ["orders", "stock", "notifications"].map(|topic| (topic, partitions));
        let stages = ["stock", "saga", "payments", "notifications"];
        Self::new(&created, &stages, partitions).await
    }

    /// A read_committed reader of `topic` from the beginning, in a fresh group.
    pub(crate) fn reader(&self, topic: &str) -> StreamConsumer {
        let group = self
            .test_topics
            .name(&format!("reader-{}", Uuid::new_v4().simple()));
        let reader = consumer(&group, true).unwrap();
        reader.subscribe(&[topic]).unwrap();
        reader
    }

    /// Sends `events` to the orders topic, keyed by order, one acknowledged before the next.
    pub(crate) async fn send_orders<'e>(
        &self,
        events: impl IntoIterator<Item = &'e OrderEnvelope>,
    ) {
        for event in events {
            self.producer
                .send(
                    FutureRecord::to(&self.topics.orders)
                        .key(&event.key())
                        .payload(&event.encode()),
                    Duration::from_secs(10),
                )
                .await
                .unwrap();
        }
    }

    /// Sets the stock of `sku` to `quantity` units, with a per-customer `limit` from now on.
    pub(crate) async fn set_stock(&self, sku: &str, quantity: u32, limit: Option<u32>) {
        set_stock(
            &bootstrap(),
            &[],
            &self.topics,
            sku,
            StockAdjustment::Set { quantity },
            limit,
        )
        .await
        .unwrap();
    }

    /// Sets the stock of each `(sku, quantity)`, without a per-customer limit.
    pub(crate) async fn stock_up(&self, levels: &[(&str, u32)]) {
        for (sku, quantity) in levels {
            self.set_stock(sku, *quantity, None).await;
        }
    }
}

/// Stages spawned on the test broker under one shutdown token.
pub(crate) struct Running {
    handles: Vec<StageHandle>,
    shutdown: CancellationToken,
}

impl Running {
    /// Spawns `stage` with `config`.
    pub(crate) fn start(stage: Box<dyn Stage>, config: &Config, topics: &Topics) -> Self {
        Self::start_all(vec![stage], topics, |_| config.clone())
    }

    /// Spawns each of `stages`, in order, with the config `config` gives it.
    pub(crate) fn start_all(
        stages: Vec<Box<dyn Stage>>,
        topics: &Topics,
        config: impl Fn(&dyn Stage) -> Config,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let handles = stages
            .into_iter()
            .map(|stage| {
                let config = config(stage.as_ref());
                spawn_stage(stage, &config, &bootstrap(), topics, shutdown.clone()).unwrap()
            })
            .collect();
        Self { handles, shutdown }
    }

    /// Asks every stage to stop and waits for each; the first error, if any.
    pub(crate) async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits for every stage to end by itself (a fenced or failed one does), without asking.
    pub(crate) async fn wait(self) -> Result<(), Error> {
        for handle in self.handles {
            handle.wait().await?;
        }
        Ok(())
    }
}

/// The stock, saga and payments stages (payments through `gateway`), in that order.
pub(crate) fn order_stages(
    topics: &Topics,
    gateway: Arc<dyn PaymentGateway>,
) -> Vec<Box<dyn Stage>> {
    vec![
        Box::new(StockStage::new(topics.clone())),
        Box::new(SagaStage::new(topics.clone())),
        Box::new(PaymentsStage::new(
            topics.clone(),
            gateway,
            tokio::runtime::Handle::current(),
        )),
    ]
}

/// All four stages: [`order_stages`], then notifications to the log.
pub(crate) fn all_stages(topics: &Topics, gateway: Arc<dyn PaymentGateway>) -> Vec<Box<dyn Stage>> {
    let mut stages = order_stages(topics, gateway);
    stages.push(Box::new(NotificationsStage::new(
        topics.clone(),
        Arc::new(LogSink),
        tokio::runtime::Handle::current(),
        RetryPolicy::default(),
    )));
    stages
}
