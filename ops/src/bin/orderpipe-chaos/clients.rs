//! The sale's clients: the seeded orders, and open-loop clients that retry with the same
//! Idempotency-Key until acknowledged.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

use crate::http;

#[derive(Debug, Clone)]
pub(crate) struct OrderSpec {
    pub(crate) key: String,
    pub(crate) customer: String,
    pub(crate) lines: Vec<(String, u32)>,
    pub(crate) cancel: bool,
}

impl OrderSpec {
    pub(crate) fn body(&self) -> String {
        let lines: Vec<serde_json::Value> = self
            .lines
            .iter()
            .map(
                |(sku, q)| serde_json::json!({"sku": sku, "quantity": q, "unit_price_minor": 1000}),
            )
            .collect();
        let total: i64 = self.lines.iter().map(|(_, q)| i64::from(*q) * 1000).sum();
        serde_json::json!({
            "customer_id": self.customer, "currency": "EUR", "lines": lines, "total_minor": total,
            "payment": {"method": "card", "token": "tok_chaos_secret_4242"},
        })
        .to_string()
    }
}

/// The orders of the sale: a function of the seed (a generator of its own, apart from the faults').
pub(crate) fn orders(seed: u64, count: usize, skus: u32, cancel_rate: f64) -> Vec<OrderSpec> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5E_ED0F_0DE5);
    (0..count)
        .map(|i| {
            let n = rng.random_range(1..=3u32.min(skus));
            let mut picked = BTreeSet::new();
            while picked.len() < n as usize {
                // Skewed popularity: SKU-0 is hottest.
                let r: f64 = rng.random();
                picked.insert((r * r * f64::from(skus)) as u32);
            }
            OrderSpec {
                key: format!("chaos-{seed}-{i}"),
                customer: format!("customer-{}", rng.random_range(0..2000)),
                lines: picked
                    .into_iter()
                    .map(|s| (format!("SKU-{s}"), rng.random_range(1..=2)))
                    .collect(),
                cancel: rng.random_bool(cancel_rate.clamp(0.0, 1.0)),
            }
        })
        .collect()
}

#[derive(Default)]
pub(crate) struct Sale {
    pub(crate) acked: Mutex<HashMap<Uuid, usize>>,
    pub(crate) ack_ms: Mutex<Vec<(f64, u64)>>,
    pub(crate) cancels_acked: AtomicU64,
    pub(crate) attempts: AtomicU64,
    pub(crate) retried_503: AtomicU64,
    pub(crate) retried_429: AtomicU64,
    pub(crate) retried_cut: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) client_errors: Mutex<Vec<String>>,
    pub(crate) same_key_other_id: AtomicU64,
}

const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

/// POSTs until 202 (same Idempotency-Key on every attempt, alternating ingest instances).
async fn post_until_accepted(
    sale: &Sale,
    ingest: [SocketAddr; 2],
    first: usize,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Option<serde_json::Value> {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let mut target = first;
    let mut attempt = 0u64;
    let headers: Vec<(&str, &str)> = key
        .map(|k| vec![("idempotency-key", k)])
        .unwrap_or_default();
    loop {
        sale.attempts.fetch_add(1, Ordering::Relaxed);
        match http::request(
            ingest[target],
            "POST",
            path,
            &headers,
            body,
            Duration::from_secs(10),
        )
        .await
        {
            Ok(reply) if reply.status == 202 => return Some(reply.json()),
            Ok(reply) if reply.status == 503 => sale.retried_503.fetch_add(1, Ordering::Relaxed),
            Ok(reply) if reply.status == 429 => sale.retried_429.fetch_add(1, Ordering::Relaxed),
            Ok(reply) => {
                sale.client_errors
                    .lock()
                    .unwrap()
                    .push(format!("{path}: {} {}", reply.status, reply.body));
                return None;
            }
            Err(_) => sale.retried_cut.fetch_add(1, Ordering::Relaxed),
        };
        if Instant::now() > deadline {
            sale.abandoned.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        attempt += 1;
        target ^= 1;
        tokio::time::sleep(Duration::from_millis((100 * attempt).min(1000))).await;
    }
}

pub(crate) async fn place(
    sale: Arc<Sale>,
    ingest: [SocketAddr; 2],
    index: usize,
    spec: OrderSpec,
    due: Instant,
    started: Instant,
) {
    let body = spec.body();
    let Some(reply) = post_until_accepted(
        &sale,
        ingest,
        index % 2,
        "/v1/orders",
        Some(&spec.key),
        Some(&body),
    )
    .await
    else {
        return;
    };
    let Some(id) = reply["order_id"]
        .as_str()
        .and_then(|s| s.parse::<Uuid>().ok())
    else {
        sale.client_errors
            .lock()
            .unwrap()
            .push(format!("202 without an order id: {reply}"));
        return;
    };
    let latency = due.elapsed().as_millis() as u64;
    sale.ack_ms
        .lock()
        .unwrap()
        .push((started.elapsed().as_secs_f64(), latency));
    if let Some(previous) = sale.acked.lock().unwrap().insert(id, index) {
        if previous != index {
            sale.same_key_other_id.fetch_add(1, Ordering::Relaxed);
        }
    }
    if spec.cancel {
        let path = format!("/v1/orders/{id}/cancel");
        if post_until_accepted(&sale, ingest, (index % 2) ^ 1, &path, None, None)
            .await
            .is_some()
        {
            sale.cancels_acked.fetch_add(1, Ordering::Relaxed);
        }
    }
}
