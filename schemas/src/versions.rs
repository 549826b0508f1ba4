//! Schema versions and upcasters: the one place that knows how events changed over time.
//!
//! Changing a payload incompatibly means: bump its version in [`EVENT_TYPES`], add a pure
//! upcaster from the previous version to `UPCASTERS` (below), and a test decoding a literal old document.

use serde_json::{Map, Value};

use crate::{DecodeError, TopicKind};

/// An event type of one topic and its current schema version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    /// Topic the event type belongs to.
    pub topic: TopicKind,
    /// The `event_type` tag.
    pub name: &'static str,
    /// Current `schema_version`; encoders always write it, decoders upcast to it.
    pub version: u32,
}

const fn et(topic: TopicKind, name: &'static str, version: u32) -> EventType {
    EventType {
        topic,
        name,
        version,
    }
}

/// Every event type with its current schema version, grouped by topic in enum order.
pub const EVENT_TYPES: &[EventType] = &[
    // v2: lines carry `unit_price_minor` (was `amount_minor`) and the order carries `total_minor`.
    et(TopicKind::Orders, "order_placed", 2),
    et(TopicKind::Orders, "stock_line_reserved", 1),
    et(TopicKind::Orders, "stock_line_rejected", 1),
    et(TopicKind::Orders, "stock_reserved", 1),
    et(TopicKind::Orders, "stock_rejected", 1),
    et(TopicKind::Orders, "payment_requested", 1),
    et(TopicKind::Orders, "payment_settled", 1),
    et(TopicKind::Orders, "payment_declined", 1),
    et(TopicKind::Orders, "order_confirmed", 1),
    et(TopicKind::Orders, "order_rejected", 1),
    et(TopicKind::Orders, "cancellation_requested", 1),
    et(TopicKind::Orders, "order_cancelled", 1),
    et(TopicKind::Orders, "refunded", 1),
    et(TopicKind::Stock, "stock_adjusted", 1),
    et(TopicKind::Stock, "reservation_requested", 1),
    et(TopicKind::Stock, "release_requested", 1),
    et(TopicKind::Stock, "sale_requested", 1),
    et(TopicKind::Stock, "stock_levels", 1),
    et(TopicKind::Notifications, "notification_requested", 1),
    et(TopicKind::Notifications, "notification_sent", 1),
    et(TopicKind::Notifications, "notification_failed", 1),
];

/// Current schema version of `event_type` on `topic`, or `None` if the topic has no such type.
pub fn current_version(topic: TopicKind, event_type: &str) -> Option<u32> {
    EVENT_TYPES
        .iter()
        .find(|e| e.topic == topic && e.name == event_type)
        .map(|e| e.version)
}

/// Rewrites a whole envelope document of `event_type` from `from_version` to `from_version + 1`.
type UpcastFn = fn(&mut Map<String, Value>) -> Result<(), String>;

struct Upcaster {
    topic: TopicKind,
    event_type: &'static str,
    from_version: u32,
    apply: UpcastFn,
}

const UPCASTERS: &[Upcaster] = &[Upcaster {
    topic: TopicKind::Orders,
    event_type: "order_placed",
    from_version: 1,
    apply: order_placed_v1_to_v2,
}];

/// Brings `doc` (a whole envelope) from `version` to `current`, one step at a time, and stamps
/// the new `schema_version`.
pub(crate) fn upcast(
    topic: TopicKind,
    event_type: &str,
    version: u32,
    current: u32,
    doc: &mut Map<String, Value>,
) -> Result<(), DecodeError> {
    for from_version in version..current {
        let step = UPCASTERS
            .iter()
            .find(|u| {
                u.topic == topic && u.event_type == event_type && u.from_version == from_version
            })
            .ok_or_else(|| DecodeError::UnsupportedVersion {
                event_type: event_type.to_owned(),
                version: u64::from(version),
            })?;
        (step.apply)(doc).map_err(|message| DecodeError::UpcastFailed {
            event_type: event_type.to_owned(),
            from_version,
            message,
        })?;
    }
    doc.insert("schema_version".into(), Value::from(current));
    Ok(())
}

/// `order_placed` v1 -> v2: v1 lines had `amount_minor`, the price of one unit under an ambiguous
/// name, and no order total. v2 renames it `unit_price_minor` and adds `total_minor`, the sum of
/// `quantity * unit_price_minor` (checked: an overflowing v1 order cannot be upcast).
fn order_placed_v1_to_v2(doc: &mut Map<String, Value>) -> Result<(), String> {
    let lines = doc
        .get_mut("lines")
        .and_then(Value::as_array_mut)
        .ok_or("lines: missing or not an array")?;
    let mut total: i64 = 0;
    for (i, line) in lines.iter_mut().enumerate() {
        let line = line
            .as_object_mut()
            .ok_or_else(|| format!("lines[{i}]: not an object"))?;
        let price = line
            .remove("amount_minor")
            .ok_or_else(|| format!("lines[{i}].amount_minor: missing"))?;
        let unit = price
            .as_i64()
            .ok_or_else(|| format!("lines[{i}].amount_minor: not an integer"))?;
        let quantity = line
            .get("quantity")
            .and_then(Value::as_i64)
            .ok_or_else(|| format!("lines[{i}].quantity: missing or not an integer"))?;
        total = quantity
            .checked_mul(unit)
            .and_then(|amount| total.checked_add(amount))
            .ok_or("total overflows i64")?;
        line.insert("unit_price_minor".into(), price);
    }
    doc.insert("total_minor".into(), Value::from(total));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_type_names_are_unique_per_topic() {
        for (i, a) in EVENT_TYPES.iter().enumerate() {
            for b in &EVENT_TYPES[i + 1..] {
                assert!(a.topic != b.topic || a.name != b.name, "{} twice", a.name);
            }
        }
    }

    #[test]
    fn every_old_version_has_an_upcaster() {
        for e in EVENT_TYPES {
            for from in 1..e.version {
                assert!(
                    UPCASTERS.iter().any(|u| u.topic == e.topic
                        && u.event_type == e.name
                        && u.from_version == from),
                    "{} has no upcaster from v{from}",
                    e.name
                );
            }
        }
    }

    #[test]
    fn order_placed_v1_upcast_renames_price_and_adds_total() {
        // Given a v1 order_placed document
        let mut doc = json!({
            "event_type": "order_placed", "schema_version": 1,
            "lines": [{"sku": "A", "quantity": 2, "amount_minor": 150},
                      {"sku": "B", "quantity": 1, "amount_minor": 99}]
        });
        // When upcast to v2
        let doc_map = doc.as_object_mut().unwrap();
        upcast(TopicKind::Orders, "order_placed", 1, 2, doc_map).unwrap();
        // Then prices are renamed, the total computed, the version stamped
        assert_eq!(
            doc,
            json!({
                "event_type": "order_placed", "schema_version": 2,
                "lines": [{"sku": "A", "quantity": 2, "unit_price_minor": 150},
                          {"sku": "B", "quantity": 1, "unit_price_minor": 99}],
                "total_minor": 399
            })
        );
    }

    #[test]
    fn order_placed_v1_upcast_refuses_overflow_and_missing_price() {
        let cases = [
            json!({"lines": [{"sku": "A", "quantity": 3, "amount_minor": i64::MAX}]}),
            json!({"lines": [{"sku": "A", "quantity": 3}]}),
            json!({"lines": "nope"}),
        ];
        for mut doc in cases {
            let err = upcast(
                TopicKind::Orders,
                "order_placed",
                1,
                2,
                doc.as_object_mut().unwrap(),
            )
            .unwrap_err();
            assert_eq!(err.reason(), "upcast_failed", "{err}");
        }
    }
}
