//! The audit: the counts that must be 0, and each order's terminal states from the topics.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use orderpipe_schemas::Topics;
use uuid::Uuid;

#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) acked_missing_from_topic: usize,
    pub(crate) units_oversold: u64,
    pub(crate) orders_not_exactly_one_terminal: usize,
    pub(crate) double_charges: usize,
    pub(crate) charges_without_key: usize,
    pub(crate) unrefunded_charges: usize,
    pub(crate) confirmed_without_charge: usize,
    pub(crate) notifications_lost: usize,
    pub(crate) notifications_duplicated: usize,
    pub(crate) webhook_bad_requests: u64,
    pub(crate) views_disagreeing: usize,
    pub(crate) verify_violations: usize,
    pub(crate) verify_exit_nonzero: usize,
    pub(crate) client_errors: usize,
    pub(crate) orders_abandoned: u64,
    pub(crate) same_key_two_ids: u64,
    pub(crate) processes_panicked: usize,
    pub(crate) secrets_in_logs_or_metrics: usize,
    pub(crate) fault_errors: usize,
}

impl Counts {
    pub(crate) fn rows(&self) -> Vec<(&'static str, u64)> {
        vec![
            (
                "acked orders missing from the topic",
                self.acked_missing_from_topic as u64,
            ),
            ("units oversold", self.units_oversold),
            (
                "orders without exactly one terminal state",
                self.orders_not_exactly_one_terminal as u64,
            ),
            (
                "double charges (gateway ledger)",
                self.double_charges as u64,
            ),
            (
                "charges without idempotency key",
                self.charges_without_key as u64,
            ),
            (
                "unrefunded charges of unconfirmed orders",
                self.unrefunded_charges as u64,
            ),
            (
                "confirmed orders never charged",
                self.confirmed_without_charge as u64,
            ),
            (
                "notifications lost (webhook log)",
                self.notifications_lost as u64,
            ),
            (
                "notifications duplicated (distinct event ids)",
                self.notifications_duplicated as u64,
            ),
            (
                "webhook requests unsigned or malformed",
                self.webhook_bad_requests,
            ),
            (
                "views disagreeing with topics",
                self.views_disagreeing as u64,
            ),
            ("orderpipe verify violations", self.verify_violations as u64),
            (
                "orderpipe verify exit non-zero",
                self.verify_exit_nonzero as u64,
            ),
            (
                "client errors (unexpected answers)",
                self.client_errors as u64,
            ),
            (
                "orders abandoned by clients (no 202 in 120 s)",
                self.orders_abandoned,
            ),
            ("same key acknowledged under two ids", self.same_key_two_ids),
            (
                "processes that panicked (logs)",
                self.processes_panicked as u64,
            ),
            (
                "secrets (payment token, webhook secret) in logs or metrics",
                self.secrets_in_logs_or_metrics as u64,
            ),
            ("faults that could not be applied", self.fault_errors as u64),
        ]
    }
}

/// Distinct terminal events of each order (repeats of one event_id count once).
pub(crate) fn terminals(
    history: &orderpipe_ops::verify::History,
) -> HashMap<Uuid, Vec<&'static str>> {
    history
        .orders
        .iter()
        .map(|(id, events)| {
            let mut seen = BTreeSet::new();
            let statuses = events
                .iter()
                .filter_map(|e| {
                    e.event
                        .terminal_status()
                        .filter(|_| seen.insert(e.event_id))
                })
                .collect();
            (*id, statuses)
        })
        .collect()
}

pub(crate) async fn read_history(
    bootstrap: &str,
    topics: &Topics,
) -> anyhow::Result<orderpipe_ops::verify::History> {
    let (bootstrap, topics) = (bootstrap.to_string(), topics.clone());
    tokio::task::spawn_blocking(move || {
        orderpipe_ops::verify::read_history(&bootstrap, &[], &topics, Duration::from_secs(90))
    })
    .await?
}
