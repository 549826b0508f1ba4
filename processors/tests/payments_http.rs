//! The HTTP gateway client against the gateway simulator (and a failing server) on port 0:
//! idempotency over HTTP, retries, timeouts, the circuit breaker, the simulator's contract.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use orderpipe_gateway_sim as gateway_sim;
use orderpipe_processors::payments::contract::{ChargeRequest, FaultsRequest, StatsResponse};
use orderpipe_processors::payments::{
    BreakerConfig, BreakerState, ChargeOutcome, GatewayError, HttpGateway, HttpGatewayConfig,
    PaymentGateway, Refund, SimConfig, SimulatedGateway,
};
use orderpipe_processors::shared::http::http_client;
use orderpipe_processors::RetryPolicy;
use orderpipe_schemas::PaymentRef;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Sim {
    url: String,
    gateway: Arc<SimulatedGateway>,
    _stop: tokio_util::sync::DropGuard,
}

async fn start_sim(config: SimConfig) -> Sim {
    let gateway = Arc::new(SimulatedGateway::new(config));
    let stop = CancellationToken::new();
    let addr = gateway_sim::spawn(gateway.clone(), stop.clone()).await;
    Sim {
        url: format!("http://{}", addr.unwrap()),
        gateway,
        _stop: stop.drop_guard(),
    }
}

fn client_config(url: &str) -> HttpGatewayConfig {
    HttpGatewayConfig {
        base_url: url.to_owned(),
        request_timeout: Duration::from_millis(500),
        retry: RetryPolicy {
            max_attempts: 3,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
        },
        breaker: BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
        },
    }
}

fn card() -> PaymentRef {
    PaymentRef {
        method: "card".into(),
        token: "tok_http".into(),
    }
}

/// A raw request to the simulator; returns status and body.
async fn raw(
    method: Method,
    url: String,
    key: Option<String>,
    body: String,
) -> (StatusCode, Bytes) {
    let client = http_client(Duration::from_secs(1));
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    let response = client
        .request(request.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

async fn stats(sim: &Sim) -> StatsResponse {
    let (status, body) = raw(
        Method::GET,
        format!("{}/v1/charges/stats", sim.url),
        None,
        String::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&body).unwrap()
}

async fn inject_faults(sim: &Sim, fail_next: u32) {
    let body = serde_json::to_string(&FaultsRequest {
        fail_next,
        fail_for_ms: 0,
        status: 503,
    })
    .unwrap();
    let (status, _) = raw(Method::POST, format!("{}/v1/faults", sim.url), None, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn an_outage_fails_every_request_for_its_duration_then_the_gateway_answers_again() {
    let sim = start_sim(SimConfig::default()).await;
    let body = r#"{"fail_for_ms": 1500, "status": 503}"#.to_string();
    let (status, _) = raw(Method::POST, format!("{}/v1/faults", sim.url), None, body).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let charge = |order_id: Uuid| {
        let body = serde_json::to_string(&ChargeRequest {
            order_id,
            amount_minor: 100,
            currency: "EUR".into(),
            payment: card(),
        })
        .unwrap();
        raw(
            Method::POST,
            format!("{}/v1/charges", sim.url),
            Some(order_id.to_string()),
            body,
        )
    };
    for _ in 0..5 {
        let (status, _) = charge(Uuid::now_v7()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "during the outage");
    }
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (status, body) = charge(Uuid::now_v7()).await;
    assert_eq!(status, StatusCode::OK, "after the outage: {body:?}");
    assert_eq!(stats(&sim).await.faults_served, 5);
}

#[tokio::test]
async fn charges_over_http_are_idempotent_per_order() {
    let sim = start_sim(SimConfig::default()).await;
    let gw = HttpGateway::new(client_config(&sim.url)).unwrap();
    let id = Uuid::now_v7();
    let first = gw.charge(id, 4_200, "EUR", &card()).await.unwrap();
    assert_eq!(first.outcome, ChargeOutcome::Settled);
    let payment = card();
    let answers =
        futures::future::join_all((0..10).map(|_| gw.charge(id, 4_200, "EUR", &payment))).await;
    assert!(answers.into_iter().all(|a| a.unwrap() == first));
    // A second client (another processor instance) gets the same charge too
    let other = HttpGateway::new(client_config(&sim.url)).unwrap();
    assert_eq!(
        other.charge(id, 4_200, "EUR", &card()).await.unwrap(),
        first
    );
    let stats = stats(&sim).await;
    assert_eq!(stats.orders[&id].charges, 1);
    assert_eq!(stats.orders[&id].charge_attempts, 12);
    assert_eq!(stats.totals.orders_charged_twice, 0);
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff() {
    let sim = start_sim(SimConfig::default()).await;
    let gw = HttpGateway::new(client_config(&sim.url)).unwrap();
    // Given the next two requests fail with 503, when charging with 3 attempts, then it settles
    inject_faults(&sim, 2).await;
    let id = Uuid::now_v7();
    let charge = gw.charge(id, 100, "EUR", &card()).await.unwrap();
    assert_eq!(charge.outcome, ChargeOutcome::Settled);
    let stats = stats(&sim).await;
    assert_eq!((stats.faults_served, stats.orders[&id].charges), (2, 1));
    // Given more failures than attempts, then the error is a retryable Unavailable
    inject_faults(&sim, 3).await;
    let err = gw
        .charge(Uuid::now_v7(), 100, "EUR", &card())
        .await
        .unwrap_err();
    assert!(matches!(err, GatewayError::Unavailable(_)), "{err}");
    assert!(err.is_unreachable());
}

#[tokio::test]
async fn a_slow_gateway_times_out_but_the_order_can_still_be_refunded() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let mut config = client_config(&sim.url);
    config.request_timeout = Duration::from_millis(100);
    config.retry.max_attempts = 2;
    let gw = HttpGateway::new(config).unwrap();
    let id = Uuid::now_v7();
    let started = Instant::now();
    let err = gw.charge(id, 700, "EUR", &card()).await.unwrap_err();
    assert!(matches!(err, GatewayError::Timeout(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    // The gateway charged although the answer never arrived: the refund finds the charge
    assert_eq!(sim.gateway.stats(id).charges, 1);
    let patient = HttpGateway::new(client_config(&sim.url)).unwrap();
    let refund = patient.refund(id).await.unwrap();
    assert!(
        matches!(
            refund,
            Refund::Refunded {
                amount_minor: 700,
                ..
            }
        ),
        "{refund:?}"
    );
    assert_eq!(sim.gateway.stats(id).refunds, 1);
}

#[tokio::test]
async fn the_circuit_opens_on_a_failing_server_and_fails_fast() {
    // A server that always answers 503 and counts requests
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            StatusCode::SERVICE_UNAVAILABLE
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut config = client_config(&url);
    config.retry.max_attempts = 2;
    config.breaker = BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_millis(300),
    };
    let gw = HttpGateway::new(config).unwrap();
    // Call 1: two attempts, two failures. Call 2: the third failure opens the circuit, and the
    // retry meets the open circuit (not retried further).
    let first = gw
        .charge(Uuid::now_v7(), 1, "EUR", &card())
        .await
        .unwrap_err();
    assert!(matches!(first, GatewayError::Unavailable(_)));
    let second = gw
        .charge(Uuid::now_v7(), 1, "EUR", &card())
        .await
        .unwrap_err();
    assert_eq!(second, GatewayError::CircuitOpen);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(matches!(gw.breaker_state(), BreakerState::Open { .. }));
    // While open: fail fast, the server sees nothing
    let started = Instant::now();
    for _ in 0..5 {
        let err = gw.refund(Uuid::now_v7()).await.unwrap_err();
        assert_eq!(err, GatewayError::CircuitOpen);
    }
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    // After open_for: one trial goes through, fails, the circuit opens again
    tokio::time::sleep(Duration::from_millis(350)).await;
    let err = gw
        .charge(Uuid::now_v7(), 1, "EUR", &card())
        .await
        .unwrap_err();
    assert_eq!(err, GatewayError::CircuitOpen);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn the_circuit_closes_again_when_the_gateway_recovers() {
    let sim = start_sim(SimConfig::default()).await;
    let mut config = client_config(&sim.url);
    config.retry.max_attempts = 1;
    config.breaker = BreakerConfig {
        failure_threshold: 2,
        open_for: Duration::from_millis(100),
    };
    let gw = HttpGateway::new(config).unwrap();
    inject_faults(&sim, 2).await;
    for _ in 0..2 {
        let _ = gw
            .charge(Uuid::now_v7(), 1, "EUR", &card())
            .await
            .unwrap_err();
    }
    assert!(matches!(gw.breaker_state(), BreakerState::Open { .. }));
    tokio::time::sleep(Duration::from_millis(120)).await;
    let charge = gw.charge(Uuid::now_v7(), 1, "EUR", &card()).await.unwrap();
    assert_eq!(charge.outcome, ChargeOutcome::Settled);
    assert_eq!(gw.breaker_state(), BreakerState::Closed { failures: 0 });
}

#[tokio::test]
async fn the_simulator_requires_a_matching_idempotency_key() {
    let sim = start_sim(SimConfig::default()).await;
    let id = Uuid::now_v7();
    let body = serde_json::json!({
        "order_id": id, "amount_minor": 100, "currency": "EUR",
        "payment": {"method": "card", "token": "t"}
    })
    .to_string();
    let url = format!("{}/v1/charges", sim.url);
    let (status, _) = raw(Method::POST, url.clone(), None, body.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = raw(
        Method::POST,
        url.clone(),
        Some(Uuid::now_v7().to_string()),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, answer) = raw(Method::POST, url.clone(), Some(id.to_string()), body).await;
    assert_eq!(status, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(answer["status"], "settled");
    assert_eq!(answer["reason"], serde_json::Value::Null);
    let (status, _) = raw(Method::POST, url, Some(id.to_string()), "{}".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A refused request is not retried and does not open the circuit
    assert_eq!(sim.gateway.stats(id).charges, 1);
}
