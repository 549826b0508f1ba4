//! Micro-benchmarks of the hot pure code, without any broker or database:
//! envelope encode/decode, order validation, the stock decision (`SkuState::reserve`) and the
//! saga decision (`decide`).
//!
//!     cargo bench -p orderpipe-benches --bench micro

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use orderpipe_processors::saga::decide;
use orderpipe_processors::stock::core::{LineId, ReserveRequest, SkuState};
use orderpipe_schemas::{NewOrder, OrderEnvelope, OrderEvent, StockAdjustment, StockLineReserved};
use serde_json::json;
use uuid::Uuid;

/// A three-line order body as clients send it.
fn order_json() -> String {
    json!({
        "customer_id": "customer-42",
        "currency": "EUR",
        "lines": [
            {"sku": "FS-1", "quantity": 1, "unit_price_minor": 1099},
            {"sku": "FS-2", "quantity": 2, "unit_price_minor": 1199},
            {"sku": "FS-3", "quantity": 1, "unit_price_minor": 1299},
        ],
        "total_minor": 1099 + 2 * 1199 + 1299,
        "payment": {"method": "card", "token": "tok_bench"},
    })
    .to_string()
}

fn placed_envelope() -> OrderEnvelope {
    let order: NewOrder = serde_json::from_str(&order_json()).expect("valid order");
    let id = Uuid::now_v7();
    OrderEnvelope::new(
        id,
        OrderEvent::OrderPlaced(order.into_order_placed()),
        None,
        id,
    )
}

fn envelope(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    let placed = placed_envelope();
    let bytes = placed.encode();
    group.bench_function("encode_order_placed", |b| {
        b.iter(|| black_box(&placed).encode())
    });
    group.bench_function("decode_order_placed", |b| {
        b.iter(|| OrderEnvelope::decode(black_box(&bytes)).expect("decodes"))
    });
    group.finish();
}

fn validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("order_validation");
    group.throughput(Throughput::Elements(1));
    let body = order_json();
    group.bench_function("parse_and_validate_3_lines", |b| {
        b.iter(|| {
            let order: NewOrder = serde_json::from_str(black_box(&body)).expect("parses");
            order.validate().expect("valid");
            order
        })
    });
    let order: NewOrder = serde_json::from_str(&body).expect("parses");
    group.bench_function("validate_3_lines", |b| {
        b.iter(|| black_box(&order).validate().expect("valid"))
    });
    group.finish();
}

const REQUESTS: usize = 1000;

fn stock_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("stock_decision");
    group.throughput(Throughput::Elements(REQUESTS as u64));
    let requests: Vec<ReserveRequest> = (0..REQUESTS)
        .map(|i| ReserveRequest {
            line: LineId {
                order_id: Uuid::now_v7(),
                line_index: 0,
            },
            customer_id: format!("customer-{}", i % 300),
            quantity: 1,
        })
        .collect();
    let answer_ids: Vec<Uuid> = (0..REQUESTS).map(|_| Uuid::now_v7()).collect();
    // Half reserved, half out of stock; a per-customer limit checked on every request.
    group.bench_function("reserve_1000_one_sku_half_sold_out", |b| {
        b.iter_batched(
            || {
                let mut sku = SkuState::new();
                sku.adjust(
                    Uuid::now_v7(),
                    StockAdjustment::Set {
                        quantity: REQUESTS as u32 / 2,
                    },
                    Some(5),
                );
                sku
            },
            |mut sku| {
                for (request, id) in requests.iter().zip(&answer_ids) {
                    black_box(sku.reserve(request, *id, 0));
                }
                sku
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn saga_decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("saga_decision");
    group.throughput(Throughput::Elements(1));
    let placed = placed_envelope();
    group.bench_function("decide_order_placed", |b| {
        b.iter(|| decide(None, black_box(&placed)))
    });
    // The next step of that order: its first line reserved.
    let state = decide(None, &placed)
        .new_state
        .expect("a placed order has a state");
    let reserved = OrderEnvelope::new(
        placed.order_id,
        OrderEvent::StockLineReserved(StockLineReserved {
            sku: "FS-1".into(),
            line_index: 0,
            quantity: 1,
        }),
        Some(placed.event_id),
        placed.correlation_id,
    );
    group.bench_function("decide_stock_line_reserved", |b| {
        b.iter(|| decide(Some(black_box(&state)), black_box(&reserved)))
    });
    group.finish();
}

criterion_group!(benches, envelope, validation, stock_decision, saga_decision);
criterion_main!(benches);
