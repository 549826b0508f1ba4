//! JSON Schema export (draft 2020-12), so consumers can read topics without reading Rust.
//!
//! Files, relative to `schemas/json/`: `<topic>.json` for each topic's whole message (every event
//! type, envelope included), `<topic>/<event_type>.json` for one event type (envelope fields and
//! payload fields side by side, `event_type` and `schema_version` fixed), and `new_order.json` for
//! the ingest request body. The committed files are checked by a test; regenerate them with
//! `UPDATE_SCHEMAS=1 cargo test -p orderpipe-schemas`.

use schemars::{schema_for, JsonSchema};
use serde_json::{json, Map, Value};

use crate::versions::EVENT_TYPES;
use crate::{NewOrder, NotificationEnvelope, OrderEnvelope, StockEnvelope, TopicKind};

/// Schema transform marking every property required: our `Option` fields are always written
/// (as `null` when absent), and schemars would otherwise list them as optional.
pub(crate) fn require_all_properties(schema: &mut schemars::Schema) {
    let names: Vec<Value> = match schema.get("properties").and_then(Value::as_object) {
        Some(props) => props.keys().map(|k| json!(k)).collect(),
        None => return,
    };
    let required = schema
        .ensure_object()
        .entry("required")
        .or_insert_with(|| json!([]));
    if let Some(list) = required.as_array_mut() {
        for name in names {
            if !list.contains(&name) {
                list.push(name);
            }
        }
    }
}

/// Every schema file as (path relative to `schemas/json/`, schema), in a stable order.
pub fn json_schemas() -> Vec<(String, Value)> {
    let mut files = Vec::new();
    for topic in TopicKind::ALL {
        let whole = topic_schema(topic);
        for event in EVENT_TYPES.iter().filter(|e| e.topic == topic) {
            let one = event_schema(&whole, event.name, event.version);
            files.push((format!("{topic}/{}.json", event.name), one));
        }
        files.push((format!("{topic}.json"), whole));
    }
    files.push(("new_order.json".into(), root::<NewOrder>()));
    files
}

fn root<T: JsonSchema>() -> Value {
    schema_for!(T).to_value()
}

fn topic_schema(topic: TopicKind) -> Value {
    let mut schema = match topic {
        TopicKind::Orders => root::<OrderEnvelope>(),
        TopicKind::Stock => root::<StockEnvelope>(),
        TopicKind::Notifications => root::<NotificationEnvelope>(),
    };
    schema["title"] = json!(format!("{topic} topic message"));
    schema
}

/// Narrows a topic schema to one event type: common envelope properties, the branch's
/// `event_type` constant and the payload properties, merged into one flat object schema.
fn event_schema(topic_schema: &Value, event_type: &str, version: u32) -> Value {
    let branch = topic_schema["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["properties"]["event_type"]["const"] == event_type)
        .unwrap_or_else(|| panic!("no oneOf branch for event_type {event_type}"));
    let defs = topic_schema["$defs"]
        .as_object()
        .cloned()
        .unwrap_or_default();

    let mut properties = topic_schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut required: Vec<Value> = topic_schema["required"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut merge = |part: &Value| {
        if let Some(props) = part["properties"].as_object() {
            properties.extend(props.clone());
        }
        for name in part["required"].as_array().into_iter().flatten() {
            if !required.contains(name) {
                required.push(name.clone());
            }
        }
    };
    merge(branch);
    if let Some(payload) = branch["$ref"].as_str() {
        let name = payload.trim_start_matches("#/$defs/");
        merge(
            defs.get(name)
                .unwrap_or_else(|| panic!("missing $defs/{name}")),
        );
    }
    properties.insert(
        "event_type".into(),
        json!({"description": "Event type tag.", "type": "string", "const": event_type}),
    );
    if let Some(v) = properties.get_mut("schema_version") {
        v["const"] = json!(version);
    }

    let mut schema = Map::new();
    schema.insert("$schema".into(), topic_schema["$schema"].clone());
    schema.insert("title".into(), json!(event_type));
    schema.insert("description".into(), branch["description"].clone());
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    schema.insert("required".into(), Value::Array(required));
    let mut schema = Value::Object(schema);
    let used = referenced_defs(&schema, &defs);
    if !used.is_empty() {
        schema["$defs"] = Value::Object(used);
    }
    schema
}

/// The `$defs` entries reachable from `schema`, transitively.
fn referenced_defs(schema: &Value, defs: &Map<String, Value>) -> Map<String, Value> {
    fn walk(v: &Value, defs: &Map<String, Value>, out: &mut Map<String, Value>) {
        match v {
            Value::Object(map) => {
                if let Some(name) = map
                    .get("$ref")
                    .and_then(Value::as_str)
                    .and_then(|r| r.strip_prefix("#/$defs/"))
                {
                    if let (false, Some(def)) = (out.contains_key(name), defs.get(name)) {
                        out.insert(name.to_owned(), def.clone());
                        walk(def, defs, out);
                    }
                }
                map.values().for_each(|v| walk(v, defs, out));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, defs, out)),
            _ => {}
        }
    }
    let mut out = Map::new();
    walk(schema, defs, &mut out);
    out.sort_keys();
    out
}
