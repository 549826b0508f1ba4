//! Helpers shared by the processors' tests.
//!
//! Layout:
//! - this module: the orders the tests send, the events of the saga properties' orders, and a
//!   stage driven without a broker (its runtime, its batches, its restore from a changelog);
//! - `broker`: one test's topics on the test broker ([`broker::Env`]), the stages it runs
//!   ([`broker::Running`]) and the sets of stages a sale goes through;
//! - `hook`: a local webhook receiver's plumbing.
#![allow(dead_code, unreachable_pub)]

pub(crate) mod broker;
pub(crate) mod hook;

use orderpipe_processors::{ChangelogRecord, Input, Stage};
use orderpipe_schemas::{
    CancellationRequested, OrderEnvelope, OrderEvent, OrderLine, OrderPlaced, PaymentRef,
    PaymentRequested, PaymentSettled, StockLineRejected, StockLineReserved, StockRejectReason,
};
use tokio::runtime::Runtime;
use uuid::Uuid;

/// The card every test order pays with.
fn card() -> PaymentRef {
    PaymentRef {
        method: "card".into(),
        token: "tok".into(),
    }
}

/// An `order_placed` of `order_id` with `(sku, quantity)` lines at 1,000 minor units each.
pub(crate) fn order(order_id: Uuid, lines: &[(&str, u32)]) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: format!("cust-{}", order_id.simple()),
            currency: "EUR".into(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| OrderLine {
                    sku: (*sku).into(),
                    quantity: *quantity,
                    unit_price_minor: 1_000,
                })
                .collect(),
            total_minor: lines.iter().map(|(_, q)| i64::from(*q) * 1_000).sum(),
            payment: card(),
        }),
        None,
        order_id,
    )
}

/// The saga's `payment_requested` of `order_id` for `amount_minor` EUR cents.
pub(crate) fn payment_requested(order_id: Uuid, amount_minor: i64) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::PaymentRequested(PaymentRequested {
            amount_minor,
            currency: "EUR".into(),
            payment: card(),
        }),
        None,
        order_id,
    )
}

/// `(order, event type)` of each of `events`: what a failed wait shows.
pub(crate) fn types(events: &[OrderEnvelope]) -> Vec<(Uuid, &'static str)> {
    events
        .iter()
        .map(|e| (e.order_id, e.event_type()))
        .collect()
}

/// `payloads` as one batch of `topic`'s `partition`, at offsets from `first_offset` on.
pub(crate) fn batch<'a>(
    topic: &'a str,
    partition: i32,
    first_offset: i64,
    payloads: &'a [Vec<u8>],
) -> Vec<Input<'a>> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Input {
            topic,
            partition,
            offset: first_offset + i as i64,
            key: None,
            payload: Some(p),
            timestamp_ms: None,
        })
        .collect()
}

/// A multi-thread runtime with `worker_threads` threads for a stage driven without a broker: the
/// stage drives futures with `Handle::block_on` from its own thread, which cannot drive a
/// current-thread runtime's timers.
pub(crate) fn runtime(worker_threads: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .unwrap()
}

/// `stage` after replaying `changelog` into it, as the runner does after a restart.
pub(crate) fn restored<S: Stage>(mut stage: S, changelog: &[ChangelogRecord]) -> S {
    for record in changelog {
        stage
            .restore(record.partition, &record.key, record.value.as_deref())
            .unwrap();
    }
    stage
}

/// The SKU of line `line` in the saga properties' orders.
pub(crate) fn line_sku(line: usize) -> String {
    format!("SKU-{line}")
}

/// The saga properties' `order_placed`: line `i` of `lines` wants `i + 1` units of
/// [`line_sku`]`(i)`.
pub(crate) fn placed_lines(lines: usize) -> OrderEvent {
    OrderEvent::OrderPlaced(OrderPlaced {
        customer_id: "c".into(),
        currency: "EUR".into(),
        lines: (0..lines)
            .map(|i| OrderLine {
                sku: line_sku(i),
                quantity: i as u32 + 1,
                unit_price_minor: 100,
            })
            .collect(),
        total_minor: 100,
        payment: PaymentRef {
            method: "card".into(),
            token: "t".into(),
        },
    })
}

/// The stock stage's answer for line `line` of [`placed_lines`]: reserved, or rejected for
/// `rejected`.
pub(crate) fn line_answer(line: usize, rejected: Option<StockRejectReason>) -> OrderEvent {
    let (sku, line_index, quantity) = (line_sku(line), line as u32, line as u32 + 1);
    match rejected {
        None => OrderEvent::StockLineReserved(StockLineReserved {
            sku,
            line_index,
            quantity,
        }),
        Some(reason) => OrderEvent::StockLineRejected(StockLineRejected {
            sku,
            line_index,
            quantity,
            reason,
        }),
    }
}

/// The gateway's charge of [`placed_lines`]'s order went through.
pub(crate) fn payment_settled() -> OrderEvent {
    OrderEvent::PaymentSettled(PaymentSettled {
        amount_minor: 100,
        currency: "EUR".into(),
        charge_id: "ch".into(),
    })
}

/// What ingest writes for `POST /v1/orders/{id}/cancel` from the checkout.
pub(crate) fn cancellation() -> OrderEvent {
    OrderEvent::CancellationRequested(CancellationRequested {
        client_id: "checkout".into(),
    })
}
