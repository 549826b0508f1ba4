//! The stages measured: the stock stage (both processing modes) and the saga stage, and their
//! inputs.

use std::time::{Duration, Instant, SystemTime};

use anyhow::ensure;
use orderpipe_processors::saga::SagaStage;
use orderpipe_processors::stock::{set_stock, StockStage};
use orderpipe_processors::{ensure_topics, spawn_stage, Config, ProcessingMode};
use orderpipe_schemas::{
    NewOrder, OrderEnvelope, OrderEvent, ReservationRequested, StockAdjustment, StockEnvelope,
    StockEvent,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{load, topics_for, Reader};
use crate::{Args, Measured};

/// N one-line `order_placed` events (the saga's input), as ingest writes them.
pub(crate) fn placed(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let order: NewOrder = serde_json::from_value(json!({
                "customer_id": format!("customer-{i}"),
                "currency": "EUR",
                "lines": [{"sku": "HOT", "quantity": 1, "unit_price_minor": 999}],
                "total_minor": 999,
                "payment": {"method": "card", "token": "tok_bench"},
            }))
            .expect("valid order");
            let id = Uuid::now_v7();
            OrderEnvelope::new(
                id,
                OrderEvent::OrderPlaced(order.into_order_placed()),
                None,
                id,
            )
            .encode()
        })
        .collect()
}

/// The saga stage (exactly-once) on N `order_placed`: decisions/s until every reservation
/// request it emits is readable.
pub(crate) async fn saga_stage(args: &Args) -> anyhow::Result<Measured> {
    eprintln!("saga: saga stage on {} order_placed", args.orders);
    let (mut test_topics, topics) = topics_for("saga").await?;
    for created in ensure_topics(&args.bootstrap, &topics, "saga", 1).await? {
        test_topics.adopt(&created);
    }
    // Keyed by order id as ingest keys them (one partition: the key does not move them).
    let inputs = placed(args.orders);
    load(&args.bootstrap, &topics.orders, "order", &inputs).await?;
    let reader = Reader::start(&args.bootstrap, &topics.stock, args.orders, "saga")?;
    let config = Config {
        batch_max_messages: args.batch_max_messages,
        batch_linger: args.batch_linger,
        ..Config::with_mode(ProcessingMode::ExactlyOnce)
    };
    let shutdown = CancellationToken::new();
    let handle = spawn_stage(
        Box::new(SagaStage::new(topics.clone())),
        &config,
        &args.bootstrap,
        &topics,
        shutdown.clone(),
    )?;
    let outputs = reader.finish().await?;
    shutdown.cancel();
    handle.wait().await?;
    let mut requested = 0;
    let mut first_decision = SystemTime::now();
    for bytes in &outputs.payloads {
        let answer = StockEnvelope::decode(bytes)?;
        first_decision = first_decision.min(answer.occurred_at.into());
        if let StockEvent::ReservationRequested(_) = answer.event {
            requested += 1;
        }
    }
    ensure!(
        requested == args.orders,
        "saga: {requested} reservation requests, expected {}",
        args.orders
    );
    Ok(Measured {
        name: "saga".into(),
        messages: args.orders,
        elapsed: outputs.last.duration_since(first_decision)?,
    })
}

pub(crate) fn requests(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let order = Uuid::now_v7();
            StockEnvelope::new(
                "HOT",
                StockEvent::ReservationRequested(ReservationRequested {
                    order_id: order,
                    customer_id: format!("customer-{i}"),
                    line_index: 0,
                    line_count: 1,
                    quantity: 1,
                }),
                None,
                order,
            )
            .encode()
        })
        .collect()
}

pub(crate) async fn stock_stage(
    args: &Args,
    mode: ProcessingMode,
    stock: u32,
) -> anyhow::Result<Measured> {
    eprintln!(
        "{mode}: stock stage on {} requests for one SKU",
        args.orders
    );
    let (mut test_topics, topics) = topics_for(match mode {
        ProcessingMode::ExactlyOnce => "eos",
        ProcessingMode::AtLeastOnce => "alo",
    })
    .await?;
    for created in ensure_topics(&args.bootstrap, &topics, "stock", 1).await? {
        test_topics.adopt(&created);
    }
    set_stock(
        &args.bootstrap,
        &[],
        &topics,
        "HOT",
        StockAdjustment::Set { quantity: stock },
        None,
    )
    .await?;
    load(
        &args.bootstrap,
        &topics.stock,
        "HOT",
        &requests(args.orders),
    )
    .await?;

    let reader = Reader::start(
        &args.bootstrap,
        &topics.orders,
        args.orders,
        &mode.to_string(),
    )?;
    let config = Config {
        batch_max_messages: args.batch_max_messages,
        batch_linger: args.batch_linger,
        ..Config::with_mode(mode)
    };
    let shutdown = CancellationToken::new();
    let handle = spawn_stage(
        Box::new(StockStage::new(topics.clone())),
        &config,
        &args.bootstrap,
        &topics,
        shutdown.clone(),
    )?;
    let wait_ready = Instant::now() + Duration::from_secs(60);
    while !handle.is_ready() {
        ensure!(Instant::now() < wait_ready, "stage not ready after 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let outputs = reader.finish().await?;
    shutdown.cancel();
    handle.wait().await?;

    let mut reserved = 0;
    let mut first_decision = SystemTime::now();
    for bytes in &outputs.payloads {
        let answer = OrderEnvelope::decode(bytes)?;
        first_decision = first_decision.min(answer.occurred_at.into());
        if let OrderEvent::StockLineReserved(_) = answer.event {
            reserved += 1;
        }
    }
    ensure!(
        reserved == stock as usize,
        "{mode}: {reserved} reserved, expected {stock}"
    );
    Ok(Measured {
        name: mode.to_string(),
        messages: args.orders,
        elapsed: outputs.last.duration_since(first_decision)?,
    })
}
