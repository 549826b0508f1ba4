//! RFC 7807 `application/problem+json`: the one error document of every orderpipe HTTP API
//! (ingest and query), its media type, and its answer (Retry-After where a retry makes sense).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orderpipe_schemas::FieldError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of every problem `type` (an absolute URI, as RFC 7807 asks).
pub const PROBLEM_TYPE_PREFIX: &str = "urn:orderpipe:problem:";

/// An RFC 7807 problem document, as sent (and as tests and clients read it back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:orderpipe:problem:invalid-order",
    "title": "Invalid order",
    "status": 422,
    "detail": "The order breaks 1 rule(s); see `errors`.",
    "errors": [{"pointer": "/lines/0/quantity", "message": "must be between 1 and 1000"}]
}))]
pub struct Problem {
    /// URI naming the kind of problem, `urn:orderpipe:problem:<slug>`; stable, for programs.
    #[serde(rename = "type")]
    #[schema(rename = "type", pattern = "^urn:orderpipe:problem:[a-z0-9-]+$")]
    pub type_: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code of the answer.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong with this request, and what to do about it.
    pub detail: String,
    /// Field errors (JSON pointer into the request body and the rule broken), on 422 answers
    /// about a body; absent otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::openapi::FieldErrorSchema>)]
    pub errors: Vec<FieldError>,
}

impl Problem {
    /// A problem of kind `slug` (the end of its `type`) without field errors.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            type_: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
        }
    }

    /// The HTTP status of this problem (500 if the field holds no valid status).
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The answer: this document as `application/problem+json` with its status, and
    /// `Retry-After` in whole seconds (rounded up, at least 1) when `retry_after` is given.
    pub fn into_response_with(self, retry_after: Option<Duration>) -> Response {
        let body = serde_json::to_vec(&self).expect("problems always serialize");
        let mut response = (
            self.status_code(),
            [(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))],
            body,
        )
            .into_response();
        if let Some(after) = retry_after {
            // Retry-After takes whole seconds; round up so that a client never retries too early.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        self.into_response_with(None)
    }
}

/// `response` as it is, unless it is an error (4xx, 5xx) made outside the handlers (by a layer
/// or by routing: 405, 408, 413, a path that is not UTF-8) with an empty or plain-text body:
/// then `problem` for its status, keeping its `Allow` header. For a middleware around an API,
/// so that every error it answers is problem+json.
pub fn problem_for_bare_error(
    response: Response,
    problem: impl FnOnce(StatusCode) -> Response,
) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut problem = problem(status);
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bare_errors_become_problems_and_keep_their_allow_header() {
        let to_problem =
            |status| Problem::new(status, "method-not-allowed", "t", "d").into_response();
        // A 405 from routing: plain body, Allow header
        let bare = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET,HEAD")],
            "Method Not Allowed",
        )
            .into_response();
        let answered = problem_for_bare_error(bare, to_problem);
        assert_eq!(answered.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answered.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(answered.headers()[header::ALLOW], "GET,HEAD");
        // A success and a problem already are left as they are
        let ok = problem_for_bare_error("fine".into_response(), to_problem);
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(ok.headers()[header::CONTENT_TYPE] != PROBLEM_JSON);
        let already = Problem::new(StatusCode::CONFLICT, "conflict", "t", "d").into_response();
        let kept = problem_for_bare_error(already, |_| panic!("a problem is not made twice"));
        assert_eq!(kept.status(), StatusCode::CONFLICT);
    }

    #[tokio::test]
    async fn a_problem_answers_as_problem_json_with_retry_after_rounded_up() {
        let problem = Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", "order x");
        let response = problem
            .clone()
            .into_response_with(Some(Duration::from_millis(1200)));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "urn:orderpipe:problem:not-found");
        assert_eq!(json["status"], 404);
        assert!(json.get("errors").is_none(), "no empty `errors`: {json}");
        assert_eq!(serde_json::from_value::<Problem>(json).unwrap(), problem);
        let zero = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "x", "X", "x")
            .into_response_with(Some(Duration::ZERO));
        assert_eq!(zero.headers()[header::RETRY_AFTER], "1");
    }
}
