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

    /// Whether this build contains the component. Components still being built are named so that
    /// scripts can list them today, but asking for one is an error rather than a silent no-op.
    pub fn available(self) -> bool {
        matches!(
            self,
            Component::Ingest | Component::Projections | Component::Query
        )
    }

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

/// The components to start: the list given, deduplicated and in start order, or every available
/// component when none was given. Asking for one this build lacks is an error.
pub fn select(requested: &[Component]) -> Result<Vec<Component>, String> {
    if requested.is_empty() {
        return Ok(Component::ALL
            .into_iter()
            .filter(|c| c.available())
            .collect());
    }
    let missing: Vec<&str> = requested
        .iter()
        .filter(|c| !c.available())
        .map(|c| c.name())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "component(s) not available in this version of orderpipe: {}",
            missing.join(", ")
        ));
    }
    Ok(Component::ALL
        .into_iter()
        .filter(|c| requested.contains(c))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_list_means_every_available_component() {
        let all = select(&[]).unwrap();
        assert!(!all.is_empty());
        assert!(all.iter().all(|c| c.available()));
        assert_eq!(
            all.len(),
            Component::ALL.iter().filter(|c| c.available()).count()
        );
    }

    #[test]
    fn list_is_deduplicated_and_put_in_start_order() {
        let chosen = select(&[Component::Ingest, Component::Ingest]).unwrap();
        assert_eq!(chosen, vec![Component::Ingest]);
    }

    #[test]
    fn unavailable_component_is_an_error_naming_it() {
        if let Some(missing) = Component::ALL.into_iter().find(|c| !c.available()) {
            let err = select(&[missing]).unwrap_err();
            assert!(err.contains(missing.name()), "{err}");
        }
    }
}
