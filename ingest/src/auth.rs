//! Who is calling: API keys per client, stored as SHA-256 digests, never in clear.
//!
//! The keys file is a JSON list: `[{"client_id": "shop-eu", "key_sha256": "<64 hex>", "disabled": false}]`
//! (`sha256_hex` computes a digest; `echo -n "$KEY" | sha256sum` does too). A key is sent as
//! `Authorization: Bearer <key>` or `X-Api-Key: <key>`.
//!
//! Lookup compares SHA-256 digests, never the keys (see `orderpipe_runtime::auth`, which also
//! reads the bearer token and checks the admin key the same way).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::http::HeaderMap;
use orderpipe_runtime::auth::{self as keys, Bearer};
use serde::Deserialize;

use crate::error::{ApiError, KeyEntryError, KeysError};

/// Client id of every caller when no keys file is configured.
pub const ANONYMOUS: &str = "anonymous";

/// One entry of the keys file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// The client this key belongs to (scopes Idempotency-Keys and the rate limit).
    pub client_id: String,
    /// Lowercase or uppercase hex SHA-256 of the key.
    pub key_sha256: String,
    /// A disabled key is answered 403.
    #[serde(default)]
    pub disabled: bool,
}

/// The configured API keys, by digest.
#[derive(Clone)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Client>,
}

#[derive(Clone)]
struct Client {
    id: Arc<str>,
    disabled: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Digests are not secrets, but nobody needs them in a log line either.
        f.debug_struct("ApiKeys")
            .field("keys", &self.by_digest.len())
            .finish()
    }
}

impl ApiKeys {
    /// Reads the keys file.
    pub fn load(path: &Path) -> Result<Self, KeysError> {
        let text = std::fs::read(path).map_err(|err| KeysError::Read(path.into(), err))?;
        let entries: Vec<KeyEntry> =
            serde_json::from_slice(&text).map_err(|err| KeysError::Parse(path.into(), err))?;
        Self::from_entries(entries).map_err(|err| KeysError::Entry(path.into(), err))
    }

    /// Builds the table from entries; refuses malformed digests, empty client ids and duplicates.
    pub fn from_entries(
        entries: impl IntoIterator<Item = KeyEntry>,
    ) -> Result<Self, KeyEntryError> {
        let mut by_digest = HashMap::new();
        for (i, entry) in entries.into_iter().enumerate() {
            if entry.client_id.trim().is_empty() {
                return Err(KeyEntryError::EmptyClientId(i));
            }
            let digest = keys::parse_digest_hex(&entry.key_sha256)
                .map_err(|why| KeyEntryError::BadDigest(i, entry.client_id.clone(), why))?;
            let client = Client {
                id: entry.client_id.into(),
                disabled: entry.disabled,
            };
            if by_digest.insert(digest, client).is_some() {
                return Err(KeyEntryError::DuplicateKey(i));
            }
        }
        Ok(Self { by_digest })
    }

    /// The client id of the key in `headers`: 401 without a key or with an unknown one, 403 when
    /// the key is disabled.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<str>, ApiError> {
        let key = presented_key(headers).ok_or(ApiError::Unauthenticated)?;
        match self.by_digest.get(&keys::digest(key)) {
            None => Err(ApiError::Unauthenticated),
            Some(client) if client.disabled => Err(ApiError::Forbidden),
            Some(client) => Ok(client.id.clone()),
        }
    }
}

/// The key sent as `Authorization: Bearer <key>` (preferred) or `X-Api-Key: <key>`. A
/// malformed `Authorization` header counts as no key (no fallback to `X-Api-Key`).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    match keys::bearer(headers) {
        Bearer::Token(key) => Some(key),
        Bearer::Malformed => None,
        Bearer::Absent => {
            let key = headers.get("x-api-key")?.to_str().ok()?.trim();
            (!key.is_empty()).then_some(key)
        }
    }
}

/// Lowercase hex SHA-256 of an API key, as the keys file stores it.
pub fn sha256_hex(key: &str) -> String {
    keys::sha256_hex(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn keys() -> ApiKeys {
        ApiKeys::from_entries([
            KeyEntry {
                client_id: "shop-eu".into(),
                key_sha256: sha256_hex("k-eu"),
                disabled: false,
            },
            KeyEntry {
                client_id: "shop-old".into(),
                key_sha256: sha256_hex("k-old").to_uppercase(),
                disabled: true,
            },
        ])
        .unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn keys_map_to_clients() {
        let keys = keys();
        let ok = |h: &[(&'static str, &str)]| keys.authenticate(&headers(h)).map(|c| c.to_string());
        assert_eq!(ok(&[("authorization", "Bearer k-eu")]).unwrap(), "shop-eu");
        assert_eq!(
            ok(&[("authorization", "bearer  k-eu ")]).unwrap(),
            "shop-eu"
        );
        assert_eq!(ok(&[("x-api-key", "k-eu")]).unwrap(), "shop-eu");
        assert!(matches!(ok(&[]), Err(ApiError::Unauthenticated)));
        assert!(matches!(
            ok(&[("x-api-key", "nope")]),
            Err(ApiError::Unauthenticated)
        ));
        assert!(matches!(
            ok(&[("authorization", "Basic k-eu")]),
            Err(ApiError::Unauthenticated)
        ));
        assert!(matches!(
            ok(&[("authorization", "Bearer ")]),
            Err(ApiError::Unauthenticated)
        ));
        assert!(matches!(
            ok(&[("x-api-key", "k-old")]),
            Err(ApiError::Forbidden)
        ));
    }

    #[test]
    fn bad_files_are_refused() {
        let entry = |digest: &str| KeyEntry {
            client_id: "c".into(),
            key_sha256: digest.into(),
            disabled: false,
        };
        assert!(ApiKeys::from_entries([entry("abc")]).is_err());
        assert!(ApiKeys::from_entries([entry(&"zz".repeat(32))]).is_err());
        let twice = sha256_hex("k");
        assert!(ApiKeys::from_entries([entry(&twice), entry(&twice)]).is_err());
        let parsed: Result<Vec<KeyEntry>, _> =
            serde_json::from_str(r#"[{"client_id":"c","key_sha256":"x","extra":1}]"#);
        assert!(parsed.is_err());
    }

    #[test]
    fn debug_shows_no_digest() {
        let text = format!("{:?}", keys());
        assert!(!text.contains(&sha256_hex("k-eu")), "{text}");
    }
}
