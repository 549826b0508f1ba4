//! [`WebhookSink`]: POSTs each [`Notification`] as JSON to a configured URL, signed with
//! HMAC-SHA256 over the exact body bytes: header `X-Orderpipe-Signature: sha256=<hex>`, plus
//! `X-Orderpipe-Event-Id: <event_id>` for receivers that deduplicate before parsing.
//! 2xx is delivered; 408, 429, 5xx, timeouts and connection errors are retried; other 4xx are not.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use hmac::{Hmac, Mac};
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use sha2::Sha256;

use super::config::Secret;
use super::sink::{DeliveryError, Notification, NotificationSink};
use crate::shared::http::{http_client, parse_http_url, post_json, HttpClient, HttpFailure};

/// Signature header name.
pub const SIGNATURE_HEADER: &str = "x-orderpipe-signature";
/// Event id header name.
pub const EVENT_ID_HEADER: &str = "x-orderpipe-event-id";

type HmacSha256 = Hmac<Sha256>;

/// The signature header value of `body` under `secret`: `sha256=<lowercase hex>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest {
        out.push(char::from_digit(u32::from(byte >> 4), 16).expect("nibble"));
        out.push(char::from_digit(u32::from(byte & 0xf), 16).expect("nibble"));
    }
    out
}

/// Whether `header` is the signature of `body` under `secret` (constant-time comparison): what a
/// receiver checks before trusting a webhook.
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Some(expected) = decode_hex(hex) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Settings of a [`WebhookSink`].
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where to POST (`http://`).
    pub url: String,
    /// HMAC key (never logged: `Debug` redacts it).
    pub secret: Secret,
    /// Longest wait for one attempt.
    pub timeout: Duration,
}

/// A signed-webhook sink.
#[derive(Debug)]
pub struct WebhookSink {
    client: HttpClient,
    url: Uri,
    secret: Secret,
    timeout: Duration,
}

impl WebhookSink {
    /// A sink posting to `config.url`.
    pub fn new(config: WebhookConfig) -> Result<Self, String> {
        Ok(Self {
            client: http_client(config.timeout),
            url: parse_http_url(&config.url)?,
            secret: config.secret,
            timeout: config.timeout,
        })
    }
}

impl NotificationSink for WebhookSink {
    fn deliver<'a>(&'a self, n: &'a Notification) -> BoxFuture<'a, Result<(), DeliveryError>> {
        async move {
            let body = serde_json::to_vec(n).expect("notifications always serialize");
            let signature = sign(self.secret.expose().as_bytes(), &body);
            let headers = [
                (
                    HeaderName::from_static(SIGNATURE_HEADER),
                    HeaderValue::from_str(&signature).expect("hex is a valid header value"),
                ),
                (
                    HeaderName::from_static(EVENT_ID_HEADER),
                    HeaderValue::from_str(&n.event_id.to_string())
                        .expect("a UUID is a valid header value"),
                ),
            ];
            match post_json(
                &self.client,
                &self.url,
                &headers,
                Bytes::from(body),
                self.timeout,
            )
            .await
            {
                Ok(response) if response.status.is_success() => Ok(()),
                Ok(response) => {
                    let status = response.status.as_u16();
                    let message = format!("webhook answered HTTP {status}");
                    if status == 408 || status == 429 || response.status.is_server_error() {
                        Err(DeliveryError::transient(message))
                    } else {
                        Err(DeliveryError::permanent(message))
                    }
                }
                Err(HttpFailure::Timeout(after)) => Err(DeliveryError::transient(format!(
                    "webhook did not answer within {after:?}"
                ))),
                Err(HttpFailure::Io(message)) => Err(DeliveryError::transient(message)),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_rfc4231_case_2_and_verifies() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?"
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"what do ya want for nothing!", &sig));
        assert!(!verify(b"jefe", b"what do ya want for nothing?", &sig));
        assert!(!verify(b"Jefe", b"x", "sha256=zz"));
        assert!(!verify(b"Jefe", b"x", "md5=00"));
    }
}
