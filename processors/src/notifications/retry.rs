//! Waiting notifications: a receiver that failed transiently gets them later, from
//! [`Stage::tick`](crate::runner::Stage::tick), with backoff, until the retry window is over.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::{stream, StreamExt};
use uuid::Uuid;

use super::plan::{records, Handled, Outcome, Source, Waiting};
use super::stage::{record_delivery, NotificationsStage};
use crate::runner::Effects;
use crate::shared::doubling_delay;

/// Wait before the first retry from `tick` of a waiting notification; doubles per failure.
const RETRY_DELAY_FIRST: Duration = Duration::from_secs(1);

/// Longest wait between two retries from `tick`.
const RETRY_DELAY_MAX: Duration = Duration::from_secs(30);

/// What a retry from `tick` did for one order: the notifications it finished and those still
/// waiting.
struct Retried {
    partition: i32,
    order_id: Uuid,
    finished: Vec<(Waiting, Outcome)>,
    still_waiting: Vec<Waiting>,
}

impl NotificationsStage {
    /// When a notification that first failed at `now` is given up.
    pub(super) fn give_up_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        chrono::Duration::from_std(self.retry_for)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Schedules the next retry of `order_id`'s waiting notifications, or forgets it when
    /// nothing of it waits.
    pub(super) fn schedule_retry(&mut self, partition: i32, order_id: Uuid, now: SystemTime) {
        let first = self
            .partitions
            .get(&partition)
            .and_then(|orders| orders.get(&order_id))
            .and_then(|state| state.waiting.first());
        let orders = self.retry_at.entry(partition).or_default();
        match first {
            Some(waiting) => {
                let delay = doubling_delay(RETRY_DELAY_FIRST, RETRY_DELAY_MAX, waiting.attempts);
                orders.insert(order_id, now + delay);
            }
            None => {
                orders.remove(&order_id);
            }
        }
    }

    /// Tries once more the waiting notifications of the orders that are due at `now` (at most
    /// `concurrency` orders, earliest first, so one tick waits for at most one delivery timeout),
    /// each order's in turn, stopping at the first that fails again.
    pub(super) fn retry_waiting(&mut self, now: SystemTime, out: &mut Effects) {
        let mut due: Vec<(SystemTime, i32, Uuid)> = self
            .retry_at
            .iter()
            .flat_map(|(&partition, orders)| {
                orders
                    .iter()
                    .filter(|(_, &at)| at <= now)
                    .map(move |(&order_id, &at)| (at, partition, order_id))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        due.sort();
        due.truncate(self.concurrency);
        let work: Vec<(i32, Uuid, Vec<Waiting>)> = due
            .into_iter()
            .filter_map(|(_, partition, order_id)| {
                let state = self.partitions.get(&partition)?.get(&order_id)?;
                Some((partition, order_id, state.waiting.clone()))
            })
            .collect();
        let now_utc = DateTime::<Utc>::from(now);
        let sink = &self.sink;
        let retried: Vec<Retried> = self.handle.block_on(
            stream::iter(work)
                .map(|(partition, order_id, waiting)| {
                    let sink = Arc::clone(sink);
                    async move {
                        let mut finished = Vec::new();
                        let mut rest = waiting.into_iter();
                        let mut still_waiting = Vec::new();
                        for mut waiting in rest.by_ref() {
                            waiting.attempts += 1;
                            let attempts = waiting.attempts;
                            match sink.deliver(&waiting.notification).await {
                                Ok(()) => finished.push((waiting, Outcome::Sent { attempts })),
                                Err(err) if err.retryable && now_utc < waiting.give_up_at => {
                                    waiting.last_error = err.message;
                                    still_waiting.push(waiting);
                                    break;
                                }
                                Err(err) => {
                                    let reason = err.message;
                                    finished.push((waiting, Outcome::Failed { reason, attempts }));
                                }
                            }
                        }
                        still_waiting.extend(rest);
                        Retried {
                            partition,
                            order_id,
                            finished,
                            still_waiting,
                        }
                    }
                })
                .buffer_unordered(self.concurrency)
                .collect(),
        );
        let mut changed = Vec::with_capacity(retried.len());
        for r in retried {
            let state = self
                .partitions
                .entry(r.partition)
                .or_default()
                .entry(r.order_id)
                .or_default();
            for (waiting, outcome) in r.finished {
                let n = &waiting.notification;
                record_delivery(n, &outcome);
                let handled = Handled {
                    event_id: n.event_id,
                    kind: n.kind,
                    outcome,
                    at: Some(now_utc),
                };
                for record in records(Source::of_waiting(&waiting), &n.customer_id, &handled) {
                    out.emit_notification(&self.topics.notifications, &record);
                }
                state.handled.push(handled);
                state.touch(n.occurred_at);
            }
            state.waiting = r.still_waiting;
            changed.push((r.partition, r.order_id));
            self.schedule_retry(r.partition, r.order_id, now);
        }
        self.put_states(&changed, out);
    }
}
