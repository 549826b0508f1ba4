//! The payments stage against the real broker and the gateway simulator over HTTP, once per
//! processing mode: charges settle once per order whatever the duplicates, a payment rejection
//! after a charge is refunded.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::broker::{Env, Running};
use common::payment_requested as requested;
use orderpipe_gateway_sim as gateway_sim;
use orderpipe_processors::payments::contract::StatsResponse;
use orderpipe_processors::payments::{
    HttpGateway, HttpGatewayConfig, PaymentsStage, SimConfig, SimulatedGateway,
};
use orderpipe_processors::{Config, ProcessingMode};
use orderpipe_schemas::{OrderEnvelope, OrderEvent, OrderRejected, RejectReason};
use orderpipe_testkit::kafka::consume_n;
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

use orderpipe_testkit::both_modes;

both_modes!(charges_once_per_order_and_refunds_payment_rejections);

async fn charges_once_per_order_and_refunds_payment_rejections(mode: ProcessingMode) {
    let env = Env::new(&[("orders", 2)], &[PaymentsStage::NAME], 2).await;
    let topics = &env.topics;

    // The gateway runs as an HTTP server (as it would out of process), 20% declines
    let sim = Arc::new(SimulatedGateway::new(SimConfig {
        decline_rate: 0.2,
        seed: 11,
        latency: Duration::from_millis(5),
    }));
    let stop_sim = CancellationToken::new();
    let addr = gateway_sim::spawn(sim.clone(), stop_sim.clone())
        .await
        .unwrap();

    let config = HttpGatewayConfig::new(format!("http://{addr}"));
    let gateway = Arc::new(HttpGateway::new(config).unwrap());
    let stage = PaymentsStage::new(topics.clone(), gateway, tokio::runtime::Handle::current());
    let running = Running::start(Box::new(stage), &Config::with_mode(mode), topics);

    let reader = env.reader(&topics.orders);

    // Given 30 payment requests, 10 of them twice (the saga redelivered them)
    let orders: Vec<Uuid> = (0..30).map(|_| Uuid::now_v7()).collect();
    for (i, id) in orders.iter().enumerate() {
        env.send_orders([&requested(*id, 1_000 + i as i64)]).await;
        if i % 3 == 0 {
            env.send_orders([&requested(*id, 1_000 + i as i64)]).await;
        }
    }
    // Then every order gets an answer; duplicates get the same answer
    let mut answers: HashMap<Uuid, Vec<OrderEvent>> = HashMap::new();
    while answers.len() < orders.len() || answers.values().map(Vec::len).sum::<usize>() < 40 {
        let got = consume_n(&reader, 1, WAIT).await;
        assert!(!got.is_empty(), "timed out with {} answers", answers.len());
        let e = OrderEnvelope::decode(got[0].payload().unwrap()).unwrap();
        if matches!(
            e.event,
            OrderEvent::PaymentSettled(_) | OrderEvent::PaymentDeclined(_)
        ) {
            answers.entry(e.order_id).or_default().push(e.event);
        }
    }
    for (id, events) in &answers {
        assert!(events.iter().all(|e| *e == events[0]), "{id}: {events:?}");
    }
    let settled: Vec<Uuid> = orders
        .iter()
        .copied()
        .filter(|id| matches!(answers[id][0], OrderEvent::PaymentSettled(_)))
        .collect();
    assert!(
        !settled.is_empty() && settled.len() < orders.len(),
        "20% declines expected"
    );

    // When a settled order is rejected for a payment reason (its answer came too late)
    env.send_orders([&OrderEnvelope::new(
        settled[0],
        OrderEvent::OrderRejected(OrderRejected {
            reason: RejectReason::PaymentTimeout,
        }),
        None,
        settled[0],
    )])
    .await;
    // Then it is refunded
    loop {
        let got = consume_n(&reader, 1, WAIT).await;
        assert!(!got.is_empty(), "no refund");
        let e = OrderEnvelope::decode(got[0].payload().unwrap()).unwrap();
        if let OrderEvent::Refunded(r) = &e.event {
            assert_eq!(e.order_id, settled[0]);
            assert_eq!(r.currency, "EUR");
            break;
        }
    }

    // And the gateway moved money once per settled order, and back once
    let totals = sim.totals();
    assert_eq!(totals.charges_accepted, settled.len() as u64);
    assert_eq!(
        totals.charges,
        settled.len() as u64 - 1,
        "the refunded charge is not kept"
    );
    assert_eq!(totals.orders_charged_twice, 0);
    assert_eq!(totals.charge_requests_without_key, 0);
    assert_eq!(totals.refunds, 1);
    assert_eq!(
        sim.net_charged(settled[0]),
        0,
        "the rejected order nets to zero"
    );
    let stats: StatsResponse = StatsResponse {
        totals,
        orders: sim.all_stats(),
        faults_served: 0,
    };
    assert!(stats.orders.values().all(|o| o.charges <= 1));

    running.stop().await.unwrap();
    stop_sim.cancel();
}
