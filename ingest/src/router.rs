//! The router: the order routes behind their middleware (body limit, timeout, problem+json for
//! every error, request metrics), the OpenAPI document, and the health routes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use orderpipe_runtime::health::{self, Readiness};
use orderpipe_runtime::problem::problem_for_bare_error;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, Problem, WaitingRoomProblem};
use crate::handlers::{self, App};
use crate::metrics;

/// The ingest API's OpenAPI 3.1 document (paths come from the handlers' `#[utoipa::path]`
/// through [`api_routes`]). Served at `/openapi.json`, committed as `ops/api/ingest.openapi.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "orderpipe ingest API",
        description = "Places and cancels orders. A 202 comes only once the event is durable in Kafka \
(idempotent producer, acks=all). Every error is an RFC 7807 `application/problem+json` document. \
Clients authenticate with `Authorization: Bearer <key>` or `X-Api-Key: <key>` when the service \
runs with API keys (`--ingest-api-keys-file`); without them every caller is anonymous and \
rate-limited per peer IP. `/healthz`, `/readyz` and `/metrics` are served on the same port.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    components(schemas(Problem, WaitingRoomProblem)),
    modifiers(&SecuritySchemes),
    tags((name = "orders", description = "Placing and cancelling orders"))
)]
struct IngestDoc;

/// The API-key schemes of the document (`--ingest-api-keys-file`).
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key as `Authorization: Bearer <key>`."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Api-Key",
                "An API key as `X-Api-Key: <key>`.",
            ))),
        );
    }
}

/// The documented routes, each registered from its own `#[utoipa::path]`.
fn api_routes() -> OpenApiRouter<Arc<App>> {
    OpenApiRouter::with_openapi(IngestDoc::openapi())
        .routes(routes!(handlers::post_order))
        .routes(routes!(handlers::post_cancel))
}

/// The ingest API's OpenAPI document, as served at `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// All routes: the order routes behind their middleware, plus `/openapi.json`, `/healthz`,
/// `/readyz`, `/metrics`.
pub(crate) fn router(app: Arc<App>, readiness: Readiness, request_timeout: Duration) -> Router {
    let max_body = app.max_body_bytes;
    let (orders, doc) = api_routes().split_for_parts();
    let orders = orders
        // axum's own limit applies to the extractor; tower-http's refuses an oversized
        // Content-Length before reading anything. Both answer 413, made problem+json below.
        .layer(DefaultBodyLimit::max(max_body))
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(middleware::from_fn(finish))
        .with_state(app);
    orders
        .merge(orderpipe_runtime::openapi::route(&doc))
        .merge(health::routes(readiness))
        .fallback(|| async { ApiError::Status(StatusCode::NOT_FOUND) })
        // The default spans carry method, URI and version: never headers or bodies. A 5xx is
        // logged at debug: a broker outage would otherwise log one error per request.
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
}

/// Outermost middleware of the order route: counts answers by status, and turns error answers
/// made by layers or routing (413, 408, 405) into problem+json like the handler's own.
async fn finish(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    metrics::request_answered(response.status().as_u16());
    problem_for_bare_error(response, |status| ApiError::Status(status).into_response())
}
