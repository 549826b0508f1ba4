//! The JSON contract of the envelopes: field names, round trips of every event type, upcasting
//! of old versions and decoding errors. Given/when/then.

use chrono::{TimeZone, Utc};
use orderpipe_schemas::*;
use serde_json::{json, Value};
use uuid::Uuid;

fn order_id() -> Uuid {
    Uuid::parse_str("0190f1a2-3b4c-7d5e-8f60-718293a4b5c6").unwrap()
}

fn placed() -> OrderPlaced {
    OrderPlaced {
        customer_id: "cust-42".into(),
        currency: "EUR".into(),
        lines: vec![
            OrderLine {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_minor: 1999,
            },
            OrderLine {
                sku: "SKU-2".into(),
                quantity: 1,
                unit_price_minor: 500,
            },
        ],
        total_minor: 4498,
        payment: PaymentRef {
            method: "card".into(),
            token: "tok_visa_4242".into(),
        },
    }
}

fn all_order_events() -> Vec<OrderEvent> {
    vec![
        OrderEvent::OrderPlaced(placed()),
        OrderEvent::StockLineReserved(StockLineReserved {
            sku: "SKU-2".into(),
            line_index: 1,
            quantity: 1,
        }),
        OrderEvent::StockLineRejected(StockLineRejected {
            sku: "SKU-1".into(),
            line_index: 0,
            quantity: 2,
            reason: StockRejectReason::OutOfStock,
        }),
        OrderEvent::StockReserved(StockReserved {}),
        OrderEvent::StockRejected(StockRejected {
            sku: "SKU-1".into(),
            reason: StockRejectReason::LimitExceeded,
        }),
        OrderEvent::PaymentRequested(PaymentRequested {
            amount_minor: 4498,
            currency: "EUR".into(),
            payment: PaymentRef {
                method: "card".into(),
                token: "tok_visa_4242".into(),
            },
        }),
        OrderEvent::PaymentSettled(PaymentSettled {
            amount_minor: 4498,
            currency: "EUR".into(),
            charge_id: "ch_1".into(),
        }),
        OrderEvent::PaymentDeclined(PaymentDeclined {
            reason: "insufficient_funds".into(),
        }),
        OrderEvent::OrderConfirmed(OrderConfirmed {}),
        OrderEvent::OrderRejected(OrderRejected {
            reason: RejectReason::PaymentTimeout,
        }),
        OrderEvent::CancellationRequested(CancellationRequested {
            client_id: "checkout-eu".into(),
        }),
        OrderEvent::OrderCancelled(OrderCancelled {}),
        OrderEvent::Refunded(Refunded {
            amount_minor: 4498,
            currency: "EUR".into(),
        }),
    ]
}

fn all_stock_events() -> Vec<StockEvent> {
    vec![
        StockEvent::StockAdjusted(StockAdjusted {
            adjustment: StockAdjustment::Set { quantity: 100 },
            per_customer_limit: Some(2),
        }),
        StockEvent::StockAdjusted(StockAdjusted {
            adjustment: StockAdjustment::Delta { delta: -3 },
            per_customer_limit: None,
        }),
        StockEvent::ReservationRequested(ReservationRequested {
            order_id: order_id(),
            customer_id: "cust-42".into(),
            line_index: 1,
            line_count: 2,
            quantity: 1,
        }),
        StockEvent::ReleaseRequested(ReleaseRequested {
            order_id: order_id(),
            customer_id: "cust-42".into(),
            line_index: 1,
            quantity: 1,
        }),
        StockEvent::SaleRequested(SaleRequested {
            order_id: order_id(),
            customer_id: "cust-42".into(),
            line_index: 0,
            quantity: 2,
        }),
        StockEvent::StockLevels(StockLevels {
            available: 97,
            reserved: 2,
            sold: 1,
            per_customer_limit: Some(2),
        }),
    ]
}

fn all_notification_events() -> Vec<NotificationEvent> {
    let request_id = Uuid::now_v7();
    vec![
        NotificationEvent::NotificationRequested(NotificationRequested {
            customer_id: "cust-42".into(),
            kind: NotificationKind::OrderConfirmed,
        }),
        NotificationEvent::NotificationSent(NotificationSent {
            request_id,
            attempts: 1,
        }),
        NotificationEvent::NotificationFailed(NotificationFailed {
            request_id,
            reason: "webhook answered 503".into(),
            attempts: 5,
        }),
    ]
}

/// Every event type of every topic appears in the samples above, and nothing else does.
#[test]
fn samples_cover_every_event_type() {
    let mut seen: Vec<(TopicKind, &str)> = Vec::new();
    seen.extend(
        all_order_events()
            .iter()
            .map(|e| (TopicKind::Orders, e.event_type())),
    );
    seen.extend(
        all_stock_events()
            .iter()
            .map(|e| (TopicKind::Stock, e.event_type())),
    );
    seen.extend(
        all_notification_events()
            .iter()
            .map(|e| (TopicKind::Notifications, e.event_type())),
    );
    for e in EVENT_TYPES {
        assert!(seen.contains(&(e.topic, e.name)), "no sample of {}", e.name);
    }
    for (topic, name) in seen {
        assert!(
            current_version(topic, name).is_some(),
            "{name} not in EVENT_TYPES"
        );
    }
}

fn round_trip<E: Envelope + PartialEq + std::fmt::Debug>(envelope: E) {
    // When encoded and decoded
    let bytes = envelope.encode();
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    let back = E::decode(&bytes).unwrap();
    // Then nothing is lost and the wire tag is the event_type
    assert_eq!(back, envelope);
    assert_eq!(doc["event_type"], envelope.event_type());
}

#[test]
fn every_event_type_round_trips() {
    let correlation = Uuid::now_v7();
    for event in all_order_events() {
        let tag = event.event_type();
        let env = OrderEnvelope::new(order_id(), event, Some(Uuid::now_v7()), correlation);
        assert_eq!(
            env.schema_version,
            current_version(TopicKind::Orders, tag).unwrap()
        );
        round_trip(env);
    }
    for event in all_stock_events() {
        round_trip(StockEnvelope::new("SKU-1", event, None, correlation));
    }
    for event in all_notification_events() {
        round_trip(NotificationEnvelope::new(
            order_id(),
            event,
            None,
            correlation,
        ));
    }
}

#[test]
fn order_placed_json_contract_field_names() {
    // Given an order_placed envelope at a known time
    let correlation = Uuid::parse_str("0190f1a2-0000-7000-8000-000000000001").unwrap();
    let mut env = OrderEnvelope::new(
        order_id(),
        OrderEvent::OrderPlaced(placed()),
        None,
        correlation,
    );
    env.occurred_at = Utc.with_ymd_and_hms(2026, 11, 22, 20, 0, 0).unwrap();
    // When encoded
    let doc: Value = serde_json::from_slice(&env.encode()).unwrap();
    // Then the document is exactly the published contract
    assert_eq!(
        doc,
        json!({
            "event_id": env.event_id.to_string(),
            "event_type": "order_placed",
            "schema_version": 2,
            "order_id": "0190f1a2-3b4c-7d5e-8f60-718293a4b5c6",
            "occurred_at": "2026-11-22T20:00:00Z",
            "causation_id": null,
            "correlation_id": "0190f1a2-0000-7000-8000-000000000001",
            "customer_id": "cust-42",
            "currency": "EUR",
            "lines": [
                {"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1999},
                {"sku": "SKU-2", "quantity": 1, "unit_price_minor": 500}
            ],
            "total_minor": 4498,
            "payment": {"method": "card", "token": "tok_visa_4242"}
        })
    );
    assert_eq!(env.event_id.get_version_num(), 7);
    assert_eq!(env.key(), "0190f1a2-3b4c-7d5e-8f60-718293a4b5c6");
}

#[test]
fn stock_envelope_is_keyed_by_sku() {
    let env = StockEnvelope::new("SKU-9", all_stock_events().remove(0), None, Uuid::now_v7());
    let doc: Value = serde_json::from_slice(&env.encode()).unwrap();
    assert_eq!(env.key(), "SKU-9");
    assert_eq!(doc["sku"], "SKU-9");
    assert!(doc.get("order_id").is_none());
    assert_eq!(doc["adjustment"], json!({"mode": "set", "quantity": 100}));
    assert_eq!(doc["per_customer_limit"], 2);
}

#[test]
fn a_literal_v1_order_placed_decodes_into_the_current_type() {
    // Given an order_placed written by v1 producers: `amount_minor` per unit, no `total_minor`
    let v1 = br#"{
        "event_id": "0190f1a2-3b4c-7d5e-8f60-000000000001",
        "event_type": "order_placed",
        "schema_version": 1,
        "order_id": "0190f1a2-3b4c-7d5e-8f60-718293a4b5c6",
        "occurred_at": "2026-01-31T09:30:00.250+01:00",
        "causation_id": null,
        "correlation_id": "0190f1a2-3b4c-7d5e-8f60-718293a4b5c6",
        "customer_id": "cust-7",
        "currency": "USD",
        "lines": [
            {"sku": "TSHIRT-M", "quantity": 3, "amount_minor": 1500},
            {"sku": "MUG", "quantity": 1, "amount_minor": 899}
        ],
        "payment": {"method": "wallet", "token": "tok_wallet_1"}
    }"#;
    // When decoded
    let env = OrderEnvelope::decode(v1).unwrap();
    // Then it is a current order_placed with unit prices and the computed total
    assert_eq!(env.schema_version, 2);
    assert_eq!(
        env.occurred_at,
        Utc.with_ymd_and_hms(2026, 1, 31, 8, 30, 0).unwrap() + chrono::Duration::milliseconds(250)
    );
    let OrderEvent::OrderPlaced(p) = env.event else {
        panic!("not order_placed: {:?}", env.event);
    };
    assert_eq!(
        p.lines,
        vec![
            OrderLine {
                sku: "TSHIRT-M".into(),
                quantity: 3,
                unit_price_minor: 1500
            },
            OrderLine {
                sku: "MUG".into(),
                quantity: 1,
                unit_price_minor: 899
            },
        ]
    );
    assert_eq!(p.total_minor, 5399);
}

fn order_doc() -> Value {
    let env = OrderEnvelope::new(
        order_id(),
        OrderEvent::OrderPlaced(placed()),
        None,
        Uuid::now_v7(),
    );
    serde_json::from_slice(&env.encode()).unwrap()
}

fn decode_value(doc: &Value) -> Result<OrderEnvelope, DecodeError> {
    OrderEnvelope::decode(&serde_json::to_vec(doc).unwrap())
}

#[test]
fn unknown_event_type_is_reported_by_name() {
    // Given a well-formed envelope with an event type this topic does not have
    let mut doc = order_doc();
    doc["event_type"] = json!("order_teleported");
    // When decoded, then it is UnknownEventType, to be dead-lettered as such
    let err = decode_value(&doc).unwrap_err();
    assert_eq!(
        err,
        DecodeError::UnknownEventType("order_teleported".into())
    );
    assert_eq!(err.reason(), "unknown_event_type");
}

#[test]
fn an_event_type_of_another_topic_is_unknown_here() {
    let env = StockEnvelope::new("SKU-1", all_stock_events().remove(0), None, Uuid::now_v7());
    let err = OrderEnvelope::decode(&env.encode()).unwrap_err();
    assert_eq!(err, DecodeError::UnknownEventType("stock_adjusted".into()));
}

#[test]
fn malformed_input_is_malformed() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not json", b"{not json".to_vec()),
        ("empty", Vec::new()),
        ("not an object", b"[1,2,3]".to_vec()),
        ("no event_type", {
            let mut d = order_doc();
            d.as_object_mut().unwrap().remove("event_type");
            serde_json::to_vec(&d).unwrap()
        }),
        ("no schema_version", {
            let mut d = order_doc();
            d.as_object_mut().unwrap().remove("schema_version");
            serde_json::to_vec(&d).unwrap()
        }),
        ("missing payload field", {
            let mut d = order_doc();
            d.as_object_mut().unwrap().remove("total_minor");
            serde_json::to_vec(&d).unwrap()
        }),
        ("wrong type", {
            let mut d = order_doc();
            d["lines"][0]["quantity"] = json!("two");
            serde_json::to_vec(&d).unwrap()
        }),
        ("bad uuid", {
            let mut d = order_doc();
            d["order_id"] = json!("not-a-uuid");
            serde_json::to_vec(&d).unwrap()
        }),
        ("bad timestamp", {
            let mut d = order_doc();
            d["occurred_at"] = json!("yesterday");
            serde_json::to_vec(&d).unwrap()
        }),
    ];
    for (name, bytes) in cases {
        // When decoded, then it is Malformed
        let err = OrderEnvelope::decode(&bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed(_)), "{name}: {err:?}");
        assert_eq!(err.reason(), "malformed", "{name}");
    }
}

#[test]
fn versions_outside_the_known_range_are_unsupported() {
    for version in [json!(0), json!(3), json!(u64::MAX)] {
        // Given an order_placed with a version this code does not know
        let mut doc = order_doc();
        doc["schema_version"] = version.clone();
        // When decoded, then it is UnsupportedVersion
        let err = decode_value(&doc).unwrap_err();
        assert_eq!(
            err,
            DecodeError::UnsupportedVersion {
                event_type: "order_placed".into(),
                version: version.as_u64().unwrap()
            }
        );
        assert_eq!(err.reason(), "unsupported_version");
    }
}

#[test]
fn a_v1_order_placed_that_cannot_be_upcast_is_reported() {
    // Given a v1 document whose line total overflows
    let mut doc = order_doc();
    doc["schema_version"] = json!(1);
    doc.as_object_mut().unwrap().remove("total_minor");
    doc["lines"] = json!([{"sku": "A", "quantity": 1000, "amount_minor": i64::MAX}]);
    // When decoded, then the upcaster's refusal is reported
    let err = decode_value(&doc).unwrap_err();
    assert!(
        matches!(
            err,
            DecodeError::UpcastFailed {
                from_version: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn generic_encode_and_decode_work_for_any_envelope() {
    let env = NotificationEnvelope::new(
        order_id(),
        all_notification_events().remove(0),
        None,
        Uuid::now_v7(),
    );
    let back: NotificationEnvelope = decode(&encode(&env)).unwrap();
    assert_eq!(back, env);
    assert_eq!(
        <NotificationEnvelope as Envelope>::TOPIC,
        TopicKind::Notifications
    );
}
