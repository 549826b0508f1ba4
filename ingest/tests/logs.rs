//! No secret in any log line: with every log level on, neither the payment token, nor an API
//! key, nor the Authorization header appears in what ingest (and the libraries under it) logs.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;

/// Everything logged, in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_reach_the_log() {
    // Given every log line of this process captured at TRACE level
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .init();
    let keys = [("shop-a", "sekret-api-key-1", false)];
    let ingest = TestIngest::with_keys(&keys, test_config()).await;
    let mut conn = ingest.conn();

    // When orders with a token are accepted and refused, with the key in either header
    let mut order = order_json();
    order["payment"]["token"] = json!("tok_SECRET_77");
    accepted_id(
        &conn
            .post_order(
                &[("authorization", "Bearer sekret-api-key-1")],
                &order.to_string(),
            )
            .await,
    );
    let mut mistyped = order.clone();
    mistyped["total_minor"] = json!("tok_SECRET_77");
    let reply = conn
        .post_order(&[("x-api-key", "sekret-api-key-1")], &mistyped.to_string())
        .await;
    assert_eq!(reply.status, 422);
    let reply = conn
        .post_order(
            &[("authorization", "Bearer wrong-sekret-key")],
            &order.to_string(),
        )
        .await;
    assert_eq!(reply.status, 401);
    ingest.stop().await.expect("clean shutdown");

    // Then the log has lines about them, and no secret
    let log = String::from_utf8_lossy(&capture.0.lock().unwrap()).into_owned();
    assert!(log.contains("order accepted"), "the capture works: {log}");
    for secret in [
        "tok_SECRET_77",
        "sekret-api-key-1",
        "wrong-sekret-key",
        "Bearer",
    ] {
        assert!(!log.contains(secret), "{secret} was logged");
    }
}
