//! The webhook sink against a local axum receiver that checks the HMAC signature.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::hook::{serve_hook, signed};
use orderpipe_processors::notifications::{
    deliver_with_retry, Notification, NotificationSink, Secret, WebhookConfig, WebhookSink,
    EVENT_ID_HEADER,
};
use orderpipe_processors::RetryPolicy;
use orderpipe_schemas::NotificationKind;
use uuid::Uuid;

const SECRET: &str = "whsec_test_0123456789";

#[derive(Clone, Default)]
struct Receiver {
    /// Requests to fail before accepting, and the status to fail with.
    fail: Arc<Mutex<(u32, u16)>>,
    requests: Arc<AtomicU32>,
    /// Accepted bodies whose signature verified.
    received: Arc<Mutex<Vec<Notification>>>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.requests.fetch_add(1, Ordering::SeqCst);
    {
        let mut fail = r.fail.lock().unwrap();
        if fail.0 > 0 {
            fail.0 -= 1;
            return StatusCode::from_u16(fail.1).unwrap();
        }
    }
    if !signed(SECRET, &headers, &body) {
        return StatusCode::UNAUTHORIZED;
    }
    let notification: Notification = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        headers.get(EVENT_ID_HEADER).unwrap().to_str().unwrap(),
        notification.event_id.to_string()
    );
    r.received.lock().unwrap().push(notification);
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (String, Receiver) {
    let receiver = Receiver::default();
    let url = serve_hook(post(hook), receiver.clone()).await;
    (url, receiver)
}

fn sink(url: &str, secret: &str) -> WebhookSink {
    WebhookSink::new(WebhookConfig {
        url: url.to_owned(),
        secret: Secret::new(secret),
        timeout: Duration::from_millis(500),
    })
    .unwrap()
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
    }
}

fn notification() -> Notification {
    Notification {
        event_id: Uuid::now_v7(),
        request_id: Uuid::now_v7(),
        order_id: Uuid::now_v7(),
        customer_id: "cust-9".into(),
        kind: NotificationKind::OrderRejected,
        status: "rejected".into(),
        reason: Some("out_of_stock".into()),
        amount_minor: None,
        currency: None,
        occurred_at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn a_signed_webhook_is_delivered_with_order_status_reason_and_event_id() {
    let (url, receiver) = start_receiver().await;
    let n = notification();
    let delivery = deliver_with_retry(&sink(&url, SECRET), &n, &policy()).await;
    assert_eq!(delivery.result, Ok(()));
    assert_eq!(delivery.attempts, 1);
    let received = receiver.received.lock().unwrap().clone();
    assert_eq!(received, vec![n.clone()]);
    // The body names the order, the status, the reason and the source event id
    let body = serde_json::to_value(&n).unwrap();
    for field in ["order_id", "status", "reason", "event_id"] {
        assert!(body.get(field).is_some_and(|v| !v.is_null()), "{field}");
    }
}

#[tokio::test]
async fn transient_failures_are_retried_and_counted() {
    let (url, receiver) = start_receiver().await;
    *receiver.fail.lock().unwrap() = (2, 503);
    let delivery = deliver_with_retry(&sink(&url, SECRET), &notification(), &policy()).await;
    assert_eq!((delivery.result.is_ok(), delivery.attempts), (true, 3));
    assert_eq!(receiver.received.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_and_not_retried() {
    let (url, receiver) = start_receiver().await;
    let delivery =
        deliver_with_retry(&sink(&url, "not-the-secret"), &notification(), &policy()).await;
    let err = delivery.result.unwrap_err();
    assert!(!err.retryable, "{err}");
    assert_eq!(delivery.attempts, 1);
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 1);
    assert!(receiver.received.lock().unwrap().is_empty());
}

#[tokio::test]
async fn giving_up_after_max_attempts() {
    let (url, receiver) = start_receiver().await;
    *receiver.fail.lock().unwrap() = (100, 500);
    let delivery = deliver_with_retry(&sink(&url, SECRET), &notification(), &policy()).await;
    assert!(delivery.result.unwrap_err().retryable);
    assert_eq!(delivery.attempts, 4);
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn an_unreachable_webhook_fails_transiently() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = sink(&format!("http://127.0.0.1:{port}/hook"), SECRET);
    let err = s.deliver(&notification()).await.unwrap_err();
    assert!(err.retryable, "{err}");
    // The secret never shows up in the sink's Debug output
    assert!(!format!("{s:?}").contains(SECRET));
}
