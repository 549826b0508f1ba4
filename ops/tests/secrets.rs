//! Secrets never reach the logs, the dead letters or the metrics, checked from the outside on a
//! real `orderpipe run` (every component) against the test broker and CQL server.
//!
//! Every secret of the run carries one marker, `SECRET<unique suffix>`: the payment token of
//! each order, the ingest API key, the notification webhook secret, the admin key, and the wrong
//! API and admin keys of refused requests. The sale has confirmed orders, orders rejected (out of
//! stock, and payment declined by the HTTP gateway simulator), a 422 order carrying a token,
//! refused requests, webhook deliveries signed with the secret and a poison event on each input
//! topic. Then the marker is looked for in the process's stdout and stderr (logging at `debug`),
//! in its `/metrics` exposition, and in the key, value and every header of every record of every
//! dead-letter topic. As a control, the same search finds the marker on the orders topic, where
//! `order_placed` carries the payment token by design.
//!
//! A dead letter keeps the original bytes of its event (so a redrive is byte-identical): an
//! event that itself carries a token, say an `order_placed` a stage cannot decode, keeps it in
//! its dead letter, as on the topic it came from; dead-letter topics need the same ACLs as the
//! topics they copy. The poison events here carry no secret, so every secret found in a dead
//! letter would have been added by the pipeline.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use common::*;
use orderpipe_gateway_sim as gateway_sim;
use orderpipe_processors::payments::simulated::{SimConfig, SimulatedGateway};
use orderpipe_testkit::http::Conn;
use orderpipe_testkit::kafka::{self, TestTopics};
use rdkafka::message::{Headers, Message, OwnedMessage};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Lines of `text` that contain `marker`, for the failure message.
fn lines_with<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.contains(marker))
        .take(5)
        .collect()
}

/// `text` without ANSI colour sequences (the log is coloured), so that a value split by one
/// would still be found.
fn strip_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether any part of a record (key, value, a header's name or value) contains `marker`.
fn record_leaks(message: &OwnedMessage, marker: &str) -> Option<String> {
    let has = |bytes: &[u8]| String::from_utf8_lossy(bytes).contains(marker);
    if message.key().is_some_and(has) {
        return Some("key".into());
    }
    if message.payload().is_some_and(has) {
        return Some("value".into());
    }
    message.headers().and_then(|headers| {
        headers
            .iter()
            .find(|h| has(h.key.as_bytes()) || h.value.is_some_and(has))
            .map(|h| format!("header {}", h.key))
    })
}

async fn read_topic(topic: String) -> Vec<OwnedMessage> {
    tokio::task::spawn_blocking(move || {
        orderpipe_ops::dlq::read_topic(&kafka::bootstrap(), &[], &topic)
    })
    .await
    .unwrap()
    .unwrap()
}

/// A webhook receiver that answers 204 and counts signed deliveries.
async fn start_webhook() -> (String, Arc<AtomicUsize>, CancellationToken) {
    let signed = Arc::new(AtomicUsize::new(0));
    let count = signed.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let count = count.clone();
            async move {
                if headers
                    .contains_key(orderpipe_processors::notifications::webhook::SIGNATURE_HEADER)
                {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(token.cancelled_owned())
            .await
    });
    (url, signed, stop)
}

async fn start_gateway() -> (String, CancellationToken) {
    let gateway = Arc::new(SimulatedGateway::new(SimConfig {
        decline_rate: 0.3,
        seed: 11,
        ..SimConfig::default()
    }));
    let stop = CancellationToken::new();
    let addr = gateway_sim::spawn(gateway, stop.clone()).await.unwrap();
    (format!("http://{addr}"), stop)
}

fn order(customer: &str, token: &str) -> String {
    serde_json::json!({
        "customer_id": customer,
        "currency": "EUR",
        "lines": [{"sku": "SEC-1", "quantity": 1, "unit_price_minor": 1000}],
        "total_minor": 1000,
        "payment": {"method": "card", "token": token},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_reach_logs_dead_letters_or_metrics() {
    let marker = format!("SECRET{}", orderpipe_testkit::unique_suffix());
    let api_key = format!("ak_{marker}");
    let admin_key = format!("adm_{marker}");
    let webhook_secret = format!("whsec_{marker}");

    let mut topics = TestTopics::new().unwrap();
    adopt_pipeline_topics(&mut topics);
    let keyspace = orderpipe_testkit::cql::TestKeyspace::new().await.unwrap();
    let (gateway_url, stop_gateway) = start_gateway().await;
    let (webhook_url, signed, stop_webhook) = start_webhook().await;
    let dir = std::env::temp_dir().join(format!("orderpipe-secrets-{}", topics.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let keys_file = dir.join("api-keys.json");
    std::fs::write(
        &keys_file,
        serde_json::json!([{"client_id": "shop", "key_sha256": orderpipe_runtime::auth::sha256_hex(&api_key)}])
            .to_string(),
    )
    .unwrap();
    let admin_key_file = dir.join("admin-key");
    std::fs::write(&admin_key_file, &admin_key).unwrap();

    let ingest: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let query: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = every_component_args(&topics, keyspace.name(), ingest, query);
    args.extend([
        // Everything the process logs, at debug (the most a deployment would configure).
        "--log".to_string(),
        "debug".to_string(),
        "--payments-gateway".to_string(),
        "http".to_string(),
        "--payments-gateway-url".to_string(),
        gateway_url,
        "--notifications-sink".to_string(),
        "webhook".to_string(),
        "--notifications-webhook-url".to_string(),
        webhook_url,
        "--notifications-webhook-secret".to_string(),
        webhook_secret.clone(),
        "--ingest-api-keys-file".to_string(),
        keys_file.to_str().unwrap().to_string(),
        "--admin-key-file".to_string(),
        admin_key_file.to_str().unwrap().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut pipeline = Orderpipe::run("secrets", &topics, &args);
    let admin_bearer = format!("Bearer {admin_key}");
    pipeline
        .wait_ready_with(
            Duration::from_secs(120),
            &[("authorization", &admin_bearer)],
        )
        .await;
    set_stock(&topics, "SEC-1", 4);

    // Refused requests carrying secret-looking keys, and a 422 order carrying a token.
    let mut conn = Conn::new(ingest);
    let wrong_api_key = format!("Bearer ak_{marker}_wrong");
    let refused = conn
        .post_order(&[("authorization", &wrong_api_key)], &order("c-0", "tok_x"))
        .await;
    assert_eq!(refused.status, 401, "{:?}", refused.body);
    let bearer = format!("Bearer {api_key}");
    let invalid = conn
        .post_order(
            &[("authorization", &bearer)],
            &order("", &format!("tok_{marker}_invalid")),
        )
        .await;
    assert_eq!(invalid.status, 422, "{:?}", invalid.body);
    let mut admin = Conn::new(pipeline.admin);
    let wrong_admin = format!("Bearer adm_{marker}_wrong");
    let reply = admin
        .send(
            hyper::Method::GET,
            "/metrics",
            &[("authorization", &wrong_admin)],
            orderpipe_testkit::http::full(""),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 401);

    // The sale: 8 orders for 4 units, a third of the charges declined.
    let mut acked: HashMap<Uuid, OrderSpec> = HashMap::new();
    for i in 0..8 {
        let token = format!("tok_{marker}_{i}");
        let key = format!("{marker}-order-{i}");
        let headers = [
            ("authorization", bearer.as_str()),
            ("idempotency-key", key.as_str()),
        ];
        let body = order(&format!("customer-{i}"), &token);
        let id = place_until_accepted(&mut conn, &headers, &body, &format!("order {i}")).await;
        acked.insert(id, vec![("SEC-1".to_string(), 1)]);
    }
    let outcome = collect_outcome(&topics, &acked, Duration::from_secs(120)).await;
    let confirmed = acked.keys().filter(|id| outcome.confirmed(id)).count();
    assert!(
        confirmed > 0 && confirmed < acked.len(),
        "confirmed {confirmed} of {}",
        acked.len()
    );

    // Poison events on both input topics: every stage and the projectors dead-letter them.
    let names = orderpipe_schemas::Topics::with_prefix(topics.prefix.clone());
    for topic in [&names.orders, &names.stock] {
        send_poison(topic).await;
    }
    let mut letters: Vec<(String, OwnedMessage)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    for stage in orderpipe_schemas::DLQ_STAGES {
        let topic = names.dlq(stage);
        let found = loop {
            let found = read_topic(topic.clone()).await;
            if !found.is_empty() || Instant::now() > deadline {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(
            !found.is_empty(),
            "{topic}: the poison event was not dead-lettered"
        );
        letters.extend(found.into_iter().map(|m| (topic.clone(), m)));
    }
    // Every terminal order notified through the webhook, signed with the secret.
    let deadline = Instant::now() + Duration::from_secs(60);
    while signed.load(Ordering::Relaxed) < acked.len() {
        assert!(
            Instant::now() < deadline,
            "only {} signed webhook deliveries",
            signed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let metrics = admin
        .send(
            hyper::Method::GET,
            "/metrics",
            &[("authorization", &admin_bearer)],
            orderpipe_testkit::http::full(""),
        )
        .await
        .unwrap();
    assert_eq!(metrics.status, 200);
    let exposition = String::from_utf8_lossy(&metrics.body).into_owned();
    pipeline.stop();
    let log = strip_colours(&std::fs::read_to_string(&pipeline.log).unwrap());
    let orders_topic = read_topic(names.orders.clone()).await;
    stop_gateway.cancel();
    stop_webhook.cancel();
    keyspace.drop_keyspace().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    // The control: the search finds the tokens where they are by design.
    assert!(
        orders_topic
            .iter()
            .any(|m| record_leaks(m, &marker).is_some()),
        "the marker should be found in order_placed on the orders topic"
    );
    // What was searched is what the claim is about.
    assert!(log.contains("DEBUG"), "the process did not log at debug");
    assert!(
        exposition.contains("orderpipe_saga_terminals_total"),
        "{exposition}"
    );

    assert!(
        !log.contains(&marker),
        "a secret in the process's output ({}):\n{}",
        pipeline.log.display(),
        lines_with(&log, &marker).join("\n")
    );
    assert!(
        !exposition.contains(&marker),
        "a secret in /metrics:\n{}",
        lines_with(&exposition, &marker).join("\n")
    );
    for (topic, message) in &letters {
        if let Some(part) = record_leaks(message, &marker) {
            panic!(
                "a secret in the {part} of dead letter {topic} {}/{}",
                message.partition(),
                message.offset()
            );
        }
    }
}
