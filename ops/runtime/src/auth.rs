//! Credentials every process checks, in one place: how a bearer key is read from a request, how
//! keys are compared (by SHA-256 digest), and the admin key that guards the admin endpoints.
//!
//! Keys are compared by their SHA-256 digests, never in clear: the timing of a digest comparison
//! tells an attacker at most about the digest, and a digest does not lead back to a key
//! (preimage resistance), so no constant-time comparison of the keys themselves is needed.
//! Ingest's API keys (`orderpipe_ingest::auth`) use the same functions.
//!
//! **The admin key** (`--admin-key`, `--admin-key-file`) belongs to the process, like the
//! metrics recorder: once [`set_admin_key`] installed it, every router serving the admin routes
//! of [`crate::health`] (the admin listener, and the ingest and query ports that merge them)
//! and every state-changing admin route wrapped with [`require_admin`] refuses requests that do
//! not carry it as `Authorization: Bearer <key>`, with 401 problem+json and `WWW-Authenticate`.
//! Without an admin key those routes stay open, as before.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use sha2::{Digest, Sha256};

/// SHA-256 digest of a key.
pub type KeyDigest = [u8; 32];

/// The SHA-256 digest of `key`.
pub fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

/// Lowercase hex SHA-256 of a key (`echo -n "$KEY" | sha256sum` prints the same).
pub fn sha256_hex(key: &str) -> String {
    digest(key)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// Parses 64 hex digits (either case) into a digest.
pub fn parse_digest_hex(hex: &str) -> Result<KeyDigest, String> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err("must be 64 hex digits".into());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "must be hex digits".to_string())?;
    }
    Ok(out)
}

/// What the `Authorization` header of a request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No `Authorization` header.
    Absent,
    /// An `Authorization` header that is not `Bearer <token>` (other scheme, no token, not
    /// visible ASCII).
    Malformed,
    /// `Authorization: Bearer <token>` (scheme case-insensitive, token trimmed).
    Token(&'a str),
}

/// Reads `Authorization: Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Bearer<'_> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Bearer::Absent;
    };
    let Ok(value) = value.to_str() else {
        return Bearer::Malformed;
    };
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Bearer::Token(token.trim())
        }
        _ => Bearer::Malformed,
    }
}

/// Why an admin key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AdminKeyError {
    /// An empty key would let anybody in who sends `Bearer ` plus spaces, or nobody at all:
    /// refused rather than guessed.
    #[error("the admin key is empty")]
    Empty,
    /// The key file could not be read.
    #[error("reading the admin key file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A different admin key is installed already (one per process).
    #[error("a different admin key is already installed in this process")]
    AlreadySet,
}

/// The admin credential, kept as its digest only (never printed: `Debug` shows nothing of it).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminKey {
    digest: KeyDigest,
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(..)")
    }
}

impl AdminKey {
    /// The admin key `key` (surrounding whitespace ignored, as a file's trailing newline is).
    pub fn new(key: &str) -> Result<Self, AdminKeyError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(AdminKeyError::Empty);
        }
        Ok(Self {
            digest: digest(key),
        })
    }

    /// The admin key stored in `path` (one line; a trailing newline is ignored).
    pub fn read_file(path: &Path) -> Result<Self, AdminKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| AdminKeyError::File {
            path: path.to_owned(),
            source,
        })?;
        Self::new(&text)
    }

    /// `Ok` when `headers` carry this key as `Authorization: Bearer <key>`; otherwise the 401
    /// answer to send.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        match bearer(headers) {
            Bearer::Token(token) if digest(token) == self.digest => Ok(()),
            Bearer::Absent => Err(Box::new(unauthorized(None))),
            Bearer::Malformed => Err(Box::new(unauthorized(Some("invalid_request")))),
            Bearer::Token(_) => Err(Box::new(unauthorized(Some("invalid_token")))),
        }
    }
}

/// Realm named in `WWW-Authenticate`.
const REALM: &str = "orderpipe-admin";

/// 401 with an RFC 7807 body and an RFC 6750 challenge. `error` is the RFC 6750 error code
/// when a credential was sent (none when it was missing, as RFC 6750 section 3.1 asks). The body
/// is the same for every refusal: it does not tell a wrong key from a missing one.
fn unauthorized(error: Option<&str>) -> Response {
    let challenge = match error {
        None => format!("Bearer realm=\"{REALM}\""),
        Some(error) => format!("Bearer realm=\"{REALM}\", error=\"{error}\""),
    };
    let mut response = crate::problem::Problem::new(
        StatusCode::UNAUTHORIZED,
        "admin-unauthenticated",
        "Admin credential required",
        "send the admin key as Authorization: Bearer <key>",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).expect("a constant challenge"),
    );
    response
}

static ADMIN_KEY: OnceLock<AdminKey> = OnceLock::new();

/// Installs the process's admin key (once; installing the same key again is harmless). Call it
/// before any admin router is built: routers read it when they are built.
pub fn set_admin_key(key: AdminKey) -> Result<(), AdminKeyError> {
    let installed = ADMIN_KEY.get_or_init(|| key.clone());
    if *installed == key {
        Ok(())
    } else {
        Err(AdminKeyError::AlreadySet)
    }
}

/// The process's admin key, if one was installed.
pub fn admin_key() -> Option<AdminKey> {
    ADMIN_KEY.get().cloned()
}

/// `router` behind the admin key `key` (every route it has now; routes added later are not
/// guarded). Without a key it is returned as it is.
pub fn guard<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    key: Option<AdminKey>,
) -> Router<S> {
    match key {
        None => router,
        Some(key) => router.route_layer(middleware::from_fn_with_state(key, check_admin)),
    }
}

/// `router` behind the process's admin key ([`set_admin_key`]), if there is one.
pub fn require_admin<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    guard(router, admin_key())
}

async fn check_admin(State(key): State<AdminKey>, request: Request, next: Next) -> Response {
    match key.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => *refusal,
    }
}

/// `--admin-key` / `--admin-key-file`: the admin credential of a process (`orderpipe run`,
/// `orderpipe gateway-sim`).
#[derive(Clone, Default, clap::Args)]
pub struct AdminKeyArgs {
    /// Admin key: when set, `/metrics`, `/readyz` and every state-changing admin endpoint
    /// answer 401 unless the request sends `Authorization: Bearer <key>` (`/healthz` stays open
    /// for liveness probes). Prefer `--admin-key-file`: a flag is visible in the process list.
    #[arg(
        long,
        env = "ORDERPIPE_ADMIN_KEY",
        hide_env_values = true,
        conflicts_with = "admin_key_file"
    )]
    pub admin_key: Option<String>,

    /// File holding the admin key (one line), e.g. a mounted secret.
    #[arg(long, env = "ORDERPIPE_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for AdminKeyArgs {
    // `orderpipe run`'s arguments may be debug-printed; the key must not be.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminKeyArgs")
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<redacted>"))
            .field("admin_key_file", &self.admin_key_file)
            .finish()
    }
}

impl AdminKeyArgs {
    /// The configured key, if any.
    pub fn load(&self) -> Result<Option<AdminKey>, AdminKeyError> {
        match (&self.admin_key, &self.admin_key_file) {
            (Some(key), _) => AdminKey::new(key).map(Some),
            (None, Some(path)) => AdminKey::read_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Loads the configured key and installs it for the process ([`set_admin_key`]); says in
    /// the log whether the admin endpoints are guarded.
    pub fn install(&self) -> Result<(), AdminKeyError> {
        match self.load()? {
            Some(key) => {
                set_admin_key(key)?;
                tracing::info!("admin endpoints require the admin key");
            }
            None => tracing::info!("no admin key configured: admin endpoints are open"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut map = HeaderMap::new();
        if let Some(value) = authorization {
            map.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn bearer_tokens_are_read_strictly() {
        assert_eq!(bearer(&headers(None)), Bearer::Absent);
        assert_eq!(bearer(&headers(Some("Bearer k"))), Bearer::Token("k"));
        assert_eq!(bearer(&headers(Some("bearer  k "))), Bearer::Token("k"));
        assert_eq!(bearer(&headers(Some("Basic k"))), Bearer::Malformed);
        assert_eq!(bearer(&headers(Some("Bearer "))), Bearer::Malformed);
        assert_eq!(bearer(&headers(Some("k"))), Bearer::Malformed);
    }

    #[test]
    fn admin_key_checks_the_bearer_token() {
        let key = AdminKey::new("s3cret\n").unwrap();
        assert!(key.check(&headers(Some("Bearer s3cret"))).is_ok());
        for (sent, error) in [
            (None, None),
            (Some("Bearer wrong"), Some("invalid_token")),
            (Some("Basic s3cret"), Some("invalid_request")),
        ] {
            let refusal = key.check(&headers(sent)).unwrap_err();
            assert_eq!(refusal.status(), StatusCode::UNAUTHORIZED, "{sent:?}");
            let challenge = refusal.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap();
            assert!(
                challenge.starts_with("Bearer realm=\"orderpipe-admin\""),
                "{challenge}"
            );
            assert_eq!(
                error
                    .map(|e| format!("error=\"{e}\""))
                    .is_some_and(|e| challenge.contains(&e)),
                error.is_some(),
                "{challenge}"
            );
        }
    }

    #[test]
    fn empty_keys_and_missing_files_are_refused() {
        assert!(matches!(AdminKey::new(" \n"), Err(AdminKeyError::Empty)));
        let missing = AdminKey::read_file(Path::new("/nonexistent/admin-key"));
        assert!(matches!(missing, Err(AdminKeyError::File { .. })));
    }

    #[test]
    fn nothing_of_the_key_is_printed() {
        let args = AdminKeyArgs {
            admin_key: Some("s3cret-admin".into()),
            admin_key_file: None,
        };
        let printed = format!("{args:?} {:?}", args.load().unwrap().unwrap());
        assert!(!printed.contains("s3cret-admin"), "{printed}");
        assert!(!printed.contains(&sha256_hex("s3cret-admin")), "{printed}");
    }

    #[test]
    fn digests_match_sha256sum_and_parse_back() {
        // echo -n abc | sha256sum
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex("abc"), hex);
        assert_eq!(
            parse_digest_hex(&hex.to_uppercase()).unwrap(),
            digest("abc")
        );
        assert!(parse_digest_hex("abc").is_err());
        assert!(parse_digest_hex(&"zz".repeat(32)).is_err());
    }
}
