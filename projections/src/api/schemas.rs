//! `GET /v1/schemas` and `GET /v1/schemas/{event_type}`: the JSON Schemas of the events on the
//! topics.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use orderpipe_runtime::problem::Problem;
use serde::Serialize;
use utoipa::ToSchema;

use super::problems::{answer, not_found};
use crate::metrics;

/// `GET /v1/schemas`.
#[derive(Debug, Serialize, ToSchema)]
struct EventSchemasBody {
    /// Every event type on the topics, with where its JSON Schema is.
    schemas: Vec<crate::event_schemas::EventSchemaRef>,
}

/// The event types on the topics and where their JSON Schemas are.
#[utoipa::path(
    get,
    path = "/v1/schemas",
    tag = "schemas",
    operation_id = "list_event_schemas",
    responses((status = 200, description = "Every event type.", body = EventSchemasBody)),
)]
pub(super) async fn get_event_schemas() -> Response {
    answer(
        "schemas",
        Ok(EventSchemasBody {
            schemas: crate::event_schemas::list(),
        }),
    )
}

/// The JSON Schema (draft 2020-12) of one event type: envelope and payload fields of a record
/// value on its topic, as committed in `schemas/json/<topic>/<event_type>.json`.
#[utoipa::path(
    get,
    path = "/v1/schemas/{event_type}",
    tag = "schemas",
    operation_id = "get_event_schema",
    params(("event_type" = String, Path, example = "order_placed", description = "An `event_type`.")),
    responses(
        (status = 200, description = "The JSON Schema.", content_type = "application/schema+json",
         body = Object),
        (status = 404, description = "No such event type.", body = Problem, content_type = "application/problem+json"),
    ),
)]
pub(super) async fn get_event_schema(Path(event_type): Path<String>) -> Response {
    match crate::event_schemas::get(&event_type) {
        Some(schema) => {
            metrics::request("schema", 200);
            ([(header::CONTENT_TYPE, "application/schema+json")], schema).into_response()
        }
        None => {
            let problem = not_found(format!(
                "no event type {event_type:?}; GET /v1/schemas lists them"
            ));
            metrics::request("schema", problem.status);
            problem.into_response()
        }
    }
}
