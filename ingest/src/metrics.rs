//! Metrics of the ingest API, all in one place. They are recorded into the process-wide
//! Prometheus recorder of `orderpipe_runtime::metrics` and served on `/metrics`.
//!
//! | name | kind | labels | meaning |
//! | --- | --- | --- | --- |
//! | `orderpipe_ingest_requests_total` | counter | `status` | answers to `POST /v1/orders` by HTTP status |
//! | `orderpipe_ingest_ack_seconds` | histogram | | time from handing `order_placed` to the producer to the broker's acknowledgement |
//! | `orderpipe_ingest_producer_queue_depth` | gauge | | messages in the producer queue or in flight (`rd_kafka_outq_len`) |
//! | `orderpipe_ingest_broker_up` | gauge | | 1 when the last metadata probe reached the broker |
//! | `orderpipe_ingest_idempotency_store_seconds` | histogram | `outcome` | time of one check in the shared idempotency store (`new`, `same-body`, `other-body`, `error`) |
//! | `orderpipe_ingest_waiting_room_total` | counter | `outcome` | waiting room decisions: `admitted` (no ticket needed), `ticketed`, `ticket-admitted`, `ticket-early`, `ticket-invalid`, `ticket-expired`, `unavailable` |

use std::time::Duration;

/// Answers by status.
pub const REQUESTS_TOTAL: &str = "orderpipe_ingest_requests_total";
/// Acknowledgement latency.
pub const ACK_SECONDS: &str = "orderpipe_ingest_ack_seconds";
/// Producer queue depth.
pub const PRODUCER_QUEUE_DEPTH: &str = "orderpipe_ingest_producer_queue_depth";
/// Broker reachability.
pub const BROKER_UP: &str = "orderpipe_ingest_broker_up";

/// Shared idempotency store checks.
pub const IDEMPOTENCY_STORE_SECONDS: &str = "orderpipe_ingest_idempotency_store_seconds";

/// Waiting room decisions.
pub const WAITING_ROOM_TOTAL: &str = "orderpipe_ingest_waiting_room_total";

/// Installs the process-wide recorder (once) and describes the metrics above.
pub(crate) fn init() {
    orderpipe_runtime::metrics::handle();
    metrics::describe_counter!(REQUESTS_TOTAL, "Answers to POST /v1/orders by HTTP status");
    metrics::describe_histogram!(
        ACK_SECONDS,
        metrics::Unit::Seconds,
        "Time from producing order_placed to the broker's acknowledgement"
    );
    metrics::describe_gauge!(
        PRODUCER_QUEUE_DEPTH,
        "Messages queued in the producer or awaiting acknowledgement"
    );
    metrics::describe_gauge!(
        BROKER_UP,
        "1 when the broker answered the last metadata probe"
    );
    metrics::describe_histogram!(
        IDEMPOTENCY_STORE_SECONDS,
        metrics::Unit::Seconds,
        "Time of one Idempotency-Key check in the shared store, by outcome"
    );
    metrics::describe_counter!(WAITING_ROOM_TOTAL, "Waiting room decisions, by outcome");
}

pub(crate) fn request_answered(status: u16) {
    metrics::counter!(REQUESTS_TOTAL, "status" => status.to_string()).increment(1);
}

pub(crate) fn acknowledged(elapsed: Duration) {
    metrics::histogram!(ACK_SECONDS).record(elapsed.as_secs_f64());
}

pub(crate) fn queue_depth(depth: i32) {
    metrics::gauge!(PRODUCER_QUEUE_DEPTH).set(f64::from(depth));
}

pub(crate) fn broker_up(up: bool) {
    metrics::gauge!(BROKER_UP).set(if up { 1.0 } else { 0.0 });
}

pub(crate) fn store_checked(outcome: &'static str, elapsed: Duration) {
    metrics::histogram!(IDEMPOTENCY_STORE_SECONDS, "outcome" => outcome)
        .record(elapsed.as_secs_f64());
}

pub(crate) fn waiting_room(outcome: &'static str) {
    metrics::counter!(WAITING_ROOM_TOTAL, "outcome" => outcome).increment(1);
}
