//! Events of the `stock` topic (key: `sku`): operator adjustments, the saga's requests per order
//! line, and the stock stage's level snapshots. One SKU lives on one partition, so the stock stage
//! is its single writer.
//!
//! Flow: the saga turns an `order_placed` into one `reservation_requested` per line; the stock
//! stage decides each in memory and answers on the `orders` topic (`stock_line_reserved` or
//! `stock_line_rejected`, keyed by order, so the saga's partition sees it). When an order fails the
//! saga sends `release_requested` for its reserved lines; when it is paid, `sale_requested` turns
//! the reservation into a sale. After each batch the stock stage publishes `stock_levels` for every
//! SKU it touched: the stock view is built from those.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One event of the `stock` topic; the serde tag `event_type` names the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event_type", rename_all = "snake_case")]
pub enum StockEvent {
    /// An operator set or changed the stock level (and purchase limit) of the SKU.
    StockAdjusted(StockAdjusted),
    /// The saga asks to reserve one order line of this SKU.
    ReservationRequested(ReservationRequested),
    /// The saga gives a reserved line back (order rejected); idempotent per line.
    ReleaseRequested(ReleaseRequested),
    /// The saga turns a reserved line into a sale (order confirmed); idempotent per line.
    SaleRequested(SaleRequested),
    /// The stock stage's levels of the SKU after a batch of decisions.
    StockLevels(StockLevels),
}

impl StockEvent {
    /// The `event_type` tag of this event, as written on the wire.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::StockAdjusted(_) => "stock_adjusted",
            Self::ReservationRequested(_) => "reservation_requested",
            Self::ReleaseRequested(_) => "release_requested",
            Self::SaleRequested(_) => "sale_requested",
            Self::StockLevels(_) => "stock_levels",
        }
    }
}

/// Payload of `stock_adjusted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = crate::json_schema::require_all_properties)]
pub struct StockAdjusted {
    /// How the available quantity changes.
    pub adjustment: StockAdjustment,
    /// Most units of this SKU one customer may hold (reserved or bought) after this event;
    /// `null` means no limit. Stated on every adjustment so that the latest event is the truth.
    pub per_customer_limit: Option<u32>,
}

/// A change of available stock: an absolute level or a relative delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum StockAdjustment {
    /// Available units become exactly `quantity` (e.g. `{"mode":"set","quantity":100}`).
    Set {
        /// New number of available units.
        quantity: u32,
    },
    /// Available units change by `delta` (e.g. `{"mode":"delta","delta":-5}`), floored at 0.
    Delta {
        /// Units added (positive) or removed (negative).
        delta: i64,
    },
}

/// Payload of `reservation_requested`: one line of one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReservationRequested {
    /// Order the line belongs to.
    pub order_id: Uuid,
    /// Customer, for the per-customer purchase limit.
    pub customer_id: String,
    /// Position of the line in `order_placed.lines`.
    pub line_index: u32,
    /// Number of lines in the order, so the saga knows when all answers are in.
    pub line_count: u32,
    /// Units to reserve.
    pub quantity: u32,
}

/// Why the stock stage refused a line (closed set, snake_case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StockRejectReason {
    /// Fewer units available than requested.
    OutOfStock,
    /// The customer would exceed the SKU's per-customer limit.
    LimitExceeded,
    /// The SKU has never been stocked.
    UnknownSku,
}

/// Payload of `release_requested`: give back a reserved line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReleaseRequested {
    /// Order whose line is released.
    pub order_id: Uuid,
    /// Customer the units were held for (their limit usage goes down).
    pub customer_id: String,
    /// Position of the line in `order_placed.lines`.
    pub line_index: u32,
    /// Units given back.
    pub quantity: u32,
}

/// Payload of `sale_requested`: a reserved line of a confirmed order becomes sold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SaleRequested {
    /// Order whose line is sold.
    pub order_id: Uuid,
    /// Customer who bought it.
    pub customer_id: String,
    /// Position of the line in `order_placed.lines`.
    pub line_index: u32,
    /// Units sold.
    pub quantity: u32,
}

/// Payload of `stock_levels`: where the SKU stands. `available + reserved + sold` is what was stocked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(transform = crate::json_schema::require_all_properties)]
pub struct StockLevels {
    /// Units that can still be reserved.
    pub available: u64,
    /// Units held for orders not yet confirmed or rejected.
    pub reserved: u64,
    /// Units of confirmed orders.
    pub sold: u64,
    /// Per-customer limit in force (`null`: none).
    pub per_customer_limit: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn adjustments_have_an_explicit_mode() {
        // Given both kinds of adjustment, when serialized, then the mode says which it is
        assert_eq!(
            serde_json::to_value(StockAdjustment::Set { quantity: 100 }).unwrap(),
            json!({"mode": "set", "quantity": 100})
        );
        assert_eq!(
            serde_json::to_value(StockAdjustment::Delta { delta: -5 }).unwrap(),
            json!({"mode": "delta", "delta": -5})
        );
    }
}
