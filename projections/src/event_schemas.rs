//! The JSON Schema of every event type, exactly as committed in
//! `schemas/json/<topic>/<event_type>.json` (generated from the Rust types; the schemas crate's
//! test fails when they drift), embedded in the binary so the query API serves them at
//! `GET /v1/schemas` and `GET /v1/schemas/{event_type}` without reading files at run time.

use orderpipe_schemas::EVENT_TYPES;
use serde::Serialize;
use utoipa::ToSchema;

/// `(topic, event_type, schema text)` of each file under `schemas/json/<topic>/`.
macro_rules! embed {
    ($($topic:literal / $name:literal),* $(,)?) => {
        &[$(($topic, $name, include_str!(concat!("../../schemas/json/", $topic, "/", $name, ".json")))),*]
    };
}

// A test checks that this list names exactly the event types of `EVENT_TYPES`.
const FILES: &[(&str, &str, &str)] = embed![
    "orders" / "cancellation_requested",
    "orders" / "order_cancelled",
    "orders" / "order_confirmed",
    "orders" / "order_placed",
    "orders" / "order_rejected",
    "orders" / "payment_declined",
    "orders" / "payment_requested",
    "orders" / "payment_settled",
    "orders" / "refunded",
    "orders" / "stock_line_rejected",
    "orders" / "stock_line_reserved",
    "orders" / "stock_rejected",
    "orders" / "stock_reserved",
    "stock" / "release_requested",
    "stock" / "reservation_requested",
    "stock" / "sale_requested",
    "stock" / "stock_adjusted",
    "stock" / "stock_levels",
    "notifications" / "notification_failed",
    "notifications" / "notification_requested",
    "notifications" / "notification_sent",
];

/// One event type in `GET /v1/schemas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub(crate) struct EventSchemaRef {
    /// The `event_type` tag of the envelope.
    #[schema(example = "order_placed")]
    pub(crate) event_type: &'static str,
    /// Default name of the topic carrying it (`orders`, `stock` or `notifications`; deployments
    /// may prefix topic names).
    #[schema(example = "orders")]
    pub(crate) topic: &'static str,
    /// Current `schema_version`; consumers of older versions upcast (see the schema's description).
    pub(crate) schema_version: u32,
    /// Where its JSON Schema is served.
    #[schema(example = "/v1/schemas/order_placed")]
    pub(crate) href: String,
}

/// Every published event type, in topic and name order.
pub(crate) fn list() -> Vec<EventSchemaRef> {
    FILES
        .iter()
        .map(|(topic, name, _)| EventSchemaRef {
            event_type: name,
            topic,
            schema_version: EVENT_TYPES
                .iter()
                .find(|e| e.name == *name)
                .map_or(0, |e| e.version),
            href: format!("/v1/schemas/{name}"),
        })
        .collect()
}

/// The JSON Schema of `event_type`, as committed.
pub(crate) fn get(event_type: &str) -> Option<&'static str> {
    FILES
        .iter()
        .find(|(_, name, _)| *name == event_type)
        .map(|(_, _, text)| *text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn every_event_type_is_embedded_once_with_its_version() {
        let embedded: BTreeSet<(String, &str)> =
            FILES.iter().map(|(t, n, _)| (t.to_string(), *n)).collect();
        let known: BTreeSet<(String, &str)> = EVENT_TYPES
            .iter()
            .map(|e| (e.topic.to_string(), e.name))
            .collect();
        assert_eq!(embedded, known);
        assert_eq!(embedded.len(), FILES.len(), "an event type embedded twice");
        for entry in list() {
            assert!(entry.schema_version >= 1, "{entry:?}");
            let schema: serde_json::Value =
                serde_json::from_str(get(entry.event_type).unwrap()).unwrap();
            assert_eq!(schema["title"], entry.event_type);
            assert_eq!(
                schema["properties"]["event_type"]["const"],
                entry.event_type
            );
            assert_eq!(
                schema["properties"]["schema_version"]["const"],
                entry.schema_version
            );
        }
        assert_eq!(get("no_such_event"), None);
    }
}
