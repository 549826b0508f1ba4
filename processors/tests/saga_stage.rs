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
    // Given order_placed, a duplicate of it and the line answer in one batch
    let out = process(
        &mut stage,
        "t.orders",
        3,
        &[p.encode(), p.encode(), r.encode()],
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
        second.restore(record.partition, &record.key, record.value.as_deref());
    }
    assert_eq!(second.order(id), first.order(id));
    // When order_placed is redelivered, then nothing is emitted again
    let again = process(&mut second, "orders", 0, &[p.encode()]);
    assert!(again.is_empty(), "{again:?}");
    // When the partition is revoked, its orders are forgotten
    second.revoke(0);
    assert_eq!(second.order_count(), 0);
    // A tombstone deletes a restored order
    second.restore(
        0,
        &id.to_string(),
        Some(&first.order(id).unwrap().to_json()),
    );
    second.restore(0, &id.to_string(), None);
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
