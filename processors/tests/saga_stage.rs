//! The saga stage without a broker: batches in, effects out; changelog restore; dead letters.

mod common;

use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use common::batch;
use orderpipe_processors::saga::{OrderState, SagaStage, Timeouts};
use orderpipe_processors::{Effects, Stage};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, OrderLine, OrderPlaced, PaymentRef, RejectReason, StockEnvelope,
    StockEvent, StockLineReserved, Topics,
};
use uuid::Uuid;

fn placed(order_id: Uuid, correlation: Uuid) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: "c".into(),
            currency: "EUR".into(),
            lines: vec![OrderLine {
                sku: "A".into(),
                quantity: 1,
                unit_price_minor: 500,
            }],
            total_minor: 500,
            payment: PaymentRef {
                method: "card".into(),
                token: "tok".into(),
            },
        }),
        None,
        correlation,
    )
}

fn reserved(order_id: Uuid, correlation: Uuid, line_index: u32, sku: &str) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::StockLineReserved(StockLineReserved {
            sku: sku.into(),
            line_index,
            quantity: 1,
        }),
        None,
        correlation,
    )
}

/// Outputs without their emission time: what a repeat must reproduce exactly.
fn same(out: &Effects) -> Vec<(String, String, serde_json::Value)> {
    out.outputs()
        .iter()
        .map(|o| {
            let mut v: serde_json::Value = serde_json::from_slice(&o.payload).unwrap();
            v.as_object_mut().unwrap().remove("occurred_at");
            (o.topic.clone(), o.key.clone(), v)
        })
        .collect()
}

fn process(stage: &mut SagaStage, topic: &str, partition: i32, payloads: &[Vec<u8>]) -> Effects {
    let mut out = Effects::new();
    stage.process(&batch(topic, partition, 0, payloads), &mut out);
    out
}

#[test]
fn a_batch_flows_through_with_causation_correlation_and_changelog() {
    let topics = Topics::with_prefix("t.");
    let mut stage = SagaStage::new(topics.clone());
    assert_eq!(stage.input_topic(), "t.orders");
    let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
    let p = placed(id, corr);
    let r = reserved(id, corr, 0, "A");
    // Given order_placed, a client retry of it (new event id) and the line answer in one batch
    let retry = placed(id, corr);
    let out = process(
        &mut stage,
        "t.orders",
        3,
        &[p.encode(), retry.encode(), r.encode()],
    );
    // Then: one reservation request (stock topic, key sku, caused by order_placed), then
    // stock_reserved + payment_requested (orders topic, key order id, caused by the answer)
    let outputs = out.outputs();
    assert_eq!(outputs.len(), 3, "{outputs:?}");
    assert_eq!(
        (outputs[0].topic.as_str(), outputs[0].key.as_str()),
        ("t.stock", "A")
    );
    let request = StockEnvelope::decode(&outputs[0].payload).unwrap();
    assert!(matches!(request.event, StockEvent::ReservationRequested(_)));
    assert_eq!(
        (request.causation_id, request.correlation_id),
        (Some(p.event_id), corr)
    );
    for o in &outputs[1..] {
        assert_eq!(
            (o.topic.as_str(), o.key.clone()),
            ("t.orders", id.to_string())
        );
        let e = OrderEnvelope::decode(&o.payload).unwrap();
        assert_eq!((e.causation_id, e.correlation_id), (Some(r.event_id), corr));
    }
    // And the changelog holds the order's latest state in the input's partition
    let last = out.changelog().last().unwrap();
    assert_eq!((last.partition, last.key.clone()), (3, id.to_string()));
    let state = OrderState::from_json(last.value.as_deref().unwrap()).unwrap();
    assert_eq!(state.phase_name(), "paying");
    assert!(out.dead_letters().is_empty());
}

#[test]
fn restored_state_recognises_duplicates_and_revoke_forgets() {
    let topics = Topics::default();
    let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
    let p = placed(id, corr);
    let mut first = SagaStage::new(topics.clone());
    let out = process(&mut first, "orders", 0, &[p.encode()]);
    // Given a new instance restored from the first one's changelog
    let mut second = SagaStage::new(topics);
    restore(&mut second, out.changelog());
    assert_eq!(second.order(id), first.order(id));
    // When the client retries the order (same order id, new event id), nothing is emitted
    let retry = placed(id, corr);
    let again = process(&mut second, "orders", 0, &[retry.encode()]);
    assert!(again.is_empty(), "{again:?}");
    // When the same message is redelivered, its reservation requests are repeated as they were
    let redelivered = process(&mut second, "orders", 0, &[p.encode()]);
    assert_eq!(same(&redelivered), same(&out));
    assert!(redelivered.changelog().is_empty());
    // When the partition is revoked, its orders are forgotten
    second.revoke(0);
    assert_eq!(second.order_count(), 0);
    // A tombstone deletes a restored order
    second
        .restore(
            0,
            &id.to_string(),
            Some(&first.order(id).unwrap().to_json()),
        )
        .unwrap();
    second.restore(0, &id.to_string(), None).unwrap();
    assert!(second.order(id).is_none());
}

#[test]
fn poison_and_contradicting_events_are_dead_lettered_and_the_batch_goes_on() {
    let mut stage = SagaStage::new(Topics::default());
    let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
    let out = process(
        &mut stage,
        "orders",
        0,
        &[
            b"not json".to_vec(),
            br#"{"event_type":"no_such_event","schema_version":1}"#.to_vec(),
            placed(id, corr).encode(),
            reserved(id, corr, 5, "A").encode(),
            reserved(id, corr, 0, "A").encode(),
        ],
    );
    let reasons: Vec<&str> = out
        .dead_letters()
        .iter()
        .map(|d| d.reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        ["malformed", "unknown_event_type", "invariant_violation"]
    );
    assert_eq!(out.dead_letters()[2].offset, 3);
    // The valid events still moved the order on
    assert_eq!(stage.order(id).unwrap().phase_name(), "paying");
}

fn settled(order_id: Uuid, correlation: Uuid) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::PaymentSettled(orderpipe_schemas::PaymentSettled {
            amount_minor: 500,
            currency: "EUR".into(),
            charge_id: "ch".into(),
        }),
        None,
        correlation,
    )
}

#[test]
fn a_redelivered_batch_repeats_identical_outputs_until_the_order_is_compacted() {
    let mut stage = SagaStage::new(Topics::default());
    let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
    let batch = [
        placed(id, corr).encode(),
        reserved(id, corr, 0, "A").encode(),
        settled(id, corr).encode(),
    ];
    // Batch 1 confirms the order
    let first = process(&mut stage, "orders", 0, &batch);
    assert_eq!(stage.order(id).unwrap().phase_name(), "confirmed");
    // While it is not committed, the order keeps its details: a repeat within the batch works
    let mut again = Effects::new();
    stage.tick(SystemTime::now(), &mut again);
    assert!(stage.order(id).unwrap().details.is_some());
    assert!(!first.outputs().is_empty());
    // The batch after that (the first one is committed) compacts the order to a small record...
    let other = Uuid::now_v7();
    let third = process_at(&mut stage, 0, 3, &[placed(other, corr).encode()]);
    let compacted = third
        .changelog()
        .iter()
        .find(|c| c.key == id.to_string())
        .expect("compaction record");
    let state = OrderState::from_json(compacted.value.as_deref().unwrap()).unwrap();
    assert!(state.details.is_none() && state.transitions.is_empty());
    assert_eq!(state.phase_name(), "confirmed");
    // ...and a very late redelivery is just ignored
    let late = process(&mut stage, "orders", 0, &batch);
    assert!(late.outputs().is_empty());
}

#[test]
fn a_restored_terminal_order_repeats_in_the_first_batch_and_is_compacted_after() {
    let topics = Topics::default();
    let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
    let batch = [
        placed(id, corr).encode(),
        reserved(id, corr, 0, "A").encode(),
        settled(id, corr).encode(),
    ];
    let mut crashed = SagaStage::new(topics.clone());
    let lost = process(&mut crashed, "orders", 0, &batch);
    // A new instance restores the state that was written, then gets the batch again
    let mut stage = SagaStage::new(topics);
    restore(&mut stage, lost.changelog());
    let again = process(&mut stage, "orders", 0, &batch);
    assert_eq!(same(&again), same(&lost));
    // The next batch compacts it
    let next = process(
        &mut stage,
        "orders",
        0,
        &[placed(Uuid::now_v7(), corr).encode()],
    );
    assert!(next.changelog().iter().any(|c| c.key == id.to_string()));
    assert!(stage.order(id).unwrap().details.is_none());
}

/// The crash of `processors_killed_mid_sale::at_least_once`: an instance makes an order terminal
/// in the middle of a batch, writes its state and dies before its outputs are delivered. The
/// redelivered batch goes past the terminal input; the order must not be compacted before that
/// input is handled again (the batch is not committed yet), or its terminal event is never written.
#[test]
fn a_restored_terminal_order_repeats_when_its_input_is_not_the_last_of_the_batch() {
    let topics = Topics::default();
    let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
    let batch = [
        placed(id, corr).encode(),
        reserved(id, corr, 0, "A").encode(),
        settled(id, corr).encode(),
        placed(Uuid::now_v7(), Uuid::now_v7()).encode(),
        placed(Uuid::now_v7(), Uuid::now_v7()).encode(),
    ];
    let mut crashed = SagaStage::new(topics.clone());
    let lost = process_at(&mut crashed, 0, 10, &batch);
    let mut stage = SagaStage::new(topics);
    restore(&mut stage, lost.changelog());
    let again = process_at(&mut stage, 0, 10, &batch);
    assert_eq!(same(&again), same(&lost));
    assert!(order_types(&again).contains(&"order_confirmed".to_owned()));
}

/// Feeds `changelog` to `stage` as the runner's restore does.
fn restore(stage: &mut SagaStage, changelog: &[orderpipe_processors::ChangelogRecord]) {
    for record in changelog {
        stage
            .restore(record.partition, &record.key, record.value.as_deref())
            .unwrap();
    }
}

/// Processes `payloads` as one batch of `partition` starting at `first_offset`.
fn process_at(
    stage: &mut SagaStage,
    partition: i32,
    first_offset: i64,
    payloads: &[Vec<u8>],
) -> Effects {
    let mut out = Effects::new();
    stage.process(
        &batch("orders", partition, first_offset, payloads),
        &mut out,
    );
    out
}

/// One runner handle: a batch (possibly empty), then the tick, as the runner calls them.
fn handle(
    stage: &mut SagaStage,
    first_offset: i64,
    payloads: &[Vec<u8>],
    now: DateTime<Utc>,
) -> Effects {
    let mut out = if payloads.is_empty() {
        Effects::new()
    } else {
        process_at(stage, 0, first_offset, payloads)
    };
    stage.tick(now.into(), &mut out);
    out
}

fn order_types(out: &Effects) -> Vec<String> {
    out.outputs()
        .iter()
        .filter(|o| o.topic == "orders")
        .map(|o| {
            OrderEnvelope::decode(&o.payload)
                .unwrap()
                .event_type()
                .to_owned()
        })
        .collect()
}

fn stock_types(out: &Effects) -> Vec<(String, u32)> {
    out.outputs()
        .iter()
        .filter(|o| o.topic == "stock")
        .map(|o| {
            let e = StockEnvelope::decode(&o.payload).unwrap();
            let line = match &e.event {
                StockEvent::ReservationRequested(r) => r.line_index,
                StockEvent::ReleaseRequested(r) => r.line_index,
                StockEvent::SaleRequested(r) => r.line_index,
                _ => u32::MAX,
            };
            (e.event_type().to_owned(), line)
        })
        .collect()
}

fn placed_lines(
    order_id: Uuid,
    correlation: Uuid,
    skus: &[&str],
    at: DateTime<Utc>,
) -> OrderEnvelope {
    let mut e = placed(order_id, correlation);
    if let OrderEvent::OrderPlaced(p) = &mut e.event {
        p.lines = skus
            .iter()
            .map(|sku| OrderLine {
                sku: (*sku).into(),
                quantity: 1,
                unit_price_minor: 500,
            })
            .collect();
        p.total_minor = 500 * skus.len() as i64;
    }
    e.occurred_at = at;
    e
}

fn at(mut e: OrderEnvelope, t: DateTime<Utc>) -> OrderEnvelope {
    e.occurred_at = t;
    e
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn timeouts() -> Timeouts {
    Timeouts {
        stock: Duration::from_secs(30),
        payment: Duration::from_secs(60),
    }
}

#[test]
fn the_stock_deadline_rejects_releases_what_is_held_and_a_late_reservation_is_released() {
    let t0: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
    let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
    let inputs = [
        placed_lines(id, corr, &["A", "B"], t0).encode(),
        at(reserved(id, corr, 0, "A"), t0 + secs(1)).encode(),
    ];
    let run = |tick_at: DateTime<Utc>| {
        let mut stage = SagaStage::new(Topics::default()).with_timeouts(timeouts());
        handle(&mut stage, 0, &inputs, t0 + secs(2));
        // Not yet
        let early = handle(&mut stage, 2, &[], t0 + secs(29));
        assert!(early.outputs().is_empty());
        let out = handle(&mut stage, 2, &[], tick_at);
        (stage, out)
    };
    let (mut stage, out) = run(t0 + secs(31));
    // Line 1 never answered (its reservation was dead-lettered, say): the order is rejected and
    // the reserved line 0 released
    assert_eq!(order_types(&out), ["order_rejected"]);
    assert_eq!(stock_types(&out), [("release_requested".to_owned(), 0)]);
    let rejection = out
        .outputs()
        .iter()
        .find(|o| o.topic == "orders")
        .map(|o| OrderEnvelope::decode(&o.payload).unwrap())
        .unwrap();
    assert_eq!(
        rejection.event,
        OrderEvent::OrderRejected(orderpipe_schemas::OrderRejected {
            reason: RejectReason::StockTimeout
        })
    );
    // Stamped with the deadline, not the time the tick ran: another instance deciding it an hour
    // later emits the very same bytes
    assert_eq!(rejection.occurred_at, t0 + secs(30));
    let (_, later) = run(t0 + secs(3600));
    assert_eq!(later.outputs(), out.outputs());
    assert_eq!(stage.order(id).unwrap().phase_name(), "rejected");
    // A late reservation of line 1 is released at once, and only once
    let late = at(reserved(id, corr, 1, "B"), t0 + secs(40)).encode();
    let out = handle(&mut stage, 2, std::slice::from_ref(&late), t0 + secs(41));
    assert!(order_types(&out).is_empty());
    assert_eq!(stock_types(&out), [("release_requested".to_owned(), 1)]);
    let again = handle(
        &mut stage,
        3,
        &[reserved(id, corr, 1, "B").encode()],
        t0 + secs(42),
    );
    assert!(again.outputs().is_empty());
}

#[test]
fn the_payment_deadline_rejects_with_payment_timeout_and_releases_every_line() {
    let t0: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
    let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
    let mut stage = SagaStage::new(Topics::default()).with_timeouts(timeouts());
    let inputs = [
        placed_lines(id, corr, &["A"], t0).encode(),
        at(reserved(id, corr, 0, "A"), t0 + secs(5)).encode(),
    ];
    let out = handle(&mut stage, 0, &inputs, t0 + secs(6));
    assert_eq!(order_types(&out), ["stock_reserved", "payment_requested"]);
    // The payment deadline counts from the last stock answer
    assert!(handle(&mut stage, 2, &[], t0 + secs(64))
        .outputs()
        .is_empty());
    let out = handle(&mut stage, 2, &[], t0 + secs(66));
    assert_eq!(order_types(&out), ["order_rejected"]);
    assert_eq!(stock_types(&out), [("release_requested".to_owned(), 0)]);
    let rejected = OrderEnvelope::decode(&out.outputs().last().unwrap().payload).unwrap();
    assert!(matches!(
        rejected.event,
        OrderEvent::OrderRejected(orderpipe_schemas::OrderRejected {
            reason: RejectReason::PaymentTimeout
        })
    ));
    assert_eq!(rejected.occurred_at, t0 + secs(65));
    // A late payment_settled changes nothing here: the payments stage refunds every charge of
    // an order rejected for payment_timeout when it reads this rejection (after the request)
    let late = handle(&mut stage, 2, &[settled(id, corr).encode()], t0 + secs(70));
    assert!(late.outputs().is_empty());
    assert_eq!(stage.order(id).unwrap().phase_name(), "rejected");
}

#[test]
fn a_redelivery_split_over_batches_after_a_restore_repeats_every_output() {
    let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
    let now = Utc::now();
    let inputs = [
        placed(id, corr).encode(),
        reserved(id, corr, 0, "A").encode(),
        settled(id, corr).encode(),
    ];
    // An instance handles the three inputs (offsets 0..2), writes its state, then dies before its
    // outputs and offsets are committed (at-least-once): the group's committed offset stays 0
    let mut crashed = SagaStage::new(Topics::default());
    let lost = handle(&mut crashed, 0, &inputs, now);
    // The next instance restores the state and is redelivered the inputs one per batch
    // (--processor-batch-max-messages 1)
    let mut stage = SagaStage::new(Topics::default());
    restore(&mut stage, lost.changelog());
    let mut again: Vec<Effects> = Vec::new();
    for (offset, input) in inputs.iter().enumerate() {
        again.push(handle(
            &mut stage,
            offset as i64,
            std::slice::from_ref(input),
            now,
        ));
    }
    // Every output is repeated, identically, the confirmation and the sale included
    let repeated: Vec<_> = again.iter().flat_map(same).collect();
    assert_eq!(repeated, same(&lost));
    assert_eq!(order_types(&again[2]), ["order_confirmed"]);
    assert_eq!(stock_types(&again[2]), [("sale_requested".to_owned(), 0)]);
    // Once the committed offset is past the confirming input, the order is compacted
    let next = handle(&mut stage, 3, &[placed(Uuid::now_v7(), corr).encode()], now);
    assert!(next.changelog().iter().any(|c| c.key == id.to_string()
        && OrderState::from_json(c.value.as_deref().unwrap())
            .unwrap()
            .details
            .is_none()));
    assert!(stage.order(id).unwrap().details.is_none());
}

/// Keys whose last changelog record is a value (not a tombstone).
fn live_keys(changelog: &[orderpipe_processors::ChangelogRecord]) -> usize {
    let mut last: std::collections::HashMap<&str, bool> = std::collections::HashMap::new();
    for r in changelog {
        last.insert(r.key.as_str(), r.value.is_some());
    }
    last.values().filter(|live| **live).count()
}

#[test]
fn terminal_state_is_tombstoned_after_the_retention_so_live_keys_stay_bounded() {
    let retention = Duration::from_secs(3600);
    let mut stage = SagaStage::new(Topics::default()).with_retention(retention);
    let t0: DateTime<Utc> = Utc::now() - chrono::Duration::days(2);
    let mut changelog = Vec::new();
    let mut offset = 0i64;
    let mut peak = 0;
    // A long sale: 40 waves of 25 orders, one wave every 10 minutes (6 waves per retention)
    for wave in 0..40i64 {
        let t = t0 + chrono::Duration::minutes(10 * wave);
        let mut inputs = Vec::new();
        for _ in 0..25 {
            let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
            inputs.push(placed_lines(id, corr, &["A"], t).encode());
            inputs.push(at(reserved(id, corr, 0, "A"), t).encode());
            inputs.push(at(settled(id, corr), t).encode());
        }
        let out = handle(&mut stage, offset, &inputs, t + secs(1));
        offset += inputs.len() as i64;
        changelog.extend(out.changelog().iter().cloned());
        let out = handle(&mut stage, offset, &[], t + secs(2));
        changelog.extend(out.changelog().iter().cloned());
        peak = peak.max(live_keys(&changelog));
    }
    // At most the orders of one retention (plus a wave) are live, not all 1000
    assert!(peak <= 7 * 25, "peak live keys {peak}");
    assert_eq!(stage.order_count(), live_keys(&changelog));
    // and once the sale is over by more than the retention, none
    let out = handle(&mut stage, offset, &[], Utc::now());
    changelog.extend(out.changelog().iter().cloned());
    assert_eq!(live_keys(&changelog), 0);
    assert_eq!(stage.order_count(), 0);
}

/// At-least-once: the runner writes a handle's state records before its outputs. A deadline
/// decision has no input to redeliver, so a crash between the two must not lose its outputs:
/// the stage restored from the changelog emits them again, byte for byte, in its first handle.
#[test]
fn a_deadline_decision_whose_outputs_were_lost_is_repeated_after_a_restore() {
    let t0: DateTime<Utc> = "2030-01-01T00:00:00Z".parse().unwrap();
    for (skus, answers, deadline_at) in [
        // stock deadline: line 0 reserved, line 1 never answered
        (&["A", "B"][..], 1usize, t0 + secs(31)),
        // payment deadline: every line reserved, no payment outcome
        (&["A"][..], 1usize, t0 + secs(70)),
    ] {
        let (id, corr) = (Uuid::now_v7(), Uuid::now_v7());
        let mut stage = SagaStage::new(Topics::default()).with_timeouts(timeouts());
        let mut inputs = vec![placed_lines(id, corr, skus, t0).encode()];
        for (line, sku) in skus.iter().enumerate().take(answers) {
            inputs.push(at(reserved(id, corr, line as u32, sku), t0 + secs(1)).encode());
        }
        let mut changelog = handle(&mut stage, 0, &inputs, t0 + secs(2))
            .changelog()
            .to_vec();
        // Given the tick that decides the deadline
        let decided = handle(&mut stage, inputs.len() as i64, &[], deadline_at);
        assert_eq!(order_types(&decided), ["order_rejected"], "{skus:?}");
        assert!(!decided.outputs().is_empty());
        // When the process crashes after its state record is written but before its outputs
        changelog.extend(decided.changelog().iter().cloned());
        let mut restored = SagaStage::new(Topics::default()).with_timeouts(timeouts());
        restore(&mut restored, &changelog);
        assert_eq!(restored.order(id).unwrap().phase_name(), "rejected");
        // Then the first handle after the restore emits the very same outputs again
        let again = handle(
            &mut restored,
            inputs.len() as i64,
            &[],
            deadline_at + secs(1),
        );
        assert_eq!(again.outputs(), decided.outputs(), "{skus:?}");
        // Once, not on every handle
        let later = handle(
            &mut restored,
            inputs.len() as i64,
            &[],
            deadline_at + secs(2),
        );
        assert!(later.outputs().is_empty(), "{:?}", later.outputs());
    }
}
