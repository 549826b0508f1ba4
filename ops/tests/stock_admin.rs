//! `orderpipe stock adjust` and `stock show` against the real broker and CQL server: an
//! adjustment applied by the stock stage shows up in the view `stock show` reads.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use orderpipe_testkit::cql::TestKeyspace;
use orderpipe_testkit::kafka::{self, TestTopics};

/// `orderpipe ARGS` on this test's topics and keyspace: (exit code, stdout, stdout + stderr).
fn orderpipe(topics: &TestTopics, keyspace: &str, args: &[&str]) -> (i32, String) {
    let (code, _, all) = orderpipe_out(topics, keyspace, args);
    (code, all)
}

fn orderpipe_out(topics: &TestTopics, keyspace: &str, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .args(args)
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .args(["--scylla-nodes", &orderpipe_testkit::cql::nodes().join(",")])
        .args(if args[1] == "show" {
            vec!["--keyspace", keyspace]
        } else {
            vec![]
        })
        .output()
        .expect("running orderpipe");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// `stock show --json` until `available` is `expected`.
async fn wait_available(
    topics: &TestTopics,
    keyspace: &str,
    sku: &str,
    expected: i64,
    pipeline: &Orderpipe,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, json, out) = orderpipe_out(topics, keyspace, &["stock", "show", sku, "--json"]);
        if code == 0 {
            let out = json;
            let view: serde_json::Value = serde_json::from_str(&out).unwrap();
            if view["available"] == expected {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "stock show never reported {expected} available: {out}\n{}",
            pipeline.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_adjust_changes_what_stock_show_reports() {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let keyspace = TestKeyspace::new().await.unwrap();
    let ks = keyspace.name().to_string();
    let nodes = orderpipe_testkit::cql::nodes().join(",");
    let group = topics.name("projections");
    let mut pipeline = Orderpipe::run(
        "stock-projections",
        &topics,
        &[
            "--components",
            "stock,projections",
            "--scylla-nodes",
            &nodes,
            "--keyspace",
            &ks,
            "--projections-group",
            &group,
        ],
    );
    pipeline.wait_ready(Duration::from_secs(90)).await;

    // Given 10 units
    set_stock(&topics, "ADJ-1", 10);
    wait_available(&topics, &ks, "ADJ-1", 10, &pipeline).await;

    // An unknown SKU is a clear error
    let (code, out) = orderpipe(&topics, &ks, &["stock", "show", "ADJ-NONE"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("unknown") && out.contains("404"), "{out}");

    // When 3 are removed, then 5 added, the view follows each adjustment
    let (code, out) = orderpipe(&topics, &ks, &["stock", "adjust", "ADJ-1", "-3"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ADJ-1: -3 units"), "{out}");
    wait_available(&topics, &ks, "ADJ-1", 7, &pipeline).await;
    let (code, out) = orderpipe(&topics, &ks, &["stock", "adjust", "ADJ-1", "5"]);
    assert_eq!(code, 0, "{out}");
    wait_available(&topics, &ks, "ADJ-1", 12, &pipeline).await;
    let (code, out) = orderpipe(&topics, &ks, &["stock", "show", "ADJ-1"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ADJ-1: available 12, reserved 0, sold 0"),
        "{out}"
    );

    pipeline.stop();
    keyspace.drop_keyspace().await.unwrap();
}
