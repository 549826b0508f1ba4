//! The envelope around every event, its encoding and its decoding (bytes -> JSON value -> upcast
//! -> typed). One concrete envelope per topic, so the key field has its wire name (`order_id` or
//! `sku`) and a plain field access in Rust.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::versions::{current_version, upcast};
use crate::{DecodeError, NotificationEvent, OrderEvent, StockEvent, TopicKind};

/// What every envelope offers, for code generic over topics (dead-lettering, replay tools).
pub trait Envelope: Serialize + DeserializeOwned + JsonSchema + Sized {
    /// Topic this envelope travels on.
    const TOPIC: TopicKind;

    /// Kafka message key: `order_id` (hyphenated) or `sku`.
    fn key(&self) -> String;

    /// Unique id of the event (the consumers' dedup key).
    fn event_id(&self) -> Uuid;

    /// The `event_type` tag of the event.
    fn event_type(&self) -> &'static str;

    /// JSON bytes of the envelope (the Kafka message value).
    fn encode(&self) -> Vec<u8> {
        // Cannot fail: every map key is a string and no payload holds a float.
        serde_json::to_vec(self).expect("envelopes always serialize")
    }

    /// Decodes JSON bytes, upcasting an older `schema_version` to the current one.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        let Value::Object(mut doc) = value else {
            return Err(DecodeError::Malformed("not a JSON object".into()));
        };
        let event_type = doc
            .get("event_type")
            .and_then(Value::as_str)
            .ok_or_else(|| DecodeError::Malformed("event_type: missing or not a string".into()))?
            .to_owned();
        let current = current_version(Self::TOPIC, &event_type)
            .ok_or_else(|| DecodeError::UnknownEventType(event_type.clone()))?;
        let version = doc
            .get("schema_version")
            .and_then(Value::as_u64)
            .ok_or_else(|| {
                DecodeError::Malformed("schema_version: missing or not an unsigned integer".into())
            })?;
        let version = match u32::try_from(version) {
            Ok(v) if (1..=current).contains(&v) => v,
            _ => {
                return Err(DecodeError::UnsupportedVersion {
                    event_type,
                    version,
                })
            }
        };
        upcast(Self::TOPIC, &event_type, version, current, &mut doc)?;
        serde_json::from_value(Value::Object(doc))
            .map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

/// Encodes any envelope to JSON bytes (same as [`Envelope::encode`]).
pub fn encode<E: Envelope>(envelope: &E) -> Vec<u8> {
    envelope.encode()
}

/// Decodes JSON bytes into envelope type `E`, upcasting old versions (same as [`Envelope::decode`]).
pub fn decode<E: Envelope>(bytes: &[u8]) -> Result<E, DecodeError> {
    E::decode(bytes)
}

macro_rules! envelope {
    (
        $(#[$doc:meta])*
        $name:ident {
            event: $event:ident,
            topic: $topic:expr,
            key: $key:ident: $key_ty:ty,
            key_doc: $key_doc:literal,
            key_string: |$k:ident| $key_string:expr $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        #[schemars(transform = crate::json_schema::require_all_properties)]
        pub struct $name {
            /// Unique id of this event (UUID v7, so ids sort by time); consumers deduplicate by it.
            pub event_id: Uuid,
            /// Version of this event type's schema; after decoding always the current one.
            pub schema_version: u32,
            #[doc = $key_doc]
            pub $key: $key_ty,
            /// When the event happened (RFC 3339, UTC).
            pub occurred_at: DateTime<Utc>,
            /// `event_id` of the event that caused this one; `null` when a request caused it.
            pub causation_id: Option<Uuid>,
            /// Id shared by every event of one flow (e.g. everything that follows one order).
            pub correlation_id: Uuid,
            /// The event: its `event_type` tag and payload fields, flattened beside the fields above.
            #[serde(flatten)]
            pub event: $event,
        }

        impl $name {
            /// Wraps `event` with a new v7 `event_id`, the current time and its current schema version.
            pub fn new(
                $key: impl Into<$key_ty>,
                event: $event,
                causation_id: Option<Uuid>,
                correlation_id: Uuid,
            ) -> Self {
                Self {
                    event_id: Uuid::now_v7(),
                    schema_version: event.schema_version(),
                    $key: $key.into(),
                    occurred_at: Utc::now(),
                    causation_id,
                    correlation_id,
                    event,
                }
            }

            /// Kafka message key of this event.
            pub fn key(&self) -> String {
                let $k = self;
                $key_string
            }

            /// The `event_type` tag of the event.
            pub fn event_type(&self) -> &'static str {
                self.event.event_type()
            }

            /// JSON bytes of the envelope (the Kafka message value).
            pub fn encode(&self) -> Vec<u8> {
                Envelope::encode(self)
            }

            /// Decodes JSON bytes, upcasting an older `schema_version` to the current one.
            pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
                <Self as Envelope>::decode(bytes)
            }
        }

        impl Envelope for $name {
            const TOPIC: TopicKind = $topic;

            fn key(&self) -> String {
                $name::key(self)
            }

            fn event_id(&self) -> Uuid {
                self.event_id
            }

            fn event_type(&self) -> &'static str {
                self.event.event_type()
            }
        }

        impl $event {
            /// Current schema version of this event's type (see [`crate::versions::EVENT_TYPES`]).
            pub fn schema_version(&self) -> u32 {
                current_version($topic, self.event_type())
                    .expect("every event type is listed in versions::EVENT_TYPES (tested)")
            }
        }
    };
}

envelope! {
    /// Envelope of the `orders` topic, keyed by `order_id`.
    OrderEnvelope {
        event: OrderEvent,
        topic: TopicKind::Orders,
        key: order_id: Uuid,
        key_doc: "Order this event belongs to (the message key).",
        key_string: |e| e.order_id.to_string(),
    }
}

envelope! {
    /// Envelope of the `stock` topic, keyed by `sku`.
    StockEnvelope {
        event: StockEvent,
        topic: TopicKind::Stock,
        key: sku: String,
        key_doc: "SKU this event belongs to (the message key).",
        key_string: |e| e.sku.clone(),
    }
}

envelope! {
    /// Envelope of the `notifications` topic, keyed by `order_id`.
    NotificationEnvelope {
        event: NotificationEvent,
        topic: TopicKind::Notifications,
        key: order_id: Uuid,
        key_doc: "Order the notification is about (the message key).",
        key_string: |e| e.order_id.to_string(),
    }
}
