//! The query API: reads of the views over HTTP (axum). Reads only; it never touches the topics,
//! so it cannot slow the write path down.
//!
//! - `GET /v1/orders/{id}[?wait=5s[&status=placed]]`: the order, its lines and timeline. With
//!   `wait`, answers as soon as the status differs from `status` (default: the status at the
//!   time of the request; an order not yet in the views counts as "no status"), or when `wait`
//!   ends (then with the unchanged order, or 404 if it never appeared).
//! - `GET /v1/customers/{id}/orders[?limit=&cursor=]`: newest first, `next_cursor` while more.
//! - `GET /v1/stock/{sku}`: `available`, `reserved`, `sold`.
//! - `GET /v1/sales?from=RFC3339&to=RFC3339[&sku=]`: per minute whose start is in
//!   `[from, to)` (minutes without sales left out), orders confirmed, units, revenue; plus totals.
//! - `/healthz`, `/readyz`, `/metrics` from `orderpipe-runtime`.
//!
//! Errors are RFC 7807 `application/problem+json`: 400 for bad parameters, 404 for unknown ids,
//! 503 when the views cannot be read (details are logged, never sent).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{StreamExt, TryStreamExt};
use orderpipe_runtime::health::{self, Readiness};
use scylla::client::session::Session;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{Config, QueryConfig};
use crate::error::Error;
use crate::metrics;
use crate::model::Status;
use crate::schema::connect;
use crate::store::{OrderRecord, StatusRecord};
use crate::switch::ActiveViews;

/// The query API's state: prepared reads and settings. Build it once, serve it with [`serve`].
#[derive(Clone)]
pub struct QueryApi {
    views: Arc<ActiveViews>,
    config: QueryConfig,
    long_polls: Arc<AtomicUsize>,
}

impl QueryApi {
    /// Prepares the reads of the views in the keyspace `config.cql.keyspace`'s `active_views`
    /// names, or in `config.cql.keyspace` itself (which must be migrated); see [`crate::switch`].
    pub async fn new(session: Arc<Session>, config: &Config) -> Result<Self, Error> {
        config.check().map_err(Error::Config)?;
        Ok(Self {
            views: Arc::new(ActiveViews::new(session, &config.cql.keyspace).await?),
            config: config.query.clone(),
            long_polls: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The routes, with `/healthz`, `/readyz` (from `readiness`) and `/metrics`. Long-polls
    /// answer at once when `shutdown` is cancelled.
    pub fn router(self, readiness: Readiness, shutdown: CancellationToken) -> Router {
        let state = AppState {
            api: self,
            shutdown,
        };
        Router::new()
            .route("/v1/orders/{id}", get(get_order))
            .route("/v1/customers/{id}/orders", get(get_customer_orders))
            .route("/v1/stock/{sku}", get(get_stock))
            .route("/v1/sales", get(get_sales))
            .with_state(state)
            .merge(health::routes(readiness))
            .fallback(|| async {
                metrics::request("unknown", 404);
                Problem::not_found("no such resource")
            })
    }
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

/// An RFC 7807 problem answer.
#[derive(Debug)]
struct Problem {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
}

impl Problem {
    fn bad_request(detail: impl Into<String>) -> Self {
        Problem {
            status: StatusCode::BAD_REQUEST,
            kind: "bad-request",
            title: "Bad request parameter",
            detail: detail.into(),
        }
    }

    fn not_found(detail: impl Into<String>) -> Self {
        Problem {
            status: StatusCode::NOT_FOUND,
            kind: "not-found",
            title: "Not found",
            detail: detail.into(),
        }
    }
}

impl From<Error> for Problem {
    fn from(err: Error) -> Self {
        // The cause is for the operators' logs, not for clients.
        tracing::warn!(error = %err, "query failed");
        Problem {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "unavailable",
            title: "Views unavailable",
            detail: "the views cannot be read right now; retry later".into(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": format!("urn:orderpipe:problem:{}", self.kind),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body.to_string(),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

fn answer<T: Serialize>(route: &'static str, result: Result<T, Problem>) -> Response {
    match result {
        Ok(body) => {
            metrics::request(route, 200);
            Json(body).into_response()
        }
        Err(problem) => {
            metrics::request(route, problem.status.as_u16());
            problem.into_response()
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
        .map_err(|rejection| Problem::bad_request(rejection.body_text()))
}

fn parse_uuid(what: &str, value: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(value)
        .map_err(|_| Problem::bad_request(format!("{what} {value:?} is not a UUID")))
}

fn parse_time(name: &str, params: &HashMap<String, String>) -> Result<i64, Problem> {
    let value = params
        .get(name)
        .ok_or_else(|| Problem::bad_request(format!("`{name}` is required (RFC 3339)")))?;
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| Problem::bad_request(format!("`{name}` {value:?} is not an RFC 3339 time")))
}

/// One order line in answers.
#[derive(Debug, Serialize)]
struct LineBody {
    sku: String,
    quantity: i32,
    unit_price_minor: i64,
}

/// One timeline entry in answers.
#[derive(Debug, Serialize)]
struct TimelineBody {
    event_type: String,
    occurred_at: Option<String>,
    event_id: Uuid,
    detail: String,
}

/// `GET /v1/orders/{id}`.
#[derive(Debug, Serialize)]
struct OrderBody {
    order_id: Uuid,
    status: Status,
    reason: Option<String>,
    customer_id: Option<String>,
    currency: Option<String>,
    total_minor: Option<i64>,
    lines: Vec<LineBody>,
    placed_at: Option<String>,
    stock_reserved_at: Option<String>,
    paid_at: Option<String>,
    payment_declined_at: Option<String>,
    decided_at: Option<String>,
    cancelled_at: Option<String>,
    refunded_at: Option<String>,
    refunded_minor: Option<i64>,
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

/// A long-poll slot: counted while held, given back however the poll ends.
struct LongPollGuard(Arc<AtomicUsize>);

impl LongPollGuard {
    /// A slot, or `None` when `max` long-polls already wait.
    fn acquire(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let taken = count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| {
            metrics::long_polls(1.0);
            LongPollGuard(count.clone())
        })
    }
}

impl Drop for LongPollGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::long_polls(-1.0);
    }
}

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
            let wait = humantime::parse_duration(value).map_err(|_| {
                Problem::bad_request(format!("`wait` {value:?} is not a duration like 5s"))
            })?;
            if wait > config.max_wait {
                return Err(Problem::bad_request(format!(
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
            Problem::bad_request(format!(
                "`status` {value:?} is not one of placed, stock_reserved, paid, confirmed, rejected"
            ))
        })?),
    };
    let reader = state.api.views.reader();
    // Each waiting client re-reads the order every poll interval: past the cap, clients get
    // the current state at once (and poll again) instead of loading the cluster further.
    let guard = if wait.is_zero() {
        None
    } else {
        LongPollGuard::acquire(&state.api.long_polls, config.max_long_polls)
    };
    if guard.is_some() {
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
                _ = tokio::time::sleep(nap) => {}
            }
        }
    }
    match reader.order(order_id).await? {
        Some(record) => Ok(order_body(order_id, record)),
        None => Err(Problem::not_found(format!("order {order_id} is unknown"))),
    }
}

/// One entry of `GET /v1/customers/{id}/orders`.
#[derive(Debug, Serialize)]
struct CustomerOrderBody {
    order_id: Uuid,
    placed_at: Option<String>,
    status: Status,
    reason: Option<String>,
    currency: Option<String>,
    total_minor: Option<i64>,
    line_count: Option<i32>,
}

/// `GET /v1/customers/{id}/orders`.
#[derive(Debug, Serialize)]
struct CustomerOrdersBody {
    customer_id: String,
    orders: Vec<CustomerOrderBody>,
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

async fn get_customer_orders(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    answer(
        "customer_orders",
        customer_orders(&state, id, &params).await,
    )
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
                return Err(Problem::bad_request(format!(
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
                .ok_or_else(|| Problem::bad_request("`cursor` is not a cursor this API gave"))?,
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

/// `GET /v1/stock/{sku}`.
#[derive(Debug, Serialize)]
struct StockBody {
    sku: String,
    available: i64,
    reserved: i64,
    sold: i64,
    per_customer_limit: Option<i32>,
    updated_at: Option<String>,
}

async fn get_stock(State(state): State<AppState>, Path(sku): Path<String>) -> Response {
    let result = async {
        match state.api.views.reader().stock(&sku).await? {
            Some(s) => Ok(StockBody {
                sku,
                available: s.available,
                reserved: s.reserved,
                sold: s.sold,
                per_customer_limit: s.per_customer_limit,
                updated_at: s.updated_at.and_then(rfc3339),
            }),
            None => Err(Problem::not_found(format!("SKU {sku:?} is unknown"))),
        }
    }
    .await;
    answer("stock", result)
}

/// Sales of one minute, or the totals.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) struct SalesFigures {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) minute: Option<String>,
    pub(crate) orders: u64,
    pub(crate) units: i64,
    /// Sum over currencies (meaningful when the sale runs in one currency).
    pub(crate) revenue_minor: i64,
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

/// `GET /v1/sales`.
#[derive(Debug, Serialize)]
struct SalesBody {
    from: Option<String>,
    to: Option<String>,
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
        return Err(Problem::bad_request("`from` must not be after `to`"));
    }
    let max = state.api.config.max_sales_range;
    if u128::try_from(to - from).unwrap_or(u128::MAX) > max.as_millis() {
        return Err(Problem::bad_request(format!(
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
        let first = LongPollGuard::acquire(&count, 2);
        let second = LongPollGuard::acquire(&count, 2);
        assert!(first.is_some() && second.is_some());
        assert!(
            LongPollGuard::acquire(&count, 2).is_none(),
            "third waits no more"
        );
        drop(first);
        assert!(
            LongPollGuard::acquire(&count, 2).is_some(),
            "a freed slot is reused"
        );
    }

    #[tokio::test]
    async fn problems_are_rfc7807() {
        let response = Problem::not_found("order x is unknown").into_response();
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
