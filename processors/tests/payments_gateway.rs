//! The simulated gateway: idempotency per order, seeded declines, refunds and voids, latency.

use std::time::{Duration, Instant};

use orderpipe_processors::payments::{
    Charge, ChargeOutcome, OrderStats, PaymentGateway, Refund, SimConfig, SimulatedGateway,
};
use orderpipe_schemas::PaymentRef;
use uuid::Uuid;

fn card() -> PaymentRef {
    PaymentRef {
        method: "card".into(),
        token: "tok".into(),
    }
}

async fn charge(gw: &SimulatedGateway, id: Uuid) -> Charge {
    gw.charge(id, 1_000, "EUR", &card()).await.unwrap()
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_first_charge_without_charging_again() {
    let gw = SimulatedGateway::default();
    let id = Uuid::now_v7();
    let first = charge(&gw, id).await;
    assert_eq!(first.outcome, ChargeOutcome::Settled);
    // Even with a different amount, the key decides
    let again = gw.charge(id, 5, "USD", &card()).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        gw.stats(id),
        OrderStats {
            charge_attempts: 2,
            charges: 1,
            ..OrderStats::default()
        }
    );
    assert_eq!(gw.totals().orders_charged_twice, 0);
}

#[tokio::test]
async fn concurrent_charges_of_one_order_charge_once() {
    let gw = SimulatedGateway::new(SimConfig {
        latency: Duration::from_millis(20),
        ..SimConfig::default()
    });
    let id = Uuid::now_v7();
    let answers = futures::future::join_all((0..20).map(|_| charge(&gw, id))).await;
    assert!(answers.iter().all(|a| *a == answers[0]));
    assert_eq!(gw.stats(id).charges, 1);
    assert_eq!(gw.stats(id).charge_attempts, 20);
}

#[tokio::test]
async fn declines_are_seeded_and_stable_across_retries() {
    let all = SimulatedGateway::new(SimConfig {
        decline_rate: 1.0,
        ..SimConfig::default()
    });
    let id = Uuid::now_v7();
    for _ in 0..3 {
        assert!(matches!(
            charge(&all, id).await.outcome,
            ChargeOutcome::Declined { .. }
        ));
    }
    assert_eq!(all.stats(id).charges, 0);
    assert_eq!(all.stats(id).declines, 3);

    // 30% declines: two gateways with the same seed agree on every order.
    let config = SimConfig {
        decline_rate: 0.3,
        seed: 42,
        ..SimConfig::default()
    };
    let (a, b) = (SimulatedGateway::new(config), SimulatedGateway::new(config));
    let mut declined = 0;
    for _ in 0..200 {
        let id = Uuid::now_v7();
        let (x, y) = (charge(&a, id).await, charge(&b, id).await);
        assert_eq!(x, y);
        declined += usize::from(matches!(x.outcome, ChargeOutcome::Declined { .. }));
    }
    assert!((20..=100).contains(&declined), "{declined}");
}

#[tokio::test]
async fn refunds_are_idempotent_and_a_retried_charge_after_a_refund_moves_no_money() {
    let gw = SimulatedGateway::default();
    let id = Uuid::now_v7();
    let first = charge(&gw, id).await;
    let refund = gw.refund(id).await.unwrap();
    assert!(
        matches!(&refund, Refund::Refunded { amount_minor: 1_000, currency, .. } if currency == "EUR")
    );
    assert_eq!(gw.refund(id).await.unwrap(), refund);
    assert_eq!(charge(&gw, id).await, first);
    let stats = gw.stats(id);
    assert_eq!(
        (stats.charges, stats.refunds, stats.refund_attempts),
        (1, 1, 2)
    );
}

#[tokio::test]
async fn a_refund_before_any_charge_voids_the_order() {
    let gw = SimulatedGateway::default();
    let id = Uuid::now_v7();
    assert_eq!(gw.refund(id).await.unwrap(), Refund::NoCharge);
    // A charge request that was still in flight arrives afterwards: declined, no money moves
    assert!(matches!(
        charge(&gw, id).await.outcome,
        ChargeOutcome::Declined { reason } if reason == "order_voided"
    ));
    assert_eq!(gw.stats(id).charges, 0);
}

#[tokio::test]
async fn latency_is_applied_after_the_decision() {
    let gw = SimulatedGateway::new(SimConfig {
        latency: Duration::from_millis(60),
        ..SimConfig::default()
    });
    let id = Uuid::now_v7();
    let started = Instant::now();
    // A caller that gives up before the answer still leaves a charge behind (as a real gateway)
    let gave_up = tokio::time::timeout(Duration::from_millis(10), charge(&gw, id)).await;
    assert!(gave_up.is_err());
    assert_eq!(gw.stats(id).charges, 1);
    charge(&gw, id).await;
    assert!(started.elapsed() >= Duration::from_millis(60));
}
