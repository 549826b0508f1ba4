//! The payments stage without a broker: batches of orders-topic events in, answers out.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{batch, payment_requested as requested, restored, runtime};
use futures::future::BoxFuture;

use orderpipe_processors::payments::{
    Charge, GatewayError, HttpGateway, HttpGatewayConfig, PaymentGateway, PaymentsStage, PendingOp,
    Refund, RetrySchedule, SimConfig, SimulatedGateway,
};
use orderpipe_processors::{ChangelogRecord, Effects, RetryPolicy, Stage};
use orderpipe_schemas::{
    DeclineReason, OrderEnvelope, OrderEvent, OrderRejected, PaymentDeclined, PaymentRef,
    PaymentSettled, Refunded, RejectReason, Topics,
};
use tokio::runtime::Runtime;
use uuid::Uuid;

fn rejected(order_id: Uuid, reason: RejectReason) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::OrderRejected(OrderRejected { reason }),
        None,
        Uuid::from_u128(7),
    )
}

fn process(stage: &mut PaymentsStage, events: &[OrderEnvelope]) -> (Effects, Vec<OrderEnvelope>) {
    let payloads: Vec<Vec<u8>> = events.iter().map(OrderEnvelope::encode).collect();
    let mut out = Effects::new();
    stage.process(&batch("orders", 0, 0, &payloads), &mut out);
    let emitted = out
        .outputs()
        .iter()
        .map(|o| {
            assert_eq!(o.topic, "orders");
            OrderEnvelope::decode(&o.payload).unwrap()
        })
        .collect();
    (out, emitted)
}

fn stage_with(rt: &Runtime, gateway: Arc<dyn PaymentGateway>) -> PaymentsStage {
    PaymentsStage::new(Topics::default(), gateway, rt.handle().clone())
}

#[test]
fn settles_and_a_redelivered_request_does_not_charge_twice() {
    let rt = runtime(2);
    let gw = Arc::new(SimulatedGateway::default());
    let mut stage = stage_with(&rt, gw.clone());
    let id = Uuid::now_v7();
    let request = requested(id, 1_250);
    let (_, first) = process(&mut stage, std::slice::from_ref(&request));
    assert_eq!(first.len(), 1);
    let OrderEvent::PaymentSettled(settled) = &first[0].event else {
        panic!("{first:?}")
    };
    assert_eq!(
        (settled.amount_minor, settled.currency.as_str()),
        (1_250, "EUR")
    );
    assert_eq!(first[0].causation_id, Some(request.event_id));
    assert_eq!(first[0].correlation_id, request.correlation_id);
    // When the same event is processed again (redelivery after a crash)
    let (_, again) = process(&mut stage, &[request]);
    // Then the same charge comes back and money moved once
    assert_eq!(again[0].event, first[0].event);
    // with the same event id, so consumers see one event
    assert_eq!(again[0].event_id, first[0].event_id);
    assert_eq!((gw.stats(id).charge_attempts, gw.stats(id).charges), (2, 1));
}

#[test]
fn declines_come_back_with_the_gateway_reason() {
    let rt = runtime(2);
    let gw = Arc::new(SimulatedGateway::new(SimConfig {
        decline_rate: 1.0,
        ..SimConfig::default()
    }));
    let mut stage = stage_with(&rt, gw);
    let (_, out) = process(&mut stage, &[requested(Uuid::now_v7(), 100)]);
    assert_eq!(
        out[0].event,
        OrderEvent::PaymentDeclined(PaymentDeclined {
            reason: "insufficient_funds".into()
        })
    );
}

#[test]
fn a_charge_of_an_order_rejected_for_a_payment_reason_is_refunded() {
    let rt = runtime(2);
    let gw = Arc::new(SimulatedGateway::default());
    let mut stage = stage_with(&rt, gw.clone());
    let id = Uuid::now_v7();
    // Given a charge that happened (e.g. the answer was lost and the saga timed the order out),
    // in the same batch as the rejection: the refund must not overtake the charge
    let rejection = rejected(id, RejectReason::PaymentTimeout);
    let (_, out) = process(&mut stage, &[requested(id, 900), rejection.clone()]);
    let types: Vec<&str> = out.iter().map(OrderEnvelope::event_type).collect();
    assert_eq!(types, ["payment_settled", "refunded"]);
    assert_eq!(
        out[1].event,
        OrderEvent::Refunded(Refunded {
            amount_minor: 900,
            currency: "EUR".into()
        })
    );
    assert_eq!(out[1].causation_id, Some(rejection.event_id));
    assert_eq!((gw.stats(id).charges, gw.stats(id).refunds), (1, 1));
    // A payment_settled arriving later (redelivered request) finds the refund in place
    let (_, late) = process(&mut stage, &[requested(id, 900)]);
    assert!(matches!(
        late[0].event,
        OrderEvent::PaymentSettled(PaymentSettled { .. })
    ));
    assert_eq!(gw.stats(id).charges, 1);
}

#[test]
fn stock_rejections_and_other_events_make_no_gateway_call() {
    let rt = runtime(2);
    let gw = Arc::new(SimulatedGateway::default());
    let mut stage = stage_with(&rt, gw.clone());
    let id = Uuid::now_v7();
    let (out, emitted) = process(
        &mut stage,
        &[
            rejected(id, RejectReason::OutOfStock),
            rejected(id, RejectReason::LimitExceeded),
        ],
    );
    assert!(emitted.is_empty() && out.dead_letters().is_empty());
    assert_eq!(gw.totals().orders, 0);
    // A payment rejection without any charge: the order is voided, nothing emitted
    let (_, emitted) = process(&mut stage, &[rejected(id, RejectReason::PaymentDeclined)]);
    assert!(emitted.is_empty());
    assert_eq!(gw.stats(id).refund_attempts, 1);
}

#[test]
fn an_unreachable_gateway_declines_only_after_the_retry_window_and_never_dead_letters_a_refund() {
    let rt = runtime(2);
    // A port nothing listens on
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = HttpGatewayConfig::new(format!("http://127.0.0.1:{port}"));
    config.request_timeout = Duration::from_millis(200);
    config.retry = RetryPolicy {
        max_attempts: 2,
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(10),
    };
    let gw = Arc::new(HttpGateway::new(config).unwrap());
    // No retry window: a charge the gateway cannot take is declined at once
    let mut stage = stage_with(&rt, gw).with_retry(RetrySchedule {
        charge_retry_for: Duration::ZERO,
        ..RetrySchedule::default()
    });
    let id = Uuid::now_v7();
    let (out, emitted) = process(
        &mut stage,
        &[
            requested(id, 100),
            rejected(id, RejectReason::PaymentTimeout),
        ],
    );
    assert_eq!(
        emitted[0].event,
        OrderEvent::PaymentDeclined(PaymentDeclined {
            reason: DeclineReason::GatewayTimeout
        })
    );
    assert_eq!(emitted.len(), 1);
    // The refund is kept for a retry, not dead-lettered
    assert!(out.dead_letters().is_empty(), "{:?}", out.dead_letters());
    assert!(matches!(stage.pending(id), Some(PendingOp::Refund { .. })));
}

/// A gateway that answers like the simulated one, or fails every call with an open breaker.
struct Flaky {
    sim: SimulatedGateway,
    down: AtomicBool,
}

impl Flaky {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            sim: SimulatedGateway::default(),
            down: AtomicBool::new(false),
        })
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl PaymentGateway for Flaky {
    fn charge<'a>(
        &'a self,
        order_id: Uuid,
        amount_minor: i64,
        currency: &'a str,
        payment: &'a PaymentRef,
    ) -> BoxFuture<'a, Result<Charge, GatewayError>> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(GatewayError::CircuitOpen) });
        }
        self.sim.charge(order_id, amount_minor, currency, payment)
    }

    fn refund(&self, order_id: Uuid) -> BoxFuture<'_, Result<Refund, GatewayError>> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(GatewayError::CircuitOpen) });
        }
        self.sim.refund(order_id)
    }
}

fn tick(stage: &mut PaymentsStage, at: SystemTime) -> (Effects, Vec<OrderEnvelope>) {
    let mut out = Effects::new();
    stage.tick(at, &mut out);
    let emitted = out
        .outputs()
        .iter()
        .map(|o| OrderEnvelope::decode(&o.payload).unwrap())
        .collect();
    (out, emitted)
}

#[test]
fn a_refund_that_meets_an_open_breaker_is_retried_from_tick_until_confirmed_across_a_restart() {
    let rt = runtime(2);
    let gw = Flaky::new();
    let mut stage = stage_with(&rt, gw.clone());
    let id = Uuid::now_v7();
    // Given a settled charge
    let (_, settled) = process(&mut stage, &[requested(id, 700)]);
    assert_eq!(settled[0].event_type(), "payment_settled");
    // When the order is rejected while the breaker is open
    gw.set_down(true);
    let rejection = rejected(id, RejectReason::PaymentTimeout);
    let (out, emitted) = process(&mut stage, std::slice::from_ref(&rejection));
    // Then nothing is dead-lettered: the refund is pending in the changelog
    assert!(out.dead_letters().is_empty(), "{:?}", out.dead_letters());
    assert!(emitted.is_empty());
    let mut changelog: Vec<ChangelogRecord> = out.changelog().to_vec();
    assert_eq!(changelog.len(), 1);
    assert_eq!(changelog[0].key, id.to_string());
    assert!(matches!(stage.pending(id), Some(PendingOp::Refund { .. })));
    // and ticks while the gateway is still down keep it (no new changelog record each time)
    let now = SystemTime::now();
    for minutes in [1, 5, 60] {
        let (out, emitted) = tick(&mut stage, now + Duration::from_secs(60 * minutes));
        assert!(emitted.is_empty() && out.changelog().is_empty() && out.dead_letters().is_empty());
    }
    assert!(gw.sim.stats(id).refund_attempts == 0 && gw.sim.stats(id).refunds == 0);
    // When the process restarts (state from the changelog) and the gateway is back
    drop(stage);
    gw.set_down(false);
    let mut stage = restored(stage_with(&rt, gw.clone()), &changelog);
    assert!(matches!(stage.pending(id), Some(PendingOp::Refund { .. })));
    let (out, emitted) = tick(&mut stage, SystemTime::now());
    // Then the refund happens once and is announced, caused by the rejection
    assert_eq!(emitted.len(), 1, "{emitted:?}");
    assert_eq!(
        emitted[0].event,
        OrderEvent::Refunded(Refunded {
            amount_minor: 700,
            currency: "EUR".into()
        })
    );
    assert_eq!(emitted[0].causation_id, Some(rejection.event_id));
    assert_eq!((gw.sim.stats(id).charges, gw.sim.stats(id).refunds), (1, 1));
    // and the pending refund is tombstoned
    changelog.extend(out.changelog().iter().cloned());
    assert_eq!(out.changelog().len(), 1);
    assert_eq!(out.changelog()[0].value, None);
    assert!(stage.pending(id).is_none());
    let (_, again) = tick(&mut stage, SystemTime::now() + Duration::from_secs(3600));
    assert!(again.is_empty());
    // A restart after that has nothing left to do
    let stage = restored(stage_with(&rt, gw), &changelog);
    assert_eq!(stage.pending_count(), 0);
}

#[test]
fn an_open_breaker_keeps_the_charge_pending_and_it_settles_once_the_gateway_is_back() {
    let rt = runtime(2);
    let gw = Flaky::new();
    let mut stage = stage_with(&rt, gw.clone());
    let id = Uuid::now_v7();
    gw.set_down(true);
    let request = requested(id, 1_000);
    // When the breaker is open, the payment is not declined
    let (out, emitted) = process(&mut stage, std::slice::from_ref(&request));
    assert!(emitted.is_empty(), "{emitted:?}");
    assert!(out.dead_letters().is_empty());
    assert_eq!(out.changelog().len(), 1);
    assert!(matches!(stage.pending(id), Some(PendingOp::Charge { .. })));
    let now = SystemTime::now();
    let (_, emitted) = tick(&mut stage, now + Duration::from_secs(5));
    assert!(emitted.is_empty());
    // Then, once the gateway is back, a tick charges it
    gw.set_down(false);
    let (out, emitted) = tick(&mut stage, now + Duration::from_secs(30));
    assert_eq!(emitted.len(), 1);
    assert!(matches!(emitted[0].event, OrderEvent::PaymentSettled(_)));
    assert_eq!(emitted[0].causation_id, Some(request.event_id));
    assert_eq!(out.changelog()[0].value, None);
    // with the id a direct answer has: a redelivered request meets the same event
    let (_, direct) = process(&mut stage, &[request]);
    assert_eq!(direct[0].event_id, emitted[0].event_id);
    assert_eq!(direct[0].encode(), emitted[0].encode());
    assert_eq!(gw.sim.stats(id).charges, 1);
}

#[test]
fn a_charge_the_gateway_cannot_take_is_declined_at_its_deadline_not_before() {
    let rt = runtime(2);
    let gw = Flaky::new();
    let mut stage = stage_with(&rt, gw.clone()).with_retry(RetrySchedule {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
        charge_retry_for: Duration::from_secs(20),
    });
    let id = Uuid::now_v7();
    gw.set_down(true);
    let request = requested(id, 1_000);
    let requested_at: SystemTime = request.occurred_at.into();
    let (_, emitted) = process(&mut stage, &[request]);
    assert!(emitted.is_empty());
    let (_, emitted) = tick(&mut stage, requested_at + Duration::from_secs(19));
    assert!(emitted.is_empty(), "{emitted:?}");
    let (out, emitted) = tick(&mut stage, requested_at + Duration::from_secs(21));
    assert_eq!(
        emitted[0].event,
        OrderEvent::PaymentDeclined(PaymentDeclined {
            reason: DeclineReason::GatewayTimeout
        })
    );
    assert_eq!(out.changelog()[0].value, None);
    assert_eq!(stage.pending_count(), 0);
}

#[test]
fn a_rejection_drops_the_pending_charge_and_voids_the_order() {
    let rt = runtime(2);
    let gw = Flaky::new();
    let mut stage = stage_with(&rt, gw.clone());
    let id = Uuid::now_v7();
    gw.set_down(true);
    process(&mut stage, &[requested(id, 1_000)]);
    let (out, _) = process(&mut stage, &[rejected(id, RejectReason::PaymentTimeout)]);
    assert!(out.dead_letters().is_empty());
    assert!(matches!(stage.pending(id), Some(PendingOp::Refund { .. })));
    gw.set_down(false);
    let (out, emitted) = tick(&mut stage, SystemTime::now() + Duration::from_secs(60));
    // Nothing was charged, so nothing to refund; the order is voided and the charge never happens
    assert!(emitted.is_empty(), "{emitted:?}");
    assert_eq!(out.changelog()[0].value, None);
    let (_, emitted) = tick(&mut stage, SystemTime::now() + Duration::from_secs(120));
    assert!(emitted.is_empty());
    assert_eq!(gw.sim.stats(id).charges, 0);
    assert_eq!(gw.sim.stats(id).refund_attempts, 1);
}

#[test]
fn orders_of_a_batch_are_charged_concurrently() {
    let rt = runtime(2);
    let gw = Arc::new(SimulatedGateway::new(SimConfig {
        latency: Duration::from_millis(50),
        ..SimConfig::default()
    }));
    let mut stage = stage_with(&rt, gw.clone()).with_concurrency(64);
    let events: Vec<OrderEnvelope> = (0..100).map(|_| requested(Uuid::now_v7(), 100)).collect();
    let started = Instant::now();
    let (_, out) = process(&mut stage, &events);
    // 100 x 50 ms one after the other would take 5 s
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.len(), 100);
    // Answers keep the input order
    for (e, o) in events.iter().zip(&out) {
        assert_eq!(o.order_id, e.order_id);
    }
    assert_eq!(gw.totals().charges, 100);
}

#[test]
fn poison_events_are_dead_lettered() {
    let rt = runtime(2);
    let mut stage = stage_with(&rt, Arc::new(SimulatedGateway::default()));
    let mut out = Effects::new();
    stage.process(&batch("orders", 2, 9, &[b"{".to_vec()]), &mut out);
    assert_eq!(out.dead_letters()[0].reason, "malformed");
    assert_eq!(stage.name(), "payments");
}
