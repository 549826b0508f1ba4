//! The payments stage: consumes the orders topic; charges `payment_requested` orders through the
//! [`PaymentGateway`] and emits `payment_settled` / `payment_declined`; refunds the charge of an
//! order rejected for a payment reason and emits `refunded`. Stateless: the gateway's idempotency
//! (key = order id) is what makes a redelivered or re-processed event harmless.

use std::collections::HashMap;
use std::sync::Arc;

use futures::{stream, StreamExt};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, PaymentDeclined, PaymentRequested, PaymentSettled, Refunded,
    RejectReason, Topics,
};
use tokio::runtime::Handle;
use uuid::Uuid;

use super::config::{ConfigError, PaymentsArgs};
use super::gateway::{ChargeOutcome, GatewayError, PaymentGateway, Refund};
use super::{GATEWAY_ERROR_REASON, GATEWAY_TIMEOUT_REASON};
use crate::runner::{Effects, Input, Stage};
use crate::saga::derived_event_id;

/// The payments stage.
pub struct PaymentsStage {
    topics: Topics,
    gateway: Arc<dyn PaymentGateway>,
    handle: Handle,
    concurrency: usize,
}

impl std::fmt::Debug for PaymentsStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsStage")
            .field("topics", &self.topics)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// What one input leads to.
enum Step {
    Emit(Box<OrderEnvelope>),
    DeadLetter {
        input: usize,
        reason: &'static str,
        detail: String,
    },
}

impl PaymentsStage {
    /// Stage name: group `orderpipe-payments`, topic `payments.dlq`.
    pub const NAME: &'static str = "payments";

    /// A payments stage using `gateway`; gateway calls run on `handle`'s runtime, at most 64 at
    /// once. `handle` must belong to a multi-thread runtime: the stage thread waits with
    /// `Handle::block_on`, which cannot drive a current-thread runtime's timers and IO.
    pub fn new(topics: Topics, gateway: Arc<dyn PaymentGateway>, handle: Handle) -> Self {
        warn_if_current_thread(&handle, Self::NAME);
        Self {
            topics,
            gateway,
            handle,
            concurrency: 64,
        }
    }

    /// At most `n` gateway calls in flight per batch.
    pub fn with_concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The stage as `args` configure it.
    pub fn from_args(
        args: &PaymentsArgs,
        topics: Topics,
        handle: Handle,
    ) -> Result<Self, ConfigError> {
        Ok(Self::new(topics, args.gateway()?, handle).with_concurrency(args.concurrency))
    }

    /// Handles one order's events in order (a refund must not overtake the charge before it).
    async fn order_steps(
        gateway: Arc<dyn PaymentGateway>,
        events: Vec<(usize, OrderEnvelope)>,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        for (input, event) in events {
            match &event.event {
                OrderEvent::PaymentRequested(request) => {
                    let reply = charge(gateway.as_ref(), &event, request).await;
                    steps.push(Step::Emit(Box::new(reply)));
                }
                OrderEvent::OrderRejected(_) => {
                    match gateway.refund(event.order_id).await {
                        Ok(Refund::Refunded {
                            amount_minor,
                            currency,
                            refund_id,
                        }) => {
                            tracing::info!(order_id = %event.order_id, %refund_id,
                                "charge of a rejected order refunded");
                            steps.push(Step::Emit(Box::new(reply_to(
                                &event,
                                OrderEvent::Refunded(Refunded {
                                    amount_minor,
                                    currency,
                                }),
                            ))));
                        }
                        Ok(Refund::NoCharge) => {}
                        Err(err) => {
                            // Redriving the dead letter retries the refund (idempotent per order).
                            tracing::error!(order_id = %event.order_id, error = %err,
                                "refund failed; dead-lettering the rejection for a redrive");
                            steps.push(Step::DeadLetter {
                                input,
                                reason: "refund_failed",
                                detail: err.to_string(),
                            });
                        }
                    }
                }
                _ => {}
            }
        }
        steps
    }
}

/// Warns about a handle that [`Handle::block_on`] from the stage thread would hang on.
pub(crate) fn warn_if_current_thread(handle: &Handle, stage: &str) {
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        tracing::warn!(
            stage,
            "stage given a current-thread runtime handle: its gateway/webhook \
            timers and IO only progress while that runtime's own block_on runs; use a \
            multi-thread runtime"
        );
    }
}

/// Charges one `payment_requested` and builds the answer event.
async fn charge(
    gateway: &dyn PaymentGateway,
    event: &OrderEnvelope,
    request: &PaymentRequested,
) -> OrderEnvelope {
    let result = gateway
        .charge(
            event.order_id,
            request.amount_minor,
            &request.currency,
            &request.payment,
        )
        .await;
    let answer = match result {
        Ok(charge) => match charge.outcome {
            ChargeOutcome::Settled => OrderEvent::PaymentSettled(PaymentSettled {
                amount_minor: request.amount_minor,
                currency: request.currency.clone(),
                charge_id: charge.charge_id,
            }),
            ChargeOutcome::Declined { reason } => {
                OrderEvent::PaymentDeclined(PaymentDeclined { reason })
            }
        },
        Err(err) => {
            let reason = declined_reason(&err);
            tracing::warn!(order_id = %event.order_id, error = %err, reason,
                "gateway call failed; declining the payment");
            OrderEvent::PaymentDeclined(PaymentDeclined {
                reason: reason.to_owned(),
            })
        }
    };
    reply_to(event, answer)
}

/// The decline reason for a failed gateway call: unreachable (timeouts, 5xx, circuit open, retries
/// exhausted) is `gateway_timeout`, which the saga turns into `payment_timeout`.
fn declined_reason(err: &GatewayError) -> &'static str {
    if err.is_unreachable() {
        GATEWAY_TIMEOUT_REASON
    } else {
        GATEWAY_ERROR_REASON
    }
}

/// The answer to `cause`, with an event id derived from it: handling the same input twice
/// (redelivery) emits the same event, which consumers deduplicate.
fn reply_to(cause: &OrderEnvelope, event: OrderEvent) -> OrderEnvelope {
    let mut reply = OrderEnvelope::new(
        cause.order_id,
        event,
        Some(cause.event_id),
        cause.correlation_id,
    );
    reply.event_id = derived_event_id(PaymentsStage::NAME, cause.event_id, cause.occurred_at, 0);
    reply
}

/// Whether the payments stage acts on `event`.
fn is_for_payments(event: &OrderEvent) -> bool {
    match event {
        OrderEvent::PaymentRequested(_) => true,
        // Only payment rejections can have a charge; stock rejections never asked for one.
        OrderEvent::OrderRejected(r) => matches!(
            r.reason,
            RejectReason::PaymentDeclined | RejectReason::PaymentTimeout
        ),
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

    fn restore(&mut self, _partition: i32, _key: &str, _value: Option<&[u8]>) {}

    fn revoke(&mut self, _partition: i32) {}

    fn process(&mut self, batch: &[Input<'_>], out: &mut Effects) {
        // Group by order, keeping each order's events in offset order.
        let mut groups: Vec<Vec<(usize, OrderEnvelope)>> = Vec::new();
        let mut group_of: HashMap<Uuid, usize> = HashMap::new();
        for (i, input) in batch.iter().enumerate() {
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
            let g = *group_of.entry(event.order_id).or_insert_with(|| {
                groups.push(Vec::new());
                groups.len() - 1
            });
            groups[g].push((i, event));
        }
        if groups.is_empty() {
            return;
        }
        let gateway = &self.gateway;
        let steps: Vec<Vec<Step>> = self.handle.block_on(
            stream::iter(groups)
                .map(|events| Self::order_steps(Arc::clone(gateway), events))
                .buffered(self.concurrency)
                .collect(),
        );
        for step in steps.into_iter().flatten() {
            match step {
                Step::Emit(event) => out.emit_order(&self.topics.orders, &event),
                Step::DeadLetter {
                    input,
                    reason,
                    detail,
                } => out.dead_letter(&batch[input], reason, detail),
            }
        }
    }
}
