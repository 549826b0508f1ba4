//! Changelog records of the stock stage: one record per SKU for its counters (key `s|<sku>`)
//! and one per order line (key `l|<sku>|<order_id>|<line_index>`). Values are JSON and carry
//! their own identity, so restoring never parses keys; `|` and `%` in a SKU are percent-escaped
//! in keys so that two different identities never share a key (compaction keeps one per key).
//!
//! Size: a SKU's changelog holds its counters, its reserved and sold lines (those *are* the
//! reserved and sold counts) and its rejected/released lines until the retention prunes them
//! (tombstones), so a hot SKU's changelog stays bounded by units sold plus recent traffic.

use serde::{Deserialize, Serialize};

use super::core::{Counters, Line, LineId};

/// A decoded changelog value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// Counters of a SKU.
    Counters {
        /// The SKU.
        sku: String,
        /// Its counters.
        #[serde(flatten)]
        counters: Counters,
    },
    /// One line of one order for a SKU.
    Line {
        /// The SKU.
        sku: String,
        /// The line.
        #[serde(flatten)]
        id: LineId,
        /// Its state.
        #[serde(flatten)]
        line: Line,
    },
}

/// What a changelog key names (parsed only to apply tombstones, which carry no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `s|<sku>`
    Counters(String),
    /// `l|<sku>|<order_id>|<line_index>`
    Line(String, LineId),
}

fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('|', "%7C")
}

fn unescape(s: &str) -> String {
    s.replace("%7C", "|").replace("%25", "%")
}

/// Key of a SKU's counters record.
pub fn counters_key(sku: &str) -> String {
    format!("s|{}", escape(sku))
}

/// Key of a line record.
pub fn line_key(sku: &str, id: &LineId) -> String {
    format!("l|{}|{}|{}", escape(sku), id.order_id, id.line_index)
}

/// Parses a key written by [`counters_key`] or [`line_key`].
pub fn parse_key(key: &str) -> Option<Key> {
    let mut parts = key.split('|');
    match (parts.next()?, parts.next()?) {
        ("s", sku) if parts.next().is_none() => Some(Key::Counters(unescape(sku))),
        ("l", sku) => {
            let order_id = parts.next()?.parse().ok()?;
            let line_index = parts.next()?.parse().ok()?;
            parts.next().is_none().then(|| {
                Key::Line(
                    unescape(sku),
                    LineId {
                        order_id,
                        line_index,
                    },
                )
            })
        }
        _ => None,
    }
}

/// JSON value of a record.
pub fn encode(record: &Record) -> Vec<u8> {
    serde_json::to_vec(record).expect("changelog records always serialize")
}

/// Decodes a record value.
pub fn decode(value: &[u8]) -> Result<Record, serde_json::Error> {
    serde_json::from_slice(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stock::core::LineStatus;
    use orderpipe_schemas::StockRejectReason;
    use uuid::Uuid;

    #[test]
    fn keys_round_trip_even_with_separators_in_the_sku() {
        let id = LineId {
            order_id: Uuid::from_u128(7),
            line_index: 3,
        };
        for sku in ["SKU-1", "a|b", "50%|off", "%7C"] {
            assert_eq!(
                parse_key(&counters_key(sku)),
                Some(Key::Counters(sku.into()))
            );
            assert_eq!(
                parse_key(&line_key(sku, &id)),
                Some(Key::Line(sku.into(), id))
            );
        }
        assert_ne!(counters_key("a|b"), counters_key("a%7Cb"));
        assert_eq!(parse_key("x|y"), None);
    }

    #[test]
    fn records_round_trip() {
        let line = Record::Line {
            sku: "S".into(),
            id: LineId {
                order_id: Uuid::from_u128(1),
                line_index: 0,
            },
            line: Line {
                customer_id: "c".into(),
                quantity: 2,
                status: LineStatus::Rejected(StockRejectReason::LimitExceeded),
                answer_event_id: Uuid::from_u128(2),
                changed_at_ms: 5,
                answer_cause: None,
            },
        };
        assert_eq!(decode(&encode(&line)).unwrap(), line);
        let counters = Record::Counters {
            sku: "S".into(),
            counters: Counters {
                stocked: true,
                capacity: 10,
                per_customer_limit: Some(2),
                recent_adjustments: [Uuid::from_u128(3)].into_iter().collect(),
            },
        };
        assert_eq!(decode(&encode(&counters)).unwrap(), counters);
    }
}
