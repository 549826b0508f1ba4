//! The notifications stage against the real broker and a local webhook receiver, once per
//! processing mode: terminal events are delivered once (a redelivered event is not resent),
//! signed, and recorded as requested + sent on the notifications topic.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::broker::{Env, Running};
use common::hook::{serve_hook, signed};
use orderpipe_processors::notifications::{
    Notification, NotificationsArgs, NotificationsStage, Secret, SinkKind,
};
use orderpipe_processors::{Config, ProcessingMode};
use orderpipe_schemas::{
    NotificationEnvelope, NotificationEvent, OrderConfirmed, OrderEnvelope, OrderEvent, OrderLine,
    OrderPlaced, OrderRejected, PaymentRef, RejectReason,
};
use orderpipe_testkit::kafka::consume_n;
use rdkafka::message::Message;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "kafka-test-secret";

use orderpipe_testkit::both_modes;

both_modes!(terminal_events_are_delivered_once_and_recorded);

type Received = Arc<Mutex<HashMap<Uuid, Vec<Notification>>>>;

async fn hook(State(received): State<Received>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if !signed(SECRET, &headers, &body) {
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
    let env = Env::new(
        &[("orders", 2), ("notifications", 2)],
        &[NotificationsStage::NAME],
        2,
    )
    .await;

    let received: Received = Arc::default();
    let url = serve_hook(post(hook), received.clone()).await;

    let args = NotificationsArgs {
        sink: SinkKind::Webhook,
        webhook_url: Some(url),
        webhook_secret: Some(Secret::new(SECRET)),
        ..NotificationsArgs::default()
    };
    let stage =
        NotificationsStage::from_args(&args, env.topics.clone(), tokio::runtime::Handle::current())
            .unwrap();
    let running = Running::start(Box::new(stage), &Config::with_mode(mode), &env.topics);

    let reader = env.reader(&env.topics.notifications);
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
    env.send_orders([
        &placed(x, "cust-x"),
        &placed(y, "cust-y"),
        &confirmed,
        &rejected,
        &confirmed,
    ])
    .await;

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

    running.stop().await.unwrap();
}
