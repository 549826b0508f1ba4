//! `orderpipe verify` against the real broker: it passes after a clean flash sale through every
//! component, and fails, naming the orders and SKUs, once the topics hold an oversell, a second
//! terminal event and a charge that was never refunded.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use orderpipe_processors::ProcessingMode;
use orderpipe_schemas::{
    OrderConfirmed, OrderEnvelope, OrderEvent, OrderLine, OrderPlaced, OrderRejected, PaymentRef,
    PaymentSettled, RejectReason, Topics,
};
use orderpipe_testkit::kafka::{self, TestTopics};
use rdkafka::producer::FutureRecord;
use uuid::Uuid;

/// `orderpipe verify` on this test's topics: (exit code, stdout, stdout and stderr together).
fn verify(topics: &TestTopics, extra: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe"))
        .arg("verify")
        .args(["--kafka-bootstrap", &kafka::bootstrap()])
        .args(["--topic-prefix", &topics.prefix])
        .args(["--settle", "0s"])
        .args(extra)
        .output()
        .expect("running orderpipe verify");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let both = format!("{stdout}{stderr}");
    (output.status.code().unwrap_or(-1), stdout, both)
}

async fn publish(topics: &Topics, events: Vec<OrderEnvelope>) {
    let producer = kafka::producer().unwrap();
    for event in events {
        let key = event.key();
        let payload = event.encode();
        producer
            .send(FutureRecord::to(&topics.orders).key(&key).payload(&payload), Duration::from_secs(10))
            .await
            .map_err(|(err, _)| err)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_passes_after_a_clean_sale_and_names_what_breaks_an_invariant() {
    // Given a clean flash sale through every component
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let ingest_port = free_port();
    let args = [
        "--components",
        "ingest,stock,payments,saga,notifications",
        "--processing",
        ProcessingMode::ExactlyOnce.as_str(),
        "--ingest-listen",
        &format!("127.0.0.1:{ingest_port}"),
        "--payments-sim-decline-rate",
        "0.2",
    ]
    .map(String::from);
    let mut pipeline = Orderpipe::run("all", &topics, &args.iter().map(String::as_str).collect::<Vec<_>>());
    pipeline.wait_ready(Duration::from_secs(60)).await;
    set_stock(&topics, "HOT-1", 30);
    let orders: Vec<OrderSpec> = (0..120).map(|_| vec![("HOT-1".to_string(), 1)]).collect();
    let acked = run_sale(format!("127.0.0.1:{ingest_port}").parse().unwrap(), orders, 10, |_| {}).await;
    let outcome = collect_outcome(&topics, &acked, Duration::from_secs(120)).await;
    pipeline.stop();

    // Then verify passes, and its JSON report counts every order
    let (code, _, out) = verify(&topics, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK: every invariant holds"), "{out}");
    // The report is stdout alone: logs go to stderr.
    let (code, json, both) = verify(&topics, &["--json"]);
    assert_eq!(code, 0, "{both}");
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["orders"], 120, "{json}");
    assert_eq!(report["confirmed"], acked.keys().filter(|id| outcome.confirmed(id)).count(), "{json}");

    // When the topics get an oversell, a second terminal event and an unrefunded charge
    let names = Topics::with_prefix(topics.prefix.clone());
    let confirmed = *acked.keys().find(|id| outcome.confirmed(id)).expect("a confirmed order");
    let rejected = *acked.keys().find(|id| !outcome.confirmed(id)).expect("a rejected order");
    let oversold = Uuid::now_v7();
    let event = |order: Uuid, event: OrderEvent| OrderEnvelope::new(order, event, None, order);
    publish(
        &names,
        vec![
            event(confirmed, OrderEvent::OrderRejected(OrderRejected { reason: RejectReason::PaymentDeclined })),
            event(
                rejected,
                OrderEvent::PaymentSettled(PaymentSettled {
                    amount_minor: 1000,
                    currency: "EUR".into(),
                    charge_id: "ch_injected".into(),
                }),
            ),
            event(
                oversold,
                OrderEvent::OrderPlaced(OrderPlaced {
                    customer_id: "c-injected".into(),
                    currency: "EUR".into(),
                    lines: vec![OrderLine { sku: "HOT-1".into(), quantity: 500, unit_price_minor: 1000 }],
                    total_minor: 500_000,
                    payment: PaymentRef { method: "card".into(), token: "tok_injected".into() },
                }),
            ),
            event(oversold, OrderEvent::OrderConfirmed(OrderConfirmed {})),
        ],
    )
    .await;

    // Then verify exits 1 and names each of them
    let (code, _, out) = verify(&topics, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("terminal: order {confirmed}")), "second terminal event not named:\n{out}");
    assert!(out.contains(&format!("refund: order {rejected}")), "unrefunded charge not named:\n{out}");
    assert!(out.contains("oversell: sku HOT-1"), "oversell not named:\n{out}");
    assert!(out.contains("FAILED"), "{out}");
}
