//! The payments stage: consumes the orders topic; charges `payment_requested` orders through the
//! [`PaymentGateway`] and emits `payment_settled` / `payment_declined`; refunds the charge of an
//! order rejected for a payment reason, or cancelled, and emits `refunded`.
//!
//! The gateway's idempotency (key = order id) is what makes a redelivered or re-processed event
//! harmless. The stage's own state is the gateway work that could not be finished yet:
//! - a charge that met an open circuit breaker or a transient failure (timeout, 5xx) stays
//!   pending and is retried from [`Stage::tick`] with backoff until its deadline
//!   (`payment_requested.occurred_at` + `--payments-charge-retry-for`); only then, or on the
//!   gateway's own decline, is the payment declined. An open breaker means "later", never "no".
//! - a refund (or void) that fails for any reason stays pending and is retried from `tick`
//!   with backoff until the gateway confirms it; it is never dead-lettered.
//!
//! Pending work is kept in `payments.changelog` (key = order id, value = [`PendingOp`] as
//! JSON, tombstoned once done), so it survives restarts and rebalances: the restored stage
//! retries it on its first tick.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use futures::{stream, StreamExt};
use orderpipe_schemas::{
    DeclineReason, OrderEnvelope, OrderEvent, PaymentDeclined, PaymentSettled, Refunded,
    RejectReason, Topics,
};
use tokio::runtime::Handle;
use uuid::Uuid;

use super::config::PaymentsArgs;
use super::gateway::{ChargeOutcome, GatewayError, PaymentGateway, Refund};
use super::pending::{Cause, PendingOp, RetrySchedule};
use crate::metrics;
use crate::runner::{Effects, Input, Stage};
use crate::shared::derived_event_id;
use crate::shared::{warn_if_current_thread, ConfigError};

/// A pending operation in memory: the operation and when to try it next.
#[derive(Debug, Clone)]
struct Pending {
    op: PendingOp,
    failures: u32,
    /// `None`: at the next tick.
    next_at: Option<SystemTime>,
}

/// The payments stage.
pub struct PaymentsStage {
    topics: Topics,
    gateway: Arc<dyn PaymentGateway>,
    handle: Handle,
    concurrency: usize,
    retry: RetrySchedule,
    /// Unfinished gateway work per input partition, per order.
    pending: HashMap<i32, HashMap<Uuid, Pending>>,
}

impl std::fmt::Debug for PaymentsStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsStage")
            .field("topics", &self.topics)
            .field("concurrency", &self.concurrency)
            .field("retry", &self.retry)
            .field("pending", &self.pending_count())
            .finish_non_exhaustive()
    }
}

/// What one gateway call leads to: an event to emit, pending work to keep, or nothing left to do.
enum CallResult {
    Emit(Box<OrderEnvelope>),
    /// Keep (or start) this pending operation; it failed `failures` times in a row.
    Keep(PendingOp, u32),
    /// The order has no pending work any more.
    Done,
}

/// One order's events of a batch, with the order's pending work before them.
struct OrderWork {
    partition: i32,
    order_id: Uuid,
    before: Option<Pending>,
    events: Vec<OrderEnvelope>,
}

impl PaymentsStage {
    /// Stage name: group `orderpipe-payments`, topic `payments.dlq`.
    pub const NAME: &'static str = "payments";

    /// A payments stage using `gateway`; gateway calls run on `handle`'s runtime, at most 64 at
    /// once. `handle` must belong to a multi-thread runtime: the stage thread waits with
    /// `Handle::block_on`, which cannot drive a current-thread runtime's timers and IO.
    pub fn new(topics: Topics, gateway: Arc<dyn PaymentGateway>, handle: Handle) -> Self {
        warn_if_current_thread(&handle, Self::NAME);
        metrics::register_payments();
        Self {
            topics,
            gateway,
            handle,
            concurrency: 64,
            retry: RetrySchedule::default(),
            pending: HashMap::new(),
        }
    }

    /// At most `n` gateway calls in flight per batch.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Retries pending gateway work on `schedule`.
    pub fn with_retry(mut self, schedule: RetrySchedule) -> Self {
        self.retry = schedule;
        self
    }

    /// The stage as `args` configure it.
    pub fn from_args(
        args: &PaymentsArgs,
        topics: Topics,
        handle: Handle,
    ) -> Result<Self, ConfigError> {
        Ok(Self::new(topics, args.gateway()?, handle)
            .with_concurrency(args.concurrency)
            .with_retry(args.retry_schedule()))
    }

    /// Orders with unfinished gateway work (charges or refunds still to retry).
    pub fn pending_count(&self) -> usize {
        self.pending.values().map(HashMap::len).sum()
    }

    /// The unfinished gateway work of `order_id`, if any (tests, admin tools).
    pub fn pending(&self, order_id: Uuid) -> Option<&PendingOp> {
        self.pending
            .values()
            .find_map(|orders| orders.get(&order_id))
            .map(|p| &p.op)
    }

    /// Handles one order's events in order (a refund must not overtake the charge before it),
    /// starting from the order's pending work.
    async fn order_steps(
        gateway: Arc<dyn PaymentGateway>,
        retry: RetrySchedule,
        work: OrderWork,
    ) -> (OrderWork, Vec<CallResult>) {
        let mut steps = Vec::new();
        let mut pending = work.before.as_ref().map(|p| (p.op.clone(), p.failures));
        for event in &work.events {
            let op = match &event.event {
                OrderEvent::PaymentRequested(request) => {
                    if let Some((PendingOp::Refund { .. }, _)) = pending {
                        // The order was rejected already (this is a redelivery): no new charge.
                        continue;
                    }
                    PendingOp::Charge {
                        cause: Cause::of(event),
                        request: request.clone(),
                        give_up_at: give_up_at(event.occurred_at, retry.charge_retry_for),
                    }
                }
                // A pending charge of a rejected order is dropped: the refund voids the order at
                // the gateway, so no charge of it can land afterwards.
                OrderEvent::OrderRejected(_) | OrderEvent::OrderCancelled(_) => PendingOp::Refund {
                    cause: Cause::of(event),
                },
                _ => continue,
            };
            let failures = match &pending {
                Some((kept, f)) if std::mem::discriminant(kept) == std::mem::discriminant(&op) => {
                    *f
                }
                _ => 0,
            };
            let (more, still) =
                attempt(gateway.as_ref(), work.order_id, op, failures, Utc::now()).await;
            pending = still;
            steps.extend(more);
        }
        (work, steps)
    }

    /// Retries every pending operation that is due at `now`; returns the steps per order.
    fn retry_due(&mut self, now: SystemTime) -> Vec<(i32, Uuid, Vec<CallResult>)> {
        let mut due = Vec::new();
        for (&partition, orders) in &self.pending {
            for (&order_id, p) in orders {
                if p.next_at.is_none_or(|at| at <= now) {
                    due.push((partition, order_id, p.op.clone(), p.failures));
                }
            }
        }
        if due.is_empty() {
            return Vec::new();
        }
        let now_utc: DateTime<Utc> = now.into();
        let gateway = &self.gateway;
        self.handle.block_on(
            stream::iter(due)
                .map(|(partition, order_id, op, failures)| {
                    let gateway = Arc::clone(gateway);
                    async move {
                        let (steps, _) =
                            attempt(gateway.as_ref(), order_id, op, failures, now_utc).await;
                        (partition, order_id, steps)
                    }
                })
                .buffer_unordered(self.concurrency)
                .collect(),
        )
    }

    /// Applies the steps of one order: emits answers, keeps or drops its pending work.
    fn apply(
        &mut self,
        partition: i32,
        order_id: Uuid,
        steps: Vec<CallResult>,
        now: SystemTime,
        out: &mut Effects,
    ) {
        let before = self
            .pending
            .get(&partition)
            .and_then(|orders| orders.get(&order_id))
            .map(|p| p.op.clone());
        let mut after = before.clone().map(|op| (op, 0u32));
        let mut touched = false;
        for step in steps {
            match step {
                CallResult::Emit(event) => out.emit_order(&self.topics.orders, &event),
                CallResult::Keep(op, failures) => {
                    after = Some((op, failures));
                    touched = true;
                }
                CallResult::Done => {
                    after = None;
                    touched = true;
                }
            }
        }
        if !touched {
            return;
        }
        let orders = self.pending.entry(partition).or_default();
        match after {
            Some((op, failures)) => {
                if before.as_ref() != Some(&op) {
                    out.put(partition, order_id.to_string(), op.to_json());
                }
                let next_at = now + self.retry.delay(failures.max(1));
                orders.insert(
                    order_id,
                    Pending {
                        op,
                        failures,
                        next_at: Some(next_at),
                    },
                );
            }
            None => {
                if before.is_some() {
                    out.delete(partition, order_id.to_string());
                }
                orders.remove(&order_id);
            }
        }
    }
}

/// When a charge requested at `requested_at` stops being retried.
fn give_up_at(requested_at: DateTime<Utc>, retry_for: Duration) -> DateTime<Utc> {
    let retry_for = chrono::Duration::from_std(retry_for).unwrap_or(chrono::Duration::MAX);
    requested_at
        .checked_add_signed(retry_for)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Tries `op` for `order_id` once (it failed `failures` times before): the step (an answer to
/// emit, work to keep pending, or done) and what is pending afterwards.
async fn attempt(
    gateway: &dyn PaymentGateway,
    order_id: Uuid,
    op: PendingOp,
    failures: u32,
    now: DateTime<Utc>,
) -> (Vec<CallResult>, Option<(PendingOp, u32)>) {
    match op {
        PendingOp::Charge {
            cause,
            request,
            give_up_at,
        } => {
            let result = gateway
                .charge(
                    order_id,
                    request.amount_minor,
                    &request.currency,
                    &request.payment,
                )
                .await;
            let answer = match result {
                Ok(charge) => match charge.outcome {
                    ChargeOutcome::Settled => {
                        metrics::payment_charge("settled");
                        OrderEvent::PaymentSettled(PaymentSettled {
                            amount_minor: request.amount_minor,
                            currency: request.currency.clone(),
                            charge_id: charge.charge_id,
                        })
                    }
                    ChargeOutcome::Declined { reason } => {
                        metrics::payment_charge("declined");
                        let reason = DeclineReason::Gateway(reason);
                        metrics::payment_decline(reason.as_str());
                        OrderEvent::PaymentDeclined(PaymentDeclined { reason })
                    }
                },
                Err(err) if is_transient(&err) && now < give_up_at => {
                    metrics::payment_charge("unavailable");
                    tracing::warn!(%order_id, error = %err, failures = failures + 1,
                        "gateway unavailable; the charge stays pending and is retried");
                    let op = PendingOp::Charge {
                        cause,
                        request,
                        give_up_at,
                    };
                    return (
                        vec![CallResult::Keep(op.clone(), failures + 1)],
                        Some((op, failures + 1)),
                    );
                }
                Err(err) => {
                    let reason = declined_reason(&err);
                    metrics::payment_charge("declined");
                    metrics::payment_decline(reason.as_str());
                    tracing::warn!(%order_id, error = %err, reason = reason.as_str(),
                        "gateway call failed for good; declining the payment");
                    OrderEvent::PaymentDeclined(PaymentDeclined { reason })
                }
            };
            (
                vec![
                    CallResult::Emit(Box::new(reply(order_id, &cause, answer))),
                    CallResult::Done,
                ],
                None,
            )
        }
        PendingOp::Refund { cause } => match gateway.refund(order_id).await {
            Ok(Refund::Refunded {
                amount_minor,
                currency,
                refund_id,
            }) => {
                metrics::payment_refund("refunded");
                tracing::info!(%order_id, %refund_id, "charge of a rejected or cancelled order refunded");
                let refunded = OrderEvent::Refunded(Refunded {
                    amount_minor,
                    currency,
                });
                (
                    vec![
                        CallResult::Emit(Box::new(reply(order_id, &cause, refunded))),
                        CallResult::Done,
                    ],
                    None,
                )
            }
            Ok(Refund::NoCharge) => {
                metrics::payment_refund("no_charge");
                (vec![CallResult::Done], None)
            }
            Err(err) => {
                metrics::payment_refund("failed");
                // Never given up: a rejected or cancelled order must end holding no charge.
                tracing::warn!(%order_id, error = %err, failures = failures + 1,
                    "refund failed; it stays pending and is retried");
                let op = PendingOp::Refund { cause };
                (
                    vec![CallResult::Keep(op.clone(), failures + 1)],
                    Some((op, failures + 1)),
                )
            }
        },
    }
}

/// Failures that mean "ask again later": timeouts, unreachable, overloaded, open breaker.
fn is_transient(err: &GatewayError) -> bool {
    err.is_unreachable()
}

/// The decline reason for a failed gateway call: unreachable (timeouts, 5xx, circuit open, retries
/// exhausted) is `gateway_timeout`, which the saga turns into `payment_timeout`.
fn declined_reason(err: &GatewayError) -> DeclineReason {
    if err.is_unreachable() {
        DeclineReason::GatewayTimeout
    } else {
        DeclineReason::GatewayError
    }
}

/// The answer to `cause` (an event of `order_id`), with an event id derived from it: handling the
/// same input twice (redelivery, a retry from `tick`) emits the same event, which consumers
/// deduplicate.
fn reply(order_id: Uuid, cause: &Cause, event: OrderEvent) -> OrderEnvelope {
    let mut reply = OrderEnvelope::new(order_id, event, Some(cause.event_id), cause.correlation_id);
    reply.event_id = derived_event_id(PaymentsStage::NAME, cause.event_id, 0);
    reply.occurred_at = cause.occurred_at;
    reply
}

/// Whether the payments stage acts on `event`: charges `payment_requested`, refunds (or voids)
/// the charge of an order rejected for a payment reason or cancelled.
pub fn is_for_payments(event: &OrderEvent) -> bool {
    match event {
        OrderEvent::PaymentRequested(_) => true,
        // Only payment rejections can have a charge; stock rejections never asked for one.
        OrderEvent::OrderRejected(r) => matches!(
            r.reason,
            RejectReason::PaymentDeclined | RejectReason::PaymentTimeout
        ),
        // A cancelled order may have been paying (payment requested, maybe charged): refund or
        // void it, exactly as for a payment rejection (no charge: the gateway says so).
        OrderEvent::OrderCancelled(_) => true,
        _ => false,
    }
}

impl Stage for PaymentsStage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn input_topic(&self) -> String {
        self.topics.orders.clone()
    }

    fn restore(&mut self, partition: i32, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let orders = self.pending.entry(partition).or_default();
        let Ok(order_id) = key.parse::<Uuid>() else {
            return Err("payments changelog: key is not an order id".to_owned());
        };
        match value.map(PendingOp::from_json) {
            None => {
                orders.remove(&order_id);
            }
            Some(Ok(op)) => {
                // Retried at the first tick after the restore.
                orders.insert(
                    order_id,
                    Pending {
                        op,
                        failures: 0,
                        next_at: None,
                    },
                );
            }
            Some(Err(err)) => {
                return Err(format!(
                    "payments changelog: unreadable pending operation: {err}"
                ));
            }
        }
        Ok(())
    }

    fn revoke(&mut self, partition: i32) {
        self.pending.remove(&partition);
    }

    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        // Group by order, keeping each order's events in offset order.
        let mut groups: Vec<OrderWork> = Vec::new();
        let mut group_of: HashMap<(i32, Uuid), usize> = HashMap::new();
        for input in batch {
            let event = match OrderEnvelope::decode(input.bytes()) {
                Ok(event) => event,
                Err(err) => {
                    out.dead_letter_decode(input, &err);
                    continue;
                }
            };
            if !is_for_payments(&event.event) {
                continue;
            }
            let key = (input.partition, event.order_id);
            let g = *group_of.entry(key).or_insert_with(|| {
                groups.push(OrderWork {
                    partition: input.partition,
                    order_id: event.order_id,
                    before: self
                        .pending
                        .get(&input.partition)
                        .and_then(|orders| orders.get(&event.order_id))
                        .cloned(),
                    events: Vec::new(),
                });
                groups.len() - 1
            });
            groups[g].events.push(event);
        }
        if groups.is_empty() {
            return;
        }
        let gateway = &self.gateway;
        let retry = self.retry;
        let results: Vec<(OrderWork, Vec<CallResult>)> = self.handle.block_on(
            stream::iter(groups)
                .map(|work| Self::order_steps(Arc::clone(gateway), retry, work))
                .buffered(self.concurrency)
                .collect(),
        );
        let now = SystemTime::now();
        for (work, steps) in results {
            self.apply(work.partition, work.order_id, steps, now, out);
        }
    }

    fn tick(&mut self, now: SystemTime, out: &mut Effects) {
        for (partition, order_id, steps) in self.retry_due(now) {
            self.apply(partition, order_id, steps, now, out);
        }
        metrics::payments_pending(self.pending_count());
    }
}
