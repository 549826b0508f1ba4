//! Answers and their problems: RFC 7807 documents for bad parameters (400), unknown ids (404)
//! and unreadable views (503 with Retry-After), and the parsing of request parameters.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use orderpipe_runtime::problem::Problem;
use serde::Serialize;
use uuid::Uuid;

use crate::error::Error;
use crate::metrics;
pub(super) fn bad_request(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "bad-request",
        "Bad request parameter",
        detail,
    )
}

pub(super) fn not_found(detail: impl Into<String>) -> Problem {
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

pub(super) fn answer<T: Serialize>(route: &'static str, result: Result<T, Problem>) -> Response {
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

pub(super) fn rfc3339(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// A route's query string as extracted: [`params`] decodes it or makes it a 400 problem.
pub(super) type QueryString = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The query string, or a 400 problem when it cannot be decoded.
pub(super) fn params(query: QueryString) -> Result<HashMap<String, String>, Problem> {
    query
        .map(|Query(params)| params)
        .map_err(|rejection| bad_request(rejection.body_text()))
}

pub(super) fn parse_uuid(what: &str, value: &str) -> Result<Uuid, Problem> {
    Uuid::parse_str(value).map_err(|_| bad_request(format!("{what} {value:?} is not a UUID")))
}

pub(super) fn parse_time(name: &str, params: &HashMap<String, String>) -> Result<i64, Problem> {
    let value = params
        .get(name)
        .ok_or_else(|| bad_request(format!("`{name}` is required (RFC 3339)")))?;
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| bad_request(format!("`{name}` {value:?} is not an RFC 3339 time")))
}
