//! Helpers shared by the processors' broker tests.

use orderpipe_schemas::{OrderEnvelope, OrderEvent, OrderLine, OrderPlaced, PaymentRef};
use uuid::Uuid;

/// An `order_placed` of `order_id` with `(sku, quantity)` lines at 1,000 minor units each.
pub(crate) fn order(order_id: Uuid, lines: &[(&str, u32)]) -> OrderEnvelope {
    OrderEnvelope::new(
        order_id,
        OrderEvent::OrderPlaced(OrderPlaced {
            customer_id: format!("cust-{}", order_id.simple()),
            currency: "EUR".into(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| OrderLine {
                    sku: (*sku).into(),
                    quantity: *quantity,
                    unit_price_minor: 1_000,
                })
                .collect(),
            total_minor: lines.iter().map(|(_, q)| i64::from(*q) * 1_000).sum(),
            payment: PaymentRef {
                method: "card".into(),
                token: "tok".into(),
            },
        }),
        None,
        order_id,
    )
}
