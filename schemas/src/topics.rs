//! Topic names. Names are configuration: defaults are `orders`, `stock` and `notifications`,
//! plus `<stage>.changelog` and `<stage>.dlq` per processor stage, all behind an optional prefix
//! (tests use a unique prefix each, so they never share a topic).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The three event topics, independent of their configured names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopicKind {
    /// `orders`, keyed by `order_id`.
    Orders,
    /// `stock`, keyed by `sku`.
    Stock,
    /// `notifications`, keyed by `order_id`.
    Notifications,
}

impl TopicKind {
    /// Every topic kind, in a stable order.
    pub const ALL: [TopicKind; 3] = [Self::Orders, Self::Stock, Self::Notifications];

    /// Default (unprefixed) topic name, also used as the folder name of its JSON schemas.
    pub fn default_name(self) -> &'static str {
        match self {
            Self::Orders => "orders",
            Self::Stock => "stock",
            Self::Notifications => "notifications",
        }
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.default_name())
    }
}

/// Resolved topic names for one deployment (or one test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    /// Name of the orders topic.
    pub orders: String,
    /// Name of the stock topic.
    pub stock: String,
    /// Name of the notifications topic.
    pub notifications: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::with_prefix("")
    }
}

impl Topics {
    /// Default names behind `prefix`, e.g. `Topics::with_prefix("t-ab12.")` gives `t-ab12.orders`.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        Self {
            orders: format!("{prefix}orders"),
            stock: format!("{prefix}stock"),
            notifications: format!("{prefix}notifications"),
            prefix,
        }
    }

    /// The prefix every name here starts with (empty by default).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Name of the topic of `kind`.
    pub fn name(&self, kind: TopicKind) -> &str {
        match kind {
            TopicKind::Orders => &self.orders,
            TopicKind::Stock => &self.stock,
            TopicKind::Notifications => &self.notifications,
        }
    }

    /// Compacted changelog topic of a stage's state: `<prefix><stage>.changelog`.
    pub fn changelog(&self, stage: &str) -> String {
        format!("{}{stage}.changelog", self.prefix)
    }

    /// Dead-letter topic of a stage: `<prefix><stage>.dlq`.
    pub fn dlq(&self, stage: &str) -> String {
        format!("{}{stage}.dlq", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_have_no_prefix() {
        let t = Topics::default();
        assert_eq!(
            (
                t.orders.as_str(),
                t.stock.as_str(),
                t.notifications.as_str()
            ),
            ("orders", "stock", "notifications")
        );
        assert_eq!(t.changelog("stock"), "stock.changelog");
        assert_eq!(t.dlq("saga"), "saga.dlq");
        assert_eq!(t.prefix(), "");
    }

    #[test]
    fn prefix_applies_to_every_name() {
        // Given a per-test prefix
        let t = Topics::with_prefix("t-ab12.");
        // Then every topic name carries it
        assert_eq!(t.name(TopicKind::Orders), "t-ab12.orders");
        assert_eq!(t.name(TopicKind::Stock), "t-ab12.stock");
        assert_eq!(t.name(TopicKind::Notifications), "t-ab12.notifications");
        assert_eq!(t.changelog("saga"), "t-ab12.saga.changelog");
        assert_eq!(t.dlq("payments"), "t-ab12.payments.dlq");
    }
}
