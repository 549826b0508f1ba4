//! The HTTP side: `POST /v1/orders`, `POST /v1/orders/{id}/cancel`, their middleware (body limit, timeout, problem+json for every
//! error, request metrics), the health routes, and the server's life from bind to graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use orderpipe_runtime::health::{self, Readiness};
use orderpipe_schemas::{CancellationRequested, OrderEnvelope, OrderEvent, Topics};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{ApiKeys, ANONYMOUS};
use crate::config::{Config, IdempotencyStore};
use crate::error::{ApiError, Problem, ServerError, WaitingRoomProblem, PROBLEM_JSON};
use crate::idempotency::{self, IdempotencyKey, RecentKeys};
use crate::idempotency_store::{CqlStore, Outcome};
use crate::kafka::Publisher;
use crate::metrics;
use crate::ratelimit::RateLimit;
use crate::request::{idempotency_key, is_json, parse_order};
use crate::waiting_room::{self, WaitingRoom};

/// Path of the order endpoint.
pub const ORDERS_PATH: &str = "/v1/orders";

/// Path of the cancellation endpoint (axum syntax).
pub const CANCEL_PATH: &str = "/v1/orders/{id}/cancel";

/// `status` of a 202 answer to a cancellation: the request is durable in Kafka; the order's
/// outcome (`cancelled`, or unchanged when it was already confirmed or rejected) is in the query API.
pub const CANCELLATION_REQUESTED: &str = "cancellation_requested";

/// How often the broker is probed for `/readyz`.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// How long shutdown waits for the producer to deliver what is still queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Body of a 202 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// Id of the order (derived from the Idempotency-Key when one was sent).
    pub order_id: Uuid,
    /// `accepted` (`order_placed` is durable in Kafka), or for a cancellation
    /// `cancellation_requested` (`cancellation_requested` is durable in Kafka).
    #[schema(examples("accepted", "cancellation_requested"))]
    pub status: String,
}

orderpipe_runtime::schemars_schema! {
    /// The order body in the OpenAPI document: `NewOrder`'s published JSON Schema.
    struct NewOrderSchema => orderpipe_schemas::NewOrder, "NewOrder";
}

/// The ingest API's OpenAPI 3.1 document (paths come from the handlers' `#[utoipa::path]`
/// through [`api_routes`]). Served at `/openapi.json`, committed as `ops/api/ingest.openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderpipe ingest API",
        description = "Places and cancels orders. A 202 comes only once the event is durable in Kafka \
(idempotent producer, acks=all). Every error is an RFC 7807 `application/problem+json` document. \
Clients authenticate with `Authorization: Bearer <key>` or `X-Api-Key: <key>` when the service \
runs with API keys (`--ingest-api-keys-file`); without them every caller is anonymous and \
rate-limited per peer IP. `/healthz`, `/readyz` and `/metrics` are served on the same port.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(Problem, WaitingRoomProblem)),
    modifiers(&SecuritySchemes),
    tags((name = "orders", description = "Placing and cancelling orders"))
)]
struct IngestDoc;

/// The API-key schemes of the document (`--ingest-api-keys-file`).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key as `Authorization: Bearer <key>`."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "An API key as `X-Api-Key: <key>`.",
            ))),
        );
    }
}

/// The documented routes, each registered from its own `#[utoipa::path]`.
fn api_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(IngestDoc::openapi())
        .routes(routes!(post_order))
        .routes(routes!(post_cancel))
}

/// The ingest API's OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// What every request needs.
struct App {
    keys: Option<ApiKeys>,
    limit: RateLimit,
    recent: RecentKeys,
    /// The shared idempotency store, when configured (memory is then its fast path).
    store: Option<Arc<CqlStore>>,
    publisher: Arc<Publisher>,
    /// The fleet-wide admission rate with queue tickets, when configured.
    waiting_room: Option<Arc<WaitingRoom>>,
    max_body_bytes: usize,
    retry_after: Duration,
}

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

/// All routes: the order routes behind their middleware, plus `/openapi.json`, `/healthz`,
/// `/readyz`, `/metrics`.
fn router(app: Arc<App>, readiness: Readiness, request_timeout: Duration) -> Router {
    let max_body = app.max_body_bytes;
    let (orders, doc) = api_routes().split_for_parts();
    let orders = orders
        // axum's own limit applies to the extractor; tower-http's refuses an oversized
        // Content-Length before reading anything. Both answer 413, made problem+json below.
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(middleware::from_fn(finish))
        .with_state(app);
    orders
        .merge(orderpipe_runtime::openapi::route(&doc))
        .merge(health::routes(readiness))
        .fallback(|| async { ApiError::Status(StatusCode::NOT_FOUND) })
        // The default spans carry method, URI and version: never headers or bodies. A 5xx is
        // logged at debug: a broker outage would otherwise log one error per request.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
}

/// Outermost middleware of the order route: counts answers by status, and turns error answers
/// made by layers or routing (413, 408, 405) into problem+json like the handler's own.
async fn finish(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    metrics::request_answered(status.as_u16());
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut problem = ApiError::Status(status).into_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

/// Place an order.
///
/// Answers 202 once the broker has acknowledged the `order_placed` event. Send an
/// `Idempotency-Key` with every order: the order id is derived from (client, key), so a retry
/// names the same order and never creates a second one.
#[utoipa::path(
    post,
    path = ORDERS_PATH,
    tag = "orders",
    operation_id = "place_order",
    params(
        ("Idempotency-Key" = Option<String>, Header, nullable = false, pattern = "^[!-~]{1,255}$",
         description = "1 to 255 visible ASCII characters, sent once. The same key with the same \
body names the same order (202 again, same `order_id`); with another body: 422."),
        ("Waiting-Room-Ticket" = Option<String>, Header, nullable = false,
         description = "The `ticket` of a waiting-room 429, sent back with the same order (same \
Idempotency-Key) to be admitted in ticket order. Ignored when the waiting room is off."),
    ),
    request_body(content = NewOrderSchema, content_type = "application/json",
        description = "The order (at most 64 KiB by default, `--ingest-max-body-bytes`). Rules the \
schema cannot say: `currency` is an active ISO 4217 code, each SKU appears once, quantities are 1 \
to 1000, and `total_minor` is exactly the sum of the lines.",
        example = json!({
            "customer_id": "c-1",
            "currency": "EUR",
            "lines": [{"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999}],
            "total_minor": 3998,
            "payment": {"method": "card", "token": "tok_test"}
        })),
    responses(
        (status = 202, description = "`order_placed` is durable in Kafka.", body = Accepted),
        (status = 400, description = "The body is not JSON, or the Idempotency-Key breaks its rules.",
         body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API keys are configured and none (or an unknown one) was sent.",
         body = Problem, content_type = "application/problem+json",
         headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "The API key is disabled, or the Waiting-Room-Ticket is not \
genuine or was issued to another client or order (`waiting-room-ticket-invalid`).",
         body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The request was not completed within the request timeout.",
         body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The Waiting-Room-Ticket expired (`waiting-room-ticket-expired`): \
send the order again without it to queue anew.",
         body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body exceeds the size limit.",
         body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "The body is not declared `application/json`.",
         body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "JSON that is not a valid order (`errors` points at each broken \
field), or an Idempotency-Key already used with another body.",
         body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "This client exceeded its rate limit (per API key, or per peer IP \
without keys; `rate-limited`), or, with the waiting room on, checkout is past its fleet-wide \
admission rate (`waiting-room`): the body then carries a signed `ticket` with its `ticket_number`, \
`position` and `expected_wait_ms`; send the same order again with the ticket in \
`Waiting-Room-Ticket` after Retry-After. Tickets are admitted in number order.",
         body = WaitingRoomProblem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."),
                 ("Waiting-Room-Ticket" = String, description = "The waiting room's ticket (as in the body), on `waiting-room` answers only."))),
        (status = 503, description = "The broker did not acknowledge in time, the producer queue is \
full, the shared idempotency store could not check the key, or the waiting room could not number \
the order. The order may or may not have been \
recorded: retry with the same Idempotency-Key.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security((), ("bearer" = []), ("api_key" = [])),
)]
async fn post_order(State(app): State<Arc<App>>, request: Request) -> Response {
    match accept(&app, request).await {
        Ok(order_id) => (
            StatusCode::ACCEPTED,
            Json(Accepted {
                order_id,
                status: "accepted".into(),
            }),
        )
            .into_response(),
        Err(err) => {
            tracing::debug!(
                problem = err.slug(),
                status = err.status().as_u16(),
                "order refused"
            );
            err.into_response()
        }
    }
}

/// Ask for an order to be cancelled.
///
/// Answers 202 once the `cancellation_requested` event is durable in Kafka. Ingest has no view of
/// the order's state: the saga cancels an order that is neither confirmed nor rejected and
/// ignores the request otherwise; read the outcome from the query API. Idempotent; no body.
#[utoipa::path(
    post,
    path = CANCEL_PATH,
    tag = "orders",
    operation_id = "cancel_order",
    params(("id" = String, Path, example = "0190f5a4-8a3c-7d1e-9b2a-3c4d5e6f7a8b",
            description = "The `order_id` of the 202 answer (a UUID).")),
    responses(
        (status = 202, description = "`cancellation_requested` is durable in Kafka.", body = Accepted),
        (status = 400, description = "The order id is not a UUID.",
         body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "API keys are configured and none (or an unknown one) was sent.",
         body = Problem, content_type = "application/problem+json",
         headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "The API key is disabled.",
         body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The request was not completed within the request timeout.",
         body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "A body (none is needed) exceeds the size limit.",
         body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "This client exceeded its rate limit.",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        (status = 503, description = "The broker did not acknowledge in time or the producer queue \
is full; retrying is harmless.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
    security((), ("bearer" = []), ("api_key" = [])),
)]
async fn post_cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    match cancel(&app, &id, request).await {
        Ok(order_id) => (
            StatusCode::ACCEPTED,
            Json(Accepted {
                order_id,
                status: CANCELLATION_REQUESTED.into(),
            }),
        )
            .into_response(),
        Err(err) => {
            tracing::debug!(
                problem = err.slug(),
                status = err.status().as_u16(),
                "cancellation refused"
            );
            err.into_response()
        }
    }
}

/// A cancellation request: same client checks as an order, then `cancellation_requested` on the
/// orders topic (keyed by the order, so it follows the order's events), acknowledged before the
/// 202. Ingest has no view of the order's state: the saga decides (cancels an order that is
/// neither confirmed nor rejected, ignores the request otherwise). A repeated request is
/// harmless and gets the same answer. The body, if any, is not read.
async fn cancel(app: &App, id: &str, request: Request) -> Result<Uuid, ApiError> {
    let (client, _) = identify(app, &request)?;
    let order_id = Uuid::parse_str(id).map_err(|_| ApiError::InvalidOrderId)?;
    let envelope = OrderEnvelope::new(
        order_id,
        OrderEvent::CancellationRequested(CancellationRequested {
            client_id: client.to_string(),
        }),
        None,
        order_id,
    );
    app.publisher.publish(&envelope).await?;
    tracing::debug!(%client, %order_id, "cancellation requested");
    Ok(order_id)
}

/// Who is calling (401/403 without a valid key when keys are configured), and the rate limit
/// (429). Returns the client id and its rate-limit key.
fn identify(app: &App, request: &Request) -> Result<(Arc<str>, String), ApiError> {
    let headers = request.headers();
    let (client, rate_key) = match &app.keys {
        Some(keys) => {
            let client = keys.authenticate(headers)?;
            let rate_key = client.to_string();
            (client, rate_key)
        }
        // Without keys the rate limit is per peer IP: the only identity there is. Behind a proxy
        // every request has the proxy's address and the limit becomes one shared bucket.
        None => (
            Arc::from(ANONYMOUS),
            request
                .extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map_or_else(|| ANONYMOUS.to_owned(), |peer| peer.0.ip().to_string()),
        ),
    };
    app.limit.check(&rate_key)?;
    Ok((client, rate_key))
}

/// Checks run cheapest first, so that a refused caller costs little: who, how often, headers,
/// then the body, then the broker.
async fn accept(app: &App, request: Request) -> Result<Uuid, ApiError> {
    let (client, _) = identify(app, &request)?;
    let headers = request.headers();
    let key = idempotency_key(headers)?;
    // Before the body is read: a queued order costs no parsing. A ticket is bound to the order
    // its Idempotency-Key names, so it admits that order (and its idempotent retries) only.
    if let Some(room) = &app.waiting_room {
        let order = key
            .as_ref()
            .map(|key| idempotency::order_id_for(&client, key));
        room.admit(&client, order, headers).await?;
    }
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge {
                    limit: app.max_body_bytes,
                }
            } else {
                ApiError::MalformedJson("the body could not be read".into())
            }
        })?;
    let order = parse_order(&body)?;
    order.validate().map_err(ApiError::InvalidOrder)?;
    let order_id = match &key {
        Some(key) => {
            let order_id = idempotency::order_id_for(&client, key);
            check_key(app, &client, key, order_id, &order.fingerprint()).await?;
            order_id
        }
        None => Uuid::now_v7(),
    };
    // The order id doubles as correlation id: every event that follows this order shares it.
    let envelope = OrderEnvelope::new(
        order_id,
        OrderEvent::OrderPlaced(order.into_order_placed()),
        None,
        order_id,
    );
    app.publisher.publish(&envelope).await?;
    tracing::debug!(%client, %order_id, "order accepted");
    Ok(order_id)
}

/// The "same key, other body" check: in memory only, or through the shared store with memory as
/// its fast path (a key known here with this body skips the store). Memory records a fingerprint
/// only once the store confirmed it, so that a failed store check is never skipped later.
async fn check_key(
    app: &App,
    client: &str,
    key: &IdempotencyKey,
    order_id: Uuid,
    fingerprint: &str,
) -> Result<(), ApiError> {
    let Some(store) = &app.store else {
        return app.recent.check_and_remember(order_id, fingerprint);
    };
    if app.recent.check(order_id, fingerprint)? {
        return Ok(());
    }
    match store
        .check(client, key.as_str(), fingerprint, order_id)
        .await
    {
        Ok(Outcome::New | Outcome::SameBody) => {
            app.recent.remember(order_id, fingerprint);
            Ok(())
        }
        Ok(Outcome::OtherBody(stored)) => {
            app.recent.remember(order_id, &stored);
            Err(ApiError::IdempotencyKeyReused)
        }
        Err(err) => {
            // Debug, like other 5xx: a store outage would otherwise log one error per request.
            tracing::debug!(%order_id, error = format!("{err:#}"), "idempotency store check failed");
            Err(ApiError::IdempotencyStoreUnavailable {
                retry_after: app.retry_after,
            })
        }
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
