//! `GET /v1/customers/{id}/orders`: a customer's orders, newest first, paged with an opaque
//! cursor.

use axum::extract::{Path, State};
use axum::response::Response;
use futures::{StreamExt, TryStreamExt};
use orderpipe_runtime::problem::Problem;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::orders::status_of;
use super::problems::{answer, bad_request, params, rfc3339, QueryString};
use super::AppState;
use crate::model::Status;
use crate::store::StatusRecord;

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
pub(super) async fn get_customer_orders(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: QueryString,
) -> Response {
    answer("customer_orders", customer_orders(&state, id, query).await)
}

async fn customer_orders(
    state: &AppState,
    customer_id: String,
    query: QueryString,
) -> Result<CustomerOrdersBody, Problem> {
    let params = params(query)?;
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
