//! The notifications stage without a broker: dedup by source event id, records on the
//! notifications topic, changelog restore, failures recorded, a receiver that is down retried
//! from tick until it answers or the retry window ends, state tombstoned after the retention
//! without ever delivering a late duplicate afresh.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use common::{batch, restored, runtime};

use futures::future::BoxFuture;
use futures::FutureExt;
use orderpipe_processors::notifications::{
    plan, DeliveryError, Handled, LogSink, Notification, NotificationSink, NotificationsStage,
    NotifyState, Outcome, Plan,
};
use orderpipe_processors::RetryPolicy;
use orderpipe_processors::{ChangelogRecord, Effects, Stage};
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

impl Recorder {
    /// Makes every delivery fail from now on, or succeed.
    fn fail(&self, failing: bool) {
        *self.failing.lock().unwrap() = failing;
    }

    /// What was delivered so far.
    fn delivered(&self) -> Vec<Notification> {
        self.delivered.lock().unwrap().clone()
    }
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    }
}

/// A stage delivering to `sink` with [`policy`], on `rt`.
fn new_stage(rt: &Runtime, sink: Arc<dyn NotificationSink>) -> NotificationsStage {
    NotificationsStage::new(Topics::default(), sink, rt.handle().clone(), policy())
}

/// A runtime, a recording sink, and a stage delivering to it.
fn setup() -> (Runtime, Arc<Recorder>, NotificationsStage) {
    let rt = runtime(1);
    let sink = Arc::new(Recorder::default());
    let stage = new_stage(&rt, sink.clone());
    (rt, sink, stage)
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
    let mut out = Effects::new();
    stage.process(&batch("orders", 1, 0, &payloads), &mut out);
    let records = notification_records(&out);
    (out, records)
}

/// The notifications-topic records of `out`.
fn notification_records(out: &Effects) -> Vec<NotificationEnvelope> {
    out.outputs()
        .iter()
        .map(|o| {
            assert_eq!(o.topic, "notifications");
            NotificationEnvelope::decode(&o.payload).unwrap()
        })
        .collect()
}

#[test]
fn a_terminal_event_is_requested_delivered_and_recorded_once() {
    let (rt, sink, mut stage) = setup();
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
    let delivered = sink.delivered();
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
    let mut restarted = restored(new_stage(&rt, sink.clone()), out.changelog());
    let (again, repeated) = process(&mut restarted, &[&rejected]);
    // Its records are repeated as they were (same ids: a redelivery may have lost them), and
    // the sink is not called again
    let ids = |rs: &[NotificationEnvelope]| -> Vec<_> {
        rs.iter().map(|r| (r.event_id, r.event.clone())).collect()
    };
    assert_eq!(ids(&repeated), ids(&records));
    assert!(again.changelog().is_empty());
    assert_eq!(sink.delivered().len(), 1);
}

#[test]
fn confirmations_and_refunds_are_notified_too_other_events_are_not() {
    let (_rt, sink, mut stage) = setup();
    let id = Uuid::now_v7();
    let (_, records) = process(
        &mut stage,
        &[
            &placed(id),
            &confirmed(id),
            &refunded(id),
            &order_event(
                id,
                OrderEvent::StockReserved(orderpipe_schemas::StockReserved {}),
            ),
        ],
    );
    assert_eq!(records.len(), 4);
    let delivered = sink.delivered();
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
    let (_rt, sink, stage) = setup();
    sink.fail(true);
    // No retry window: given up after the attempts within the batch
    let mut stage = stage.with_retry_for(Duration::ZERO);
    let id = Uuid::now_v7();
    // No order_placed seen (e.g. the stage started after it): the customer is "unknown"
    let confirmed = confirmed(id);
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
    let confirmed = confirmed(id);
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
        ..NotifyState::default()
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
    let rt = runtime(1);
    let mut stage = new_stage(&rt, Arc::new(LogSink));
    let id = Uuid::now_v7();
    let (_, records) = process(&mut stage, &[&confirmed(id)]);
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
    let (_rt, sink, stage) = setup();
    let mut stage = stage.with_retention(Duration::from_secs(3600));
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
    assert_eq!(sink.delivered().len(), 1000);
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
    let (_rt, sink, stage) = setup();
    let mut stage = stage.with_retention(Duration::from_secs(3600));
    let t0: DateTime<Utc> = Utc::now() - chrono::Duration::days(2);
    tick(&mut stage, t0);
    let id = Uuid::now_v7();
    let confirmed = at(confirmed(id), t0 + chrono::Duration::seconds(1));
    // Given an order notified once
    let (_, records) = process(&mut stage, &[&at(placed(id), t0), &confirmed]);
    assert_eq!(records.len(), 2);
    assert_eq!(sink.delivered().len(), 1);
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
    assert_eq!(sink.delivered().len(), 1);
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
    assert_eq!(sink.delivered().len(), 2);
}

fn confirmed(order_id: Uuid) -> OrderEnvelope {
    order_event(order_id, OrderEvent::OrderConfirmed(OrderConfirmed {}))
}

fn refunded(order_id: Uuid) -> OrderEnvelope {
    order_event(
        order_id,
        OrderEvent::Refunded(Refunded {
            amount_minor: 500,
            currency: "EUR".into(),
        }),
    )
}

fn kinds(records: &[NotificationEnvelope]) -> Vec<&'static str> {
    records.iter().map(|r| r.event.event_type()).collect()
}

#[test]
fn a_receiver_down_for_a_while_gets_the_notification_later_instead_of_a_failure() {
    let (_rt, sink, mut stage) = setup();
    let t0 = Utc::now();
    let id = Uuid::now_v7();
    let confirmation = confirmed(id);
    // Given a receiver that is down when the confirmation arrives
    sink.fail(true);
    let (out, records) = process(&mut stage, &[&placed(id), &confirmation]);
    // Then nothing is recorded yet (neither requested nor failed), and the notification waits
    // in the order's state, which is in the changelog
    assert!(records.is_empty(), "{records:?}");
    let waiting = &stage.order(id).unwrap().waiting;
    assert_eq!(waiting.len(), 1);
    assert_eq!(
        (waiting[0].attempts, waiting[0].last_error.as_str()),
        (3, "receiver down")
    );
    let state = out.changelog().last().unwrap().value.clone().unwrap();
    assert!(String::from_utf8_lossy(&state).contains("receiver down"));
    assert_eq!(stage.waiting_count(), 1);
    // And a redelivery of the confirmation does not start a second delivery
    let (again, repeated) = process(&mut stage, &[&confirmation]);
    assert!(repeated.is_empty() && again.changelog().is_empty());
    assert_eq!(stage.waiting_count(), 1);
    // When the receiver is back, a tick before the retry is due does nothing
    sink.fail(false);
    let early = tick(&mut stage, t0 + chrono::Duration::milliseconds(500));
    assert!(early.outputs().is_empty());
    assert!(sink.delivered().is_empty());
    // And the tick after the backoff (4 s after 3 failed attempts) delivers it, once, and
    // records it as sent with every attempt counted
    let retried = tick(&mut stage, t0 + chrono::Duration::seconds(5));
    let records = notification_records(&retried);
    assert_eq!(
        kinds(&records),
        ["notification_requested", "notification_sent"]
    );
    let NotificationEvent::NotificationSent(sent) = &records[1].event else {
        panic!("{records:?}")
    };
    assert_eq!((sent.request_id, sent.attempts), (records[0].event_id, 4));
    assert_eq!(records[0].causation_id, Some(confirmation.event_id));
    assert_eq!(records[0].correlation_id, confirmation.correlation_id);
    let delivered = sink.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        (delivered[0].event_id, delivered[0].customer_id.as_str()),
        (confirmation.event_id, "cust-42")
    );
    assert_eq!(stage.waiting_count(), 0);
    assert_eq!(retried.changelog().len(), 1);
    // And a later redelivery repeats exactly those records without delivering again
    let (_, repeated) = process(&mut stage, &[&confirmation]);
    let ids = |rs: &[NotificationEnvelope]| -> Vec<_> { rs.iter().map(|r| r.event_id).collect() };
    assert_eq!(ids(&repeated), ids(&records));
    assert_eq!(sink.delivered().len(), 1);
}

#[test]
fn later_notifications_of_an_order_wait_behind_an_earlier_one_and_keep_their_order() {
    let (_rt, sink, mut stage) = setup();
    let t0 = Utc::now();
    let id = Uuid::now_v7();
    let (confirmation, refund) = (confirmed(id), refunded(id));
    sink.fail(true);
    let (_, records) = process(&mut stage, &[&placed(id), &confirmation]);
    assert!(records.is_empty());
    // Given the receiver is back, a refund of the same order arriving meanwhile is not sent
    // ahead of the confirmation: it queues behind it
    sink.fail(false);
    let (_, records) = process(&mut stage, &[&refund]);
    assert!(records.is_empty(), "{records:?}");
    assert!(sink.delivered().is_empty());
    let waiting = &stage.order(id).unwrap().waiting;
    assert_eq!(
        waiting
            .iter()
            .map(|w| (w.notification.event_id, w.attempts))
            .collect::<Vec<_>>(),
        [(confirmation.event_id, 3), (refund.event_id, 0)]
    );
    // When the retry is due, both go out in the order they happened
    let retried = tick(&mut stage, t0 + chrono::Duration::seconds(5));
    let delivered: Vec<Uuid> = sink.delivered().iter().map(|n| n.event_id).collect();
    assert_eq!(delivered, [confirmation.event_id, refund.event_id]);
    let records = notification_records(&retried);
    assert_eq!(
        kinds(&records),
        [
            "notification_requested",
            "notification_sent",
            "notification_requested",
            "notification_sent"
        ]
    );
    let attempts: Vec<u32> = records
        .iter()
        .filter_map(|r| match &r.event {
            NotificationEvent::NotificationSent(s) => Some(s.attempts),
            _ => None,
        })
        .collect();
    assert_eq!(attempts, [4, 1]);
    assert_eq!(stage.waiting_count(), 0);
}

#[test]
fn a_notification_is_given_up_only_when_its_retry_window_is_over() {
    let (_rt, sink, stage) = setup();
    let mut stage = stage.with_retry_for(Duration::from_secs(60));
    let t0 = Utc::now();
    tick(&mut stage, t0);
    let id = Uuid::now_v7();
    sink.fail(true);
    let (_, records) = process(&mut stage, &[&confirmed(id)]);
    assert!(records.is_empty());
    // Within the window every due retry fails again and the notification keeps waiting, each
    // retry after a longer backoff
    let mut attempts = 3;
    for after in [5, 15, 35] {
        let out = tick(&mut stage, t0 + chrono::Duration::seconds(after));
        assert!(out.outputs().is_empty(), "retry at +{after}s");
        attempts += 1;
        assert_eq!(stage.order(id).unwrap().waiting[0].attempts, attempts);
    }
    assert_eq!(attempts, 6);
    // A tick before the next backoff (after 6 failures: 30 s, the longest) tries nothing
    let out = tick(&mut stage, t0 + chrono::Duration::seconds(50));
    assert!(out.outputs().is_empty());
    assert_eq!(stage.order(id).unwrap().waiting[0].attempts, 6);
    // After the window, the next failed attempt records the failure with every attempt
    let out = tick(&mut stage, t0 + chrono::Duration::seconds(65));
    let records = notification_records(&out);
    assert_eq!(
        kinds(&records),
        ["notification_requested", "notification_failed"]
    );
    let NotificationEvent::NotificationFailed(failed) = &records[1].event else {
        panic!("{records:?}")
    };
    assert_eq!(
        (failed.attempts, failed.reason.as_str()),
        (7, "receiver down")
    );
    assert_eq!(stage.waiting_count(), 0);
    assert!(sink.delivered().is_empty());
}

#[test]
fn waiting_notifications_survive_a_restart_and_are_retried_at_its_first_tick() {
    let (rt, sink, mut stage) = setup();
    let id = Uuid::now_v7();
    let confirmation = confirmed(id);
    sink.fail(true);
    let (out, _) = process(&mut stage, &[&placed(id), &confirmation]);
    // Given an instance that stopped with a notification waiting, a new one restores it
    let mut restarted = restored(new_stage(&rt, sink.clone()), out.changelog());
    assert_eq!(restarted.waiting_count(), 1);
    // When its first tick comes, the notification is delivered
    sink.fail(false);
    let retried = tick(&mut restarted, Utc::now());
    assert_eq!(
        kinds(&notification_records(&retried)),
        ["notification_requested", "notification_sent"]
    );
    assert_eq!(sink.delivered().len(), 1);
    // And a partition handed to another instance takes its waiting work with it
    let mut revoked = restored(new_stage(&rt, sink.clone()), out.changelog());
    revoked.revoke(1);
    assert_eq!(revoked.waiting_count(), 0);
    assert!(tick(&mut revoked, Utc::now()).outputs().is_empty());
    assert_eq!(sink.delivered().len(), 1);
}
