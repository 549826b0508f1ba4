//! What the fuzz targets (`schemas/fuzz/fuzz_targets/*.rs`, cargo-fuzz) and the property tests
//! over arbitrary bytes (`schemas/tests/fuzz_props.rs`, stable, in CI) check: one file, included
//! by both with `#[path]`, so both run exactly the same properties.

#![allow(dead_code)]

use orderpipe_schemas::{
    current_version, NewOrder, NotificationEnvelope, OrderEnvelope, StockEnvelope, TopicKind,
};

/// The order request parser and validator: any bytes are parsed without panicking; a parsed
/// request validates or not without panicking, errors point into the body; a valid request
/// becomes an `order_placed` whose total is the sum of its lines, and survives a JSON round trip
/// with the same fingerprint.
pub(crate) fn order_request(bytes: &[u8]) {
    let Ok(order) = serde_json::from_slice::<NewOrder>(bytes) else {
        return;
    };
    let again: NewOrder = serde_json::from_str(&serde_json::to_string(&order).unwrap())
        .expect("a parsed request serializes into one that parses");
    assert_eq!(again, order);
    assert_eq!(again.fingerprint(), order.fingerprint());
    match order.validate() {
        Ok(()) => {
            let placed = order.into_order_placed();
            let sum: i64 = placed
                .lines
                .iter()
                .map(|l| i64::from(l.quantity) * l.unit_price_minor)
                .sum();
            assert_eq!(
                placed.total_minor, sum,
                "a valid order's total is its lines' sum"
            );
            assert!(!placed.lines.is_empty());
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            assert!(
                errors.iter().all(|e| e.pointer.starts_with('/')),
                "{errors:?}"
            );
        }
    }
}

/// Envelope decoding with upcasting, on every topic: any bytes decode or fail without
/// panicking; a decoded envelope is at its type's current version (upcast), and re-encoding it
/// decodes to the same envelope (encode/decode is stable once current).
pub(crate) fn envelope_decode(bytes: &[u8]) {
    if let Ok(e) = OrderEnvelope::decode(bytes) {
        assert_eq!(
            Some(e.schema_version),
            current_version(TopicKind::Orders, e.event_type())
        );
        assert_eq!(OrderEnvelope::decode(&e.encode()).expect("re-decodes"), e);
    }
    if let Ok(e) = StockEnvelope::decode(bytes) {
        assert_eq!(
            Some(e.schema_version),
            current_version(TopicKind::Stock, e.event_type())
        );
        assert_eq!(StockEnvelope::decode(&e.encode()).expect("re-decodes"), e);
    }
    if let Ok(e) = NotificationEnvelope::decode(bytes) {
        assert_eq!(
            Some(e.schema_version),
            current_version(TopicKind::Notifications, e.event_type())
        );
        assert_eq!(
            NotificationEnvelope::decode(&e.encode()).expect("re-decodes"),
            e
        );
    }
}
