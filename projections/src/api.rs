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
//!
//! Here: [`QueryApi`], its router, [`serve`] and [`run_query`]. Beside it, a file per route
//! family (`orders`, `customers`, `stock` with its stream, `sales`, `schemas`) and `problems`
//! (answers, RFC 7807 problems, parsing of parameters).

mod customers;
mod orders;
mod problems;
mod sales;
mod schemas;
mod stock;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use backon::{ExponentialBuilder, Retryable as _};
use orderpipe_runtime::health::{self, Readiness};
use orderpipe_runtime::problem::{problem_for_bare_error, Problem};
use scylla::client::session::Session;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{Config, QueryConfig};
use crate::error::Error;
use crate::metrics;
use crate::schema::connect;
use crate::stock_stream::{Wakeups, Watchers};
use crate::switch::ActiveViews;

use problems::not_found;
pub(crate) use stock::stock_snapshot;

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
        .routes(routes!(orders::get_order))
        .routes(routes!(customers::get_customer_orders))
        .routes(routes!(stock::get_stock))
        .routes(routes!(stock::stream_stock))
        .routes(routes!(sales::get_sales))
        .routes(routes!(schemas::get_event_schemas))
        .routes(routes!(schemas::get_event_schema))
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
    problem_for_bare_error(response, |status| {
        let reason = status.canonical_reason().unwrap_or("Error");
        let slug = match status {
            StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
            s if s.is_server_error() => "server-error",
            _ => "bad-request",
        };
        Problem::new(status, slug, reason, reason).into_response()
    })
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

/// Connects to the CQL `nodes` and waits until the views' schema exists (the projectors'
/// migrations create it), retrying both with backoff (a CQL cluster that is down or restarting
/// makes the API not ready, not exit), then serves the query API on `listen` until `shutdown` is
/// cancelled.
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
            Err("waiting for the CQL cluster and the views' schema".into())
        }
    });
    // A chaos run restarting the CQL server saw the query process exit 37 times in a row on
    // "Connection refused" before this retried the connection too. Once connected, the session
    // is kept: only the schema is waited for.
    let session = tokio::sync::OnceCell::new();
    let schema_ready = (|| async {
        let session = session
            .get_or_try_init(|| connect(nodes, &config.cql))
            .await?;
        QueryApi::new(session.clone(), &config).await
    })
    .retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .without_max_times(),
    )
    .when(|err| !matches!(err, Error::Config(_)))
    .notify(|err, retry_in| {
        tracing::warn!(error = %err, retry_in = ?retry_in,
            "query API waits for the CQL cluster and the views' schema");
    });
    let api = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        api = schema_ready => api?,
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

/// A slot of a bounded kind of request (long-polls, stock streams, control-room viewers):
/// counted while held, given back however the request ends; `gauge` follows the count.
pub(crate) struct Slot {
    count: Arc<AtomicUsize>,
    gauge: fn(f64),
}

impl Slot {
    /// A slot, or `None` when `max` are already taken.
    pub(crate) fn acquire(count: &Arc<AtomicUsize>, max: usize, gauge: fn(f64)) -> Option<Self> {
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

#[cfg(test)]
mod tests {
    use super::customers::{decode_cursor, encode_cursor};
    use super::sales::aggregate;
    use super::*;
    use crate::store::SaleRecord;
    use uuid::Uuid;

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
            response.headers()[axum::http::header::CONTENT_TYPE],
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
