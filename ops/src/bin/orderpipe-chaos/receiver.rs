//! The webhook receiver: every delivery, signature checked, logged; during an injected outage
//! every delivery is refused with 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) event_id: Uuid,
    pub(crate) order_id: Uuid,
    pub(crate) kind: String,
}

#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) secret: Arc<String>,
    pub(crate) log: Arc<Mutex<Vec<Delivery>>>,
    pub(crate) bad: Arc<AtomicU64>,
    /// Until when deliveries are refused (an injected outage).
    pub(crate) down_until: Arc<Mutex<Option<Instant>>>,
    /// Deliveries refused during outages.
    pub(crate) refused: Arc<AtomicU64>,
}

impl Receiver {
    pub(crate) fn new(secret: String) -> Self {
        Self {
            secret: Arc::new(secret),
            log: Arc::default(),
            bad: Arc::default(),
            down_until: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// Refuses every delivery for `duration` from now.
    pub(crate) fn fail_for(&self, duration: Duration) {
        *self.down_until.lock().unwrap() = Some(Instant::now() + duration);
    }
}

pub(crate) async fn hook(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let down = receiver
        .down_until
        .lock()
        .unwrap()
        .is_some_and(|until| Instant::now() < until);
    if down {
        receiver.refused.fetch_add(1, Ordering::Relaxed);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let signature = headers
        .get(orderpipe_processors::notifications::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !orderpipe_processors::notifications::verify(receiver.secret.as_bytes(), &body, signature) {
        receiver.bad.fetch_add(1, Ordering::Relaxed);
        return StatusCode::UNAUTHORIZED;
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |name: &str| json[name].as_str().and_then(|s| s.parse::<Uuid>().ok());
    match (field("event_id"), field("order_id"), json["kind"].as_str()) {
        (Some(event_id), Some(order_id), Some(kind)) => {
            receiver.log.lock().unwrap().push(Delivery {
                event_id,
                order_id,
                kind: kind.to_string(),
            });
            StatusCode::NO_CONTENT
        }
        _ => {
            receiver.bad.fetch_add(1, Ordering::Relaxed);
            StatusCode::BAD_REQUEST
        }
    }
}
