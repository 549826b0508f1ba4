//! Every way ingest fails, each variant saying what the caller should do. [`ApiError`]: a
//! request, answered as RFC 7807 `application/problem+json` without internal details (broker
//! errors are logged, not sent). [`ServerError`] and [`KeysError`]: start-up and serving.
//! [`StoreError`]: the shared state in CQL, logged and answered 503.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orderpipe_schemas::FieldError;
use rdkafka::error::KafkaError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

// One problem document for every orderpipe HTTP API (ingest and query): see orderpipe-runtime.
pub use orderpipe_runtime::problem::{Problem, PROBLEM_JSON, PROBLEM_TYPE_PREFIX};

/// Why a request was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: no API key, or one nobody issued; send a valid key.
    #[error("missing or unknown API key")]
    Unauthenticated,
    /// 403: the key was disabled; do not retry with it.
    #[error("API key disabled")]
    Forbidden,
    /// 429: this client exceeded its rate; retry after `retry_after`.
    #[error("rate limit exceeded")]
    RateLimited {
        /// When the client may send again.
        retry_after: Duration,
    },
    /// 400: the Idempotency-Key header breaks its rules; fix it (do not retry as is).
    #[error("invalid Idempotency-Key: {0}")]
    InvalidIdempotencyKey(&'static str),
    /// 415: the body is not declared `application/json`.
    #[error("unsupported content type")]
    UnsupportedMediaType,
    /// 413: the body exceeds the limit.
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 400: the order id in the path is not a UUID (`/v1/orders/{id}/cancel`).
    #[error("invalid order id")]
    InvalidOrderId,
    /// 400: the body is not JSON (or could not be read); the detail says where it broke.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// 422: JSON, but not a valid order: each error points at a field.
    #[error("invalid order ({} errors)", .0.len())]
    InvalidOrder(Vec<FieldError>),
    /// 422: this Idempotency-Key was used with another body; use a new key for a new order.
    #[error("Idempotency-Key reused with a different body")]
    IdempotencyKeyReused,
    /// 503: the producer queue is full; retry after `retry_after` with the same Idempotency-Key.
    #[error("producer queue full")]
    Overloaded {
        /// Advised wait.
        retry_after: Duration,
    },
    /// 503: the broker did not acknowledge within the deadline; the order may or may not have
    /// been written, so retry with the same Idempotency-Key after `retry_after`.
    #[error("broker did not acknowledge in time")]
    NotAcknowledged {
        /// Advised wait.
        retry_after: Duration,
    },
    /// 503: the shared idempotency store could not check the Idempotency-Key (unreachable,
    /// failing or slow); the order was not accepted: retry with the same key after `retry_after`.
    #[error("idempotency store unavailable")]
    IdempotencyStoreUnavailable {
        /// Advised wait.
        retry_after: Duration,
    },
    /// 429: past the waiting room's admission rate; come back with `ticket` (header
    /// `Waiting-Room-Ticket`) after `expected_wait`.
    #[error("waiting room")]
    WaitingRoom {
        /// The signed ticket.
        ticket: String,
        /// Its number in the room's sequence.
        number: u64,
        /// Numbers still ahead of the watermark, this one included.
        position: u64,
        /// Expected time until its turn.
        expected_wait: Duration,
    },
    /// 403: the waiting room ticket is not genuine, or not this client's or this order's.
    #[error("invalid waiting room ticket")]
    TicketInvalid,
    /// 410: the waiting room ticket expired; send the order without it to queue again.
    #[error("expired waiting room ticket")]
    TicketExpired,
    /// 503: the waiting room's shared sequence could not be reached; nothing was produced.
    #[error("waiting room unavailable")]
    WaitingRoomUnavailable {
        /// Advised wait.
        retry_after: Duration,
    },
    /// Any other status produced outside the handler (404, 405, 408, 413 from a layer...).
    #[error("HTTP {0}")]
    Status(StatusCode),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::WaitingRoom { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::TicketInvalid => StatusCode::FORBIDDEN,
            Self::TicketExpired => StatusCode::GONE,
            Self::InvalidIdempotencyKey(_) | Self::MalformedJson(_) | Self::InvalidOrderId => {
                StatusCode::BAD_REQUEST
            }
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidOrder(_) | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Overloaded { .. }
            | Self::NotAcknowledged { .. }
            | Self::IdempotencyStoreUnavailable { .. }
            | Self::WaitingRoomUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Status(status) => *status,
        }
    }

    /// When the caller may retry, for errors where retrying as is makes sense.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after }
            | Self::Overloaded { retry_after }
            | Self::NotAcknowledged { retry_after }
            | Self::IdempotencyStoreUnavailable { retry_after }
            | Self::WaitingRoomUnavailable { retry_after } => Some(*retry_after),
            Self::WaitingRoom { expected_wait, .. } => Some(*expected_wait),
            Self::Status(StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }

    /// Short, stable name of the problem kind (the end of its `type`; also a log field).
    pub fn slug(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::RateLimited { .. } => "rate-limited",
            Self::InvalidIdempotencyKey(_) => "invalid-idempotency-key",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::MalformedJson(_) => "malformed-json",
            Self::InvalidOrderId => "invalid-order-id",
            Self::InvalidOrder(_) => "invalid-order",
            Self::IdempotencyKeyReused => "idempotency-key-reused",
            Self::Overloaded { .. } => "overloaded",
            Self::NotAcknowledged { .. } => "not-acknowledged",
            Self::IdempotencyStoreUnavailable { .. } => "idempotency-store-unavailable",
            Self::WaitingRoom { .. } => "waiting-room",
            Self::TicketInvalid => "waiting-room-ticket-invalid",
            Self::TicketExpired => "waiting-room-ticket-expired",
            Self::WaitingRoomUnavailable { .. } => "waiting-room-unavailable",
            Self::Status(status) => match *status {
                StatusCode::NOT_FOUND => "not-found",
                StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
                StatusCode::REQUEST_TIMEOUT => "request-timeout",
                StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
                s if s.is_server_error() => "server-error",
                _ => "client-error",
            },
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "Missing or unknown API key",
            Self::Forbidden => "API key disabled",
            Self::RateLimited { .. } => "Too many requests",
            Self::InvalidIdempotencyKey(_) => "Invalid Idempotency-Key header",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::PayloadTooLarge { .. } | Self::Status(StatusCode::PAYLOAD_TOO_LARGE) => {
                "Request body too large"
            }
            Self::MalformedJson(_) => "Malformed JSON",
            Self::InvalidOrderId => "Invalid order id",
            Self::InvalidOrder(_) => "Invalid order",
            Self::IdempotencyKeyReused => "Idempotency-Key reused with a different body",
            Self::Overloaded { .. } => "Service overloaded",
            Self::NotAcknowledged { .. } => "Order not acknowledged in time",
            Self::IdempotencyStoreUnavailable { .. } => "Idempotency-Key could not be checked",
            Self::WaitingRoom { .. } => "In the waiting room",
            Self::TicketInvalid => "Invalid waiting room ticket",
            Self::TicketExpired => "Waiting room ticket expired",
            Self::WaitingRoomUnavailable { .. } => "Waiting room unavailable",
            Self::Status(status) => status.canonical_reason().unwrap_or("Error"),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Unauthenticated => {
                "Send your API key as `Authorization: Bearer <key>` or `X-Api-Key: <key>`.".into()
            }
            Self::Forbidden => "This API key has been disabled.".into(),
            Self::RateLimited { .. } => {
                "This client sent more requests than its rate limit allows; retry after the Retry-After delay.".into()
            }
            Self::InvalidIdempotencyKey(why) => format!("Idempotency-Key {why}."),
            Self::UnsupportedMediaType => "Send the order as `Content-Type: application/json`.".into(),
            Self::PayloadTooLarge { limit } => format!("The request body exceeds {limit} bytes."),
            Self::MalformedJson(why) => format!("The body is not valid JSON: {why}."),
            Self::InvalidOrderId => {
                "The order id in the path is not a UUID (use the `order_id` of the 202 answer).".into()
            }
            Self::InvalidOrder(errors) => format!(
                "The order breaks {} rule(s); see `errors`.",
                errors.len()
            ),
            Self::IdempotencyKeyReused => {
                "This Idempotency-Key was already used with a different body; use a new key for a new order.".into()
            }
            Self::Overloaded { .. } => {
                "Too many orders are waiting for the broker; retry after the Retry-After delay with the same Idempotency-Key.".into()
            }
            Self::NotAcknowledged { .. } => {
                "The order could not be confirmed as stored in time. It may or may not have been recorded: retry with the same Idempotency-Key after the Retry-After delay.".into()
            }
            Self::IdempotencyStoreUnavailable { .. } => {
                "The Idempotency-Key could not be checked against the shared store in time, so the order was not accepted: retry with the same Idempotency-Key after the Retry-After delay.".into()
            }
            Self::WaitingRoom { position, .. } => format!(
                "Checkout is busy: you are number {position} in the queue. Send the same order again with this `ticket` in the Waiting-Room-Ticket header after the Retry-After delay (`expected_wait_ms`)."
            ),
            Self::TicketInvalid => {
                "The Waiting-Room-Ticket was not issued by this service, or was issued to another client or order; send the order without it to get a ticket.".into()
            }
            Self::TicketExpired => {
                "The Waiting-Room-Ticket expired; send the order again without it to queue anew.".into()
            }
            Self::WaitingRoomUnavailable { .. } => {
                "The waiting room could not give this order a place in the queue; nothing was recorded: retry after the Retry-After delay.".into()
            }
            Self::Status(StatusCode::PAYLOAD_TOO_LARGE) => "The request body is too large.".into(),
            Self::Status(StatusCode::REQUEST_TIMEOUT) => {
                "The request was not completed in time.".into()
            }
            Self::Status(status) => status
                .canonical_reason()
                .unwrap_or("The request failed")
                .to_string(),
        }
    }

    /// The problem document of this error.
    pub fn problem(&self) -> Problem {
        let mut problem = Problem::new(self.status(), self.slug(), self.title(), self.detail());
        if let Self::InvalidOrder(errors) = self {
            problem.errors = errors.clone();
        }
        problem
    }
}

/// The body of a 429: a problem document that, from the waiting room, also carries the queue
/// ticket (RFC 7807 extension members).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WaitingRoomProblem {
    /// The problem.
    #[serde(flatten)]
    pub problem: Problem,
    /// The signed queue ticket: send it back in the `Waiting-Room-Ticket` header with the same
    /// order (only from the waiting room).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// The ticket's number in the fleet-wide queue; lower numbers are admitted first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket_number: Option<u64>,
    /// Tickets still ahead of the admission watermark, this one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Expected wait until this ticket's turn, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_wait_ms: Option<u64>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::WaitingRoom {
            ticket,
            number,
            position,
            expected_wait,
        } = &self
        {
            let body = WaitingRoomProblem {
                problem: self.problem(),
                ticket: Some(ticket.clone()),
                ticket_number: Some(*number),
                position: Some(*position),
                expected_wait_ms: Some(expected_wait.as_millis() as u64),
            };
            let (mut parts, _) = self
                .problem()
                .into_response_with(self.retry_after())
                .into_parts();
            if let Ok(value) = HeaderValue::from_str(ticket) {
                parts
                    .headers
                    .insert(crate::waiting_room::TICKET_HEADER, value);
            }
            let body = serde_json::to_vec(&body).expect("problems always serialize");
            return Response::from_parts(parts, axum::body::Body::from(body));
        }
        let mut response = self.problem().into_response_with(self.retry_after());
        if matches!(self, Self::Unauthenticated) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Why the server did not start, or stopped serving. The binary prints it and exits; each
/// variant says what to fix before starting again.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting is unusable ([`crate::Config::check`], the waiting room's secret): fix it.
    #[error("{0}")]
    Config(String),
    /// The listen address could not be bound: it is in use or not permitted.
    #[error("binding {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    /// The API keys file could not be used: fix the file.
    #[error(transparent)]
    ApiKeys(#[from] KeysError),
    /// The waiting room's secret file could not be read: fix its path or permissions.
    #[error("reading the waiting room secret file {}", .0.display())]
    SecretFile(PathBuf, #[source] std::io::Error),
    /// The broker did not create the topics (unreachable or refusing): check it, or start
    /// without topic creation.
    #[error("creating topics")]
    Topics(#[source] orderpipe_runtime::kafka::Error),
    /// librdkafka refused the producer settings: fix the `--ingest-kafka-option`s.
    #[error("creating Kafka producer")]
    Producer(#[source] KafkaError),
    /// The listener failed while serving: restart.
    #[error("serving HTTP")]
    Serve(#[source] std::io::Error),
    /// The producer's flush at shutdown panicked: orders still queued may be lost (their
    /// clients got no 202 and retry).
    #[error("flushing the producer")]
    Flush(#[source] tokio::task::JoinError),
}

/// Why the API keys file (the path) was refused at start: fix the file, then start again.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file could not be read.
    #[error("reading API keys file {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    /// The file is not a JSON list of entries.
    #[error("parsing API keys file {}", .0.display())]
    Parse(PathBuf, #[source] serde_json::Error),
    /// An entry of the file is unusable.
    #[error("API keys file {}", .0.display())]
    Entry(PathBuf, #[source] KeyEntryError),
}

/// Why an API key entry (by its position, from 0) is refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyEntryError {
    /// The entry names no client.
    #[error("entry {0}: empty client_id")]
    EmptyClientId(usize),
    /// `key_sha256` of the entry (of the client named) is not a SHA-256 digest in hex: why.
    #[error("entry {0} ({1}): key_sha256: {2}")]
    BadDigest(usize, String, String),
    /// The entry repeats an earlier entry's key.
    #[error("entry {0}: the same key is listed twice")]
    DuplicateKey(usize),
}

/// Why the shared state in CQL (the idempotency store, the waiting room's sequence) did not
/// answer. Never sent to clients: the request that needed it is answered 503 with Retry-After
/// and the error is logged; at start the server runs anyway and keeps connecting.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Not connected yet: the background task keeps connecting.
    #[error("{0} not connected")]
    NotConnected(&'static str),
    /// A statement took longer than the ack deadline: it may or may not have been applied.
    #[error("{0} timed out")]
    TimedOut(&'static str),
    /// The driver failed (what was being done, and the driver's error): connecting, creating
    /// the schema, preparing or executing.
    #[error("{0}: {1}")]
    Cql(String, String),
    /// The answer is not what the statement returns (a column, the row, a value of the type).
    #[error("{0}")]
    Unexpected(String),
    /// Other instances kept moving the waiting room's row: every compare-and-set lost.
    #[error("the waiting room's row kept changing under {0} attempts")]
    Contended(u32),
}

/// Names what a CQL call was doing when it failed.
pub(crate) trait CqlContext<T> {
    /// A driver error as [`StoreError::Cql`] with `context`.
    fn cql(self, context: impl Into<String>) -> Result<T, StoreError>;
}

impl<T, E: std::fmt::Display> CqlContext<T> for Result<T, E> {
    fn cql(self, context: impl Into<String>) -> Result<T, StoreError> {
        self.map_err(|err| StoreError::Cql(context.into(), err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parts(err: ApiError) -> (StatusCode, axum::http::HeaderMap, Problem) {
        let response = err.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn validation_problem_lists_field_errors() {
        let (status, headers, problem) = parts(ApiError::InvalidOrder(vec![FieldError {
            pointer: "/lines/0/quantity".into(),
            message: "must be between 1 and 1000".into(),
        }]))
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(headers[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(problem.status, 422);
        assert_eq!(problem.type_, "urn:orderpipe:problem:invalid-order");
        assert_eq!(problem.errors[0].pointer, "/lines/0/quantity");
    }

    #[tokio::test]
    async fn retryable_problems_carry_retry_after_in_whole_seconds() {
        let (status, headers, problem) = parts(ApiError::RateLimited {
            retry_after: Duration::from_millis(1200),
        })
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(headers[header::RETRY_AFTER], "2");
        assert!(problem.errors.is_empty());
        let (_, headers, _) = parts(ApiError::NotAcknowledged {
            retry_after: Duration::ZERO,
        })
        .await;
        assert_eq!(headers[header::RETRY_AFTER], "1");
        let (_, headers, _) = parts(ApiError::MalformedJson("x".into())).await;
        assert!(headers.get(header::RETRY_AFTER).is_none());
    }

    #[tokio::test]
    async fn a_waiting_room_answer_carries_its_ticket() {
        let response = ApiError::WaitingRoom {
            ticket: "abc.def".into(),
            number: 17,
            position: 5,
            expected_wait: Duration::from_millis(2500),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(response.headers()["waiting-room-ticket"], "abc.def");
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: WaitingRoomProblem = serde_json::from_slice(&body).unwrap();
        assert_eq!(body.problem.type_, "urn:orderpipe:problem:waiting-room");
        assert_eq!(body.problem.status, 429);
        assert_eq!(
            (
                body.ticket.as_deref(),
                body.ticket_number,
                body.position,
                body.expected_wait_ms
            ),
            (Some("abc.def"), Some(17), Some(5), Some(2500))
        );
    }

    #[tokio::test]
    async fn unauthenticated_names_the_scheme() {
        let (status, headers, _) = parts(ApiError::Unauthenticated).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }
}
