//! The query API's contract: its OpenAPI document (committed as `ops/api/query.openapi.json`,
//! every error documented as problem+json) and the event schemas it serves at `/v1/schemas`.

use std::path::PathBuf;

use axum::http::Method;
use orderpipe_projections::{connect, migrate, serve, Config, QueryApi};
use orderpipe_runtime::health::Readiness;
use orderpipe_testkit::cql::{self, TestKeyspace};
use orderpipe_testkit::http::{full, Conn};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn document_text() -> String {
    orderpipe_runtime::openapi::to_json(&orderpipe_projections::api::openapi())
}

#[test]
fn committed_document_is_current() {
    orderpipe_testkit::committed::assert_committed(
        &repo("ops/api/query.openapi.json"),
        &document_text(),
        "UPDATE_OPENAPI",
        "UPDATE_OPENAPI=1 cargo nextest run -p orderpipe-projections --test api",
    );
}

/// Every route documents its statuses, each error as problem+json with the shared Problem
/// schema, and 503 with Retry-After wherever the views are read.
#[test]
fn every_error_is_a_documented_problem() {
    let doc: Value = serde_json::from_str(&document_text()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let expected = [
        ("/v1/orders/{id}", vec!["200", "400", "404", "503"]),
        (
            "/v1/customers/{id}/orders",
            vec!["200", "400", "404", "503"],
        ),
        ("/v1/stock/{sku}", vec!["200", "404", "503"]),
        ("/v1/stock/{sku}/stream", vec!["200", "400", "404", "503"]),
        ("/v1/sales", vec!["200", "400", "503"]),
        ("/v1/schemas", vec!["200"]),
        ("/v1/schemas/{event_type}", vec!["200", "404"]),
        ("/", vec!["200", "401"]),
        ("/v1/control-room/stream", vec!["200", "401", "503"]),
    ];
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths.len(), expected.len(), "{paths:?}");
    for (path, statuses) in expected {
        let responses = doc["paths"][path]["get"]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("GET {path} is not documented"));
        assert_eq!(responses.keys().collect::<Vec<_>>(), statuses, "{path}");
        for (status, response) in responses {
            if status.starts_with('2') {
                continue;
            }
            let content = response["content"].as_object().unwrap();
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/problem+json"],
                "{path} {status}"
            );
            assert_eq!(
                content["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem"
            );
            if status == "503" {
                assert!(response["headers"]["Retry-After"].is_object(), "{path}");
            }
        }
    }
    let status = &doc["components"]["schemas"]["Status"]["enum"];
    assert!(
        status
            .as_array()
            .unwrap()
            .contains(&Value::from("cancelled")),
        "{status}"
    );
    assert!(
        doc["paths"]["/v1/schemas/{event_type}"]["get"]["responses"]["200"]["content"]
            ["application/schema+json"]
            .is_object()
    );
}

/// The running API serves its document, the list of event schemas, each schema byte for byte
/// as committed under `schemas/json/`, and problem+json for unknown types and other methods.
#[tokio::test]
async fn the_api_serves_its_document_and_the_event_schemas() {
    let keyspace = TestKeyspace::new().await.unwrap();
    let mut config = Config::default();
    config.cql.keyspace = keyspace.name().to_owned();
    let session = connect(&cql::nodes(), &config.cql).await.unwrap();
    migrate(&session, keyspace.name(), &config.cql.replication)
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let api = QueryApi::new(session, &config).await.unwrap();
    let server = tokio::spawn(serve(listener, api, Readiness::new(), stop.clone()));
    let mut conn = Conn::new(addr);

    let reply = conn.get("/openapi.json").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        String::from_utf8(reply.body.to_vec()).unwrap(),
        document_text()
    );

    let reply = conn.get("/v1/schemas").await;
    assert_eq!(reply.status, 200);
    let list = reply.json()["schemas"].as_array().unwrap().clone();
    assert_eq!(list.len(), orderpipe_schemas::EVENT_TYPES.len());
    for event in orderpipe_schemas::EVENT_TYPES {
        let entry = list
            .iter()
            .find(|e| e["event_type"] == event.name)
            .unwrap_or_else(|| panic!("{} not listed", event.name));
        assert_eq!(entry["topic"], event.topic.to_string());
        assert_eq!(entry["schema_version"], event.version);
        let reply = conn.get(entry["href"].as_str().unwrap()).await;
        assert_eq!(reply.status, 200, "{}", event.name);
        assert_eq!(reply.headers["content-type"], "application/schema+json");
        let committed = std::fs::read(repo(&format!(
            "schemas/json/{}/{}.json",
            event.topic, event.name
        )))
        .unwrap();
        assert_eq!(reply.body.to_vec(), committed, "{}", event.name);
    }

    let reply = conn.get("/v1/schemas/no_such_event").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert_eq!(reply.json()["type"], "urn:orderpipe:problem:not-found");

    // A method the route does not have: 405 with Allow, as problem+json like every error.
    let reply = conn
        .send(Method::DELETE, "/v1/schemas", &[], full(""))
        .await
        .unwrap();
    assert_eq!(reply.status, 405);
    assert_eq!(reply.headers["content-type"], "application/problem+json");
    assert!(reply.headers.contains_key("allow"), "{:?}", reply.headers);

    stop.cancel();
    server.await.unwrap().unwrap();
    keyspace.drop_keyspace().await.unwrap();
}

/// A query process started while its CQL cluster is down (or restarting) stays up, not ready,
/// and retries, instead of exiting: a chaos run restarting the CQL server saw the query
/// process exit 37 times in a row on "Connection refused" before the connection was retried.
#[tokio::test]
async fn a_query_api_whose_cql_cluster_is_down_waits_not_ready_instead_of_exiting() {
    // A port nobody listens on: bound, then closed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let nodes = vec![closed.to_string()];
    let readiness = Readiness::new();
    let shutdown = CancellationToken::new();
    let query = tokio::spawn({
        let (readiness, shutdown) = (readiness.clone(), shutdown.clone());
        async move {
            let listen = "127.0.0.1:0".parse().unwrap();
            orderpipe_projections::run_query(Config::default(), &nodes, listen, readiness, shutdown)
                .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        !query.is_finished(),
        "the query API gave up on a CQL cluster that is down"
    );
    let failures = readiness.failures();
    assert!(
        failures
            .iter()
            .any(|f| f.contains("waiting for the CQL cluster")),
        "{failures:?}"
    );
    // And a shutdown while it waits ends it cleanly.
    shutdown.cancel();
    let result = tokio::time::timeout(std::time::Duration::from_secs(15), query)
        .await
        .expect("the query API did not stop on shutdown")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}
