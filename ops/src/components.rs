//! The components of the pipeline that `orderpipe run --components` can start in one process.

use std::fmt;

/// One runnable part of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Component {
    /// HTTP API that acknowledges orders once `order_placed` is durable in Kafka.
    Ingest,
    /// Per-SKU stock reservation.
    Stock,
    /// Payment settlement through the configured gateway.
    Payments,
    /// Per-order state machine: confirm, reject, compensate.
    Saga,
    /// Delivery of notifications on terminal order events.
    Notifications,
    /// Consumers that build the query views in ScyllaDB.
    Projections,
    /// HTTP API that serves the query views.
    Query,
}

impl Component {
    /// Every component, in start order (consumers before the API that feeds them).
    pub const ALL: [Component; 7] = [
        Component::Projections,
        Component::Notifications,
        Component::Saga,
        Component::Payments,
        Component::Stock,
        Component::Query,
        Component::Ingest,
    ];

    /// The name used on the command line and in logs.
    pub fn name(self) -> &'static str {
        match self {
            Component::Ingest => "ingest",
            Component::Stock => "stock",
            Component::Payments => "payments",
            Component::Saga => "saga",
            Component::Notifications => "notifications",
            Component::Projections => "projections",
            Component::Query => "query",
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The components to start: the list given, deduplicated and in start order, or every component
/// when none was given.
pub fn select(requested: &[Component]) -> Vec<Component> {
    Component::ALL
        .into_iter()
        .filter(|c| requested.is_empty() || requested.contains(c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_list_means_every_component() {
        assert_eq!(select(&[]), Component::ALL.to_vec());
    }

    #[test]
    fn list_is_deduplicated_and_put_in_start_order() {
        let chosen = select(&[Component::Ingest, Component::Stock, Component::Ingest]);
        assert_eq!(chosen, vec![Component::Stock, Component::Ingest]);
    }
}
