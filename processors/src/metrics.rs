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
