//! The saga stage without a broker: batches in, effects out; changelog restore; dead letters.

use orderpipe_processors::saga::{OrderState, SagaStage};
use orderpipe_processors::{Effects, Input, Stage};
use orderpipe_schemas::{
    OrderEnvelope, OrderEvent, OrderLine, OrderPlaced, PaymentRef, StockEnvelope, StockEvent,
    StockLineReserved, Topics,
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
    let inputs: Vec<Input<'_>> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Input {
            topic,
            partition,
            offset: i as i64,
            key: None,
            payload: Some(p),
            timestamp_ms: None,
        })
        .collect();
    let mut out = Effects::new();
    stage.process(&inputs, &mut out);
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
    for record in out.changelog() {
        second
            .restore(record.partition, &record.key, record.value.as_deref())
            .unwrap();
    }
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
    // The same batch again (at-least-once redelivery: state was written, outputs were lost):
    // every output comes again, with the same event ids
    let again = process(&mut stage, "orders", 0, &batch);
    assert_eq!(same(&again), same(&first));
    assert!(again.changelog().is_empty());
    // The batch after that compacts the order to a small record...
    let other = Uuid::now_v7();
    let third = process(&mut stage, "orders", 0, &[placed(other, corr).encode()]);
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
    for r in lost.changelog() {
        stage
            .restore(r.partition, &r.key, r.value.as_deref())
            .unwrap();
    }
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
