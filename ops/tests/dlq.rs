//! `orderpipe dlq` against the real broker: a letter the notifications stage dead-lettered
//! (`stale_event`: older than `--notifications-retention`) is listed and shown decoded; after the
//! fix (the stage restarted with a longer retention) `dlq redrive` gets it processed exactly once,
//! and a second redrive of the same letter is refused. Bulk redrive without `--yes` and a dry run
//! send nothing.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use orderpipe_schemas::{
    NotificationEnvelope, NotificationEvent, OrderConfirmed, OrderEnvelope, OrderEvent, Topics,
};
use orderpipe_testkit::kafka::{self, TestTopics};
use rdkafka::producer::FutureRecord;
use rdkafka::Message;
use uuid::Uuid;

/// `orderpipe dlq ARGS` on this test's topics: (exit code, stdout, stderr).
fn dlq(topics: &TestTopics, args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .arg("dlq")
        .args(args)
        .args(["--stage", "notifications"])
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running orderpipe dlq");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    )
}

fn letters(topics: &TestTopics) -> Vec<serde_json::Value> {
    let (code, out, err) = dlq(topics, &["list", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str::<Vec<serde_json::Value>>(&out).unwrap()
}

/// Committed records of `topic` about `order`.
fn records_of(topic: &str, order: Uuid) -> Vec<Vec<u8>> {
    orderpipe_ops::dlq::read_topic(&kafka::bootstrap(), &[], topic)
        .unwrap()
        .iter()
        .filter(|m| m.key() == Some(order.to_string().as_bytes()))
        .map(|m| m.payload().unwrap_or_default().to_vec())
        .collect()
}

fn notifications_requested(names: &Topics, order: Uuid) -> usize {
    records_of(&names.notifications, order)
        .iter()
        .filter(|p| {
            matches!(
                NotificationEnvelope::decode(p).map(|e| e.event),
                Ok(NotificationEvent::NotificationRequested(_))
            )
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_of_a_fixed_letter_is_processed_exactly_once_and_a_second_redrive_is_refused() {
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let names = Topics::with_prefix(topics.prefix.clone());
    topics.adopt(&orderpipe_ops::dlq::redriven_topic(&names, "notifications"));
    let mut stage = Orderpipe::run("notifications", &topics, &["--components", "notifications"]);
    stage.wait_ready(Duration::from_secs(60)).await;

    // Given an order_confirmed older than the notifications retention (7 days): dead-lettered
    let order = Uuid::now_v7();
    let mut old = OrderEnvelope::new(
        order,
        OrderEvent::OrderConfirmed(OrderConfirmed {}),
        None,
        order,
    );
    old.occurred_at = chrono::Utc::now() - chrono::Duration::days(10);
    let producer = kafka::producer().unwrap();
    producer
        .send(
            FutureRecord::to(&names.orders)
                .key(&old.key())
                .payload(&old.encode()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let letter = loop {
        let found = letters(&topics);
        if let Some(letter) = found.first() {
            assert_eq!(found.len(), 1, "{found:?}");
            break letter.clone();
        }
        assert!(
            Instant::now() < deadline,
            "never dead-lettered:\n{}",
            stage.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(letter["reason"], "stale_event", "{letter}");
    assert_eq!(letter["source_topic"], names.orders.as_str(), "{letter}");
    assert!(letter["redriven"].is_null(), "{letter}");
    let id = format!("{}/{}", letter["id"]["partition"], letter["id"]["offset"]);

    // dlq list (text) and show name it, with the original event decoded
    let (code, out, err) = dlq(&topics, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("stale_event"), "{out}");
    let (code, out, err) = dlq(&topics, &["show", "--id", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"event_type\": \"order_confirmed\""), "{out}");
    assert!(out.contains(&order.to_string()), "{out}");

    // A bulk redrive without --yes (and no terminal to ask) and a dry run send nothing
    let (code, out, err) = dlq(&topics, &["redrive", "--all"]);
    assert_ne!(code, 0, "bulk redrive without --yes went through: {out}");
    assert!(err.contains("--yes"), "{err}");
    let (code, out, err) = dlq(&topics, &["redrive", "--id", &id, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("would redrive") && out.contains("nothing sent"),
        "{out}"
    );
    assert_eq!(
        records_of(&names.orders, order).len(),
        1,
        "a dry run sent the letter"
    );

    // When the cause is fixed (a longer retention) and the letter is redriven
    stage.stop();
    let mut stage = Orderpipe::run(
        "notifications-fixed",
        &topics,
        &[
            "--components",
            "notifications",
            "--notifications-retention",
            "30days",
        ],
    );
    stage.wait_ready(Duration::from_secs(60)).await;
    let (code, out, err) = dlq(&topics, &["redrive", "--id", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("redrove 1 letters"), "{out}");

    // Then the stage processes it: one notification, byte-identical event on the input topic
    let deadline = Instant::now() + Duration::from_secs(60);
    while notifications_requested(&names, order) == 0 {
        assert!(
            Instant::now() < deadline,
            "redriven letter not processed:\n{}",
            stage.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let orders = records_of(&names.orders, order);
    assert_eq!(orders.len(), 2, "original and one redriven copy");
    assert_eq!(
        orders[0], orders[1],
        "the redriven record carries the original bytes"
    );

    // And a second redrive of the same letter is refused, naming it
    let (code, out, err) = dlq(&topics, &["redrive", "--id", &id]);
    assert_ne!(code, 0, "second redrive went through: {out}");
    assert!(
        err.contains("already redriven") && err.contains(&id),
        "{err}"
    );
    let (code, out, _) = dlq(&topics, &["redrive", "--all", "--yes"]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to redrive"), "{out}");
    let after = letters(&topics);
    assert_eq!(
        after.len(),
        1,
        "the redriven letter was dead-lettered again: {after:?}"
    );
    assert!(!after[0]["redriven"].is_null(), "{after:?}");

    // Exactly once: still one notification and one redriven copy after the stage settles
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(notifications_requested(&names, order), 1);
    assert_eq!(records_of(&names.orders, order).len(), 2);
    stage.stop();
}
