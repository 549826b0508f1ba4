//! The OpenAPI documents against validators from a registry and against the live services:
//! - `ops/api/*.openapi.json` validate as OpenAPI 3.1 with `openapi-spec-validator` (PyPI);
//! - `schemathesis` (PyPI) drives the live ingest and query APIs of `orderpipe run` (every
//!   component, a little stock and a few orders in the views) from each service's own
//!   `/openapi.json`, bounded by `--max-examples`, and finds no 5xx, no status the document does
//!   not list, and no body, content type or header that breaks it. Every request and answer is
//!   also kept (HAR), and this test counts the statuses seen and checks them once more itself.
//!
//! Tools: a Python virtual environment at `target/api-tools` (or `ORDERPIPE_API_TOOLS`) with the
//! versions pinned in `ops/api/requirements.txt`; `ops/test-all` creates it when missing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use orderpipe_testkit::kafka::TestTopics;
use serde_json::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool of the virtual environment, failing the test with a hint when it is missing.
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("ORDERPIPE_API_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/api-tools"));
    let path = dir.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is needed by this test; ops/test-all installs it (python3 -m venv target/api-tools && \
         target/api-tools/bin/pip install -r ops/api/requirements.txt)",
        path.display()
    );
    path
}

#[test]
fn committed_documents_are_valid_openapi_3_1() {
    for file in ["ops/api/ingest.openapi.json", "ops/api/query.openapi.json"] {
        let path = workspace().join(file);
        let output = Command::new(tool("openapi-spec-validator"))
            .args(["--schema", "3.1"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{file} is not valid OpenAPI 3.1:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // The validator itself refuses a broken document (so a pass means something).
    let broken = std::env::temp_dir().join(format!(
        "orderpipe-broken-openapi-{}.json",
        orderpipe_testkit::unique_suffix()
    ));
    std::fs::write(
        &broken,
        r#"{"openapi":"3.1.0","info":{"title":"x"},"paths":{"/a":{"get":{"responses":{"200":{}}}}}}"#,
    )
    .unwrap();
    let output = Command::new(tool("openapi-spec-validator"))
        .args(["--schema", "3.1"])
        .arg(&broken)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&broken);
    assert!(
        !output.status.success(),
        "a document without info.version passed"
    );
}

/// Statuses each documented operation may answer, from the document: `(method, path) -> codes`.
fn documented(doc: &Value) -> BTreeMap<(String, String), Vec<u16>> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let codes = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|c| c.parse().unwrap())
                .collect();
            out.insert((method.to_uppercase(), path.clone()), codes);
        }
    }
    out
}

/// Which documented operation a concrete request path is (`{param}` matches one segment).
fn operation<'a>(
    ops: &'a BTreeMap<(String, String), Vec<u16>>,
    method: &str,
    url_path: &str,
) -> Option<&'a Vec<u16>> {
    let segments: Vec<&str> = url_path.split('/').collect();
    ops.iter()
        .find(|((m, template), _)| {
            let parts: Vec<&str> = template.split('/').collect();
            m == method
                && parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(p, s)| p.starts_with('{') || p == s)
        })
        .map(|(_, codes)| codes)
}

/// Runs schemathesis against `base`'s `/openapi.json`; returns how often each status was seen.
fn schemathesis(service: &str, base: &str, work: &Path) -> BTreeMap<u16, usize> {
    let har = work.join(format!("{service}.har"));
    let started = Instant::now();
    let output = Command::new(tool("schemathesis"))
        .current_dir(work)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            // Bounded: a few minutes at most on two cores for both services.
            "--max-examples",
            "50",
            "--seed",
            "14",
            "--request-timeout",
            "10",
            "--generation-database",
            "none",
            // An SSE stream (`text/event-stream`) answers 200 and never ends, so schemathesis
            // would wait out its request timeout on every example and fail it; its refusals
            // (400, 404, 503) and events are tested in projections/tests/stock_stream.rs.
            "--exclude-operation-id",
            "stream_stock",
            // The same for the control room's stream (ops/tests/control_room.rs drives it).
            "--exclude-operation-id",
            "control_room_stream",
            "--report",
            "har",
            "--report-har-path",
        ])
        .arg(&har)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems in the {service} API:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace().join(format!("ops/api/{service}.openapi.json")))
            .unwrap(),
    )
    .unwrap();
    let ops = documented(&doc);
    let har: Value = serde_json::from_str(&std::fs::read_to_string(&har).unwrap()).unwrap();
    let mut seen = BTreeMap::new();
    for entry in har["log"]["entries"].as_array().unwrap() {
        let status = entry["response"]["status"].as_u64().unwrap() as u16;
        let method = entry["request"]["method"].as_str().unwrap();
        let url = entry["request"]["url"].as_str().unwrap();
        let path = url
            .trim_start_matches(base)
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        *seen.entry(status).or_insert(0) += 1;
        assert!(status < 500, "{service}: {method} {url} answered {status}");
        // Requests to documented operations get documented statuses; schemathesis also tries
        // undocumented methods (405) and paths a parameter makes empty (404).
        if let Some(codes) = operation(&ops, method, &path) {
            assert!(
                codes.contains(&status),
                "{service}: {method} {url} answered {status}, not in {codes:?}"
            );
        }
    }
    let total: usize = seen.values().sum();
    println!(
        "{service}: {total} requests in {:.0?}, statuses {seen:?}\n{}",
        started.elapsed(),
        stdout
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(total >= 50, "{service}: only {total} requests were made");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_status() {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let keyspace = orderpipe_testkit::cql::TestKeyspace::new().await.unwrap();
    let ingest_port = free_port();
    let query_port = free_port();
    let mut args = every_component_args(
        &topics,
        keyspace.name(),
        format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        format!("127.0.0.1:{query_port}").parse().unwrap(),
    );
    // Long-polls of generated `wait` values end within a second.
    args.extend(["--query-max-wait".to_string(), "1s".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut pipeline = Orderpipe::run("api-contract", &topics, &args);
    pipeline.wait_ready(Duration::from_secs(90)).await;
    // Something in the views, so reads answer 200 as well as 404.
    set_stock(&topics, "SKU-1", 5);
    let ingest: std::net::SocketAddr = format!("127.0.0.1:{ingest_port}").parse().unwrap();
    run_sale(ingest, vec![vec![("SKU-1".to_string(), 1)]; 2], 1, |_| {}).await;

    // Schemathesis's working directory: its reports, nothing in the repository.
    let work = std::env::temp_dir().join(format!("orderpipe-api-contract-{}", topics.prefix));
    std::fs::create_dir_all(&work).unwrap();
    let ingest_seen = schemathesis("ingest", &format!("http://{ingest}"), &work);
    let query_seen = schemathesis("query", &format!("http://127.0.0.1:{query_port}"), &work);
    let _ = std::fs::remove_dir_all(&work);
    pipeline.stop();
    keyspace.drop_keyspace().await.unwrap();
    // Both the happy path and refusals were exercised.
    assert!(
        ingest_seen.contains_key(&202) && ingest_seen.contains_key(&422),
        "{ingest_seen:?}"
    );
    assert!(
        query_seen.contains_key(&200) && query_seen.contains_key(&400),
        "{query_seen:?}"
    );
}
