//! Topic names and the topic plan. Names are configuration: defaults are `orders`, `stock` and
//! `notifications`, plus `<stage>.changelog` and `<stage>.dlq` per stage, all behind an optional
//! prefix (tests use a unique prefix each, so they never share a topic). The plan
//! ([`Topics::plan`]) is every topic the pipeline needs, as data; `orderpipe_runtime::kafka`
//! creates it.

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

/// Stages that keep state in a compacted `<stage>.changelog` topic.
pub const CHANGELOG_STAGES: &[&str] = &["stock", "payments", "saga", "notifications"];
/// Stages that dead-letter poison events to a `<stage>.dlq` topic.
pub const DLQ_STAGES: &[&str] = &["stock", "payments", "saga", "notifications", "projections"];

/// `segment.ms` of compacted topics: compaction only cleans closed segments, so roll them hourly
/// (a hot SKU's reservation records, tombstoned once done, must not pile up for a week).
const COMPACTED_SEGMENT_MS: &str = "3600000";

/// One topic the pipeline needs: what creating it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full name (prefix included).
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// `cleanup.policy=compact` (state changelogs) instead of delete.
    pub compacted: bool,
}

impl TopicSpec {
    /// A delete-policy topic.
    pub fn new(name: impl Into<String>, partitions: i32, replication_factor: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication_factor,
            compacted: false,
        }
    }

    /// Topic-level settings to create it with (retention is the broker's default).
    pub fn configs(&self) -> &'static [(&'static str, &'static str)] {
        if self.compacted {
            &[
                ("cleanup.policy", "compact"),
                ("segment.ms", COMPACTED_SEGMENT_MS),
            ]
        } else {
            &[]
        }
    }
}

impl Topics {
    /// Every topic of the pipeline: the three event topics, the changelog of each stateful stage
    /// (compacted) and the dead-letter topic of each stage. All share one partition count, so
    /// that changelogs are co-partitioned with the topics they follow.
    pub fn plan(&self, partitions: i32, replication_factor: i32) -> Vec<TopicSpec> {
        let mut plan: Vec<TopicSpec> = TopicKind::ALL
            .iter()
            .map(|&kind| TopicSpec::new(self.name(kind), partitions, replication_factor))
            .collect();
        plan.extend(
            CHANGELOG_STAGES
                .iter()
                .map(|stage| self.changelog_spec(stage, partitions, replication_factor)),
        );
        plan.extend(
            DLQ_STAGES
                .iter()
                .map(|stage| self.dlq_spec(stage, partitions, replication_factor)),
        );
        plan
    }

    /// The topics a processor stage owns: its compacted changelog and its dead-letter topic. The
    /// changelog must have as many partitions as the stage's input (state of input partition N
    /// lives in changelog partition N).
    pub fn stage_plan(
        &self,
        stage: &str,
        partitions: i32,
        replication_factor: i32,
    ) -> Vec<TopicSpec> {
        vec![
            self.changelog_spec(stage, partitions, replication_factor),
            self.dlq_spec(stage, partitions, replication_factor),
        ]
    }

    /// The dead-letter topic of `stage`.
    pub fn dlq_spec(&self, stage: &str, partitions: i32, replication_factor: i32) -> TopicSpec {
        TopicSpec::new(self.dlq(stage), partitions, replication_factor)
    }

    /// The compacted changelog topic of `stage`.
    pub fn changelog_spec(
        &self,
        stage: &str,
        partitions: i32,
        replication_factor: i32,
    ) -> TopicSpec {
        TopicSpec {
            compacted: true,
            ..TopicSpec::new(self.changelog(stage), partitions, replication_factor)
        }
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

    #[test]
    fn plan_covers_every_topic_once() {
        let plan = Topics::with_prefix("p.").plan(6, 1);
        let names: Vec<&str> = plan.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(&names[..3], ["p.orders", "p.stock", "p.notifications"]);
        assert!(names.contains(&"p.stock.changelog") && names.contains(&"p.saga.dlq"));
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        assert!(plan.iter().all(|t| t.partitions == 6));
        assert!(plan
            .iter()
            .all(|t| t.compacted == t.name.ends_with(".changelog")));
    }
}
