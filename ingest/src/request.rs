//! Reading an order request: the JSON content type, the `Idempotency-Key` header, and the body
//! as a [`NewOrder`], with field-level errors (RFC 6901 pointers) for JSON of the wrong shape.

use axum::http::{header, HeaderMap};
use orderpipe_schemas::{FieldError, NewOrder};

use crate::error::ApiError;
use crate::idempotency::{self, IdempotencyKey};

/// The request's idempotency key, if it sent one (once).
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(idempotency::HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidIdempotencyKey("must be sent once"));
    }
    IdempotencyKey::parse(value).map(Some)
}

/// `Content-Type: application/json`, with or without parameters (`; charset=utf-8`).
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Parses the body: 400 when it is not JSON, 422 (with a pointer) when it is JSON of the wrong
/// shape: missing, unknown or mistyped fields.
pub(crate) fn parse_order(body: &[u8]) -> Result<NewOrder, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let order: NewOrder = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(order) => order,
        Err(err) => {
            let pointer = json_pointer(err.path());
            let err = err.into_inner();
            return Err(match err.classify() {
                serde_json::error::Category::Data => {
                    ApiError::InvalidOrder(vec![shape_error(pointer, &err)])
                }
                _ => ApiError::MalformedJson(err.to_string()),
            });
        }
    };
    deserializer
        .end()
        .map_err(|err| ApiError::MalformedJson(err.to_string()))?;
    Ok(order)
}

/// RFC 6901 pointer of a serde path (`lines[0].sku` -> `/lines/0/sku`).
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut pointer = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => pointer.push_str(&format!("/{index}")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                pointer.push('/');
                pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
            }
            Segment::Unknown => {}
        }
    }
    pointer
}

/// A field error for JSON of the wrong shape. Missing and unknown fields point at the field
/// itself rather than at the object holding it.
fn shape_error(pointer: String, err: &serde_json::Error) -> FieldError {
    let text = err.to_string();
    // serde_json appends the position; the pointer says where already.
    let suffix = format!(" at line {} column {}", err.line(), err.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text);
    let named = |prefix: &str| {
        message
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('`').next())
            .map(str::to_owned)
    };
    let at = |field: &str| {
        let escaped = field.replace('~', "~0").replace('/', "~1");
        if pointer.ends_with(&format!("/{escaped}")) {
            pointer.clone()
        } else {
            format!("{pointer}/{escaped}")
        }
    };
    if let Some(field) = named("missing field `") {
        FieldError {
            pointer: at(&field),
            message: "is required".into(),
        }
    } else if let Some(field) = named("unknown field `") {
        FieldError {
            pointer: at(&field),
            message: "is not a field of this object".into(),
        }
    } else {
        FieldError {
            pointer,
            message: message.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn shape(body: &str) -> Vec<FieldError> {
        match parse_order(body.as_bytes()) {
            Err(ApiError::InvalidOrder(errors)) => errors,
            other => panic!("expected 422 for {body}, got {other:?}"),
        }
    }

    const VALID: &str = r#"{"customer_id":"c","currency":"EUR","lines":[{"sku":"A","quantity":1,"unit_price_minor":5}],"total_minor":5,"payment":{"method":"card","token":"t"}}"#;

    #[test]
    fn valid_body_parses() {
        assert!(parse_order(VALID.as_bytes()).is_ok());
    }

    #[test]
    fn syntax_errors_are_400() {
        for body in [
            "",
            "{",
            "{\"customer_id\":}",
            "nul",
            &format!("{VALID} {{}}"),
        ] {
            assert!(
                matches!(
                    parse_order(body.as_bytes()),
                    Err(ApiError::MalformedJson(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn shape_errors_point_at_the_field() {
        let missing = VALID.replace(r#""total_minor":5,"#, "");
        assert_eq!(shape(&missing)[0].pointer, "/total_minor");
        assert_eq!(shape(&missing)[0].message, "is required");
        let unknown = VALID.replace(r#""quantity":1"#, r#""quantity":1,"colour":"red""#);
        assert_eq!(shape(&unknown)[0].pointer, "/lines/0/colour");
        let root_unknown = VALID.replace(r#""total_minor""#, r#""coupon":"X","total_minor""#);
        assert_eq!(shape(&root_unknown)[0].pointer, "/coupon");
        let mistyped = VALID.replace(r#""quantity":1"#, r#""quantity":-1"#);
        let errors = shape(&mistyped);
        assert_eq!(errors[0].pointer, "/lines/0/quantity");
        assert!(
            !errors[0].message.contains("line 1"),
            "{}",
            errors[0].message
        );
        let missing_token = VALID.replace(r#","token":"t""#, "");
        assert_eq!(shape(&missing_token)[0].pointer, "/payment/token");
        assert_eq!(shape("[]")[0].pointer, "");
    }

    #[test]
    fn content_type_must_be_json() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
