//! The payments stage without a broker: batches of orders-topic events in, answers out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orderpipe_processors::payments::{
    HttpGateway, HttpGatewayConfig, PaymentGateway, PaymentsStage, RetryPolicy, SimConfig,
    SimulatedGateway, GATEWAY_TIMEOUT_REASON,
};
use orderpipe_processors::{Effects, Input, Stage};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, OrderRejected, PaymentDeclined, PaymentRef, PaymentRequested,
    PaymentSettled, Refunded, RejectReason, Topics,
};
use tokio::runtime::Runtime;
use uuid::Uuid;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn requested(order_id: Uuid, amount_minor: i64) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::PaymentRequested(PaymentRequested {
            amount_minor,
            currency: "EUR".into(),
            payment: PaymentRef {
                method: "card".into(),
                token: "tok".into(),
            },
        }),
        None,
        Uuid::from_u128(7),
    )
}

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
    let inputs: Vec<Input<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Input {
            topic: "orders",
            partition: 0,
            offset: i as i64,
            key: None,
            payload: Some(p),
            timestamp_ms: None,
        })
        .collect();
    let mut out = Effects::new();
    stage.process(&inputs, &mut out);
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
    let rt = runtime();
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
    let rt = runtime();
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
    let rt = runtime();
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
    let rt = runtime();
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
fn an_unreachable_gateway_declines_with_gateway_timeout_and_failed_refunds_are_dead_lettered() {
    let rt = runtime();
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
    let mut stage = stage_with(&rt, gw);
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
            reason: GATEWAY_TIMEOUT_REASON.into()
        })
    );
    let dead: Vec<(&str, i64)> = out
        .dead_letters()
        .iter()
        .map(|d| (d.reason.as_str(), d.offset))
        .collect();
    assert_eq!(dead, [("refund_failed", 1)]);
}

#[test]
fn orders_of_a_batch_are_charged_concurrently() {
    let rt = runtime();
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
    let rt = runtime();
    let mut stage = stage_with(&rt, Arc::new(SimulatedGateway::default()));
    let payload = b"{".to_vec();
    let input = Input {
        topic: "orders",
        partition: 2,
        offset: 9,
        key: None,
        payload: Some(&payload),
        timestamp_ms: None,
    };
    let mut out = Effects::new();
    stage.process(&[input], &mut out);
    assert_eq!(out.dead_letters()[0].reason, "malformed");
    assert_eq!(stage.name(), "payments");
}
