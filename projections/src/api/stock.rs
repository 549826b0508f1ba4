//! `GET /v1/stock/{sku}` and its live stream of server-sent events,
//! `GET /v1/stock/{sku}/stream`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use orderpipe_runtime::problem::Problem;
use serde::Serialize;
use utoipa::ToSchema;

use super::problems::{answer, bad_request, not_found, rfc3339};
use super::{AppState, Slot};
use crate::metrics;
use crate::stock_stream::Snapshot;
use crate::store::StockRecord;

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
pub(super) async fn get_stock(State(state): State<AppState>, Path(sku): Path<String>) -> Response {
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
pub(super) async fn stream_stock(
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
