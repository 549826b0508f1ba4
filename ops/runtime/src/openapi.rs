//! What the OpenAPI documents of the ingest and query APIs share: the `GET /openapi.json` route,
//! the document's one JSON rendering (served and committed under `ops/api/`), and schemas of the
//! `schemas` crate's types taken from their schemars derive, so that a request body in the
//! OpenAPI document is the very JSON Schema published in `schemas/json/`, not a second
//! description of the same type that could drift from it.

use axum::http::header;
use axum::routing::get;
use axum::Router;
use schemars::JsonSchema;
use serde_json::Value;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::{OpenApi, RefOr};

/// Path every service serves its OpenAPI document at.
pub const PATH: &str = "/openapi.json";

/// The document as pretty JSON with a final newline: what `/openapi.json` serves and what is
/// committed under `ops/api/` (one rendering, so the committed file is byte-for-byte the served one).
pub fn to_json(doc: &OpenApi) -> String {
    let mut text = serde_json::to_string_pretty(doc).expect("an OpenAPI document serializes");
    text.push('\n');
    text
}

/// `GET /openapi.json`, rendered once.
pub fn route<S: Clone + Send + Sync + 'static>(doc: &OpenApi) -> Router<S> {
    let body = to_json(doc);
    Router::new().route(
        PATH,
        get(move || {
            let body = body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    )
}

/// The schema schemars derives for `T` as an OpenAPI 3.1 schema, with its named subschemas as
/// components (`#/components/schemas/<name>`). OpenAPI 3.1 schemas are JSON Schema 2020-12,
/// which is what schemars writes, so only the place of the definitions changes.
pub fn from_schemars<T: JsonSchema>() -> (RefOr<Schema>, Vec<(String, RefOr<Schema>)>) {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "#/components/schemas/".into();
    let mut generator = settings.into_generator();
    let name = T::schema_name();
    // subschema_for gives a $ref to T's own definition and records T and what it references.
    let _ = generator.subschema_for::<T>();
    let mut definitions = generator.take_definitions(true);
    let root = definitions
        .remove(name.as_ref())
        .unwrap_or_else(|| panic!("schemars defined no schema {name}"));
    let convert = |value: Value| -> RefOr<Schema> {
        serde_json::from_value(value).expect("a schemars schema is an OpenAPI 3.1 schema")
    };
    let components = definitions
        .into_iter()
        .map(|(name, value)| (name, convert(value)))
        .collect();
    (convert(root), components)
}

/// Implements utoipa's schema traits for a marker type standing for a `schemas` crate type
/// (the orphan rule keeps utoipa's traits off the type itself), with the schema from schemars.
#[macro_export]
macro_rules! schemars_schema {
    ($(#[$meta:meta])* $vis:vis struct $marker:ident => $ty:ty, $name:literal;) => {
        $(#[$meta])*
        $vis struct $marker;

        impl ::utoipa::PartialSchema for $marker {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                $crate::openapi::from_schemars::<$ty>().0
            }
        }

        impl ::utoipa::ToSchema for $marker {
            fn name() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed($name)
            }

            fn schemas(
                schemas: &mut Vec<(
                    String,
                    ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema>,
                )>,
            ) {
                schemas.extend($crate::openapi::from_schemars::<$ty>().1);
            }
        }
    };
}

schemars_schema! {
    /// `FieldError` of the `schemas` crate (`errors` of a 422 problem) in OpenAPI documents.
    pub struct FieldErrorSchema => orderpipe_schemas::FieldError, "FieldError";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The conversion loses nothing: the utoipa schema serializes back to schemars' JSON.
    #[test]
    fn schemars_schemas_convert_without_loss() {
        let mut settings = schemars::generate::SchemaSettings::draft2020_12();
        settings.definitions_path = "#/components/schemas/".into();
        let mut generator = settings.into_generator();
        let _ = generator.subschema_for::<orderpipe_schemas::NewOrder>();
        let expected = generator.take_definitions(true);
        let (root, components) = from_schemars::<orderpipe_schemas::NewOrder>();
        assert_eq!(
            serde_json::to_value(&root).unwrap(),
            expected["NewOrder"],
            "NewOrder"
        );
        assert!(components.len() >= 2, "{}", components.len());
        for (name, schema) in components {
            assert_eq!(
                serde_json::to_value(&schema).unwrap(),
                expected[&name],
                "{name}"
            );
        }
        let text = serde_json::to_string(&root).unwrap();
        assert!(
            text.contains("#/components/schemas/OrderLine") && !text.contains("$defs"),
            "{text}"
        );
    }
}
