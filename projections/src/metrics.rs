//! Metrics of the projectors and the query API, all declared here. Recorded through the
//! `metrics` facade into the process-wide Prometheus recorder of `orderpipe-runtime`.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `orderpipe_projection_events_total` | counter | `projector`, `event_type` | events applied to the views |
//! | `orderpipe_projection_batches_total` | counter | `projector` | batches written and committed |
//! | `orderpipe_projection_batch_seconds` | histogram | `projector` | time to write one batch |
//! | `orderpipe_projection_write_errors_total` | counter | `projector` | failed batch writes (retried) |
//! | `orderpipe_projection_dead_letters_total` | counter | `projector`, `reason` | poison events sent to `projections.dlq` |
//! | `orderpipe_projection_notes_total` | counter | `projector`, `note` | duplicates, late outcomes, confirmations without placement |
//! | `orderpipe_projection_lag` | gauge | `projector`, `topic`, `partition` | events not yet committed by the projector |
//! | `orderpipe_query_requests_total` | counter | `route`, `status` | query API answers |
//! | `orderpipe_query_long_polls` | gauge | | long-polls waiting now |
//! | `orderpipe_query_stock_streams` | gauge | | `GET /v1/stock/{sku}/stream` subscribers now |

use metrics::{counter, gauge, histogram};

use crate::model::Anomaly;

pub(crate) fn events(projector: &'static str, event_type: &'static str, n: u64) {
    counter!("orderpipe_projection_events_total", "projector" => projector, "event_type" => event_type)
        .increment(n);
}

pub(crate) fn batch(projector: &'static str, seconds: f64) {
    counter!("orderpipe_projection_batches_total", "projector" => projector).increment(1);
    histogram!("orderpipe_projection_batch_seconds", "projector" => projector).record(seconds);
}

pub(crate) fn write_error(projector: &'static str) {
    counter!("orderpipe_projection_write_errors_total", "projector" => projector).increment(1);
}

pub(crate) fn dead_letter(projector: &'static str, reason: &'static str) {
    counter!("orderpipe_projection_dead_letters_total", "projector" => projector, "reason" => reason)
        .increment(1);
}

pub(crate) fn anomaly(projector: &'static str, anomaly: Anomaly) {
    let anomaly = match anomaly {
        Anomaly::DuplicatePlacement => "duplicate_placement",
        Anomaly::LateTerminal => "late_terminal",
        Anomaly::ConfirmedWithoutPlacement => "confirmed_without_placement",
    };
    counter!("orderpipe_projection_notes_total", "projector" => projector, "note" => anomaly)
        .increment(1);
}

pub(crate) fn lag(projector: &'static str, topic: &str, partition: i32, lag: u64) {
    gauge!(
        "orderpipe_projection_lag",
        "projector" => projector,
        "topic" => topic.to_owned(),
        "partition" => partition.to_string()
    )
    .set(lag as f64);
}

pub(crate) fn request(route: &'static str, status: u16) {
    counter!("orderpipe_query_requests_total", "route" => route, "status" => status.to_string())
        .increment(1);
}

pub(crate) fn long_polls(delta: f64) {
    gauge!("orderpipe_query_long_polls").increment(delta);
}

pub(crate) fn stock_streams(delta: f64) {
    gauge!("orderpipe_query_stock_streams").increment(delta);
}
