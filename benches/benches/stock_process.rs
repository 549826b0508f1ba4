//! In-process cost of the stock stage's work per batch (decode, decide, encode answers, changelog
//! records and levels), without any broker: the CPU share of the end-to-end figure that
//! `stock-bench` measures.
//!
//!     cargo bench -p orderpipe-benches --bench stock_process

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use orderpipe_processors::stock::StockStage;
use orderpipe_processors::{Effects, Input, Stage};
use orderpipe_schemas::{
    ReservationRequested, StockAdjusted, StockAdjustment, StockEnvelope, StockEvent, Topics,
};
use uuid::Uuid;

const BATCH: usize = 500;

fn envelope(event: StockEvent) -> Vec<u8> {
    StockEnvelope::new("HOT", event, None, Uuid::now_v7()).encode()
}

fn requests(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            envelope(StockEvent::ReservationRequested(ReservationRequested {
                order_id: Uuid::now_v7(),
                customer_id: format!("customer-{i}"),
                line_index: 0,
                line_count: 1,
                quantity: 1,
            }))
        })
        .collect()
}

fn inputs(payloads: &[Vec<u8>]) -> Vec<Input<'_>> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| Input {
            topic: "stock",
            partition: 0,
            offset: i as i64,
            key: Some(b"HOT"),
            payload: Some(p),
            timestamp_ms: Some(0),
        })
        .collect()
}

fn stocked_stage(units: u32) -> StockStage {
    let mut stage = StockStage::new(Topics::default());
    let adjust = envelope(StockEvent::StockAdjusted(StockAdjusted {
        adjustment: StockAdjustment::Set { quantity: units },
        per_customer_limit: Some(5),
    }));
    stage.process(&inputs(&[adjust]), &mut Effects::new());
    stage
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("stock_stage_process");
    group.throughput(Throughput::Elements(BATCH as u64));
    let batch = requests(BATCH);
    // Half the batch reserved, half out of stock: both decision paths.
    group.bench_function("batch_of_500_one_hot_sku", |b| {
        b.iter_batched(
            || stocked_stage(BATCH as u32 / 2),
            |mut stage| {
                let mut out = Effects::new();
                stage.process(&inputs(&batch), &mut out);
                out
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
