//! `orderpipe lag` against the real broker: a stage group with unprocessed records shows a
//! non-zero lag and the age of its oldest unprocessed record; once the stage has caught up, zero.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use orderpipe_testkit::kafka::{self, TestTopics};

/// `orderpipe lag --json` on this test's topics: the rows of the stock stage's group.
fn stock_lag(topics: &TestTopics) -> Vec<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .args(["lag", "--json"])
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .output()
        .expect("running orderpipe lag");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "lag failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "lag --json: {e}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    for consumer in [
        "stock",
        "payments",
        "saga",
        "notifications",
        "projections.orders",
        "projections.stock",
    ] {
        assert_eq!(
            rows.iter().filter(|r| r["consumer"] == consumer).count(),
            PARTITIONS as usize,
            "one row per partition for {consumer}: {stdout}"
        );
    }
    rows.into_iter()
        .filter(|r| r["consumer"] == "stock")
        .collect()
}

fn total(rows: &[serde_json::Value]) -> i64 {
    rows.iter().map(|r| r["lag"].as_i64().unwrap()).sum()
}

async fn wait_caught_up(topics: &TestTopics, stage: &Orderpipe) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = stock_lag(topics);
        if total(&rows) == 0 && rows.iter().any(|r| !r["committed"].is_null()) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "stock never caught up: {rows:?}\n{}",
            stage.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_non_zero_while_records_wait_and_zero_once_processed() {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let mut stage = Orderpipe::run("stock", &topics, &["--components", "stock"]);
    stage.wait_ready(Duration::from_secs(60)).await;
    set_stock(&topics, "LAG-1", 5);
    let rows = wait_caught_up(&topics, &stage).await;
    assert!(
        rows.iter()
            .all(|r| r["oldest_unprocessed_age_ms"].is_null()),
        "{rows:?}"
    );

    // Given the stage is down while two adjustments arrive
    stage.stop();
    set_stock(&topics, "LAG-1", 7);
    set_stock(&topics, "LAG-1", 9);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Then its group lags by two records on the SKU's partition, the oldest over a second old
    let rows = stock_lag(&topics);
    assert_eq!(total(&rows), 2, "{rows:?}");
    let behind: Vec<&serde_json::Value> = rows.iter().filter(|r| r["lag"] != 0).collect();
    assert_eq!(behind.len(), 1, "{rows:?}");
    let age = behind[0]["oldest_unprocessed_age_ms"]
        .as_i64()
        .expect("an age");
    assert!((1000..120_000).contains(&age), "age {age} ms: {rows:?}");
    assert!(behind[0]["committed"].as_i64().unwrap() > 0, "{rows:?}");

    // And the table names the group and the lag
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .arg("lag")
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains(&format!("group {}orderpipe-stock", topics.prefix)),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("stock ") && l.contains("lag          2")),
        "{table}"
    );

    // When the stage comes back, the lag goes to zero
    let mut stage = Orderpipe::run("stock-again", &topics, &["--components", "stock"]);
    stage.wait_ready(Duration::from_secs(60)).await;
    let rows = wait_caught_up(&topics, &stage).await;
    assert!(
        rows.iter()
            .all(|r| r["oldest_unprocessed_age_ms"].is_null()),
        "{rows:?}"
    );
    stage.stop();
}
