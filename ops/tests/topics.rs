//! `orderpipe topics create|describe` against the real broker: describe reports drift (a topic
//! with too few partitions, a changelog that is not compacted, missing topics) and exits 1;
//! on a fresh prefix `topics create` makes every planned topic, is idempotent, and describe is
//! clean afterwards.

mod common;

use std::process::Command;

use common::*;
use orderpipe_testkit::kafka::{self, TestTopics};

/// `orderpipe topics ARGS` with the tests' partition count: (exit code, stdout + stderr).
fn topics_cmd(topics: &TestTopics, args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .arg("topics")
        .args(args)
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .args(["--ingest-partitions", &PARTITIONS.to_string()])
        .output()
        .expect("running orderpipe topics");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn line<'a>(out: &'a str, topic: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(topic))
        .unwrap_or_else(|| panic!("no line for {topic}:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_reports_drift_and_exits_1() {
    // Given orders with too few partitions and a changelog created with cleanup.policy=delete
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let orders = topics.create("orders", 2).await.unwrap();
    let changelog = topics.create("stock.changelog", PARTITIONS).await.unwrap();

    // Then describe names each drift and exits 1
    let (code, out) = topics_cmd(&topics, &["describe"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, &orders).contains("2 partitions, fewer than the planned 4"),
        "{out}"
    );
    assert!(
        line(&out, &changelog).contains("cleanup.policy delete, planned compact"),
        "{out}"
    );
    assert!(
        line(&out, &topics.name("stock")).contains("missing"),
        "{out}"
    );
    assert!(out.contains("DRIFT: 12 of 12"), "{out}");

    // And topics create makes only the missing ones; the two drifted topics stay drift
    let (code, out) = topics_cmd(&topics, &["create"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("10 topics created, 2 already there"), "{out}");
    let (code, out) = topics_cmd(&topics, &["describe", "--json"]);
    assert_eq!(code, 1, "{out}");
    let states: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let drifted: Vec<&str> = states
        .iter()
        .filter(|s| !s["drift"].as_array().unwrap().is_empty())
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(drifted, vec![orders.as_str(), changelog.as_str()], "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_on_a_fresh_prefix_is_idempotent_and_describe_is_clean() {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let (code, out) = topics_cmd(&topics, &["create"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("12 topics created, 0 already there"), "{out}");
    let (code, out) = topics_cmd(&topics, &["create"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("0 topics created, 12 already there"), "{out}");
    let (code, out) = topics_cmd(&topics, &["describe"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: 12 topics as planned"), "{out}");
    assert!(
        line(&out, &topics.name("saga.changelog")).contains("compact/compact"),
        "{out}"
    );
    assert!(line(&out, &topics.name("orders")).contains("4/4"), "{out}");
}
