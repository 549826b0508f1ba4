//! The query API: reads of the views over HTTP (axum). Reads only; it never touches the topics,
//! so it cannot slow the write path down.
//!
//! - `GET /v1/orders/{id}[?wait=5s[&status=placed]]`: the order, its lines and timeline. With
//!   `wait`, answers as soon as the status differs from `status` (default: the status at the
//!   time of the request; an order not yet in the views counts as "no status"), or when `wait`
//!   ends (then with the unchanged order, or 404 if it never appeared). A waiting request
//!   re-reads the status when a projector of this process wrote the order, and every
//!   `--query-poll-interval` for writes by other processes (see [`crate::stock_stream`]).
//! - `GET /v1/customers/{id}/orders[?limit=&cursor=]`: newest first, `next_cursor` while more.
//! - `GET /v1/stock/{sku}`: `available`, `reserved`, `sold`.
//! - `GET /v1/stock/{sku}/stream`: the same JSON as server-sent events, one per change, with
//!   `Last-Event-ID` resumption and a heartbeat (see [`crate::stock_stream`]).
//! - `GET /v1/sales?from=RFC3339&to=RFC3339[&sku=]`: per minute whose start is in
//!   `[from, to)` (minutes without sales left out), orders confirmed, units, revenue; plus totals.
//! - `GET /v1/schemas`, `GET /v1/schemas/{event_type}`: the JSON Schema of every event type
//!   (see [`crate::event_schemas`]), for consumers of the topics.
//! - `GET /openapi.json`: this API's OpenAPI 3.1 document ([`openapi`]), generated from the
//!   handlers' `#[utoipa::path]` and committed as `ops/api/query.openapi.json`.
//! - `/healthz`, `/readyz`, `/metrics` from `orderpipe-runtime`.
//!
//! Errors are RFC 7807 `application/problem+json` (`orderpipe_runtime::problem::Problem`, the
//! same document as ingest's): 400 for bad parameters, 404 for unknown ids, 503 when the views
//! cannot be read (details are logged, never sent).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{StreamExt, TryStreamExt};
use orderpipe_runtime::health::{self, Readiness};
use orderpipe_runtime::problem::{Problem, PROBLEM_JSON};
use scylla::client::session::Session;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::config::{Config, QueryConfig};
use crate::error::Error;
use crate::metrics;
use crate::model::Status;
use crate::schema::connect;
use crate::stock_stream::{Snapshot, Watchers, Wakeups};
use crate::store::{OrderRecord, StatusRecord, StockRecord};
use crate::switch::ActiveViews;

/// The query API's state: prepared reads and settings. Build it once, serve it with [`serve`].
#[derive(Clone)]
pub struct QueryApi {
    views: Arc<ActiveViews>,
    config: QueryConfig,
    long_polls: Arc<AtomicUsize>,
    streams: Arc<AtomicUsize>,
    wakeups: Arc<Wakeups>,
    watchers: Arc<Watchers>,
}

impl QueryApi {
    /// Prepares the reads of the views in the keyspace `config.cql.keyspace`'s `active_views`
    /// names, or in `config.cql.keyspace` itself (which must be migrated); see [`crate::switch`].
    pub async fn new(session: Arc<Session>, config: &Config) -> Result<Self, Error> {
        config.check().map_err(Error::Config)?;
        let views = Arc::new(ActiveViews::new(session, &config.cql.keyspace).await?);
        let wakeups = Arc::new(Wakeups::new());
        Ok(Self {
            watchers: Watchers::new(
                views.clone(),
                wakeups.clone(),
                config.query.stream_poll_interval,
            ),
            views,
            config: config.query.clone(),
            long_polls: Arc::new(AtomicUsize::new(0)),
            streams: Arc::new(AtomicUsize::new(0)),
            wakeups,
        })
    }

    /// The routes, with `/healthz`, `/readyz` (from `readiness`) and `/metrics`. Long-polls
    /// answer at once when `shutdown` is cancelled.
    pub fn router(self, readiness: Readiness, shutdown: CancellationToken) -> Router {
        let control_room = crate::control_room::layer(&self.views, &self.config, &shutdown);
        let state = AppState {
            api: self,
            shutdown,
        };
        let (routes, doc) = api_routes().split_for_parts();
        routes
            .with_state(state)
            .merge(orderpipe_runtime::openapi::route(&doc))
            .merge(health::routes(readiness))
            .fallback(|| async {
                metrics::request("unknown", 404);
                not_found("no such resource")
            })
            .layer(middleware::from_fn(bare_errors_as_problems))
            .layer(control_room)
    }
}

/// The query API's OpenAPI 3.1 document (paths from the handlers' `#[utoipa::path]` through
/// [`api_routes`]). Served at `/openapi.json`, committed as `ops/api/query.openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderpipe query API",
        description = "Reads of the views the projectors build from the topics (eventually \
consistent: a view follows its topic within the projector's lag), and the JSON Schemas of the \
events on the topics. Read-only; no authentication. Every error is an RFC 7807 \
`application/problem+json` document. `/healthz`, `/readyz` and `/metrics` are served on the same port.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(Problem)),
    tags(
        (name = "views", description = "Orders, customers, stock and sales"),
        (name = "schemas", description = "JSON Schemas of the events on the topics")
    )
)]
struct QueryDoc;

/// The documented routes, each registered from its own `#[utoipa::path]`.
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(QueryDoc::openapi())
        .routes(routes!(get_order))
        .routes(routes!(get_customer_orders))
        .routes(routes!(get_stock))
        .routes(routes!(stream_stock))
        .routes(routes!(get_sales))
        .routes(routes!(get_event_schemas))
        .routes(routes!(get_event_schema))
        .merge(crate::control_room::routes())
}

/// The query API's OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// Error answers made outside the handlers (axum's 405 for another method, a path segment
/// that is not UTF-8) come with an empty or plain-text body: made problem+json like the rest.
async fn bare_errors_as_problems(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let reason = status.canonical_reason().unwrap_or("Error");
    let slug = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        s if s.is_server_error() => "server-error",
        _ => "bad-request",
    };
    let mut problem = Problem::new(status, slug, reason, reason).into_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

/// Serves `api` on `listener` until `shutdown` is cancelled (in-flight requests finish;
/// long-polls answer at once).
pub async fn serve(
    listener: TcpListener,
    api: QueryApi,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    orderpipe_runtime::metrics::handle();
    // Follows `orderpipe switch` while serving (see `crate::switch`).
    tokio::spawn(
        api.views
            .clone()
            .follow(api.config.keyspace_check_interval, shutdown.clone()),
    );
    // Wakes stock watchers and long-polls on the writes of this process's projectors.
    tokio::spawn(api.wakeups.clone().dispatch(
        api.views.clone(),
        api.config.keyspace_check_interval,
        shutdown.clone(),
    ));
    let router = api.router(readiness, shutdown.clone());
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Connects to the CQL `nodes`, waits until the views' schema exists (the projectors' migrations
/// create it), then serves the query API on `listen` until `shutdown` is cancelled.
pub async fn run_query(
    config: Config,
    nodes: &[String],
    listen: SocketAddr,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    config.check().map_err(Error::Config)?;
    // Not ready until it serves: the process's /readyz must not send traffic to a query API that
    // still waits for the views' schema (slow on a fresh Cassandra or ScyllaDB keyspace).
    let listening = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = listening.clone();
    readiness.add("query", move || {
        if flag.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("waiting for the views' schema".into())
        }
    });
    let session = connect(nodes, &config.cql).await?;
    let mut backoff = Duration::from_millis(200);
    let api = loop {
        match QueryApi::new(session.clone(), &config).await {
            Ok(api) => break api,
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?backoff, "query API waits for the views' schema");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    };
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "query API listening");
    listening.store(true, Ordering::Relaxed);
    serve(listener, api, readiness, shutdown).await
}

#[derive(Clone)]
struct AppState {
    api: QueryApi,
    shutdown: CancellationToken,
}

fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-request",
        "Bad request parameter",
        detail,
    )
}

fn not_found(detail: impl Into<String>) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
}

/// The views cannot be read: 503 (with Retry-After, see [`answer`]); the cause is for the
/// operators' logs, not for clients.
impl From<Error> for Problem {
    fn from(err: Error) -> Self {
        tracing::warn!(error = %err, "query failed");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Views unavailable",
            "the views cannot be read right now; retry later",
        )
    }
}

/// How long a client should wait after a 503.
const RETRY_AFTER: Duration = Duration::from_secs(1);

fn answer<T: Serialize>(route: &'static str, result: Result<T, Problem>) -> Response {
    match result {
        Ok(body) => {
            metrics::request(route, 200);
            Json(body).into_response()
        }
        Err(problem) => {
            metrics::request(route, problem.status);
            let retry = problem.status_code() == StatusCode::SERVICE_UNAVAILABLE;
            problem.into_response_with(retry.then_some(RETRY_AFTER))
        }
    }
}

fn rfc3339(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The query string, or a 400 problem when it cannot be decoded.
fn params(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, Problem> {
    query
        .map(|Query(params)| params)
        .map_err(|rejection| bad_request(rejection.body_text()))
}

fn parse_uuid(what: &str, value: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(value).map_err(|_| bad_request(format!("{what} {value:?} is not a UUID")))
}

fn parse_time(name: &str, params: &HashMap<String, String>) -> Result<i64, Problem> {
    let value = params
        .get(name)
        .ok_or_else(|| bad_request(format!("`{name}` is required (RFC 3339)")))?;
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| bad_request(format!("`{name}` {value:?} is not an RFC 3339 time")))
}

/// One order line.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = OrderLineView)]
struct LineBody {
    /// Stock keeping unit.
    sku: String,
    /// Units ordered.
    quantity: i32,
    /// Price of one unit in minor units of the order's currency.
    unit_price_minor: i64,
}

/// One event of an order's timeline.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = TimelineEntry)]
struct TimelineBody {
    /// The event's `event_type`.
    event_type: String,
    /// When it happened (RFC 3339, UTC).
    #[schema(format = DateTime)]
    occurred_at: Option<String>,
    /// The event's `event_id` (unique per event; what consumers deduplicate by).
    event_id: Uuid,
    /// Short human-readable detail.
    detail: String,
}

/// An order as the views know it. Times are RFC 3339 (UTC), `null` until the step happened.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Order)]
struct OrderBody {
    order_id: Uuid,
    status: Status,
    /// Why the order was rejected (`out_of_stock`, `limit_exceeded`, `payment_declined`,
    /// `payment_timeout`...), `null` otherwise.
    reason: Option<String>,
    customer_id: Option<String>,
    /// ISO 4217 code.
    currency: Option<String>,
    /// Total in minor units of `currency`.
    total_minor: Option<i64>,
    lines: Vec<LineBody>,
    #[schema(format = DateTime)]
    placed_at: Option<String>,
    #[schema(format = DateTime)]
    stock_reserved_at: Option<String>,
    #[schema(format = DateTime)]
    paid_at: Option<String>,
    #[schema(format = DateTime)]
    payment_declined_at: Option<String>,
    /// When the order became confirmed or rejected.
    #[schema(format = DateTime)]
    decided_at: Option<String>,
    #[schema(format = DateTime)]
    cancelled_at: Option<String>,
    #[schema(format = DateTime)]
    refunded_at: Option<String>,
    /// Amount refunded, in minor units.
    refunded_minor: Option<i64>,
    /// The order's events, oldest first.
    timeline: Vec<TimelineBody>,
}

fn order_body(order_id: Uuid, r: OrderRecord) -> OrderBody {
    let status = Status::derive(
        r.terminal_status.as_deref(),
        r.paid_at.is_some(),
        r.reserved_at.is_some(),
    );
    OrderBody {
        order_id,
        status,
        reason: r.terminal_reason,
        customer_id: r.customer_id,
        currency: r.currency,
        total_minor: r.total_minor,
        lines: r
            .lines
            .into_iter()
            .map(|l| LineBody {
                sku: l.sku,
                quantity: l.quantity,
                unit_price_minor: l.unit_price_minor,
            })
            .collect(),
        placed_at: r.placed_at.and_then(rfc3339),
        stock_reserved_at: r.reserved_at.and_then(rfc3339),
        paid_at: r.paid_at.and_then(rfc3339),
        payment_declined_at: r.declined_at.and_then(rfc3339),
        decided_at: r.terminal_at.and_then(rfc3339),
        cancelled_at: r.cancelled_at.and_then(rfc3339),
        refunded_at: r.refunded_at.and_then(rfc3339),
        refunded_minor: r.refunded_minor,
        timeline: r
            .timeline
            .into_iter()
            .map(|t| TimelineBody {
                event_type: t.event_type,
                occurred_at: rfc3339(t.occurred_at),
                event_id: t.event_id,
                detail: t.detail,
            })
            .collect(),
    }
}

fn status_of(record: &StatusRecord) -> Status {
    Status::derive(
        record.terminal_status.as_deref(),
        record.paid,
        record.reserved,
    )
}

/// A slot of a bounded kind of request (long-polls, stock streams): counted while held, given
/// back however the request ends; `gauge` follows the count.
struct Slot {
    count: Arc<AtomicUsize>,
    gauge: fn(f64),
}

impl Slot {
    /// A slot, or `None` when `max` are already taken.
    fn acquire(count: &Arc<AtomicUsize>, max: usize, gauge: fn(f64)) -> Option<Self> {
        let taken = count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| {
            gauge(1.0);
            Slot {
                count: count.clone(),
                gauge,
            }
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
        (self.gauge)(-1.0);
    }
}

/// An order: status, lines and timeline; with `wait`, long-polls for a status change.
///
/// With `wait`, answers as soon as the status differs from `status` (default: the status at the
/// time of the request; an order not yet in the views counts as "no status"), or when `wait`
/// ends (then with the unchanged order, or 404 if it never appeared). Past the server's cap on
/// waiting long-polls, answers at once.
#[utoipa::path(
    get,
    path = "/v1/orders/{id}",
    tag = "views",
    operation_id = "get_order",
    params(
        ("id" = String, Path, example = "0190f5a4-8a3c-7d1e-9b2a-3c4d5e6f7a8b",
         description = "The order id (a UUID)."),
        ("wait" = Option<String>, Query, example = "5s",
         description = "Long-poll up to this long (`5s`, `500ms`; at most `--query-max-wait`, 30 s by default)."),
        ("status" = Option<Status>, Query,
         description = "The status the client knows: answer once the order's status differs from it."),
    ),
    responses(
        (status = 200, description = "The order.", body = OrderBody),
        (status = 400, description = "The id is not a UUID, or `wait` or `status` is invalid.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order in the views (yet).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The views cannot be read right now.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let result = match params(query) {
        Ok(params) => order(&state, &id, &params).await,
        Err(problem) => Err(problem),
    };
    answer("order", result)
}

async fn order(
    state: &AppState,
    id: &str,
    params: &HashMap<String, String>,
) -> Result<OrderBody, Problem> {
    let order_id = parse_uuid("order id", id)?;
    let config = &state.api.config;
    let wait = match params.get("wait") {
        None => Duration::ZERO,
        Some(value) => {
            let wait = humantime::parse_duration(value)
                .map_err(|_| bad_request(format!("`wait` {value:?} is not a duration like 5s")))?;
            if wait > config.max_wait {
                return Err(bad_request(format!(
                    "`wait` must be at most {}",
                    humantime::format_duration(config.max_wait)
                )));
            }
            wait
        }
    };
    let expected = match params.get("status") {
        None => None,
        Some(value) => Some(Status::parse(value).ok_or_else(|| {
            bad_request(format!(
                "`status` {value:?} is not one of placed, stock_reserved, paid, confirmed, rejected, cancelled"
            ))
        })?),
    };
    let reader = state.api.views.reader();
    // Each waiting client re-reads the order every poll interval (writes of projectors in
    // other processes are seen no other way): past the cap, clients get the current state at
    // once (and poll again) instead of loading the cluster further.
    let guard = if wait.is_zero() {
        None
    } else {
        Slot::acquire(
            &state.api.long_polls,
            config.max_long_polls,
            metrics::long_polls,
        )
    };
    if guard.is_some() {
        // Registered before the first read: a write landing during it still wakes us.
        let mut written = state.api.wakeups.orders.register(order_id);
        let deadline = tokio::time::Instant::now() + wait;
        // `None`: not in the views yet. The reference is the status the client knows.
        let mut reference: Option<Option<Status>> = expected.map(Some);
        loop {
            let current = reader.status(order_id).await?.as_ref().map(status_of);
            let known = *reference.get_or_insert(current);
            if current.is_some() && current != known {
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break;
            }
            let nap = config.poll_interval.min(deadline - now);
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = written.woken() => {}
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }
    match reader.order(order_id).await? {
        Some(record) => Ok(order_body(order_id, record)),
        None => Err(not_found(format!("order {order_id} is unknown"))),
    }
}

/// One order of a customer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CustomerOrder)]
struct CustomerOrderBody {
    order_id: Uuid,
    #[schema(format = DateTime)]
    placed_at: Option<String>,
    status: Status,
    /// Why the order was rejected, `null` otherwise.
    reason: Option<String>,
    currency: Option<String>,
    total_minor: Option<i64>,
    line_count: Option<i32>,
}

/// A page of a customer's orders, newest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = CustomerOrders)]
struct CustomerOrdersBody {
    customer_id: String,
    orders: Vec<CustomerOrderBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    next_cursor: Option<String>,
}

/// Cursor of customer paging: the `(placed_at, order_id)` of the last order of a page,
/// as 48 hex digits (opaque to clients).
pub(crate) fn encode_cursor(placed_at: i64, order_id: Uuid) -> String {
    let mut bytes = Vec::with_capacity(24);
    bytes.extend_from_slice(&placed_at.to_be_bytes());
    bytes.extend_from_slice(order_id.as_bytes());
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Inverse of [`encode_cursor`]; `None` for anything it did not produce.
pub(crate) fn decode_cursor(cursor: &str) -> Option<(i64, Uuid)> {
    if cursor.len() != 48 || !cursor.is_ascii() {
        return None;
    }
    let bytes: Vec<u8> = (0..24)
        .map(|i| u8::from_str_radix(&cursor[i * 2..i * 2 + 2], 16).ok())
        .collect::<Option<_>>()?;
    let placed_at = i64::from_be_bytes(bytes[..8].try_into().ok()?);
    let order_id = Uuid::from_slice(&bytes[8..]).ok()?;
    Some((placed_at, order_id))
}

/// A customer's orders, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/customers/{id}/orders",
    tag = "views",
    operation_id = "get_customer_orders",
    params(
        ("id" = String, Path, example = "c-1",
         description = "The customer id (`customer_id` of the orders)."),
        ("limit" = Option<u32>, Query, minimum = 1,
         description = "Page size, 1 to `--query-max-page` (100 by default); `--query-default-page` (20) when absent."),
        ("cursor" = Option<String>, Query,
         description = "`next_cursor` of the previous page."),
    ),
    responses(
        (status = 200, description = "A page of orders (empty for an unknown customer).", body = CustomerOrdersBody),
        (status = 400, description = "`limit` or `cursor` is invalid.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "An empty customer id (no such resource).", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The views cannot be read right now.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
async fn get_customer_orders(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let result = match params(query) {
        Ok(params) => customer_orders(&state, id, &params).await,
        Err(problem) => Err(problem),
    };
    answer("customer_orders", result)
}

async fn customer_orders(
    state: &AppState,
    customer_id: String,
    params: &HashMap<String, String>,
) -> Result<CustomerOrdersBody, Problem> {
    let config = &state.api.config;
    let limit = match params.get("limit") {
        None => config.default_page,
        Some(value) => match value.parse::<u32>() {
            Ok(n) if (1..=config.max_page).contains(&n) => n,
            _ => {
                return Err(bad_request(format!(
                    "`limit` must be an integer from 1 to {}",
                    config.max_page
                )))
            }
        },
    };
    let after = match params.get("cursor") {
        None => None,
        Some(cursor) => Some(
            decode_cursor(cursor)
                .ok_or_else(|| bad_request("`cursor` is not a cursor this API gave"))?,
        ),
    };
    let reader = state.api.views.reader();
    let page_size = usize::try_from(limit).unwrap_or(usize::MAX);
    let mut rows = reader
        .customer_orders(
            &customer_id,
            after,
            i32::try_from(limit + 1).unwrap_or(i32::MAX),
        )
        .await?;
    let next_cursor = if rows.len() > page_size {
        rows.truncate(page_size);
        rows.last().map(|r| encode_cursor(r.placed_at, r.order_id))
    } else {
        None
    };
    let ids: Vec<Uuid> = rows.iter().map(|r| r.order_id).collect();
    let statuses: Vec<Option<StatusRecord>> = futures::stream::iter(ids)
        .map(|id| reader.status(id))
        .buffered(16)
        .try_collect()
        .await?;
    let orders = rows
        .into_iter()
        .zip(statuses)
        .map(|(row, status)| CustomerOrderBody {
            order_id: row.order_id,
            placed_at: rfc3339(row.placed_at),
            status: status.as_ref().map_or(Status::Placed, status_of),
            reason: status.and_then(|s| s.terminal_reason),
            currency: row.currency,
            total_minor: row.total_minor,
            line_count: row.line_count,
        })
        .collect();
    Ok(CustomerOrdersBody {
        customer_id,
        orders,
        next_cursor,
    })
}

/// Stock of one SKU.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Stock)]
struct StockBody {
    sku: String,
    /// Units that can still be reserved.
    available: i64,
    /// Units held by orders not yet confirmed.
    reserved: i64,
    /// Units of confirmed orders.
    sold: i64,
    /// Most units one customer may buy, `null` for no limit.
    per_customer_limit: Option<i32>,
    /// When the stock stage last reported the levels (RFC 3339, UTC).
    #[schema(format = DateTime)]
    updated_at: Option<String>,
}

/// Stock of one SKU.
#[utoipa::path(
    get,
    path = "/v1/stock/{sku}",
    tag = "views",
    operation_id = "get_stock",
    params(("sku" = String, Path, example = "SKU-1", description = "The SKU.")),
    responses(
        (status = 200, description = "The SKU's stock.", body = StockBody),
        (status = 404, description = "No stock was ever set for this SKU.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The views cannot be read right now.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
async fn get_stock(State(state): State<AppState>, Path(sku): Path<String>) -> Response {
    let result = async {
        match state.api.views.reader().stock(&sku).await? {
            Some(record) => Ok(stock_body(sku, record)),
            None => Err(unknown_sku(&sku)),
        }
    }
    .await;
    answer("stock", result)
}

fn unknown_sku(sku: &str) -> Problem {
    not_found(format!("SKU {sku:?} is unknown"))
}

fn stock_body(sku: String, s: StockRecord) -> StockBody {
    StockBody {
        sku,
        available: s.available,
        reserved: s.reserved,
        sold: s.sold,
        per_customer_limit: s.per_customer_limit,
        updated_at: s.updated_at.and_then(rfc3339),
    }
}

/// A stock row as one state of its stream: the JSON `GET /v1/stock/{sku}` answers, with the
/// row's offset as event id (`-1` for a row without one, which no row written by a projector
/// lacks).
pub(crate) fn stock_snapshot(sku: &str, record: StockRecord) -> Snapshot {
    let id = record.offset.unwrap_or(-1);
    let json = serde_json::to_string(&stock_body(sku.to_owned(), record))
        .expect("a stock body is always JSON");
    Snapshot { id, json }
}

/// Live stock of one SKU as server-sent events.
///
/// Each event's `data` is the SKU's `Stock` document (as `GET /v1/stock/{sku}` answers) and its
/// `id` the offset of that state on the `stock` topic, growing per SKU. On connect the current
/// state is sent at once, unless the client's `Last-Event-ID` says it has it already; after
/// that, every newer state as the views change. A comment line (`:heartbeat`) comes every
/// `--query-stream-heartbeat` (15 s) while nothing changes. States closer together than the
/// server reads them are sent as the newest. The stream ends only when the client leaves or
/// the server shuts down (reconnect with `Last-Event-ID`, as `EventSource` does).
#[utoipa::path(
    get,
    path = "/v1/stock/{sku}/stream",
    tag = "views",
    operation_id = "stream_stock",
    params(
        ("sku" = String, Path, example = "SKU-1", description = "The SKU."),
        ("Last-Event-ID" = Option<i64>, Header,
         description = "The `id` of the last event the client received: only newer states are sent."),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`: events `id: <offset>` with `data: <Stock JSON>`, and heartbeat comments.",
         content_type = "text/event-stream", body = String),
        (status = 400, description = "`Last-Event-ID` is not an integer.", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No stock was ever set for this SKU.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many streams are open (`--query-stream-max-subscribers`), or the views cannot be read right now.",
         body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
// How it is served (shared watchers, write notices): `crate::stock_stream`.
async fn stream_stock(
    State(state): State<AppState>,
    Path(sku): Path<String>,
    headers: HeaderMap,
) -> Response {
    let config = &state.api.config;
    let Some(slot) = Slot::acquire(
        &state.api.streams,
        config.stream_max_subscribers,
        metrics::stock_streams,
    ) else {
        let problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-streams",
            "Too many stock streams",
            format!(
                "this server already serves {} stock streams; retry later or poll GET /v1/stock/{{sku}}",
                config.stream_max_subscribers
            ),
        );
        return answer::<()>("stock_stream", Err(problem));
    };
    let last_event_id = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) if v.trim().is_empty() => None,
        Some(Ok(v)) => match v.trim().parse::<i64>() {
            Ok(id) => Some(id),
            Err(_) => {
                return answer::<()>(
                    "stock_stream",
                    Err(bad_request(format!(
                        "`Last-Event-ID` {v:?} is not an event id of this stream (an integer)"
                    ))),
                )
            }
        },
        Some(Err(_)) => {
            return answer::<()>(
                "stock_stream",
                Err(bad_request("`Last-Event-ID` is not text")),
            )
        }
    };
    // Joined before the read: a change after it reaches this stream through the watcher.
    let receiver = state.api.watchers.follow(&sku);
    let first = match state.api.views.reader().stock(&sku).await {
        Ok(Some(record)) => stock_snapshot(&sku, record),
        Ok(None) => return answer::<()>("stock_stream", Err(unknown_sku(&sku))),
        Err(err) => return answer::<()>("stock_stream", Err(err.into())),
    };
    metrics::request("stock_stream", 200);
    crate::stock_stream::sse(
        receiver,
        Arc::new(first),
        last_event_id,
        config.stream_heartbeat,
        state.shutdown.clone(),
        slot,
    )
    .into_response()
}

/// Sales of one minute, or the totals (confirmed orders).
#[derive(Debug, Default, Serialize, PartialEq, Eq, ToSchema)]
pub(crate) struct SalesFigures {
    /// Start of the minute (RFC 3339, UTC); absent in the totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime, nullable = false)]
    pub(crate) minute: Option<String>,
    /// Orders confirmed (an order counts once even with several lines).
    pub(crate) orders: u64,
    /// Units sold.
    pub(crate) units: i64,
    /// Sum over currencies (meaningful when the sale runs in one currency).
    pub(crate) revenue_minor: i64,
    /// Revenue in minor units per ISO 4217 currency.
    pub(crate) revenue_by_currency: BTreeMap<String, i64>,
}

impl SalesFigures {
    fn add(&mut self, row: &crate::store::SaleRecord) {
        self.units += row.units;
        self.revenue_minor += row.revenue_minor;
        *self
            .revenue_by_currency
            .entry(row.currency.clone())
            .or_default() += row.revenue_minor;
    }
}

/// Sales per minute of `[from, to)` (minutes without sales left out) and in total.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Sales)]
struct SalesBody {
    #[schema(format = DateTime)]
    from: Option<String>,
    #[schema(format = DateTime)]
    to: Option<String>,
    /// The SKU asked for, `null` for every SKU.
    sku: Option<String>,
    minutes: Vec<SalesFigures>,
    totals: SalesFigures,
}

/// Sums sales rows per minute (Cassandra 2.1 has no aggregates): an order counts once per
/// minute even with several lines of the SKU.
pub(crate) fn aggregate(rows: &[crate::store::SaleRecord]) -> (Vec<SalesFigures>, SalesFigures) {
    let mut per_minute: BTreeMap<i64, (SalesFigures, std::collections::BTreeSet<Uuid>)> =
        BTreeMap::new();
    let mut totals = SalesFigures::default();
    let mut all_orders = std::collections::BTreeSet::new();
    for row in rows {
        let (figures, orders) = per_minute.entry(row.minute).or_default();
        figures.add(row);
        orders.insert(row.order_id);
        totals.add(row);
        all_orders.insert(row.order_id);
    }
    totals.orders = all_orders.len() as u64;
    let minutes = per_minute
        .into_iter()
        .map(|(minute, (mut figures, orders))| {
            figures.minute = rfc3339(minute);
            figures.orders = orders.len() as u64;
            figures
        })
        .collect();
    (minutes, totals)
}

/// Sales per minute and in total (confirmed orders) over a time range.
#[utoipa::path(
    get,
    path = "/v1/sales",
    tag = "views",
    operation_id = "get_sales",
    params(
        ("from" = String, Query, format = DateTime, example = "2026-01-01T12:00:00Z",
         description = "Start (RFC 3339), inclusive."),
        ("to" = String, Query, format = DateTime, example = "2026-01-01T13:00:00Z",
         description = "End (RFC 3339), exclusive; at most `--query-max-sales-range` (24 h by default) after `from`."),
        ("sku" = Option<String>, Query, description = "Only this SKU."),
    ),
    responses(
        (status = 200, description = "The sales.", body = SalesBody),
        (status = 400, description = "`from` or `to` is missing or invalid, or the range is too wide.", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The views cannot be read right now.", body = Problem, content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
async fn get_sales(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let result = match params(query) {
        Ok(params) => sales(&state, &params).await,
        Err(problem) => Err(problem),
    };
    answer("sales", result)
}

async fn sales(state: &AppState, params: &HashMap<String, String>) -> Result<SalesBody, Problem> {
    let from = parse_time("from", params)?;
    let to = parse_time("to", params)?;
    if from > to {
        return Err(bad_request("`from` must not be after `to`"));
    }
    let max = state.api.config.max_sales_range;
    if u128::try_from(to - from).unwrap_or(u128::MAX) > max.as_millis() {
        return Err(bad_request(format!(
            "`from`..`to` must span at most {}",
            humantime::format_duration(max)
        )));
    }
    let sku = params.get("sku").filter(|s| !s.is_empty()).cloned();
    let rows = state
        .api
        .views
        .reader()
        .sales(from, to, sku.as_deref())
        .await?;
    let (minutes, totals) = aggregate(&rows);
    Ok(SalesBody {
        from: rfc3339(from),
        to: rfc3339(to),
        sku,
        minutes,
        totals,
    })
}

/// `GET /v1/schemas`.
#[derive(Debug, Serialize, ToSchema)]
struct EventSchemasBody {
    /// Every event type on the topics, with where its JSON Schema is.
    schemas: Vec<crate::event_schemas::EventSchemaRef>,
}

/// The event types on the topics and where their JSON Schemas are.
#[utoipa::path(
    get,
    path = "/v1/schemas",
    tag = "schemas",
    operation_id = "list_event_schemas",
    responses((status = 200, description = "Every event type.", body = EventSchemasBody)),
)]
async fn get_event_schemas() -> Response {
    answer(
        "schemas",
        Ok(EventSchemasBody {
            schemas: crate::event_schemas::list(),
        }),
    )
}

/// The JSON Schema (draft 2020-12) of one event type: envelope and payload fields of a record
/// value on its topic, as committed in `schemas/json/<topic>/<event_type>.json`.
#[utoipa::path(
    get,
    path = "/v1/schemas/{event_type}",
    tag = "schemas",
    operation_id = "get_event_schema",
    params(("event_type" = String, Path, example = "order_placed", description = "An `event_type`.")),
    responses(
        (status = 200, description = "The JSON Schema.", content_type = "application/schema+json",
         body = Object),
        (status = 404, description = "No such event type.", body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn get_event_schema(Path(event_type): Path<String>) -> Response {
    match crate::event_schemas::get(&event_type) {
        Some(schema) => {
            metrics::request("schema", 200);
            ([(header::CONTENT_TYPE, "application/schema+json")], schema).into_response()
        }
        None => {
            let problem = not_found(format!(
                "no event type {event_type:?}; GET /v1/schemas lists them"
            ));
            metrics::request("schema", problem.status);
            problem.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SaleRecord;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let id = Uuid::now_v7();
        let cursor = encode_cursor(1_700_000_000_123, id);
        assert_eq!(decode_cursor(&cursor), Some((1_700_000_000_123, id)));
        assert_eq!(decode_cursor(&encode_cursor(-5, id)), Some((-5, id)));
        for bad in [
            "",
            "zz",
            &cursor[1..],
            &format!("{}g", &cursor[1..]),
            "é".repeat(24).as_str(),
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn sales_are_summed_per_minute_and_in_total() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let row = |minute, order_id, units, revenue| SaleRecord {
            minute,
            order_id,
            currency: "EUR".into(),
            units,
            revenue_minor: revenue,
        };
        // Given order a in minute 0 with two rows (two lines of a SKU) and order b in minute 1
        let rows = [row(0, a, 1, 100), row(0, a, 2, 200), row(60_000, b, 5, 500)];
        let (minutes, totals) = aggregate(&rows);
        assert_eq!(minutes.len(), 2);
        assert_eq!(
            (
                minutes[0].orders,
                minutes[0].units,
                minutes[0].revenue_minor
            ),
            (1, 3, 300)
        );
        assert_eq!(
            minutes[1].minute.as_deref(),
            Some("1970-01-01T00:01:00.000Z")
        );
        assert_eq!(
            (totals.orders, totals.units, totals.revenue_minor),
            (2, 8, 800)
        );
        assert_eq!(totals.revenue_by_currency.get("EUR"), Some(&800));
    }

    #[test]
    fn long_polls_are_capped() {
        let count = Arc::new(AtomicUsize::new(0));
        let first = Slot::acquire(&count, 2, metrics::long_polls);
        let second = Slot::acquire(&count, 2, metrics::long_polls);
        assert!(first.is_some() && second.is_some());
        assert!(
            Slot::acquire(&count, 2, metrics::long_polls).is_none(),
            "third waits no more"
        );
        drop(first);
        assert!(
            Slot::acquire(&count, 2, metrics::long_polls).is_some(),
            "a freed slot is reused"
        );
    }

    #[tokio::test]
    async fn problems_are_rfc7807() {
        let response = not_found("order x is unknown").into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["status"], 404);
        assert_eq!(json["title"], "Not found");
        assert_eq!(json["type"], "urn:orderpipe:problem:not-found");
    }
}
