//! Every metric the processors record, declared in one place. All carry a `stage` label
//! (`stock`, `payments`, `saga`, `notifications`).
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `orderpipe_processor_events_in_total` | counter | stage | input messages handed to the stage in committed batches |
//! | `orderpipe_processor_events_out_total` | counter | stage | output records of committed batches (changelog and dead letters excluded) |
//! | `orderpipe_processor_transactions_total` | counter | stage, outcome=`commit`\|`abort` | batches committed or abandoned (at-least-once: offsets committed after delivery, or batch redone) |
//! | `orderpipe_processor_batch_seconds` | histogram | stage | time from the end of polling to the batch's commit (process + produce + commit) |
//! | `orderpipe_processor_dead_letters_total` | counter | stage, reason | messages sent to the stage's dead-letter topic |
//! | `orderpipe_processor_consumer_lag` | gauge | stage | messages between the committed position and the end of the assigned input partitions (librdkafka statistics) |
//! | `orderpipe_processor_restored_records_total` | counter | stage | changelog records replayed into memory (assignment or recovery) |
//! | `orderpipe_changelog_restore_failures_total` | counter | stage, partition | changelog records that could not be restored (undecodable value, unreadable or non-UTF-8 key): the stage stopped instead of skipping them |
//! | `orderpipe_processor_recoveries_total` | counter | stage, cause | state dropped and rebuilt from the changelog after a failed batch |
//! | `orderpipe_stock_decisions_total` | counter | outcome | stock answers to `reservation_requested` (`reserved`, `out_of_stock`, `limit_exceeded`, `unknown_sku`), counted when decided (an aborted batch's decisions too) |
//! | `orderpipe_stock_units` | gauge | sku, state=`available`\|`reserved`\|`sold` | the last `stock_levels` snapshot of each SKU this process decided on (after a rebalance the former owner keeps its last values until it restarts: the query API's `/v1/stock/{sku}` is authoritative) |
//! | `orderpipe_payments_charges_total` | counter | outcome | charge attempts at the gateway: `settled`, `declined` (the gateway's decline, or a failure given up on), `unavailable` (timeout, 5xx, open breaker: kept pending and retried) |
//! | `orderpipe_payments_declines_total` | counter | reason | `payment_declined` answers, by the gateway's reason (`gateway_timeout` when the charge was given up on) |
//! | `orderpipe_payments_refunds_total` | counter | outcome | refund (or void) attempts: `refunded`, `no_charge` (nothing to refund), `failed` (kept pending and retried) |
//! | `orderpipe_payments_pending` | gauge | | orders with a charge or refund waiting to be retried (set each tick) |
//! | `orderpipe_payments_breaker_state` | gauge | | the HTTP gateway's circuit breaker: 0 closed, 1 half-open, 2 open (absent with the simulated gateway) |
//! | `orderpipe_notifications_deliveries_total` | counter | | notifications delivered to the sink |
//! | `orderpipe_notifications_retries_total` | counter | | delivery attempts after a transient failure (retries within a delivery) |
//! | `orderpipe_notifications_failures_total` | counter | | notifications that could not be delivered after their retries (`notification_failed`) |
//! | `orderpipe_notifications_waiting` | gauge | | notifications whose receiver failed, waiting to be retried (set each tick) |
//! | `orderpipe_saga_terminals_total` | counter | outcome, reason | terminal decisions of the saga: `confirmed`, `rejected` (with its reason), `cancelled`; redeliveries not counted |
//! | `orderpipe_saga_deadlines_total` | counter | phase | orders rejected because their phase deadline passed (`reserving`, `paying`) |
//!
//! Gateway, delivery and saga counts are taken when the work is done (like stock decisions, an
//! aborted batch's work is counted too). Series with a closed set of labels are registered at zero
//! when their stage starts, so that `increase()` sees their first event and a scrape lists them.

use std::time::Duration;

/// Input messages of a committed batch.
pub(crate) fn events_in(stage: &'static str, n: usize) {
    metrics::counter!("orderpipe_processor_events_in_total", "stage" => stage).increment(n as u64);
}

/// Output records of a committed batch.
pub(crate) fn events_out(stage: &'static str, n: usize) {
    metrics::counter!("orderpipe_processor_events_out_total", "stage" => stage).increment(n as u64);
}

/// A batch committed (`true`) or abandoned.
pub(crate) fn transaction(stage: &'static str, committed: bool) {
    let outcome = if committed { "commit" } else { "abort" };
    metrics::counter!("orderpipe_processor_transactions_total", "stage" => stage, "outcome" => outcome)
        .increment(1);
}

/// Duration of one batch, from the end of polling to its commit.
pub(crate) fn batch_duration(stage: &'static str, elapsed: Duration) {
    metrics::histogram!("orderpipe_processor_batch_seconds", "stage" => stage)
        .record(elapsed.as_secs_f64());
}

/// A message sent to the dead-letter topic.
pub(crate) fn dead_letter(stage: &'static str, reason: &str) {
    metrics::counter!("orderpipe_processor_dead_letters_total", "stage" => stage, "reason" => reason.to_owned())
        .increment(1);
}

/// Current consumer lag summed over the stage's assigned input partitions.
pub(crate) fn consumer_lag(stage: &'static str, lag: i64) {
    metrics::gauge!("orderpipe_processor_consumer_lag", "stage" => stage).set(lag as f64);
}

/// Changelog records replayed into memory.
pub(crate) fn restored(stage: &'static str, n: u64) {
    metrics::counter!("orderpipe_processor_restored_records_total", "stage" => stage).increment(n);
}

/// A changelog record that could not be restored (the stage stops).
pub(crate) fn restore_failure(stage: &'static str, partition: i32) {
    metrics::counter!("orderpipe_changelog_restore_failures_total", "stage" => stage, "partition" => partition.to_string())
        .increment(1);
}

/// State rebuilt after a failed batch.
pub(crate) fn recovery(stage: &'static str, cause: &'static str) {
    metrics::counter!("orderpipe_processor_recoveries_total", "stage" => stage, "cause" => cause)
        .increment(1);
}

/// A stock decision (`reserved`, `out_of_stock`, `limit_exceeded`, `unknown_sku`), duplicates
/// included.
pub(crate) fn stock_decision(outcome: &'static str) {
    metrics::counter!("orderpipe_stock_decisions_total", "outcome" => outcome).increment(1);
}

/// A charge attempt: `settled`, `declined` or `unavailable` (kept pending).
pub(crate) fn payment_charge(outcome: &'static str) {
    metrics::counter!("orderpipe_payments_charges_total", "outcome" => outcome).increment(1);
}

/// A `payment_declined` answer with the gateway's reason.
pub(crate) fn payment_decline(reason: &str) {
    metrics::counter!("orderpipe_payments_declines_total", "reason" => reason.to_owned())
        .increment(1);
}

/// A refund attempt: `refunded`, `no_charge` or `failed` (kept pending).
pub(crate) fn payment_refund(outcome: &'static str) {
    metrics::counter!("orderpipe_payments_refunds_total", "outcome" => outcome).increment(1);
}

/// Orders with gateway work waiting to be retried.
pub(crate) fn payments_pending(n: usize) {
    metrics::gauge!("orderpipe_payments_pending").set(n as f64);
}

/// Registers the payments series with a closed label set at zero.
pub(crate) fn register_payments() {
    for outcome in ["settled", "declined", "unavailable"] {
        metrics::counter!("orderpipe_payments_charges_total", "outcome" => outcome).increment(0);
    }
    for outcome in ["refunded", "no_charge", "failed"] {
        metrics::counter!("orderpipe_payments_refunds_total", "outcome" => outcome).increment(0);
    }
    metrics::gauge!("orderpipe_payments_pending").set(0.0);
}

/// The circuit breaker's state: 0 closed, 1 half-open, 2 open.
pub(crate) fn breaker_state(state: &crate::payments::BreakerState) {
    use crate::payments::BreakerState;
    let value = match state {
        BreakerState::Closed { .. } => 0.0,
        BreakerState::HalfOpen { .. } => 1.0,
        BreakerState::Open { .. } => 2.0,
    };
    metrics::gauge!("orderpipe_payments_breaker_state").set(value);
}

/// One finished delivery: sent or failed after `attempts` attempts.
pub(crate) fn notification_delivery(sent: bool, attempts: u32) {
    let name = if sent {
        "orderpipe_notifications_deliveries_total"
    } else {
        "orderpipe_notifications_failures_total"
    };
    metrics::counter!(name).increment(1);
    metrics::counter!("orderpipe_notifications_retries_total")
        .increment(u64::from(attempts.saturating_sub(1)));
}

/// Registers the notifications series at zero.
pub(crate) fn register_notifications() {
    metrics::counter!("orderpipe_notifications_deliveries_total").increment(0);
    metrics::counter!("orderpipe_notifications_retries_total").increment(0);
    metrics::counter!("orderpipe_notifications_failures_total").increment(0);
    metrics::gauge!("orderpipe_notifications_waiting").set(0.0);
}

pub(crate) fn notifications_waiting(n: usize) {
    metrics::gauge!("orderpipe_notifications_waiting").set(n as f64);
}

/// A terminal decision of the saga (other events are ignored).
pub(crate) fn saga_terminal(event: &orderpipe_schemas::OrderEvent) {
    use orderpipe_schemas::{OrderEvent, RejectReason};
    let (outcome, reason) = match event {
        OrderEvent::OrderConfirmed(_) => ("confirmed", ""),
        OrderEvent::OrderCancelled(_) => ("cancelled", ""),
        OrderEvent::OrderRejected(r) => (
            "rejected",
            match r.reason {
                RejectReason::OutOfStock => "out_of_stock",
                RejectReason::LimitExceeded => "limit_exceeded",
                RejectReason::PaymentDeclined => "payment_declined",
                RejectReason::PaymentTimeout => "payment_timeout",
                RejectReason::StockTimeout => "stock_timeout",
                RejectReason::Invalid => "invalid",
            },
        ),
        _ => return,
    };
    metrics::counter!("orderpipe_saga_terminals_total", "outcome" => outcome, "reason" => reason)
        .increment(1);
}

/// An order rejected because its phase deadline passed.
pub(crate) fn saga_deadline(phase: &'static str) {
    metrics::counter!("orderpipe_saga_deadlines_total", "phase" => phase).increment(1);
}

/// Registers the saga series with a closed label set at zero.
pub(crate) fn register_saga() {
    for phase in ["reserving", "paying"] {
        metrics::counter!("orderpipe_saga_deadlines_total", "phase" => phase).increment(0);
    }
    metrics::counter!("orderpipe_saga_terminals_total", "outcome" => "confirmed", "reason" => "")
        .increment(0);
}

/// The `stock_levels` snapshot of a SKU, as gauges.
pub(crate) fn stock_levels(sku: &str, levels: &orderpipe_schemas::StockLevels) {
    for (state, units) in [
        ("available", levels.available),
        ("reserved", levels.reserved),
        ("sold", levels.sold),
    ] {
        metrics::gauge!("orderpipe_stock_units", "sku" => sku.to_owned(), "state" => state)
            .set(units as f64);
    }
}
