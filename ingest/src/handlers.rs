//! The order routes' handlers: `POST /v1/orders` and `POST /v1/orders/{id}/cancel`, each
//! request's checks cheapest first (who, how often, headers, body, idempotency), then the
//! broker's acknowledgement before the 202.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use orderpipe_schemas::{CancellationRequested, OrderEnvelope, OrderEvent};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{ApiKeys, ANONYMOUS};
use crate::error::{ApiError, Problem, WaitingRoomProblem};
use crate::idempotency::{self, IdempotencyKey, RecentKeys};
use crate::idempotency_store::{CqlStore, Outcome};
use crate::kafka::Publisher;
use crate::ratelimit::RateLimit;
use crate::request::{idempotency_key, is_json, parse_order};
use crate::waiting_room::WaitingRoom;

/// Path of the order endpoint.
pub const ORDERS_PATH: &str = "/v1/orders";

/// Path of the cancellation endpoint (axum syntax).
pub const CANCEL_PATH: &str = "/v1/orders/{id}/cancel";

/// `status` of a 202 answer to a cancellation: the request is durable in Kafka; the order's
/// outcome (`cancelled`, or unchanged when it was already confirmed or rejected) is in the query API.
pub const CANCELLATION_REQUESTED: &str = "cancellation_requested";

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

/// What every request needs.
pub(crate) struct App {
    pub(crate) keys: Option<ApiKeys>,
    pub(crate) limit: RateLimit,
    pub(crate) recent: RecentKeys,
    /// The shared idempotency store, when configured (memory is then its fast path).
    pub(crate) store: Option<Arc<CqlStore>>,
    pub(crate) publisher: Arc<Publisher>,
    /// The fleet-wide admission rate with queue tickets, when configured.
    pub(crate) waiting_room: Option<Arc<WaitingRoom>>,
    pub(crate) max_body_bytes: usize,
    pub(crate) retry_after: Duration,
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
pub(crate) async fn post_order(State(app): State<Arc<App>>, request: Request) -> Response {
    answer(accept(&app, request).await, "accepted", "order refused")
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
pub(crate) async fn post_cancel(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    answer(
        cancel(&app, &id, request).await,
        CANCELLATION_REQUESTED,
        "cancellation refused",
    )
}

/// 202 with `status` and the order id, or the problem (logged at debug as `refused`: a refusal
/// is the client's business, and an outage would otherwise log one line per request).
fn answer(outcome: Result<Uuid, ApiError>, status: &str, refused: &str) -> Response {
    match outcome {
        Ok(order_id) => (
            StatusCode::ACCEPTED,
            Json(Accepted {
                order_id,
                status: status.into(),
            }),
        )
            .into_response(),
        Err(err) => {
            tracing::debug!(
                problem = err.slug(),
                status = err.status().as_u16(),
                "{refused}"
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
