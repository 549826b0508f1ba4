//! One order's client: POST with retries on the same Idempotency-Key, follow it in the query API,
//! and the tally and live counters it records into.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use orderpipe_benches::latency;

use crate::cli::LoadArgs;
use crate::scenario::Order;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Longest wait for an answer (beyond a long-poll's own wait) before a request counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// What the run saw (one lock, short critical sections).
pub(crate) struct Tally {
    pub(crate) ack_us: Histogram<u64>,
    pub(crate) e2e_confirmed_us: Histogram<u64>,
    pub(crate) e2e_rejected_us: Histogram<u64>,
    /// Final HTTP status of each order (after retries); 0 = transport error.
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) outcomes: BTreeMap<String, u64>,
    pub(crate) reasons: BTreeMap<String, u64>,
}

/// Counters read by the progress line.
#[derive(Default)]
pub(crate) struct LiveCounters {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) refused: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) transport_errors: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) e2e_done: AtomicU64,
}

pub(crate) struct Ctx {
    pub(crate) client: HttpClient,
    pub(crate) args: LoadArgs,
    pub(crate) tally: Mutex<Tally>,
    pub(crate) live: LiveCounters,
    pub(crate) run_id: String,
}

/// POSTs an order; returns status, Retry-After (seconds) and body.
pub(crate) async fn post(
    ctx: &Ctx,
    body: &Bytes,
    key: &str,
) -> anyhow::Result<(u16, Option<u64>, Bytes)> {
    let request = hyper::Request::post(format!("{}/v1/orders", ctx.args.ingest_url))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(body.clone()))?;
    // A request the server never answers counts as a transport error, not a hang.
    let response = tokio::time::timeout(REQUEST_TIMEOUT, ctx.client.request(request))
        .await
        .context("no answer within the request timeout")??;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, retry_after, body))
}

async fn get_json(
    ctx: &Ctx,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let request = hyper::Request::get(format!("{}{path}", ctx.args.query_url))
        .body(Full::new(Bytes::new()))?;
    let response = tokio::time::timeout(timeout, ctx.client.request(request))
        .await
        .context("no answer within the request timeout")??;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    ))
}

/// Sends one order (retrying after 503/429 and transport errors when `retry`), records its
/// acknowledgement latency from `intended`, and follows it to a terminal status when sampled.
pub(crate) async fn one_order(ctx: &Ctx, order: Order, intended: Instant, retry: bool) {
    let live = &ctx.live;
    live.sent.fetch_add(1, Ordering::Relaxed);
    let key = format!("load-{}-{}", ctx.run_id, order.seq);
    let mut attempt = 0;
    let (status, body) = loop {
        let result = post(ctx, &order.body, &key).await;
        let (status, retry_after, body) = match result {
            Ok(answer) => answer,
            Err(_) => {
                live.transport_errors.fetch_add(1, Ordering::Relaxed);
                (0, None, Bytes::new())
            }
        };
        let retryable = matches!(status, 0 | 429 | 503);
        if status == 429 || status == 503 {
            live.refused.fetch_add(1, Ordering::Relaxed);
        }
        if retryable && retry && attempt < ctx.args.retries {
            attempt += 1;
            live.retries.fetch_add(1, Ordering::Relaxed);
            let wait = retry_after
                .map_or(Duration::from_millis(100), Duration::from_secs)
                .min(ctx.args.retry_cap);
            tokio::time::sleep(wait).await;
            continue;
        }
        break (status, body);
    };
    let acked_at = Instant::now();
    {
        let mut tally = ctx.tally.lock().expect("not poisoned");
        *tally.statuses.entry(status).or_default() += 1;
        if status == 202 {
            latency::record(&mut tally.ack_us, (acked_at - intended).as_micros() as u64);
        }
    }
    if status != 202 {
        return;
    }
    live.acked.fetch_add(1, Ordering::Relaxed);
    if !order.follow {
        return;
    }
    let order_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            v.get("order_id")
                .and_then(|id| id.as_str())
                .map(str::to_owned)
        });
    let Some(order_id) = order_id else {
        record_outcome(ctx, "no_order_id_in_202", None, None);
        return;
    };
    let deadline = intended + ctx.args.e2e_timeout;
    let mut known = "placed".to_owned();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            record_outcome(ctx, "e2e_timeout", None, None);
            return;
        }
        let wait = left.min(Duration::from_secs(10));
        let path = format!(
            "/v1/orders/{order_id}?wait={}ms&status={known}",
            wait.as_millis().max(1)
        );
        match get_json(ctx, &path, wait + REQUEST_TIMEOUT).await {
            Ok((200, body)) => {
                let status = body
                    .get("status")
                    .and_then(|s| s.as_str())
                    .unwrap_or("")
                    .to_owned();
                let seen = intended.elapsed().as_micros() as u64;
                match status.as_str() {
                    "confirmed" | "rejected" | "cancelled" => {
                        let reason = body
                            .get("reason")
                            .and_then(|r| r.as_str())
                            .map(str::to_owned);
                        record_outcome(ctx, &status, Some(seen), reason);
                        return;
                    }
                    _ => known = status,
                }
            }
            // Not in the views yet (404 after the wait) or a transient error: ask again.
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn record_outcome(ctx: &Ctx, outcome: &str, visible_us: Option<u64>, reason: Option<String>) {
    ctx.live.e2e_done.fetch_add(1, Ordering::Relaxed);
    let mut tally = ctx.tally.lock().expect("not poisoned");
    *tally.outcomes.entry(outcome.to_owned()).or_default() += 1;
    if let Some(reason) = reason {
        *tally.reasons.entry(reason).or_default() += 1;
    }
    match (outcome, visible_us) {
        ("confirmed", Some(us)) => latency::record(&mut tally.e2e_confirmed_us, us),
        ("rejected", Some(us)) => latency::record(&mut tally.e2e_rejected_us, us),
        _ => {}
    }
}
