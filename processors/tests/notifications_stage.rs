//! The notifications stage without a broker: dedup by source event id, records on the
//! notifications topic, changelog restore, failures recorded, state tombstoned after the
//! retention without ever delivering a late duplicate afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};

use futures::future::BoxFuture;
use futures::FutureExt;
use orderpipe_processors::notifications::{
    plan, DeliveryError, Handled, LogSink, Notification, NotificationSink, NotificationsStage,
    NotifyState, Outcome, Plan,
};
use orderpipe_processors::RetryPolicy;
use orderpipe_processors::{ChangelogRecord, Effects, Input, Stage};
use orderpipe_schemas::{
    NotificationEnvelope, NotificationEvent, NotificationKind, OrderConfirmed, OrderEnvelope,
    OrderEvent, OrderPlaced, OrderRejected, PaymentRef, Refunded, RejectReason, Topics,
};
use tokio::runtime::Runtime;
use uuid::Uuid;

/// Records deliveries; fails every delivery while `failing`.
#[derive(Default)]
struct Recorder {
    delivered: Mutex<Vec<Notification>>,
    failing: Mutex<bool>,
}

impl NotificationSink for Recorder {
    fn deliver<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<(), DeliveryError>> {
        let result = if *self.failing.lock().unwrap() {
            Err(DeliveryError::transient("receiver down"))
        } else {
            self.delivered.lock().unwrap().push(n.clone());
            Ok(())
        };
        futures::future::ready(result).boxed()
    }
}

/// A multi-thread runtime: the stage drives futures with `Handle::block_on` from its own thread,
/// which cannot drive a current-thread runtime's timers.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    }
}

fn order_event(order_id: Uuid, event: OrderEvent) -> OrderEnvelope {
    OrderEnvelope::new(order_id, event, None, Uuid::from_u128(99))
}

fn placed(order_id: Uuid) -> OrderEnvelope {
    order_event(
        order_id,
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: "cust-42".into(),
            currency: "EUR".into(),
            lines: vec![],
            total_minor: 0,
            payment: PaymentRef {
                method: "card".into(),
                token: "tok_secret".into(),
            },
        }),
    )
}

fn process(
    stage: &mut NotificationsStage,
    events: &[&OrderEnvelope],
) -> (Effects, Vec<NotificationEnvelope>) {
    let payloads: Vec<Vec<u8>> = events.iter().map(|e| e.encode()).collect();
    let inputs: Vec<Input<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Input {
            topic: "orders",
            partition: 1,
            offset: i as i64,
            key: None,
            payload: Some(p),
            timestamp_ms: None,
        })
        .collect();
    let mut out = Effects::new();
    stage.process(&inputs, &mut out);
    let records = out
        .outputs()
        .iter()
        .map(|o| {
            assert_eq!(o.topic, "notifications");
            NotificationEnvelope::decode(&o.payload).unwrap()
        })
        .collect();
    (out, records)
}

#[test]
fn a_terminal_event_is_requested_delivered_and_recorded_once() {
    let rt = runtime();
    let sink = Arc::new(Recorder::default());
    let mut stage = NotificationsStage::new(
        Topics::default(),
        sink.clone(),
        rt.handle().clone(),
        policy(),
    );
    let id = Uuid::now_v7();
    let rejected = order_event(
        id,
        OrderEvent::OrderRejected(OrderRejected {
            reason: RejectReason::OutOfStock,
        }),
    );
    // Given the order was placed, when its rejection arrives (twice, as a redelivery would)
    let (out, records) = process(&mut stage, &[&placed(id), &rejected, &rejected]);
    // Then one notification_requested and one notification_sent are recorded
    assert_eq!(records.len(), 2, "{records:?}");
    let NotificationEvent::NotificationRequested(request) = &records[0].event else {
        panic!("{records:?}")
    };
    assert_eq!(
        (request.customer_id.as_str(), request.kind),
        ("cust-42", NotificationKind::OrderRejected)
    );
    assert_eq!(records[0].causation_id, Some(rejected.event_id));
    assert_eq!(records[0].correlation_id, rejected.correlation_id);
    let NotificationEvent::NotificationSent(sent) = &records[1].event else {
        panic!("{records:?}")
    };
    assert_eq!((sent.request_id, sent.attempts), (records[0].event_id, 1));
    // And the sink got it once, with the reason and the source event id
    let delivered = sink.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        (
            delivered[0].event_id,
            delivered[0].reason.as_deref(),
            delivered[0].status.as_str()
        ),
        (rejected.event_id, Some("out_of_stock"), "rejected")
    );
    // And the dedup record is in the changelog, keyed by order
    let record = out.changelog().last().unwrap();
    assert_eq!((record.partition, record.key.clone()), (1, id.to_string()));
    assert!(!String::from_utf8_lossy(record.value.as_ref().unwrap()).contains("tok_secret"));

    // When a new instance restores the changelog and the event is redelivered, nothing is sent
    let mut restarted = NotificationsStage::new(
        Topics::default(),
        sink.clone(),
        rt.handle().clone(),
        policy(),
    );
    for r in out.changelog() {
        restarted
            .restore(r.partition, &r.key, r.value.as_deref())
            .unwrap();
    }
    let (again, repeated) = process(&mut restarted, &[&rejected]);
    // Its records are repeated as they were (same ids: a redelivery may have lost them), and
    // the sink is not called again
    let ids = |rs: &[NotificationEnvelope]| -> Vec<_> {
        rs.iter().map(|r| (r.event_id, r.event.clone())).collect()
    };
    assert_eq!(ids(&repeated), ids(&records));
    assert!(again.changelog().is_empty());
    assert_eq!(sink.delivered.lock().unwrap().len(), 1);
}

#[test]
fn confirmations_and_refunds_are_notified_too_other_events_are_not() {
    let rt = runtime();
    let sink = Arc::new(Recorder::default());
    let mut stage = NotificationsStage::new(
        Topics::default(),
        sink.clone(),
        rt.handle().clone(),
        policy(),
    );
    let id = Uuid::now_v7();
    let refunded = order_event(
        id,
        OrderEvent::Refunded(Refunded {
            amount_minor: 500,
            currency: "EUR".into(),
        }),
    );
    let (_, records) = process(
        &mut stage,
        &[
            &placed(id),
            &order_event(id, OrderEvent::OrderConfirmed(OrderConfirmed {})),
            &refunded,
            &order_event(
                id,
                OrderEvent::StockReserved(orderpipe_schemas::StockReserved {}),
            ),
        ],
    );
    assert_eq!(records.len(), 4);
    let delivered = sink.delivered.lock().unwrap().clone();
    let kinds: Vec<NotificationKind> = delivered.iter().map(|n| n.kind).collect();
    assert_eq!(
        kinds,
        [NotificationKind::OrderConfirmed, NotificationKind::Refunded]
    );
    assert_eq!(
        (delivered[1].amount_minor, delivered[1].currency.as_deref()),
        (Some(500), Some("EUR"))
    );
}

#[test]
fn a_failed_delivery_is_recorded_with_its_attempts() {
    let rt = runtime();
    let sink = Arc::new(Recorder::default());
    *sink.failing.lock().unwrap() = true;
    let mut stage = NotificationsStage::new(Topics::default(), sink, rt.handle().clone(), policy());
    let id = Uuid::now_v7();
    // No order_placed seen (e.g. the stage started after it): the customer is "unknown"
    let confirmed = order_event(id, OrderEvent::OrderConfirmed(OrderConfirmed {}));
    let (_, records) = process(&mut stage, &[&confirmed]);
    let NotificationEvent::NotificationRequested(request) = &records[0].event else {
        panic!()
    };
    assert_eq!(request.customer_id, "unknown");
    let NotificationEvent::NotificationFailed(failed) = &records[1].event else {
        panic!("{records:?}")
    };
    assert_eq!(
        (failed.attempts, failed.reason.as_str()),
        (3, "receiver down")
    );
    assert_eq!(failed.request_id, records[0].event_id);
}

#[test]
fn plan_is_pure_and_dedups_by_event_id() {
    let id = Uuid::now_v7();
    let confirmed = order_event(id, OrderEvent::OrderConfirmed(OrderConfirmed {}));
    let Plan::Notify(notice) = plan(None, &confirmed) else {
        panic!()
    };
    assert_eq!(notice.kind, NotificationKind::OrderConfirmed);
    let state = NotifyState {
        customer_id: Some("c".into()),
        handled: vec![Handled {
            event_id: confirmed.event_id,
            kind: notice.kind,
            outcome: Outcome::Sent { attempts: 1 },
            at: None,
        }],
        last_event_at: None,
    };
    assert!(
        matches!(plan(Some(&state), &confirmed), Plan::Repeat(h) if h.event_id == confirmed.event_id)
    );
    // A different event of the same order is not a duplicate
    let other = order_event(id, OrderEvent::OrderConfirmed(OrderConfirmed {}));
    assert!(matches!(plan(Some(&state), &other), Plan::Notify(_)));
    // order_placed only teaches the customer once
    assert!(matches!(plan(Some(&state), &placed(id)), Plan::Nothing));
    assert!(
        matches!(plan(None, &placed(id)), Plan::Remember(s) if s.customer_id.as_deref() == Some("cust-42"))
    );
}

#[test]
fn the_log_sink_delivers() {
    let rt = runtime();
    let mut stage = NotificationsStage::new(
        Topics::default(),
        Arc::new(LogSink),
        rt.handle().clone(),
        policy(),
    );
    let id = Uuid::now_v7();
    let (_, records) = process(
        &mut stage,
        &[&order_event(
            id,
            OrderEvent::OrderConfirmed(OrderConfirmed {}),
        )],
    );
    assert!(matches!(
        records[1].event,
        NotificationEvent::NotificationSent(_)
    ));
}

fn at(mut event: OrderEnvelope, t: DateTime<Utc>) -> OrderEnvelope {
    event.occurred_at = t;
    event
}

fn tick(stage: &mut NotificationsStage, now: DateTime<Utc>) -> Effects {
    let mut out = Effects::new();
    stage.tick(SystemTime::from(now), &mut out);
    out
}

/// Keys whose last changelog record is not a tombstone (what compaction keeps live).
fn live_keys(changelog: &[ChangelogRecord]) -> usize {
    let mut last: HashMap<&str, bool> = HashMap::new();
    for r in changelog {
        last.insert(&r.key, r.value.is_some());
    }
    last.values().filter(|&&live| live).count()
}

#[test]
fn notification_state_is_tombstoned_after_the_retention_so_live_keys_stay_bounded() {
    let rt = runtime();
    let sink = Arc::new(Recorder::default());
    let retention = Duration::from_secs(3600);
    let mut stage = NotificationsStage::new(
        Topics::default(),
        sink.clone(),
        rt.handle().clone(),
        policy(),
    )
    .with_retention(retention);
    let t0: DateTime<Utc> = Utc::now() - chrono::Duration::days(2);
    let mut changelog = tick(&mut stage, t0).changelog().to_vec();
    let mut peak = 0;
    // A long sale: 40 waves of 25 orders, one wave every 10 minutes (6 waves per retention),
    // each order placed, then confirmed or rejected
    for wave in 0..40i64 {
        let t = t0 + chrono::Duration::minutes(10 * wave);
        let mut events = Vec::new();
        for i in 0..25 {
            let id = Uuid::now_v7();
            events.push(at(placed(id), t));
            let terminal = if i % 5 == 0 {
                OrderEvent::OrderRejected(OrderRejected {
                    reason: RejectReason::OutOfStock,
                })
            } else {
                OrderEvent::OrderConfirmed(OrderConfirmed {})
            };
            events.push(at(
                order_event(id, terminal),
                t + chrono::Duration::seconds(1),
            ));
        }
        let refs: Vec<&OrderEnvelope> = events.iter().collect();
        let (out, _) = process(&mut stage, &refs);
        assert!(out.dead_letters().is_empty(), "{:?}", out.dead_letters());
        changelog.extend(out.changelog().iter().cloned());
        changelog.extend(
            tick(&mut stage, t + chrono::Duration::seconds(2))
                .changelog()
                .iter()
                .cloned(),
        );
        peak = peak.max(live_keys(&changelog));
    }
    // Every order was notified once
    assert_eq!(sink.delivered.lock().unwrap().len(), 1000);
    // At most the orders of one retention (plus a wave) are live, not all 1000
    assert!(peak <= 7 * 25, "peak live keys {peak}");
    assert_eq!(stage.order_count(), live_keys(&changelog));
    // and once the sale is over by more than the retention, none
    changelog.extend(tick(&mut stage, Utc::now()).changelog().iter().cloned());
    assert_eq!(live_keys(&changelog), 0);
    assert_eq!(stage.order_count(), 0);
}

#[test]
fn a_late_duplicate_of_a_forgotten_notification_is_dead_lettered_not_sent_again() {
    let rt = runtime();
    let sink = Arc::new(Recorder::default());
    let mut stage = NotificationsStage::new(
        Topics::default(),
        sink.clone(),
        rt.handle().clone(),
        policy(),
    )
    .with_retention(Duration::from_secs(3600));
    let t0: DateTime<Utc> = Utc::now() - chrono::Duration::days(2);
    tick(&mut stage, t0);
    let id = Uuid::now_v7();
    let confirmed = at(
        order_event(id, OrderEvent::OrderConfirmed(OrderConfirmed {})),
        t0 + chrono::Duration::seconds(1),
    );
    // Given an order notified once
    let (_, records) = process(&mut stage, &[&at(placed(id), t0), &confirmed]);
    assert_eq!(records.len(), 2);
    assert_eq!(sink.delivered.lock().unwrap().len(), 1);
    // When the retention is over, its state is tombstoned
    let later = t0 + chrono::Duration::hours(2);
    let pruned = tick(&mut stage, later);
    assert_eq!(
        pruned.changelog(),
        [ChangelogRecord {
            partition: 1,
            key: id.to_string(),
            value: None
        }]
    );
    assert!(stage.order(id).is_none());
    // Then a late duplicate of its confirmation is dead-lettered as stale, not delivered again
    let (out, records) = process(&mut stage, &[&confirmed]);
    assert!(records.is_empty(), "{records:?}");
    assert!(out.changelog().is_empty());
    let reasons: Vec<&str> = out
        .dead_letters()
        .iter()
        .map(|d| d.reason.as_str())
        .collect();
    assert_eq!(reasons, ["stale_event"]);
    assert_eq!(sink.delivered.lock().unwrap().len(), 1);
    // and a late duplicate of its order_placed is not remembered again
    let (out, _) = process(&mut stage, &[&at(placed(id), t0)]);
    assert!(out.changelog().is_empty() && out.dead_letters().is_empty());
    assert!(stage.order(id).is_none());
    // While an order of the last hour is still notified
    let fresh = Uuid::now_v7();
    let (out, records) = process(
        &mut stage,
        &[&at(
            order_event(fresh, OrderEvent::OrderConfirmed(OrderConfirmed {})),
            later - chrono::Duration::minutes(30),
        )],
    );
    assert!(out.dead_letters().is_empty());
    assert_eq!(records.len(), 2);
    assert_eq!(sink.delivered.lock().unwrap().len(), 2);
}
