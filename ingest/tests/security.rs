//! Security of the ingest API from the outside (issue 13): API keys (missing, wrong, disabled),
//! the per-client rate limit, oversized bodies and headers, a client that trickles its request
//! (slowloris), a flood of connections, and secrets in the metrics.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use orderpipe_ingest::auth::sha256_hex;
use orderpipe_ingest::Config;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An enabled key per client and one disabled key.
const KEYS: &[(&str, &str, bool)] = &[
    ("shop-a", "sec-key-a", false),
    ("shop-b", "sec-key-b", false),
    ("shop-off", "sec-key-off", true),
];

/// Sum of the end offsets of the orders topic (2 partitions), asked again while the broker does
/// not know the just-created topic's partitions yet.
async fn events_on(topic: &str) -> i64 {
    let reader = topic_reader(topic, 2);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ends: Result<Vec<i64>, _> = (0..2)
            .map(|p| orderpipe_testkit::kafka::high_watermark(&reader, topic, p))
            .collect();
        match ends {
            Ok(ends) => return ends.iter().sum(),
            Err(err) if Instant::now() > deadline => panic!("end offsets of {topic}: {err}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Reads what the server sends until it closes the connection (or `within` passes: `None`).
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn missing_wrong_and_disabled_keys_are_refused_and_nothing_reaches_the_topic() {
    let ingest = TestIngest::with_keys(KEYS, test_config()).await;
    let mut conn = ingest.conn();
    let cases: [(&[(&str, &str)], u16); 6] = [
        (&[], 401),
        (&[("authorization", "Bearer not-a-key")], 401),
        (&[("x-api-key", "SEC-KEY-A")], 401),
        (&[("authorization", "Basic c2VjLWtleS1hOg==")], 401),
        (&[("x-api-key", "sec-key-off")], 403),
        (&[("authorization", "Bearer sec-key-off")], 403),
    ];
    for (headers, status) in cases {
        let reply = conn.post_order(headers, &order_body()).await;
        assert_eq!(reply.status, status, "{headers:?}");
        problem(&reply);
        // Cancelling needs the same credentials.
        let cancel = conn
            .send(
                hyper::Method::POST,
                &format!("/v1/orders/{}/cancel", uuid::Uuid::new_v4()),
                headers,
                http::full(""),
            )
            .await
            .unwrap();
        assert_eq!(cancel.status, status, "cancel {headers:?}");
    }
    assert_eq!(
        events_on(&ingest.topics.orders).await,
        0,
        "a refused request produced an event"
    );
    accepted_id(
        &conn
            .post_order(&[("x-api-key", "sec-key-a")], &order_body())
            .await,
    );
    ingest.stop().await.unwrap();
}

#[tokio::test]
async fn the_rate_limit_is_per_client_one_client_flooding_does_not_limit_another() {
    let ingest = TestIngest::with_keys(
        KEYS,
        Config {
            rate_limit_per_second: 2,
            rate_limit_burst: 4,
            ..test_config()
        },
    )
    .await;
    let mut a = ingest.conn();
    let mut limited = 0;
    for _ in 0..20 {
        let reply = a
            .post_order(&[("x-api-key", "sec-key-a")], &order_body())
            .await;
        if reply.status == 429 {
            limited += 1;
            assert!(
                reply.header("retry-after").is_some(),
                "429 without Retry-After"
            );
        }
    }
    assert!(
        limited >= 10,
        "client A sent 20 back to back under 2/s burst 4, only {limited} got 429"
    );
    // Client B, from the same address, is not affected by A's flood.
    let mut b = ingest.conn();
    accepted_id(
        &b.post_order(&[("x-api-key", "sec-key-b")], &order_body())
            .await,
    );
    ingest.stop().await.unwrap();
}

#[tokio::test]
async fn oversized_bodies_and_headers_are_refused_without_producing() {
    let ingest = TestIngest::start(Config {
        max_body_bytes: 4096,
        ..test_config()
    })
    .await;
    let mut conn = ingest.conn();
    // A body over the limit, announced by Content-Length: 413 problem+json.
    let mut order = order_json();
    order["customer_id"] = json!("x".repeat(8000));
    let reply = conn.post_order(&[], &order.to_string()).await;
    assert_eq!(reply.status, 413);
    problem(&reply);
    // The same body chunked (no Content-Length): 413 too.
    let chunks = order
        .to_string()
        .into_bytes()
        .chunks(1000)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let reply = ingest
        .conn()
        .send(
            hyper::Method::POST,
            "/v1/orders",
            &[("content-type", "application/json")],
            http::chunked(chunks),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 413);
    // One huge header, and a great many headers: refused (431) or cut, never served.
    for head in [
        format!("x-junk: {}\r\n", "a".repeat(1024 * 1024)),
        (0..500)
            .map(|i| format!("x-h{i}: v\r\n"))
            .collect::<String>(),
    ] {
        let mut stream = TcpStream::connect(ingest.addr).await.unwrap();
        let request = format!("POST /v1/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{head}content-length: 2\r\n\r\n{{}}");
        let _ = stream.write_all(request.as_bytes()).await;
        let answer = read_until_closed(&mut stream, Duration::from_secs(10))
            .await
            .expect("connection neither answered nor closed");
        let status = answer.split_whitespace().nth(1).unwrap_or("cut");
        assert!(
            status == "431" || status == "cut" || status == "400",
            "oversized head answered {status}: {answer:.200}"
        );
    }
    assert_eq!(events_on(&ingest.topics.orders).await, 0);
    ingest.stop().await.unwrap();
}

/// Trickles `bytes` one at a time, `every` apart, until the server closes the connection;
/// returns how long it held on (`None`: still open after `give_up`).
async fn trickle(
    addr: SocketAddr,
    bytes: &[u8],
    every: Duration,
    give_up: Duration,
) -> Option<(Duration, String)> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    for byte in bytes.iter().cycle() {
        if started.elapsed() > give_up {
            return None;
        }
        if stream.write_all(&[*byte]).await.is_err() {
            return Some((started.elapsed(), String::new()));
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(every, stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => return Some((started.elapsed(), String::new())),
            Ok(Ok(n)) => {
                let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                let _ = read_until_closed(&mut stream, Duration::from_secs(2)).await;
                return Some((started.elapsed(), answer));
            }
        }
    }
    unreachable!("cycle never ends")
}

#[tokio::test]
async fn a_client_trickling_its_headers_or_its_body_is_cut_by_the_request_timeout() {
    let ingest = TestIngest::start(Config {
        request_timeout: Duration::from_secs(3),
        ..test_config()
    })
    .await;
    // Headers that never end: one byte every 200 ms, each line a new header.
    let head = b"POST /v1/orders HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaa\r\n";
    let (held, _) = trickle(
        ingest.addr,
        head,
        Duration::from_millis(200),
        Duration::from_secs(30),
    )
    .await
    .expect("a client trickling its headers was never cut (slowloris)");
    assert!(
        held < Duration::from_secs(12),
        "headers trickled for {held:?} before the cut"
    );
    // A body that never ends: headers sent at once, then one byte every 200 ms.
    let mut stream = TcpStream::connect(ingest.addr).await.unwrap();
    stream
        .write_all(b"POST /v1/orders HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 60000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = None;
    while started.elapsed() < Duration::from_secs(30) {
        if stream.write_all(b" ").await.is_err() {
            answer = Some(String::new());
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Err(_) => {}
            Ok(Ok(0)) | Ok(Err(_)) => {
                answer = Some(String::new());
                break;
            }
            Ok(Ok(n)) => {
                answer = Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                break;
            }
        }
    }
    let answer = answer.expect("a client trickling its body was never cut");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "body trickled for {:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    ingest.stop().await.unwrap();
}

#[tokio::test]
async fn a_flood_of_idle_and_trickling_connections_does_not_stop_healthz() {
    let ingest = TestIngest::start(Config {
        request_timeout: Duration::from_secs(5),
        ..test_config()
    })
    .await;
    // 1500 connections that send nothing, and 200 that send half a request head and stop.
    let mut held = Vec::new();
    for i in 0..1700 {
        let mut stream = TcpStream::connect(ingest.addr)
            .await
            .expect("the server accepts connections");
        if i % 17 == 0 {
            stream
                .write_all(b"POST /v1/orders HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
        }
        held.push(stream);
    }
    // A health check on a fresh connection still answers, promptly, several times over.
    for _ in 0..5 {
        let started = Instant::now();
        let reply = tokio::time::timeout(Duration::from_secs(3), ingest.conn().get("/healthz"))
            .await
            .expect("/healthz did not answer within 3 s under a connection flood");
        assert_eq!(reply.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "/healthz took {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And orders are still taken.
    accepted_id(&ingest.conn().post_order(&[], &order_body()).await);
    drop(held);
    ingest.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_and_keys_never_appear_in_metrics() {
    let ingest = TestIngest::with_keys(KEYS, test_config()).await;
    let mut conn = ingest.conn();
    let mut order = order_json();
    order["payment"]["token"] = json!("tok_METRIC_SECRET_9");
    accepted_id(
        &conn
            .post_order(&[("authorization", "Bearer sec-key-a")], &order.to_string())
            .await,
    );
    let _ = conn
        .post_order(&[("x-api-key", "sec-key-WRONG-9")], &order.to_string())
        .await;
    let _ = conn
        .post_order(&[("x-api-key", "sec-key-off")], &order.to_string())
        .await;
    let mut bad = order.clone();
    bad["total_minor"] = json!("tok_METRIC_SECRET_9");
    let _ = conn
        .post_order(&[("x-api-key", "sec-key-a")], &bad.to_string())
        .await;
    let metrics = conn.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    assert!(
        text.contains("ingest"),
        "the scrape has ingest metrics: {text:.500}"
    );
    for secret in [
        "tok_METRIC_SECRET_9",
        "sec-key-a",
        "sec-key-WRONG-9",
        "sec-key-off",
        "Bearer",
        &sha256_hex("sec-key-a"),
    ] {
        assert!(!text.contains(secret), "{secret} in /metrics:\n{text}");
    }
    ingest.stop().await.unwrap();
}
