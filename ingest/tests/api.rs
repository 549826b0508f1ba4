//! The ingest API against the real test broker: what reaches the orders topic, what is refused
//! and how, idempotency, API keys, rate limit, topics, metrics.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::http::{chunked, full};
use common::*;
use hyper::Method;
use orderpipe_ingest::idempotency::{order_id_for, IdempotencyKey};
use orderpipe_ingest::Config;
use orderpipe_schemas::{OrderEnvelope, OrderEvent};
use orderpipe_testkit::kafka::payload_str;
use rdkafka::Message;
use serde_json::{json, Value};

#[tokio::test]
async fn posted_order_is_read_back_from_the_orders_topic() {
    // Given ingest on the test broker
    let ingest = TestIngest::start(test_config()).await;
    let mut conn = ingest.conn();

    // When an order is posted
    let reply = conn.post_order(&[], &order_body()).await;

    // Then it is accepted with an order id
    let order_id = accepted_id(&reply);
    assert_eq!(reply.header("content-type"), Some("application/json"));

    // And a plain consumer reads exactly that order from the orders topic, keyed by its id
    let messages = read_topic(&ingest.topics.orders, 2, 1, Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "one event on the orders topic");
    let message = &messages[0];
    assert_eq!(key_str(message), order_id);
    let event: Value = serde_json::from_str(payload_str(message)).expect("JSON payload");

    // With the public field names, literally
    let fields: Vec<&str> = event
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for name in [
        "event_id",
        "event_type",
        "schema_version",
        "order_id",
        "occurred_at",
        "causation_id",
        "correlation_id",
        "customer_id",
        "currency",
        "lines",
        "total_minor",
        "payment",
    ] {
        assert!(fields.contains(&name), "field {name} missing from {event}");
    }
    assert_eq!(event["event_type"], "order_placed");
    assert_eq!(event["order_id"], order_id.as_str());
    assert_eq!(event["correlation_id"], order_id.as_str());
    assert_eq!(event["causation_id"], Value::Null);
    assert!(event["schema_version"].as_u64().unwrap() >= 1);
    let event_id = uuid::Uuid::parse_str(event["event_id"].as_str().unwrap()).unwrap();
    assert_eq!(event_id.get_version_num(), 7);
    let occurred_at = event["occurred_at"].as_str().unwrap();
    assert!(
        occurred_at.contains('T') && occurred_at.ends_with('Z'),
        "RFC 3339 UTC: {occurred_at}"
    );
    let sent = order_json();
    for field in ["customer_id", "currency", "lines", "total_minor", "payment"] {
        assert_eq!(event[field], sent[field], "{field}");
    }
    assert_eq!(
        event["lines"][0],
        json!({"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999})
    );

    // And the typed decoder of the schemas crate agrees
    let envelope = OrderEnvelope::decode(message.payload().unwrap()).expect("decodes");
    assert_eq!(envelope.order_id.to_string(), order_id);
    let OrderEvent::OrderPlaced(placed) = envelope.event else {
        panic!("not order_placed: {:?}", envelope.event)
    };
    assert_eq!(placed.total_minor, 4498);
    assert_eq!(placed.lines.len(), 2);

    // And the endpoints around it answer
    assert_eq!(conn.get("/healthz").await.status, 200);
    ingest.wait_ready(200, Duration::from_secs(5)).await;
    let metrics = conn.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"orderpipe_ingest_requests_total{status="202"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("orderpipe_ingest_ack_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("orderpipe_ingest_producer_queue_depth"),
        "{text}"
    );
    assert!(!text.contains("tok_test_4242"));

    ingest.stop().await.expect("clean shutdown");
}

/// One bad request: how it differs from a good one, and what it must get.
struct Bad {
    name: &'static str,
    method: Method,
    headers: Vec<(&'static str, String)>,
    body: BadBody,
    status: u16,
    /// For 422: the pointer one of the field errors must have.
    pointer: Option<&'static str>,
}

enum BadBody {
    Text(String),
    Chunked(Vec<Bytes>),
}

fn with(mutate: impl FnOnce(&mut Value)) -> BadBody {
    let mut order = order_json();
    mutate(&mut order);
    BadBody::Text(order.to_string())
}

fn json_headers() -> Vec<(&'static str, String)> {
    vec![("content-type", "application/json".to_string())]
}

fn bad(name: &'static str, body: BadBody, status: u16, pointer: Option<&'static str>) -> Bad {
    Bad {
        name,
        method: Method::POST,
        headers: json_headers(),
        body,
        status,
        pointer,
    }
}

fn bad_requests() -> Vec<Bad> {
    let text = |s: &str| BadBody::Text(s.to_string());
    let big = "x".repeat(70 * 1024);
    let many_lines: Vec<Value> = (0..101)
        .map(|i| json!({"sku": format!("S{i}"), "quantity": 1, "unit_price_minor": 1}))
        .collect();
    let mut cases = vec![
        // Not JSON at all: 400.
        bad("empty body", text(""), 400, None),
        bad(
            "truncated JSON",
            text(r#"{"customer_id": "c-1""#),
            400,
            None,
        ),
        bad("not JSON", text("customer=c-1"), 400, None),
        bad(
            "trailing garbage",
            BadBody::Text(format!("{} x", order_body())),
            400,
            None,
        ),
        // JSON of the wrong shape: 422 pointing at the field.
        bad("JSON array", text("[]"), 422, Some("")),
        bad(
            "missing total",
            with(|o| {
                o.as_object_mut().unwrap().remove("total_minor");
            }),
            422,
            Some("/total_minor"),
        ),
        bad(
            "missing payment token",
            with(|o| {
                o["payment"].as_object_mut().unwrap().remove("token");
            }),
            422,
            Some("/payment/token"),
        ),
        bad(
            "unknown field",
            with(|o| o["coupon"] = json!("FREE")),
            422,
            Some("/coupon"),
        ),
        bad(
            "unknown line field",
            with(|o| o["lines"][0]["colour"] = json!("red")),
            422,
            Some("/lines/0/colour"),
        ),
        bad(
            "quantity as text",
            with(|o| o["lines"][0]["quantity"] = json!("two")),
            422,
            Some("/lines/0/quantity"),
        ),
        bad(
            "negative quantity",
            with(|o| o["lines"][1]["quantity"] = json!(-1)),
            422,
            Some("/lines/1/quantity"),
        ),
        bad(
            "price beyond i64",
            with(|o| o["lines"][0]["unit_price_minor"] = json!(1e30)),
            422,
            Some("/lines/0/unit_price_minor"),
        ),
        // Rules: 422 pointing at the field.
        bad(
            "no lines",
            with(|o| {
                o["lines"] = json!([]);
                o["total_minor"] = json!(0);
            }),
            422,
            Some("/lines"),
        ),
        bad(
            "101 lines",
            with(|o| {
                o["lines"] = json!(many_lines);
                o["total_minor"] = json!(101);
            }),
            422,
            Some("/lines"),
        ),
        bad(
            "quantity 0",
            with(|o| {
                o["lines"][1]["quantity"] = json!(0);
                o["total_minor"] = json!(3998);
            }),
            422,
            Some("/lines/1/quantity"),
        ),
        bad(
            "quantity 1001",
            with(|o| {
                o["lines"][1]["quantity"] = json!(1001);
                o["total_minor"] = json!(3998 + 500_500);
            }),
            422,
            Some("/lines/1/quantity"),
        ),
        bad(
            "negative price",
            with(|o| {
                o["lines"][1]["unit_price_minor"] = json!(-500);
                o["total_minor"] = json!(3498);
            }),
            422,
            Some("/lines/1/unit_price_minor"),
        ),
        bad(
            "overflowing price",
            with(|o| o["lines"][0]["unit_price_minor"] = json!(i64::MAX)),
            422,
            Some("/lines/0/unit_price_minor"),
        ),
        bad(
            "lowercase currency",
            with(|o| o["currency"] = json!("eur")),
            422,
            Some("/currency"),
        ),
        bad(
            "unknown currency",
            with(|o| o["currency"] = json!("XYZ")),
            422,
            Some("/currency"),
        ),
        bad(
            "totals do not add up",
            with(|o| o["total_minor"] = json!(4499)),
            422,
            Some("/total_minor"),
        ),
        bad(
            "empty customer",
            with(|o| o["customer_id"] = json!("")),
            422,
            Some("/customer_id"),
        ),
        bad(
            "empty sku",
            with(|o| o["lines"][0]["sku"] = json!("")),
            422,
            Some("/lines/0/sku"),
        ),
        bad(
            "duplicate sku",
            with(|o| o["lines"][1]["sku"] = json!("SKU-1")),
            422,
            Some("/lines/1/sku"),
        ),
        bad(
            "unknown payment method",
            with(|o| o["payment"]["method"] = json!("cash")),
            422,
            Some("/payment/method"),
        ),
        // Size: 413, with or without Content-Length.
        bad("body over 64 KiB", BadBody::Text(big.clone()), 413, None),
        bad(
            "chunked body over 64 KiB",
            BadBody::Chunked(vec![Bytes::from(big.clone()), Bytes::from(big)]),
            413,
            None,
        ),
    ];
    // Content type: 415.
    cases.push(Bad {
        headers: vec![("content-type", "text/plain".into())],
        ..bad("text/plain", BadBody::Text(order_body()), 415, None)
    });
    cases.push(Bad {
        headers: vec![],
        ..bad("no content type", BadBody::Text(order_body()), 415, None)
    });
    cases.push(Bad {
        headers: vec![("content-type", "application/x-www-form-urlencoded".into())],
        ..bad("form", BadBody::Text(order_body()), 415, None)
    });
    // Idempotency-Key: 400.
    for (name, key) in [
        ("empty key", String::new()),
        ("key with a space", "a b".into()),
        ("key of 256 chars", "k".repeat(256)),
    ] {
        let mut headers = json_headers();
        headers.push(("idempotency-key", key));
        cases.push(Bad {
            headers,
            ..bad(name, BadBody::Text(order_body()), 400, None)
        });
    }
    // Wrong method: 405, still problem+json.
    cases.push(Bad {
        method: Method::GET,
        ..bad("GET", BadBody::Text(String::new()), 405, None)
    });
    cases
}

#[tokio::test]
async fn bad_requests_get_problem_json_and_produce_nothing() {
    // Given ingest on the test broker
    let ingest = TestIngest::start(test_config()).await;
    let mut conn = ingest.conn();
    let cases = bad_requests();
    assert!(cases.len() >= 20);

    // When each bad request is sent, then it gets its status and a problem document
    for case in cases {
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let body = match case.body {
            BadBody::Text(text) => full(text),
            BadBody::Chunked(chunks) => chunked(chunks),
        };
        // A fresh connection per case: the server may close one after refusing an unread body.
        let reply = ingest
            .conn()
            .send(case.method, "/v1/orders", &headers, body)
            .await
            .unwrap_or_else(|err| panic!("{}: {err}", case.name));
        assert_eq!(
            reply.status.as_u16(),
            case.status,
            "{}: {:?}",
            case.name,
            String::from_utf8_lossy(&reply.body)
        );
        let problem = problem(&reply);
        match case.pointer {
            Some(pointer) => assert!(
                problem.errors.iter().any(|e| e.pointer == pointer),
                "{}: expected an error at {pointer:?}, got {:?}",
                case.name,
                problem.errors
            ),
            None => assert!(problem.errors.is_empty(), "{}: {problem:?}", case.name),
        }
        assert!(
            !String::from_utf8_lossy(&reply.body).contains("tok_test_4242"),
            "{}",
            case.name
        );
    }

    // And none produced an event: after a good sentinel order, the topic holds exactly one
    let sentinel = accepted_id(&conn.post_order(&[], &order_body()).await);
    let messages = read_topic(&ingest.topics.orders, 2, 2, Duration::from_secs(3)).await;
    assert_eq!(messages.len(), 1, "only the sentinel reached the topic");
    assert_eq!(key_str(&messages[0]), sentinel);
    assert_eq!(end_offsets(&ingest.topics.orders, 2), 1);

    ingest.stop().await.expect("clean shutdown");
}

/// An enabled key per client and one disabled key.
const KEYS: &[(&str, &str, bool)] = &[
    ("shop-a", "key-a", false),
    ("shop-b", "key-b", false),
    ("shop-old", "key-old", true),
];

#[tokio::test]
async fn idempotency_key_gives_one_order_id_per_client_and_key() {
    // Given ingest with two clients
    let ingest = TestIngest::with_keys(KEYS, test_config()).await;
    let mut conn = ingest.conn();
    let a = [
        ("authorization", "Bearer key-a"),
        ("idempotency-key", "order-2024-0001"),
    ];
    let b = [
        ("x-api-key", "key-b"),
        ("idempotency-key", "order-2024-0001"),
    ];

    // When client A posts the same order twice with one key
    let first = accepted_id(&conn.post_order(&a, &order_body()).await);
    let retry = accepted_id(&conn.post_order(&a, &order_body()).await);

    // Then both answers carry the same order id, derived from (client, key)
    assert_eq!(first, retry);
    let key = IdempotencyKey::parse(&"order-2024-0001".parse().unwrap()).unwrap();
    assert_eq!(first, order_id_for("shop-a", &key).to_string());

    // And the same body with whitespace and field order changed is the same body
    let reordered = r#"{ "payment": {"token": "tok_test_4242", "method": "card"}, "total_minor": 4498,
        "lines": [{"unit_price_minor": 1999, "quantity": 2, "sku": "SKU-1"}, {"sku": "SKU-2", "quantity": 1, "unit_price_minor": 500}],
        "currency": "EUR", "customer_id": "c-1" }"#;
    assert_eq!(accepted_id(&conn.post_order(&a, reordered).await), first);

    // When client A reuses the key for another body, then it is refused
    let mut other = order_json();
    other["customer_id"] = json!("c-2");
    let reply = conn.post_order(&a, &other.to_string()).await;
    assert_eq!(reply.status, 422);
    assert_eq!(
        problem(&reply).type_,
        "urn:orderpipe:problem:idempotency-key-reused"
    );

    // When client B uses the same key, then it gets an order of its own
    let theirs = accepted_id(&conn.post_order(&b, &order_body()).await);
    assert_ne!(theirs, first);

    // And without a key every post is a new order
    let plain = [("authorization", "Bearer key-a")];
    let x = accepted_id(&conn.post_order(&plain, &order_body()).await);
    let y = accepted_id(&conn.post_order(&plain, &order_body()).await);
    assert_ne!(x, y);

    // The topic holds every accepted post: retries re-produce under the same key (downstream
    // deduplicates by order id), so there are 3 distinct order ids among 6 events.
    let messages = read_topic(&ingest.topics.orders, 2, 7, Duration::from_secs(3)).await;
    assert_eq!(messages.len(), 6);
    let mut ids: Vec<&str> = messages.iter().map(key_str).collect();
    assert_eq!(ids.iter().filter(|id| **id == first).count(), 3);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4);

    ingest.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn api_keys_are_required_when_configured() {
    // Given ingest with a keys file
    let ingest = TestIngest::with_keys(KEYS, test_config()).await;
    let mut conn = ingest.conn();

    // Without a key: 401 naming the scheme
    let reply = conn.post_order(&[], &order_body()).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    problem(&reply);
    // With an unknown key: 401
    let reply = conn
        .post_order(&[("authorization", "Bearer nope")], &order_body())
        .await;
    assert_eq!(reply.status, 401);
    problem(&reply);
    // With a disabled key: 403
    let reply = conn
        .post_order(&[("x-api-key", "key-old")], &order_body())
        .await;
    assert_eq!(reply.status, 403);
    problem(&reply);
    // With a valid key, either header: 202
    accepted_id(
        &conn
            .post_order(&[("authorization", "Bearer key-a")], &order_body())
            .await,
    );
    accepted_id(
        &conn
            .post_order(&[("x-api-key", "key-b")], &order_body())
            .await,
    );
    // Health endpoints need no key
    assert_eq!(conn.get("/healthz").await.status, 200);

    ingest.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn bursts_beyond_the_rate_limit_get_429_with_retry_after() {
    // Given a limit of 1 request per second with bursts of 3, per client
    let ingest = TestIngest::with_keys(
        KEYS,
        Config {
            rate_limit_per_second: 1,
            rate_limit_burst: 3,
            ..test_config()
        },
    )
    .await;
    let mut conn = ingest.conn();
    let a = [("x-api-key", "key-a")];

    // When client A sends 10 orders back to back
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..10 {
        let reply = conn.post_order(&a, &order_body()).await;
        statuses.push(reply.status.as_u16());
        if reply.status == 429 {
            limited = Some(reply);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Then the burst passes and the rest get 429 with Retry-After, except the one token a second
    // that refills while the requests run (a loaded machine may take over a second for them)
    assert_eq!(&statuses[..3], [202, 202, 202], "{statuses:?}");
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    assert!(
        accepted as f64 <= 3.0 + elapsed.ceil(),
        "{accepted} accepted in {elapsed:.2} s: {statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 202 || *s == 429),
        "{statuses:?}"
    );
    let limited = limited.unwrap();
    let retry_after: u64 = limited
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(
        problem(&limited).type_,
        "urn:orderpipe:problem:rate-limited"
    );

    // And client B is not affected
    accepted_id(
        &conn
            .post_order(&[("x-api-key", "key-b")], &order_body())
            .await,
    );

    // And after the advised wait client A may send again
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    accepted_id(&conn.post_order(&a, &order_body()).await);

    ingest.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn topics_are_created_once_with_the_configured_partitions() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::Consumer;

    // Given ingest started with 3 partitions
    let config = Config {
        topics: orderpipe_runtime::kafka::TopicSettings::with_partitions(3),
        ..test_config()
    };
    let ingest = TestIngest::start(config.clone()).await;

    // Then every planned topic exists with 3 partitions
    let reader = topic_reader(&ingest.topics.orders, 1);
    let plan = ingest.topics.plan(3, 1);
    assert!(plan.len() >= 3 + 4 + 4, "{plan:?}");
    for spec in &plan {
        let metadata = reader
            .fetch_metadata(Some(&spec.name), Duration::from_secs(5))
            .unwrap();
        let topic = &metadata.topics()[0];
        assert_eq!(topic.error(), None, "{}", spec.name);
        assert_eq!(topic.partitions().len(), 3, "{}", spec.name);
    }

    // And changelogs are compacted
    let admin: AdminClient<DefaultClientContext> =
        orderpipe_testkit::kafka::client_config().create().unwrap();
    let changelog = ingest.topics.changelog("stock");
    let configs = admin
        .describe_configs(
            [&ResourceSpecifier::Topic(&changelog)],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    let resource = configs.into_iter().next().unwrap().expect("described");
    assert_eq!(
        resource
            .get("cleanup.policy")
            .and_then(|e| e.value.as_deref()),
        Some("compact")
    );
    assert_eq!(
        resource.get("segment.ms").and_then(|e| e.value.as_deref()),
        Some("3600000")
    );

    // And a second start on the same topics succeeds (existing topics are fine)
    let again = TestIngest::start_on(
        config,
        &orderpipe_testkit::kafka::bootstrap(),
        ingest.topics.clone(),
    )
    .await;
    accepted_id(&again.conn().post_order(&[], &order_body()).await);
    again.stop().await.expect("clean shutdown");
    ingest.stop().await.expect("clean shutdown");
}

/// `POST /v1/orders/{id}/cancel` on `conn`, with `headers`.
async fn post_cancel(conn: &mut Conn, id: &str, headers: &[(&str, &str)]) -> common::Reply {
    conn.send(
        Method::POST,
        &format!("/v1/orders/{id}/cancel"),
        headers,
        full(Bytes::new()),
    )
    .await
    .expect("request sent")
}

#[tokio::test]
async fn cancel_is_acknowledged_with_202_once_cancellation_requested_is_in_the_orders_topic() {
    // Given ingest with API keys, and an accepted order
    let ingest = TestIngest::with_keys(KEYS, test_config()).await;
    let mut conn = ingest.conn();
    let a = [("authorization", "Bearer key-a")];
    let order_id = accepted_id(&conn.post_order(&a, &order_body()).await);

    // When its cancellation is requested, twice (a client retry)
    let mut answers = Vec::new();
    for _ in 0..2 {
        let reply = post_cancel(&mut conn, &order_id, &a).await;
        // Then each gets 202 with the order id and `cancellation_requested`: the same answer
        assert_eq!(reply.status, 202, "{reply:?}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        answers.push(reply.json());
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(
        answers[0],
        json!({"order_id": order_id, "status": "cancellation_requested"})
    );

    // And the orders topic holds the order and both requests, keyed by the order id (one
    // partition: after the order_placed), each naming the client that asked
    let messages = read_topic(&ingest.topics.orders, 2, 4, Duration::from_secs(3)).await;
    assert_eq!(messages.len(), 3);
    let events: Vec<OrderEnvelope> = messages
        .iter()
        .map(|m| {
            assert_eq!(key_str(m), order_id);
            OrderEnvelope::decode(m.payload().unwrap()).unwrap()
        })
        .collect();
    assert!(matches!(events[0].event, OrderEvent::OrderPlaced(_)));
    assert_eq!(messages[0].partition(), messages[2].partition());
    for request in &events[1..] {
        let OrderEvent::CancellationRequested(c) = &request.event else {
            panic!("not cancellation_requested: {request:?}")
        };
        assert_eq!(c.client_id, "shop-a");
        assert_eq!(request.order_id.to_string(), order_id);
        assert_eq!(request.correlation_id.to_string(), order_id);
        assert_eq!(request.causation_id, None);
    }
    // Two requests, two events (each its own id): the saga ignores the second one
    assert_ne!(events[1].event_id, events[2].event_id);

    // And the answers were counted like orders
    let metrics = conn.get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"orderpipe_ingest_requests_total{status="202"} 3"#),
        "{text}"
    );

    ingest.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn cancel_refuses_bad_ids_bad_paths_and_callers_without_a_key_as_problem_json() {
    // Given ingest with API keys
    let ingest = TestIngest::with_keys(KEYS, test_config()).await;
    let mut conn = ingest.conn();
    let a = [("authorization", "Bearer key-a")];
    let id = uuid::Uuid::now_v7().to_string();

    // An id that is not a UUID: 400 invalid-order-id
    let reply = post_cancel(&mut conn, "not-an-order", &a).await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        problem(&reply).type_,
        "urn:orderpipe:problem:invalid-order-id"
    );
    // A path that names no resource: 404
    let reply = conn
        .send(
            Method::POST,
            &format!("/v1/orders/{id}/refund"),
            &a,
            full(Bytes::new()),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 404);
    assert_eq!(problem(&reply).type_, "urn:orderpipe:problem:not-found");
    // Another method: 405
    let reply = conn
        .send(
            Method::GET,
            &format!("/v1/orders/{id}/cancel"),
            &a,
            full(Bytes::new()),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 405);
    problem(&reply);
    // No key: 401; a disabled key: 403 (checked before the id)
    let reply = post_cancel(&mut conn, &id, &[]).await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    problem(&reply);
    let reply = post_cancel(&mut conn, "not-an-order", &[("x-api-key", "key-old")]).await;
    assert_eq!(reply.status, 403);
    problem(&reply);

    // Nothing reached the orders topic
    assert_eq!(end_offsets(&ingest.topics.orders, 2), 0);
    ingest.stop().await.expect("clean shutdown");
}

#[tokio::test]
async fn cancel_shares_the_rate_limit_of_orders() {
    // Given a limit of bursts of 2 per client
    let ingest = TestIngest::with_keys(
        KEYS,
        Config {
            rate_limit_per_second: 1,
            rate_limit_burst: 2,
            ..test_config()
        },
    )
    .await;
    let mut conn = ingest.conn();
    let a = [("x-api-key", "key-a")];
    let order_id = accepted_id(&conn.post_order(&a, &order_body()).await);
    assert_eq!(post_cancel(&mut conn, &order_id, &a).await.status, 202);
    // When the client sends a third request within the second
    let reply = post_cancel(&mut conn, &order_id, &a).await;
    // Then it gets 429 with Retry-After, as problem+json
    assert_eq!(reply.status, 429);
    assert!(reply.header("retry-after").is_some());
    assert_eq!(problem(&reply).type_, "urn:orderpipe:problem:rate-limited");
    ingest.stop().await.expect("clean shutdown");
}
