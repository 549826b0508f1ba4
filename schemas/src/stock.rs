//! Events of the `stock` topic (key: `sku`): stock levels, per-line reservation requests and the
//! stock stage's decisions. One SKU lives on one partition, so its decisions have a single writer.
//!
//! Flow: the saga turns an `order_placed` into one `reservation_requested` per line; the stock
//! stage answers each with `stock_reserved_line` or `reservation_rejected`; the saga collects the
//! answers (all-or-nothing) and releases reserved lines with `stock_released` when the order fails.

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
    /// The stock stage reserved the requested line.
    StockReservedLine(StockReservedLine),
    /// The stock stage refused the requested line.
    ReservationRejected(ReservationRejected),
    /// A reserved line is given back (order rejected or cancelled); idempotent per line.
    StockReleased(StockReleased),
}

impl StockEvent {
    /// The `event_type` tag of this event, as written on the wire.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::StockAdjusted(_) => "stock_adjusted",
            Self::ReservationRequested(_) => "reservation_requested",
            Self::StockReservedLine(_) => "stock_reserved_line",
            Self::ReservationRejected(_) => "reservation_rejected",
            Self::StockReleased(_) => "stock_released",
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

/// Payload of `stock_reserved_line`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReservedLine {
    /// Order the line belongs to.
    pub order_id: Uuid,
    /// Customer the units are held for.
    pub customer_id: String,
    /// Position of the line in `order_placed.lines`.
    pub line_index: u32,
    /// Units reserved.
    pub quantity: u32,
}

/// Payload of `reservation_rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReservationRejected {
    /// Order the line belongs to.
    pub order_id: Uuid,
    /// Customer who asked.
    pub customer_id: String,
    /// Position of the line in `order_placed.lines`.
    pub line_index: u32,
    /// Units that were asked for.
    pub quantity: u32,
    /// Why the line was refused.
    pub reason: StockRejectReason,
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

/// Payload of `stock_released`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReleased {
    /// Order whose line is released.
    pub order_id: Uuid,
    /// Customer the units were held for (their limit usage goes down).
    pub customer_id: String,
    /// Position of the line in `order_placed.lines`.
    pub line_index: u32,
    /// Units given back.
    pub quantity: u32,
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
