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
            .send(
                FutureRecord::to(&topics.orders).key(&key).payload(&payload),
                Duration::from_secs(10),
            )
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
    let mut pipeline = Orderpipe::run(
        "all",
        &topics,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    pipeline.wait_ready(Duration::from_secs(60)).await;
    set_stock(&topics, "HOT-1", 30);
    let orders: Vec<OrderSpec> = (0..120).map(|_| vec![("HOT-1".to_string(), 1)]).collect();
    let acked = run_sale(
        format!("127.0.0.1:{ingest_port}").parse().unwrap(),
        orders,
        10,
        |_| {},
    )
    .await;
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
    assert_eq!(
        report["confirmed"],
        acked.keys().filter(|id| outcome.confirmed(id)).count(),
        "{json}"
    );

    // When the topics get an oversell, a second terminal event and an unrefunded charge
    let names = Topics::with_prefix(topics.prefix.clone());
    let confirmed = *acked
        .keys()
        .find(|id| outcome.confirmed(id))
        .expect("a confirmed order");
    let rejected = *acked
        .keys()
        .find(|id| !outcome.confirmed(id))
        .expect("a rejected order");
    let oversold = Uuid::now_v7();
    let event = |order: Uuid, event: OrderEvent| OrderEnvelope::new(order, event, None, order);
    publish(
        &names,
        vec![
            event(
                confirmed,
                OrderEvent::OrderRejected(OrderRejected {
                    reason: RejectReason::PaymentDeclined,
                }),
            ),
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
                    lines: vec![OrderLine {
                        sku: "HOT-1".into(),
                        quantity: 500,
                        unit_price_minor: 1000,
                    }],
                    total_minor: 500_000,
                    payment: PaymentRef {
                        method: "card".into(),
                        token: "tok_injected".into(),
                    },
                }),
            ),
            event(oversold, OrderEvent::OrderConfirmed(OrderConfirmed {})),
        ],
    )
    .await;

    // Then verify exits 1 and names each of them
    let (code, _, out) = verify(&topics, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("terminal: order {confirmed}")),
        "second terminal event not named:\n{out}"
    );
    assert!(
        out.contains(&format!("refund: order {rejected}")),
        "unrefunded charge not named:\n{out}"
    );
    assert!(
        out.contains("oversell: sku HOT-1"),
        "oversell not named:\n{out}"
    );
    assert!(out.contains("FAILED"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_views_passes_on_a_clean_sale_and_names_a_corrupted_order_and_sku() {
    // Given a clean flash sale whose projector wrote the views of keyspace L
    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let keyspace = orderpipe_testkit::cql::TestKeyspace::new().await.unwrap();
    let ingest_port = free_port();
    let nodes = orderpipe_testkit::cql::nodes().join(",");
    let ingest_listen = format!("127.0.0.1:{ingest_port}");
    let mut pipeline = Orderpipe::run(
        "all",
        &topics,
        &[
            "--components",
            "ingest,stock,payments,saga,projections",
            "--ingest-listen",
            &ingest_listen,
            "--payments-sim-decline-rate",
            "0.2",
            "--scylla-nodes",
            &nodes,
            "--keyspace",
            keyspace.name(),
        ],
    );
    pipeline.wait_ready(Duration::from_secs(60)).await;
    set_stock(&topics, "HOT-1", 30);
    let orders: Vec<OrderSpec> = (0..80).map(|_| vec![("HOT-1".to_string(), 1)]).collect();
    let acked = run_sale(ingest_listen.parse().unwrap(), orders, 8, |_| {}).await;
    let outcome = collect_outcome(&topics, &acked, Duration::from_secs(120)).await;
    wait_projectors_caught_up(&topics, "orderpipe-projections", Duration::from_secs(120)).await;
    pipeline.stop();
    let views = ["--views", keyspace.name(), "--scylla-nodes", &nodes];

    // Then verify with --views passes and says it checked them
    let (code, _, out) = verify(&topics, &views);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("views of {} checked", keyspace.name())),
        "{out}"
    );

    // When a confirmed order's status and the SKU's sold units are overwritten in the views
    // (a bad projector deploy would do this; stamped now, so they win over the projector's cells)
    let confirmed = *acked
        .keys()
        .find(|id| outcome.confirmed(id))
        .expect("a confirmed order");
    let session = keyspace.session();
    let now_us = chrono::Utc::now().timestamp_micros();
    session
        .query_unpaged(
            format!(
                "UPDATE {}.orders USING TIMESTAMP {now_us} SET terminal_status = 'rejected' WHERE order_id = ?",
                keyspace.name()
            ),
            (confirmed,),
        )
        .await
        .unwrap();
    session
        .query_unpaged(
            format!(
                "UPDATE {}.stock_by_sku USING TIMESTAMP {now_us} SET sold = 999 WHERE sku = 'HOT-1'",
                keyspace.name()
            ),
            &[],
        )
        .await
        .unwrap();

    // Then verify exits 1 and names both
    let (code, _, out) = verify(&topics, &views);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "view_order: order {confirmed}: view says rejected, the topics say confirmed"
        )),
        "corrupted order not named:\n{out}"
    );
    assert!(
        out.contains("view_stock: sku HOT-1: view says available"),
        "corrupted stock not named:\n{out}"
    );
    let view_violations = out
        .lines()
        .filter(|l| l.starts_with("view_order: ") || l.starts_with("view_stock: "))
        .count();
    assert_eq!(
        view_violations, 2,
        "only the two corrupted views differ:\n{out}"
    );
    keyspace.drop_keyspace().await.unwrap();
}
