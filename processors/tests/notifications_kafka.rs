//! The notifications stage against the real broker and a local webhook receiver, once per
//! processing mode: terminal events are delivered once (a redelivered event is not resent),
//! signed, and recorded as requested + sent on the notifications topic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use orderpipe_processors::notifications::{
    verify, Notification, NotificationsArgs, NotificationsStage, Secret, SinkKind, SIGNATURE_HEADER,
};
use orderpipe_processors::{ensure_topics, spawn_stage, Config, ProcessingMode};
use orderpipe_schemas::{
    NotificationEnvelope, NotificationEvent, OrderConfirmed, OrderEnvelope, OrderEvent, OrderLine,
    OrderPlaced, OrderRejected, PaymentRef, RejectReason, Topics,
};
use orderpipe_testkit::kafka::{bootstrap, consume_n, consumer, producer, TestTopics};
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "kafka-test-secret";

use orderpipe_testkit::both_modes;

both_modes!(terminal_events_are_delivered_once_and_recorded);

type Received = Arc<Mutex<HashMap<Uuid, Vec<Notification>>>>;

async fn hook(State(received): State<Received>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !verify(SECRET.as_bytes(), &body, signature) {
        return StatusCode::UNAUTHORIZED;
    }
    let n: Notification = serde_json::from_slice(&body).unwrap();
    received
        .lock()
        .unwrap()
        .entry(n.event_id)
        .or_default()
        .push(n);
    StatusCode::OK
}

fn placed(order_id: Uuid, customer: &str) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: customer.into(),
            currency: "EUR".into(),
            lines: vec![OrderLine {
                sku: "N-1".into(),
                quantity: 1,
                unit_price_minor: 100,
            }],
            total_minor: 100,
            payment: PaymentRef {
                method: "card".into(),
                token: "tok".into(),
            },
        }),
        None,
        order_id,
    )
}

async fn terminal_events_are_delivered_once_and_recorded(mode: ProcessingMode) {
    let mut test_topics = TestTopics::new().unwrap();
    test_topics.create("orders", 2).await.unwrap();
    test_topics.create("notifications", 2).await.unwrap();
    let topics = Topics::with_prefix(test_topics.prefix.clone());
    for created in ensure_topics(&bootstrap(), &topics, NotificationsStage::NAME, 2)
        .await
        .unwrap()
    {
        test_topics.adopt(&created);
    }

    let received: Received = Arc::default();
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let args = NotificationsArgs {
        sink: SinkKind::Webhook,
        webhook_url: Some(url),
        webhook_secret: Some(Secret::new(SECRET)),
        ..NotificationsArgs::default()
    };
    let stage =
        NotificationsStage::from_args(&args, topics.clone(), tokio::runtime::Handle::current())
            .unwrap();
    let shutdown = CancellationToken::new();
    let handle = spawn_stage(
        Box::new(stage),
        &Config::with_mode(mode),
        &bootstrap(),
        &topics,
        shutdown.clone(),
    )
    .unwrap();

    let reader = consumer(&test_topics.name("reader"), true).unwrap();
    reader.subscribe(&[&topics.notifications]).unwrap();
    let producer = producer().unwrap();
    let (x, y) = (Uuid::now_v7(), Uuid::now_v7());
    let confirmed = OrderEnvelope::new(x, OrderEvent::OrderConfirmed(OrderConfirmed {}), None, x);
    let rejected = OrderEnvelope::new(
        y,
        OrderEvent::OrderRejected(OrderRejected {
            reason: RejectReason::LimitExceeded,
        }),
        None,
        y,
    );
    // Given two placed orders, their terminal events, and a redelivery of one of them
    for e in [
        &placed(x, "cust-x"),
        &placed(y, "cust-y"),
        &confirmed,
        &rejected,
        &confirmed,
    ] {
        producer
            .send(
                FutureRecord::to(&topics.orders)
                    .key(&e.key())
                    .payload(&e.encode()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    // Then the notifications topic records a request and a sent per terminal event (the
    // redelivered event repeats its records with the same ids, without delivering again)
    let mut records: Vec<NotificationEnvelope> = consume_n(&reader, 4, WAIT)
        .await
        .iter()
        .map(|m| NotificationEnvelope::decode(m.payload().unwrap()).unwrap())
        .collect();
    assert_eq!(records.len(), 4);
    for m in consume_n(&reader, 10, Duration::from_secs(2)).await {
        records.push(NotificationEnvelope::decode(m.payload().unwrap()).unwrap());
    }
    let distinct: HashMap<Uuid, NotificationEnvelope> =
        records.into_iter().map(|r| (r.event_id, r)).collect();
    assert_eq!(distinct.len(), 4, "{distinct:?}");
    let sent = distinct
        .values()
        .filter(|r| matches!(r.event, NotificationEvent::NotificationSent(_)))
        .count();
    assert_eq!(sent, 2, "{distinct:?}");

    // And the receiver got each event once, signed, with customer and reason
    let received = received.lock().unwrap().clone();
    assert_eq!(received.len(), 2);
    assert_eq!(received[&confirmed.event_id].len(), 1);
    let y_notice = &received[&rejected.event_id][0];
    assert_eq!(
        (
            y_notice.customer_id.as_str(),
            y_notice.reason.as_deref(),
            y_notice.order_id
        ),
        ("cust-y", Some("limit_exceeded"), y)
    );

    shutdown.cancel();
    handle.wait().await.unwrap();
}
