//! The simulated gateway: idempotency per order, seeded declines, refunds and voids, latency.

use std::time::{Duration, Instant};

use orderpipe_processors::payments::{
    Charge, ChargeOutcome, OrderStats, PaymentGateway, Refund, RequestOutcome, SimConfig,
    SimulatedGateway,
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

/// The ledger counts what a gateway really charges: a second idempotency key for one order, or a
/// request without a key, is a second charge, so `orders_charged_twice` and
/// `charge_requests_without_key` can fail (they counted at most one charge per order before).
#[test]
fn the_ledger_records_every_charge_request_with_its_key_and_counts_double_charges() {
    let gw = SimulatedGateway::default();
    let (good, two_keys, keyless, refunded) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );
    // Given one order charged twice under its one key (a retry)
    gw.charge_now(good, 1_000, "EUR");
    gw.charge_now(good, 1_000, "EUR");
    // one charged under two keys
    gw.charge_keyed(Some("k-1"), two_keys, 700, "EUR");
    let second = gw.charge_keyed(Some("k-2"), two_keys, 700, "EUR");
    assert_eq!(second.outcome, ChargeOutcome::Settled);
    // one charged without a key, twice
    gw.charge_keyed(None, keyless, 300, "EUR");
    gw.charge_keyed(None, keyless, 300, "EUR");
    // and one charged, then refunded (twice: a retried refund)
    gw.charge_now(refunded, 500, "EUR");
    gw.refund_now(refunded);
    gw.refund_now(refunded);

    // Then the ledger has every request with its key
    let ledger = gw.ledger(good);
    assert_eq!(ledger.requests.len(), 2);
    assert_eq!(ledger.keys(), [good.to_string().as_str()]);
    assert_eq!(
        ledger
            .requests
            .iter()
            .map(|r| r.outcome)
            .collect::<Vec<_>>(),
        [RequestOutcome::Charged, RequestOutcome::Repeated]
    );
    assert_eq!(gw.ledger(two_keys).keys(), ["k-1", "k-2"]);
    assert_eq!(gw.ledger(keyless).requests_without_key(), 2);
    // the net charged per order: charges minus refunds
    assert_eq!(
        (
            gw.net_charged(good),
            gw.net_charged(two_keys),
            gw.net_charged(keyless),
            gw.net_charged(refunded),
            gw.net_charged(Uuid::now_v7()),
        ),
        (1_000, 1_400, 600, 0, 0)
    );
    // and the totals count the double charges, the keyless requests and the kept charges
    let totals = gw.totals();
    assert_eq!(totals.orders_charged_twice, 2, "{totals:?}");
    assert_eq!(totals.charge_requests_without_key, 2, "{totals:?}");
    assert_eq!(totals.charges_accepted, 6, "{totals:?}");
    assert_eq!(totals.charges, 5, "kept = accepted - refunded: {totals:?}");
    assert_eq!((totals.refunds, totals.refund_attempts), (1, 2));
    assert_eq!(gw.ledgers().len(), 4);
}

#[test]
fn a_refund_before_any_charge_voids_the_order_under_any_key() {
    let gw = SimulatedGateway::default();
    let id = Uuid::now_v7();
    assert_eq!(gw.refund_now(id), Refund::NoCharge);
    for key in [Some("other"), None] {
        let late = gw.charge_keyed(key, id, 1_000, "EUR");
        assert!(
            matches!(late.outcome, ChargeOutcome::Declined { .. }),
            "{late:?}"
        );
    }
    assert_eq!(gw.net_charged(id), 0);
    assert_eq!(gw.totals().charges_accepted, 0);
}
