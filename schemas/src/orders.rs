//! Events of the `orders` topic (key: `order_id`): the life of one order, from placement to a
//! terminal state and any compensation.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::stock::StockRejectReason;

/// One event of the `orders` topic; the serde tag `event_type` names the variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event_type", rename_all = "snake_case")]
pub enum OrderEvent {
    /// A customer placed an order; written by ingest once the request is valid.
    OrderPlaced(OrderPlaced),
    /// The stock stage reserved one line of the order (answer to `reservation_requested`).
    StockLineReserved(StockLineReserved),
    /// The stock stage refused one line of the order (answer to `reservation_requested`).
    StockLineRejected(StockLineRejected),
    /// Every line of the order is reserved (all-or-nothing across SKUs).
    StockReserved(StockReserved),
    /// At least one line could not be reserved; lines already reserved get released.
    StockRejected(StockRejected),
    /// The saga asks the payments stage to charge the reserved order.
    PaymentRequested(PaymentRequested),
    /// The payment gateway charged the order.
    PaymentSettled(PaymentSettled),
    /// The payment gateway refused the charge.
    PaymentDeclined(PaymentDeclined),
    /// Terminal: the order is reserved and paid.
    OrderConfirmed(OrderConfirmed),
    /// Terminal: the order will not be fulfilled; it holds no stock and no charge.
    OrderRejected(OrderRejected),
    /// A client asked to cancel the order (written by ingest, `POST /v1/orders/{id}/cancel`).
    /// A request only: the saga decides, and the order is cancelled once `order_cancelled`
    /// follows; a request for an order already terminal changes nothing.
    CancellationRequested(CancellationRequested),
    /// Terminal: the order was cancelled before it was confirmed (written by the saga); it holds
    /// no stock (every reserved line is released) and no charge (any charge is refunded).
    OrderCancelled(OrderCancelled),
    /// A charge was refunded to the customer.
    Refunded(Refunded),
}

impl OrderEvent {
    /// The order's final outcome this event records, `confirmed`, `rejected` or `cancelled`
    /// (every order ends with exactly one of these), or `None` for any other event.
    pub fn terminal_status(&self) -> Option<&'static str> {
        match self {
            Self::OrderConfirmed(_) => Some("confirmed"),
            Self::OrderRejected(_) => Some("rejected"),
            Self::OrderCancelled(_) => Some("cancelled"),
            _ => None,
        }
    }

    /// The `event_type` tag of this event, as written on the wire.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::OrderPlaced(_) => "order_placed",
            Self::StockLineReserved(_) => "stock_line_reserved",
            Self::StockLineRejected(_) => "stock_line_rejected",
            Self::StockReserved(_) => "stock_reserved",
            Self::StockRejected(_) => "stock_rejected",
            Self::PaymentRequested(_) => "payment_requested",
            Self::PaymentSettled(_) => "payment_settled",
            Self::PaymentDeclined(_) => "payment_declined",
            Self::OrderConfirmed(_) => "order_confirmed",
            Self::OrderRejected(_) => "order_rejected",
            Self::CancellationRequested(_) => "cancellation_requested",
            Self::OrderCancelled(_) => "order_cancelled",
            Self::Refunded(_) => "refunded",
        }
    }
}

/// Payload of `order_placed` (schema_version 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    /// Customer identity as given by the checkout frontend.
    pub customer_id: String,
    /// ISO 4217 code (uppercase) of every amount in this order.
    pub currency: String,
    /// Ordered lines, in request order; `line_index` elsewhere refers to this position.
    pub lines: Vec<OrderLine>,
    /// Sum of `quantity * unit_price_minor` over the lines, in minor units.
    pub total_minor: i64,
    /// How the customer pays.
    pub payment: PaymentRef,
}

/// One line of an order: a quantity of one SKU at a unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// Stock keeping unit (the `stock` topic key).
    pub sku: String,
    /// Units ordered.
    pub quantity: u32,
    /// Price of one unit in minor units of the order currency.
    pub unit_price_minor: i64,
}

/// Reference to a payment instrument held by the gateway: never card data.
///
/// `Debug` redacts the token, so logging an order never prints it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRef {
    /// Payment method: `card`, `wallet` or `invoice`.
    pub method: String,
    /// Opaque payment-gateway token; secret: never log it.
    pub token: String,
}

impl fmt::Debug for PaymentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PaymentRef")
            .field("method", &self.method)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Payload of `stock_line_reserved`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockLineReserved {
    /// SKU of the line.
    pub sku: String,
    /// Position of the line in `order_placed.lines`.
    pub line_index: u32,
    /// Units reserved.
    pub quantity: u32,
}

/// Payload of `stock_line_rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockLineRejected {
    /// SKU of the line.
    pub sku: String,
    /// Position of the line in `order_placed.lines`.
    pub line_index: u32,
    /// Units that were asked for.
    pub quantity: u32,
    /// Why the stock stage refused it.
    pub reason: StockRejectReason,
}

/// Payload of `stock_reserved`: every line is held for this order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {}

/// Payload of `stock_rejected`: the first line that could not be reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockRejected {
    /// SKU of the rejected line.
    pub sku: String,
    /// Why the stock stage refused it.
    pub reason: StockRejectReason,
}

/// Payload of `payment_requested`: what to charge, and with which instrument.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRequested {
    /// Amount to charge, in minor units (the order total).
    pub amount_minor: i64,
    /// ISO 4217 code of the amount.
    pub currency: String,
    /// Instrument to charge (its token is redacted in `Debug`).
    pub payment: PaymentRef,
}

/// Payload of `payment_settled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentSettled {
    /// Amount charged, in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code of the amount.
    pub currency: String,
    /// Gateway identifier of the charge (needed to refund it).
    pub charge_id: String,
}

/// Payload of `payment_declined`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDeclined {
    /// Gateway's reason, for humans and the timeline (not a closed set).
    #[schemars(with = "String")]
    pub reason: DeclineReason,
}

/// Why a charge was declined. On the topic it is a plain string: one of the two reasons the
/// payments stage gives itself, or the gateway's own (not a closed set). The saga tells a
/// gateway that could not be reached (`payment_timeout`) from a refusal (`payment_declined`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum DeclineReason {
    /// `gateway_timeout`: the gateway could not be reached until the charge's retry window
    /// ended.
    GatewayTimeout,
    /// `gateway_error`: the gateway refused the request itself or answered nonsense.
    GatewayError,
    /// The gateway's own reason, e.g. `insufficient_funds`.
    Gateway(String),
}

impl DeclineReason {
    /// The reason as it travels on the topic.
    pub fn as_str(&self) -> &str {
        match self {
            Self::GatewayTimeout => "gateway_timeout",
            Self::GatewayError => "gateway_error",
            Self::Gateway(reason) => reason,
        }
    }
}

impl From<String> for DeclineReason {
    fn from(reason: String) -> Self {
        match reason.as_str() {
            "gateway_timeout" => Self::GatewayTimeout,
            "gateway_error" => Self::GatewayError,
            _ => Self::Gateway(reason),
        }
    }
}

impl From<&str> for DeclineReason {
    fn from(reason: &str) -> Self {
        Self::from(reason.to_owned())
    }
}

impl From<DeclineReason> for String {
    fn from(reason: DeclineReason) -> Self {
        match reason {
            DeclineReason::Gateway(reason) => reason,
            other => other.as_str().to_owned(),
        }
    }
}

impl fmt::Display for DeclineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Payload of `order_confirmed`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {}

/// Payload of `order_rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderRejected {
    /// Why the order was rejected.
    pub reason: RejectReason,
}

/// Why an order was rejected (closed set, snake_case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// A line's SKU has not enough stock (or is unknown).
    OutOfStock,
    /// A line exceeds the per-customer purchase limit of its SKU.
    LimitExceeded,
    /// The payment gateway declined the charge.
    PaymentDeclined,
    /// The payment gateway did not answer in time.
    PaymentTimeout,
    /// Stock did not answer every line before the order's stock deadline.
    StockTimeout,
    /// The order is invalid (should not pass ingest; defensive).
    Invalid,
}

/// Payload of `cancellation_requested`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CancellationRequested {
    /// The authenticated ingest client that asked (`anonymous` without API keys).
    pub client_id: String,
}

/// Payload of `order_cancelled`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {}

/// Payload of `refunded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Refunded {
    /// Amount refunded, in minor units.
    pub amount_minor: i64,
    /// ISO 4217 code of the amount.
    pub currency: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_three_final_events_have_a_terminal_status() {
        let rejected = OrderEvent::OrderRejected(OrderRejected {
            reason: RejectReason::OutOfStock,
        });
        assert_eq!(
            OrderEvent::OrderConfirmed(OrderConfirmed {}).terminal_status(),
            Some("confirmed")
        );
        assert_eq!(rejected.terminal_status(), Some("rejected"));
        assert_eq!(
            OrderEvent::OrderCancelled(OrderCancelled {}).terminal_status(),
            Some("cancelled")
        );
        let refunded = OrderEvent::Refunded(Refunded {
            amount_minor: 1,
            currency: "EUR".into(),
        });
        assert_eq!(refunded.terminal_status(), None);
    }

    #[test]
    fn payment_token_is_redacted_in_debug() {
        // Given an order with a payment token
        let payment = PaymentRef {
            method: "card".into(),
            token: "tok_secret_123".into(),
        };
        // When it is formatted with Debug (directly or nested)
        let direct = format!("{payment:?}");
        let nested = format!(
            "{:?}",
            OrderPlaced {
                customer_id: "c".into(),
                currency: "EUR".into(),
                lines: vec![],
                total_minor: 0,
                payment: payment.clone(),
            }
        );
        // Then the token never appears, the method does
        for s in [direct, nested] {
            assert!(!s.contains("tok_secret_123"), "{s}");
            assert!(s.contains("<redacted>") && s.contains("card"), "{s}");
        }
    }

    #[test]
    fn reject_reasons_are_snake_case() {
        let all = [
            (RejectReason::OutOfStock, "out_of_stock"),
            (RejectReason::LimitExceeded, "limit_exceeded"),
            (RejectReason::PaymentDeclined, "payment_declined"),
            (RejectReason::PaymentTimeout, "payment_timeout"),
            (RejectReason::StockTimeout, "stock_timeout"),
            (RejectReason::Invalid, "invalid"),
        ];
        for (reason, wire) in all {
            assert_eq!(serde_json::to_value(reason).unwrap(), wire);
        }
    }
}
