//! The server's life: start-up (config check, keys, topics, producer, idempotency store, waiting
//! room), serving with its background tasks, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use orderpipe_runtime::health::Readiness;
use orderpipe_schemas::Topics;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::auth::ApiKeys;
use crate::config::{Config, IdempotencyStore};
use crate::error::ServerError;
use crate::handlers::App;
use crate::idempotency::RecentKeys;
use crate::idempotency_store::CqlStore;
use crate::kafka::Publisher;
use crate::metrics;
use crate::ratelimit::RateLimit;
use crate::router::router;
use crate::waiting_room::{self, WaitingRoom};

/// How often the broker is probed for `/readyz`.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long shutdown waits for the producer to deliver what is still queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A bound, ready-to-serve ingest API: topics created, producer configured.
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    readiness: Readiness,
    request_timeout: Duration,
}

impl Server {
    /// Binds `listen` and prepares the server (see [`Server::with_listener`]).
    pub async fn bind(
        config: Config,
        kafka_bootstrap: &str,
        topics: Topics,
        listen: SocketAddr,
    ) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|err| ServerError::Bind(listen, err))?;
        Self::with_listener(listener, config, kafka_bootstrap, topics).await
    }

    /// Prepares a server on an already bound listener (tests bind port 0): checks the config,
    /// loads the API keys, creates missing topics unless disabled (so the broker must be reachable
    /// then), configures the producer (which connects in the background), and with the `cql`
    /// idempotency store connects to it, creating its keyspace and table when missing (when it
    /// is unreachable the server starts anyway, answers keyed orders 503 and keeps connecting).
    pub async fn with_listener(
        listener: TcpListener,
        config: Config,
        kafka_bootstrap: &str,
        topics: Topics,
    ) -> Result<Self, ServerError> {
        config.check().map_err(ServerError::Config)?;
        metrics::init();
        let keys = match &config.api_keys_file {
            Some(path) => Some(ApiKeys::load(path)?),
            None => None,
        };
        if config.topics.create {
            let plan = topics.plan(config.topics.partitions, config.topics.replication_factor);
            orderpipe_runtime::kafka::create_topics(kafka_bootstrap, &config.kafka_options, &plan)
                .await
                .map_err(ServerError::Topics)?;
        }
        let publisher = Publisher::new(kafka_bootstrap, &topics.orders, &config)
            .map_err(ServerError::Producer)?;
        let publisher = Arc::new(publisher);
        let store = match config.idempotency_store {
            IdempotencyStore::Memory => None,
            IdempotencyStore::Cql => {
                let store = Arc::new(CqlStore::new(&config));
                if let Err(err) = store.connect().await {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "idempotency store unreachable at start; keyed orders get 503 until it answers"
                    );
                }
                Some(store)
            }
        };
        let waiting_room = waiting_room::load_secret(&config)?
            .and_then(|secret| WaitingRoom::new(&config, &secret));
        if let Some(room) = &waiting_room {
            // Like the idempotency store: an unreachable sequence does not stop the server,
            // which answers orders 503 and keeps connecting in the background.
            if let Err(err) = room.connect().await {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "waiting room unreachable at start; orders get 503 until it answers"
                );
            }
        }
        let readiness = Readiness::new();
        let probe = publisher.clone();
        readiness.add("kafka", move || probe.ready());
        let app = App {
            keys,
            limit: RateLimit::new(config.rate_limit_per_second, config.rate_limit_burst),
            recent: RecentKeys::new(config.idempotency_ttl, config.idempotency_capacity),
            store,
            publisher,
            waiting_room,
            max_body_bytes: config.max_body_bytes,
            retry_after: config.retry_after,
        };
        Ok(Self {
            listener,
            app: Arc::new(app),
            readiness,
            request_timeout: config.request_timeout,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, answers every request in
    /// flight (each within the ack deadline), and flushes the producer.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let addr = self.local_addr();
        let router = router(
            self.app.clone(),
            self.readiness.clone(),
            self.request_timeout,
        );
        let background = CancellationToken::new();
        let mut tasks = JoinSet::new();
        tasks.spawn(probe_broker(self.app.publisher.clone(), background.clone()));
        tasks.spawn(forget_idle_clients(self.app.clone(), background.clone()));
        if let Some(store) = &self.app.store {
            tasks.spawn(store.clone().connect_until_done(background.clone()));
        }
        if let Some(room) = &self.app.waiting_room {
            tasks.spawn(room.clone().run(background.clone()));
        }

        tracing::info!(%addr, "ingest listening");
        // Not axum::serve: it sets no deadline on the request head (see serve.rs).
        let served = crate::serve::serve(self.listener, router, self.request_timeout, shutdown)
            .await
            .map_err(ServerError::Serve);

        background.cancel();
        while tasks.join_next().await.is_some() {}
        let publisher = self.app.publisher.clone();
        tokio::task::spawn_blocking(move || publisher.flush_blocking(FLUSH_TIMEOUT))
            .await
            .map_err(ServerError::Flush)?;
        tracing::info!(%addr, "ingest stopped");
        served
    }
}

/// Probes the broker every [`PROBE_INTERVAL`] on a blocking thread (librdkafka's metadata call
/// blocks), feeding `/readyz` and the broker gauge.
async fn probe_broker(publisher: Arc<Publisher>, stop: CancellationToken) {
    loop {
        let probe = publisher.clone();
        if tokio::task::spawn_blocking(move || probe.probe_blocking())
            .await
            .is_err()
        {
            tracing::error!("broker probe panicked");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}

/// Keeps the rate limiter's key table small (anonymous callers are keyed by IP).
async fn forget_idle_clients(app: Arc<App>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(30)) => app.limit.forget_idle(),
        }
    }
}
