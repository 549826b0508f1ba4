//! Operator commands on stock: `orderpipe stock set SKU QTY [--limit N]` produces a
//! `stock_adjusted` event, which the stock stage applies in order with the SKU's requests.

use std::time::Duration;

use orderpipe_runtime::kafka;
use orderpipe_schemas::{StockAdjusted, StockAdjustment, StockEnvelope, StockEvent, Topics};
use rdkafka::producer::{FutureProducer, FutureRecord};
use uuid::Uuid;

use crate::runner::Error;

/// How long `set_stock` waits for the broker's acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(15);

/// Produces `stock_adjusted` for `sku` (idempotent producer, `acks=all`, the operator's Kafka
/// client `options` — `orderpipe --kafka-option`: security settings and the like — applied over
/// the preset) and returns its event id once the broker acknowledged it. `adjustment` sets
/// (`Set`) or moves (`Delta`) the available units; `per_customer_limit` is the limit from now on
/// (`None`: no limit).
pub async fn set_stock(
    bootstrap: &str,
    options: &[(String, String)],
    topics: &Topics,
    sku: &str,
    adjustment: StockAdjustment,
    per_customer_limit: Option<u32>,
) -> Result<Uuid, Error> {
    let mut client = kafka::idempotent_producer(bootstrap, "orderpipe-stock-admin");
    client.set("message.timeout.ms", ACK_TIMEOUT.as_millis().to_string());
    let producer: FutureProducer =
        kafka::with_options(client, options)
            .create()
            .map_err(|source| Error::Kafka {
                context: "creating stock admin producer",
                source,
            })?;
    let event = StockEnvelope::new(
        sku,
        StockEvent::StockAdjusted(StockAdjusted {
            adjustment,
            per_customer_limit,
        }),
        None,
        Uuid::now_v7(),
    );
    let payload = event.encode();
    producer
        .send(
            FutureRecord::to(&topics.stock).key(sku).payload(&payload),
            ACK_TIMEOUT,
        )
        .await
        .map_err(|(source, _)| Error::Kafka {
            context: "producing stock_adjusted",
            source,
        })?;
    tracing::info!(sku, ?adjustment, ?per_customer_limit, event_id = %event.event_id, "stock adjusted");
    Ok(event.event_id)
}
