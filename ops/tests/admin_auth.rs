//! The admin credential, from the outside: the real `orderpipe` binary against the test broker.
//!
//! - no admin key configured: `/metrics`, `/readyz` and `/healthz` answer without credentials,
//!   as they always did;
//! - an admin key configured (`--admin-key-file`): `/metrics` and `/readyz`, on the admin
//!   listener and on the ingest port that merges them, answer 401 problem+json with a
//!   `WWW-Authenticate` challenge without it, with a wrong key and with a malformed
//!   `Authorization` header, 200 with `Authorization: Bearer <key>`; `/healthz` answers 200
//!   always (liveness probes carry no secret);
//! - `orderpipe gateway-sim`'s state-changing `POST /v1/faults` refuses without the key;
//! - an empty key file stops the process at start with a clear error instead of guarding
//!   nothing (or everything).
//!
//! Needs the testbed broker (`KAFKA_BOOTSTRAP`).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{adopt_pipeline_topics, free_port, Orderpipe};
use hyper::Method;
use orderpipe_testkit::http::{full, is_problem, Conn, Reply};
use orderpipe_testkit::kafka::TestTopics;

/// A key nobody would type by accident.
const ADMIN_KEY: &str = "adm-test-4f1b9c2e7d";

async fn get(addr: SocketAddr, path: &str, authorization: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = authorization
        .map(|v| ("authorization", v))
        .into_iter()
        .collect();
    Conn::new(addr)
        .send(Method::GET, path, &headers, full(""))
        .await
        .unwrap_or_else(|e| panic!("GET {addr}{path}: {e}"))
}

/// Polls `path` until it answers 200: ingest's own `/readyz` follows its broker probe, which
/// may not have run yet when the process's admin listener already says ready.
async fn wait_ok(addr: SocketAddr, path: &str, authorization: Option<&str>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = get(addr, path, authorization).await;
        if reply.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline && reply.status == 503,
            "{addr}{path}: {} {:?}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A 401 answer as the admin guard sends it: problem+json naming the problem, with a Bearer
/// challenge.
fn assert_refused(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {:?}", reply.body);
    assert!(
        is_problem(reply),
        "{what}: not problem+json: {:?}",
        reply.headers
    );
    let challenge = reply
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(
        challenge.starts_with("Bearer realm=\"orderpipe-admin\""),
        "{what}: {challenge}"
    );
    let problem = reply.json();
    assert_eq!(
        problem["type"], "urn:orderpipe:problem:admin-unauthenticated",
        "{what}"
    );
    assert_eq!(problem["status"], 401, "{what}");
    assert!(
        problem["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}"
    );
    assert!(
        problem["detail"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}"
    );
}

fn key_file(contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "orderpipe-admin-key-{}",
        orderpipe_testkit::unique_suffix()
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_key_the_admin_endpoints_stay_open() {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let ingest: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = ingest.to_string();
    let mut pipeline = Orderpipe::run(
        "admin-open",
        &topics,
        &["--components", "ingest", "--ingest-listen", &listen],
    );
    // /readyz answering 200 without credentials is the first half of the claim.
    pipeline.wait_ready(Duration::from_secs(60)).await;
    wait_ok(ingest, "/readyz", None).await;
    for addr in [pipeline.admin, ingest] {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let reply = get(addr, path, None).await;
            assert_eq!(reply.status, 200, "{addr}{path}: {:?}", reply.body);
        }
        let metrics = get(addr, "/metrics", None).await;
        assert!(
            String::from_utf8_lossy(&metrics.body).contains("# TYPE orderpipe_"),
            "{addr}: an exposition of orderpipe metrics expected"
        );
    }
    pipeline.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_key_readyz_and_metrics_refuse_requests_without_it() {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let ingest: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = ingest.to_string();
    // A file, as a mounted secret would be (a flag would show in the process list); the
    // trailing newline of `echo key > file` is not part of the key.
    let file = key_file(&format!("{ADMIN_KEY}\n"));
    let mut pipeline = Orderpipe::run(
        "admin-key",
        &topics,
        &[
            "--components",
            "ingest",
            "--ingest-listen",
            &listen,
            "--admin-key-file",
            file.to_str().unwrap(),
        ],
    );
    let bearer = format!("Bearer {ADMIN_KEY}");
    pipeline
        .wait_ready_with(Duration::from_secs(60), &[("authorization", &bearer)])
        .await;
    wait_ok(ingest, "/readyz", Some(&bearer)).await;

    let wrong = format!("Bearer {ADMIN_KEY}x");
    let basic = format!("Basic {ADMIN_KEY}");
    let refused: [(&str, Option<&str>); 6] = [
        ("no Authorization header", None),
        ("a wrong key", Some(&wrong)),
        ("a key prefix", Some("Bearer adm-test")),
        ("the key without a scheme", Some(ADMIN_KEY)),
        ("another scheme", Some(&basic)),
        ("Bearer without a token", Some("Bearer")),
    ];
    for (listener, addr) in [("admin listener", pipeline.admin), ("ingest port", ingest)] {
        for path in ["/readyz", "/metrics"] {
            for (case, authorization) in refused {
                let reply = get(addr, path, authorization).await;
                assert_refused(&reply, &format!("{listener} {path} with {case}"));
            }
            let reply = get(addr, path, Some(&bearer)).await;
            assert_eq!(
                reply.status, 200,
                "{listener} {path} with the key: {:?}",
                reply.body
            );
        }
        let metrics = get(addr, "/metrics", Some(&bearer)).await;
        assert!(
            String::from_utf8_lossy(&metrics.body).contains("# TYPE orderpipe_"),
            "{listener}: an exposition of orderpipe metrics expected"
        );
        for authorization in [None, Some(wrong.as_str())] {
            let reply = get(addr, "/healthz", authorization).await;
            assert_eq!(
                reply.status, 200,
                "{listener} /healthz with {authorization:?}"
            );
        }
    }
    pipeline.stop();
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn an_empty_admin_key_file_stops_the_process_at_start() {
    let file = key_file("\n");
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .args(["run", "--components", "ingest", "--admin-key-file"])
        .arg(&file)
        .args(["--admin-listen", &format!("127.0.0.1:{}", free_port())])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "started with an empty admin key: {stderr}"
    );
    assert!(stderr.contains("the admin key is empty"), "{stderr}");
}

/// `orderpipe gateway-sim` with the key in its environment variable.
struct GatewaySim(Child);

impl Drop for GatewaySim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn gateway_sim_faults_refuse_without_the_admin_key() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let _sim = GatewaySim(
        Command::new(env!("CARGO_BIN_EXE_orderpipe"))
            .args(["gateway-sim", "--gateway-sim-listen", &addr.to_string()])
            .env("ORDERPIPE_ADMIN_KEY", ADMIN_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Conn::new(addr)
            .send(Method::GET, "/healthz", &[], full(""))
            .await
        {
            Ok(reply) if reply.status == 200 => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("gateway-sim did not start: {other:?}"),
        }
    }
    let faults = |authorization: Option<String>| async move {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        headers.extend(authorization.map(|a| ("authorization".to_string(), a)));
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        Conn::new(addr)
            .send(
                Method::POST,
                "/v1/faults",
                &headers,
                full(r#"{"fail_next": 1, "status": 503}"#),
            )
            .await
            .unwrap()
    };
    assert_refused(&faults(None).await, "POST /v1/faults without a key");
    assert_refused(
        &faults(Some("Bearer nope".into())).await,
        "POST /v1/faults with a wrong key",
    );
    let accepted = faults(Some(format!("Bearer {ADMIN_KEY}"))).await;
    assert!(
        accepted.status.is_success(),
        "with the key: {} {:?}",
        accepted.status,
        accepted.body
    );
}
