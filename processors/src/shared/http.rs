//! Small HTTP/1 client pieces shared by the HTTP payment gateway and the notification webhook:
//! a pooled hyper-util client, one POST with a timeout, and the retry policy (exponential backoff
//! with jitter, via `backon`).
//!
//! Why hyper-util's legacy client and not reqwest: hyper, hyper-util and http-body-util are
//! already in the dependency tree (axum, ingest tests), the calls are plain JSON POSTs to a
//! configured URL, and timeouts/retries are ours anyway; reqwest would add its own stack of
//! crates for no capability we use. No TLS: gateway and webhook URLs are `http://` (behind a
//! TLS-terminating sidecar in production); see the module notes of [`crate::payments`].

use std::time::Duration;

use backon::ExponentialBuilder;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A pooled HTTP/1 client (plain `http://`).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client whose TCP connect gives up after `connect_timeout`.
pub fn http_client(connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// A response: status and whole body.
#[derive(Debug, Clone)]
pub(crate) struct HttpResponse {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
}

/// Why an HTTP exchange produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HttpFailure {
    /// No complete response within the timeout.
    Timeout(Duration),
    /// Connecting, sending or reading failed.
    Io(String),
}

/// POSTs `body` (JSON) to `uri` with extra `headers`; the whole exchange is bounded by `timeout`.
pub(crate) async fn post_json(
    client: &HttpClient,
    uri: &Uri,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
    timeout: Duration,
) -> Result<HttpResponse, HttpFailure> {
    let mut builder = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header(CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let request = builder
        .body(Full::new(body))
        .map_err(|e| HttpFailure::Io(e.to_string()))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| HttpFailure::Io(error_chain(&e)))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| HttpFailure::Io(e.to_string()))?
            .to_bytes();
        Ok(HttpResponse { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HttpFailure::Timeout(timeout))?
}

/// `base` (e.g. `http://127.0.0.1:8080/`) joined with an absolute `path`.
pub(crate) fn join(base: &Uri, path: &str) -> Result<Uri, String> {
    let base = base.to_string();
    format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("{base}{path}: {e}"))
}

/// Checks that `url` is an absolute `http://` URL.
pub(crate) fn parse_http_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(uri),
        (Some(other), _) if other != "http" => Err(format!(
            "{url:?}: only http:// is supported (terminate TLS in a sidecar)"
        )),
        _ => Err(format!("{url:?}: not an absolute http:// URL")),
    }
}

/// The error and its sources on one line (hyper's top-level errors say little alone).
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// How often and how patiently to retry a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, at least 1 (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubles per retry (with jitter).
    pub min_delay: Duration,
    /// Longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// The `backon` backoff for this policy.
    pub fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
    }
}
