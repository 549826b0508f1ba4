//! The ingest API's OpenAPI document: the committed copy (`ops/api/ingest.openapi.json`) is what
//! the code generates, every error is documented as problem+json, and the server serves it.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops/api/ingest.openapi.json")
}

fn document() -> Value {
    serde_json::to_value(orderpipe_ingest::openapi()).unwrap()
}

#[test]
fn committed_document_is_current() {
    orderpipe_testkit::committed::assert_committed(
        &committed_path(),
        &orderpipe_runtime::openapi::to_json(&orderpipe_ingest::openapi()),
        "UPDATE_OPENAPI",
        "UPDATE_OPENAPI=1 cargo nextest run -p orderpipe-ingest --test openapi",
    );
}

/// Every operation documents its errors as problem+json with the shared Problem schema, and
/// the retryable ones their Retry-After; the order body is the published NewOrder schema.
#[test]
fn every_error_is_a_documented_problem() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let operations = [
        (
            "/v1/orders",
            "post",
            vec![
                "202", "400", "401", "403", "408", "410", "413", "415", "422", "429", "503",
            ],
        ),
        (
            "/v1/orders/{id}/cancel",
            "post",
            vec!["202", "400", "401", "403", "408", "413", "429", "503"],
        ),
    ];
    for (path, method, statuses) in operations {
        let responses = doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} is not documented"));
        let documented: Vec<&str> = responses.keys().map(String::as_str).collect();
        assert_eq!(documented, statuses, "{method} {path}");
        for (status, response) in responses {
            let content = response["content"].as_object().unwrap();
            if status.starts_with('2') {
                assert_eq!(
                    content["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Accepted"
                );
                continue;
            }
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/problem+json"],
                "{method} {path} {status}"
            );
            // The orders' 429 may come from the waiting room: a Problem with the ticket fields.
            let schema = if path == "/v1/orders" && status == "429" {
                "#/components/schemas/WaitingRoomProblem"
            } else {
                "#/components/schemas/Problem"
            };
            assert_eq!(
                content["application/problem+json"]["schema"]["$ref"], schema,
                "{method} {path} {status}"
            );
            if status == "429" || status == "503" {
                assert!(
                    response["headers"]["Retry-After"].is_object(),
                    "{method} {path} {status}: no Retry-After"
                );
            }
        }
    }
    let body = &doc["paths"]["/v1/orders"]["post"]["requestBody"]["content"]["application/json"];
    assert_eq!(body["schema"]["$ref"], "#/components/schemas/NewOrder");
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "NewOrder",
        "OrderLine",
        "PaymentRef",
        "FieldError",
        "Problem",
        "Accepted",
    ] {
        assert!(schemas.contains_key(name), "no component {name}");
    }
    // The body schema is the one published for consumers (schemas/json/new_order.json).
    let published: Value =
        serde_json::from_str(include_str!("../../schemas/json/new_order.json")).unwrap();
    assert_eq!(
        schemas["NewOrder"]["properties"]["lines"]["description"],
        published["properties"]["lines"]["description"]
    );
    assert_eq!(schemas["NewOrder"]["required"], published["required"]);
    let params = doc["paths"]["/v1/orders"]["post"]["parameters"]
        .as_array()
        .unwrap();
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header"),
        "{params:?}"
    );
    assert!(
        params
            .iter()
            .any(|p| p["name"] == "Waiting-Room-Ticket" && p["in"] == "header"),
        "{params:?}"
    );
    let waiting = &schemas["WaitingRoomProblem"]["allOf"];
    assert_eq!(waiting[0]["$ref"], "#/components/schemas/Problem");
    for field in ["ticket", "ticket_number", "position", "expected_wait_ms"] {
        assert!(waiting[1]["properties"][field].is_object(), "no {field}");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["api_key"]["name"], "X-Api-Key");
}

/// The running server serves the same document at `/openapi.json`.
#[tokio::test]
async fn the_server_serves_its_document() {
    let ingest = TestIngest::start(test_config()).await;
    let reply = ingest.conn().get("/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(
        String::from_utf8(reply.body.to_vec()).unwrap(),
        orderpipe_runtime::openapi::to_json(&orderpipe_ingest::openapi())
    );
    ingest.stop().await.unwrap();
}
