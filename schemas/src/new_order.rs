//! The body of `POST /v1/orders` (ingest): its type, validation rules, conversion into
//! [`OrderPlaced`], and a canonical fingerprint for Idempotency-Key body comparison.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

use crate::{OrderLine, OrderPlaced, PaymentRef};

/// Longest accepted `customer_id`, in characters.
pub const MAX_CUSTOMER_ID_CHARS: usize = 128;
/// Longest accepted `sku`, in characters.
pub const MAX_SKU_CHARS: usize = 64;
/// Most lines in one order.
pub const MAX_LINES: usize = 100;
/// Most units of one line.
pub const MAX_QUANTITY: u32 = 1000;
/// Longest accepted payment token, in characters (bounds what we store and forward).
pub const MAX_TOKEN_CHARS: usize = 512;
/// Accepted `payment.method` values.
pub const PAYMENT_METHODS: &[&str] = &["card", "wallet", "invoice"];

/// Request body of `POST /v1/orders`; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// Customer identity: 1 to 128 characters, no control characters.
    pub customer_id: String,
    /// Active ISO 4217 code, uppercase (e.g. `EUR`).
    pub currency: String,
    /// 1 to 100 lines, each SKU at most once.
    pub lines: Vec<OrderLine>,
    /// Sum of `quantity * unit_price_minor`, in minor units; must match exactly.
    pub total_minor: i64,
    /// Payment method and gateway token.
    pub payment: PaymentRef,
}

/// One invalid field of a request: where (JSON pointer into the body) and why.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct FieldError {
    /// JSON pointer (RFC 6901) to the field, e.g. `/lines/0/quantity`.
    pub pointer: String,
    /// Human-readable rule the value breaks.
    pub message: String,
}

impl FieldError {
    fn new(pointer: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            message: message.into(),
        }
    }
}

/// Whether `code` is an active ISO 4217 currency a shop can charge in: known, uppercase, not
/// superseded (e.g. `HRK`), not a fund (e.g. `USN`) and not special (e.g. `XAU`, `XTS`).
pub fn is_active_currency(code: &str) -> bool {
    // iso_currency matches codes exactly, so lowercase codes are refused too.
    iso_currency::Currency::from_code(code)
        .is_some_and(|c| c.is_superseded().is_none() && !c.is_fund() && !c.is_special())
}

/// Checks an identifier-like string; `None` when it is fine.
fn text_error(value: &str, max_chars: usize) -> Option<String> {
    if value.trim().is_empty() {
        Some("must not be empty".into())
    } else if value.chars().count() > max_chars {
        Some(format!("must be at most {max_chars} characters"))
    } else if value.chars().any(char::is_control) {
        Some("must not contain control characters".into())
    } else {
        None
    }
}

impl NewOrder {
    /// Checks every rule and returns all broken ones, in body order.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if let Some(m) = text_error(&self.customer_id, MAX_CUSTOMER_ID_CHARS) {
            errors.push(FieldError::new("/customer_id", m));
        }
        if !is_active_currency(&self.currency) {
            errors.push(FieldError::new(
                "/currency",
                "must be an active ISO 4217 currency code in uppercase, e.g. EUR",
            ));
        }
        if self.lines.is_empty() || self.lines.len() > MAX_LINES {
            errors.push(FieldError::new(
                "/lines",
                format!("must have 1 to {MAX_LINES} lines"),
            ));
        }
        let mut sum = Some(0i64);
        // A line whose own amount overflows is reported there; the total is not comparable then.
        let mut line_overflow = false;
        for (i, line) in self.lines.iter().enumerate() {
            let at = |field: &str| format!("/lines/{i}/{field}");
            if let Some(m) = text_error(&line.sku, MAX_SKU_CHARS) {
                errors.push(FieldError::new(at("sku"), m));
            } else if let Some(first) = self.lines[..i].iter().position(|l| l.sku == line.sku) {
                errors.push(FieldError::new(
                    at("sku"),
                    format!("duplicate of /lines/{first}/sku; merge the lines"),
                ));
            }
            if !(1..=MAX_QUANTITY).contains(&line.quantity) {
                errors.push(FieldError::new(
                    at("quantity"),
                    format!("must be between 1 and {MAX_QUANTITY}"),
                ));
            }
            if line.unit_price_minor < 0 {
                errors.push(FieldError::new(
                    at("unit_price_minor"),
                    "must not be negative",
                ));
            }
            match line.unit_price_minor.checked_mul(i64::from(line.quantity)) {
                Some(amount) => sum = sum.and_then(|s| s.checked_add(amount)),
                None => {
                    errors.push(FieldError::new(
                        at("unit_price_minor"),
                        "quantity * unit_price_minor overflows",
                    ));
                    line_overflow = true;
                }
            }
        }
        match sum {
            _ if line_overflow => {}
            None => errors.push(FieldError::new(
                "/total_minor",
                "sum of the lines overflows",
            )),
            Some(sum) if sum != self.total_minor => errors.push(FieldError::new(
                "/total_minor",
                format!("must equal the sum of quantity * unit_price_minor over the lines ({sum})"),
            )),
            Some(_) => {}
        }
        if !PAYMENT_METHODS.contains(&self.payment.method.as_str()) {
            errors.push(FieldError::new(
                "/payment/method",
                format!("must be one of {}", PAYMENT_METHODS.join(", ")),
            ));
        }
        if let Some(m) = text_error(&self.payment.token, MAX_TOKEN_CHARS) {
            errors.push(FieldError::new("/payment/token", m));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The `order_placed` payload for this request (call after [`NewOrder::validate`]).
    pub fn into_order_placed(self) -> OrderPlaced {
        OrderPlaced {
            customer_id: self.customer_id,
            currency: self.currency,
            lines: self.lines,
            total_minor: self.total_minor,
            payment: self.payment,
        }
    }

    /// Stable fingerprint of the request: lowercase hex SHA-256 of its canonical JSON (fields in
    /// declaration order, no whitespace), so key order and spacing of the original body don't
    /// matter. Two requests with one Idempotency-Key must have the same fingerprint.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("NewOrder always serializes");
        let digest = Sha256::new()
            .chain_update(b"orderpipe.new_order.v1\n")
            .chain_update(&canonical)
            .finalize();
        digest.iter().fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn valid() -> NewOrder {
        NewOrder {
            customer_id: "cust-1".into(),
            currency: "EUR".into(),
            lines: vec![
                OrderLine {
                    sku: "SKU-1".into(),
                    quantity: 2,
                    unit_price_minor: 1999,
                },
                OrderLine {
                    sku: "SKU-2".into(),
                    quantity: 1,
                    unit_price_minor: 500,
                },
            ],
            total_minor: 4498,
            payment: PaymentRef {
                method: "card".into(),
                token: "tok_abc".into(),
            },
        }
    }

    fn pointers(order: &NewOrder) -> Vec<String> {
        match order.validate() {
            Ok(()) => vec![],
            Err(errors) => errors.into_iter().map(|e| e.pointer).collect(),
        }
    }

    #[test]
    fn a_valid_order_passes() {
        assert_eq!(valid().validate(), Ok(()));
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        type Mutation = fn(&mut NewOrder);
        let table: &[(&str, Mutation, &[&str])] = &[
            (
                "empty customer",
                |o| o.customer_id = " ".into(),
                &["/customer_id"],
            ),
            (
                "long customer",
                |o| o.customer_id = "c".repeat(129),
                &["/customer_id"],
            ),
            (
                "128-char customer is fine",
                |o| o.customer_id = "c".repeat(128),
                &[],
            ),
            (
                "control char in customer",
                |o| o.customer_id = "a\nb".into(),
                &["/customer_id"],
            ),
            (
                "lowercase currency",
                |o| o.currency = "eur".into(),
                &["/currency"],
            ),
            (
                "unknown currency",
                |o| o.currency = "ABC".into(),
                &["/currency"],
            ),
            (
                "superseded currency",
                |o| o.currency = "HRK".into(),
                &["/currency"],
            ),
            (
                "testing currency",
                |o| o.currency = "XTS".into(),
                &["/currency"],
            ),
            (
                "fund currency",
                |o| o.currency = "USN".into(),
                &["/currency"],
            ),
            ("zero-decimal currency", |o| o.currency = "JPY".into(), &[]),
            (
                "no lines",
                |o| {
                    o.lines.clear();
                    o.total_minor = 0;
                },
                &["/lines"],
            ),
            (
                "101 lines",
                |o| {
                    o.lines = (0..101)
                        .map(|i| OrderLine {
                            sku: format!("S{i}"),
                            quantity: 1,
                            unit_price_minor: 1,
                        })
                        .collect();
                    o.total_minor = 101;
                },
                &["/lines"],
            ),
            (
                "100 lines is fine",
                |o| {
                    o.lines = (0..100)
                        .map(|i| OrderLine {
                            sku: format!("S{i}"),
                            quantity: 1,
                            unit_price_minor: 1,
                        })
                        .collect();
                    o.total_minor = 100;
                },
                &[],
            ),
            (
                "empty sku",
                |o| o.lines[1].sku = String::new(),
                &["/lines/1/sku"],
            ),
            (
                "long sku",
                |o| o.lines[0].sku = "s".repeat(65),
                &["/lines/0/sku"],
            ),
            (
                "control char in sku",
                |o| o.lines[0].sku = "a\u{7f}".into(),
                &["/lines/0/sku"],
            ),
            (
                "duplicate sku",
                |o| o.lines[1].sku = "SKU-1".into(),
                &["/lines/1/sku"],
            ),
            (
                "zero quantity",
                |o| {
                    o.lines[0].quantity = 0;
                    o.total_minor = 500;
                },
                &["/lines/0/quantity"],
            ),
            (
                "quantity 1001",
                |o| {
                    o.lines[1].quantity = 1001;
                    o.total_minor = 3998 + 500_500;
                },
                &["/lines/1/quantity"],
            ),
            (
                "negative price",
                |o| {
                    o.lines[1].unit_price_minor = -1;
                    o.total_minor = 3997;
                },
                &["/lines/1/unit_price_minor"],
            ),
            (
                "free item is fine",
                |o| {
                    o.lines[1].unit_price_minor = 0;
                    o.total_minor = 3998;
                },
                &[],
            ),
            (
                "line overflow",
                |o| o.lines[0].unit_price_minor = i64::MAX / 2 + 1,
                &["/lines/0/unit_price_minor"],
            ),
            (
                "sum overflow",
                |o| {
                    o.lines[0].unit_price_minor = i64::MAX / 2;
                    o.lines[0].quantity = 1;
                    o.lines[1].unit_price_minor = i64::MAX / 2;
                    o.lines[1].quantity = 2;
                },
                &["/total_minor"],
            ),
            ("wrong total", |o| o.total_minor += 1, &["/total_minor"]),
            (
                "unknown method",
                |o| o.payment.method = "cash".into(),
                &["/payment/method"],
            ),
            ("wallet", |o| o.payment.method = "wallet".into(), &[]),
            ("invoice", |o| o.payment.method = "invoice".into(), &[]),
            (
                "empty token",
                |o| o.payment.token = String::new(),
                &["/payment/token"],
            ),
            (
                "everything at once",
                |o| {
                    o.customer_id = String::new();
                    o.currency = "usd".into();
                    o.lines[0].quantity = 0;
                    o.payment.method = String::new();
                    o.payment.token = String::new();
                },
                &[
                    "/customer_id",
                    "/currency",
                    "/lines/0/quantity",
                    "/total_minor",
                    "/payment/method",
                    "/payment/token",
                ],
            ),
        ];
        for (name, mutate, expected) in table {
            // Given a valid order with one change
            let mut order = valid();
            mutate(&mut order);
            // When validated, then exactly the expected fields are reported, in body order
            assert_eq!(&pointers(&order), expected, "case: {name}");
        }
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        let base = serde_json::to_value(valid()).unwrap();
        for pointer in ["", "/lines/0", "/payment"] {
            // Given a body with an extra field at `pointer`
            let mut body = base.clone();
            body.pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert("extra".into(), json!(1));
            // When parsed, then it is refused
            let err = serde_json::from_value::<NewOrder>(body).unwrap_err();
            assert!(
                err.to_string().contains("unknown field"),
                "{pointer}: {err}"
            );
        }
    }

    #[test]
    fn into_order_placed_keeps_every_field() {
        let order = valid();
        let placed = order.clone().into_order_placed();
        assert_eq!(placed.customer_id, order.customer_id);
        assert_eq!(placed.currency, order.currency);
        assert_eq!(placed.lines, order.lines);
        assert_eq!(placed.total_minor, order.total_minor);
        assert_eq!(placed.payment, order.payment);
    }

    #[test]
    fn fingerprint_ignores_key_order_and_whitespace() {
        // Given the same body written two ways
        let a = r#"{"customer_id":"c1","currency":"EUR","lines":[{"sku":"A","quantity":1,"unit_price_minor":5}],"total_minor":5,"payment":{"method":"card","token":"t"}}"#;
        let b = r#"{ "payment": {"token": "t", "method": "card"}, "total_minor": 5,
                     "lines": [ {"unit_price_minor": 5, "quantity": 1, "sku": "A"} ],
                     "currency": "EUR", "customer_id": "c1" }"#;
        let a: NewOrder = serde_json::from_str(a).unwrap();
        let b: NewOrder = serde_json::from_str(b).unwrap();
        // Then both have the same 64-hex-digit fingerprint, stable across releases
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 64);
        assert_eq!(
            a.fingerprint(),
            "f92c013f78a81cdba08c03507d4325bf3b2f8711f6fc9756fad94f6a1c7be646",
            "fingerprint changed: stored Idempotency-Key fingerprints would no longer match"
        );
    }

    fn arb_line() -> impl Strategy<Value = OrderLine> {
        ("[A-Z0-9-]{1,64}", 1..=MAX_QUANTITY, 0i64..10_000_000).prop_map(
            |(sku, quantity, unit_price_minor)| OrderLine {
                sku,
                quantity,
                unit_price_minor,
            },
        )
    }

    fn arb_valid_order() -> impl Strategy<Value = NewOrder> {
        (
            "[a-z0-9-]{1,128}",
            prop::sample::select(vec!["EUR", "USD", "JPY", "GBP", "CHF", "BHD"]),
            prop::collection::vec(arb_line(), 1..=MAX_LINES),
            prop::sample::select(PAYMENT_METHODS.to_vec()),
            "[A-Za-z0-9_]{1,64}",
        )
            .prop_map(|(customer_id, currency, mut lines, method, token)| {
                // Make SKUs unique while keeping them within 64 characters.
                for (i, line) in lines.iter_mut().enumerate() {
                    line.sku.truncate(60);
                    line.sku.push_str(&format!("{i:03}"));
                }
                let total_minor = lines
                    .iter()
                    .map(|l| l.unit_price_minor * i64::from(l.quantity))
                    .sum();
                NewOrder {
                    customer_id,
                    currency: currency.into(),
                    lines,
                    total_minor,
                    payment: PaymentRef {
                        method: method.into(),
                        token,
                    },
                }
            })
    }

    proptest! {
        #[test]
        fn generated_valid_orders_pass(order in arb_valid_order()) {
            prop_assert_eq!(order.validate(), Ok(()));
        }

        #[test]
        fn fingerprint_survives_a_json_round_trip(order in arb_valid_order()) {
            let reparsed: NewOrder =
                serde_json::from_str(&serde_json::to_string_pretty(&order).unwrap()).unwrap();
            prop_assert_eq!(order.fingerprint(), reparsed.fingerprint());
        }

        #[test]
        fn any_changed_total_is_reported(order in arb_valid_order(), delta in any::<i64>()) {
            prop_assume!(delta != 0);
            let mut order = order;
            order.total_minor = order.total_minor.wrapping_add(delta);
            let errors = order.validate().unwrap_err();
            prop_assert!(errors.iter().any(|e| e.pointer == "/total_minor"));
        }

        #[test]
        fn changing_any_field_changes_the_fingerprint(order in arb_valid_order(), bump in 1i64..1000) {
            let mut other = order.clone();
            other.lines[0].unit_price_minor += bump;
            prop_assert_ne!(order.fingerprint(), other.fingerprint());
            let mut other = order.clone();
            other.payment.token.push('x');
            prop_assert_ne!(order.fingerprint(), other.fingerprint());
        }

        #[test]
        fn validation_never_panics(
            customer_id in ".{0,140}",
            currency in ".{0,4}",
            lines in prop::collection::vec(
                (".{0,70}", any::<u32>(), any::<i64>())
                    .prop_map(|(sku, quantity, unit_price_minor)| OrderLine { sku, quantity, unit_price_minor }),
                0..110),
            total_minor in any::<i64>(),
            method in ".{0,8}",
            token in ".{0,8}",
        ) {
            let order = NewOrder { customer_id, currency, lines, total_minor, payment: PaymentRef { method, token } };
            let _ = order.validate();
            let _ = order.fingerprint();
        }
    }
}
