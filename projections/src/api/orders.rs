//! `GET /v1/orders/{id}`: an order, its lines and timeline; with `wait`, a long-poll for a status
//! change.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::Response;
use orderpipe_runtime::problem::Problem;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::problems::{answer, bad_request, not_found, params, parse_uuid, rfc3339, QueryString};
use super::{AppState, Slot};
use crate::metrics;
use crate::model::Status;
use crate::store::{OrderRecord, StatusRecord};

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

pub(super) fn status_of(record: &StatusRecord) -> Status {
    Status::derive(
        record.terminal_status.as_deref(),
        record.paid,
        record.reserved,
    )
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
pub(super) async fn get_order(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: QueryString,
) -> Response {
    answer("order", order(&state, &id, query).await)
}

async fn order(state: &AppState, id: &str, query: QueryString) -> Result<OrderBody, Problem> {
    let params = params(query)?;
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
