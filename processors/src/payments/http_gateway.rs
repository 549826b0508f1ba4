//! [`HttpGateway`]: a [`PaymentGateway`] over the HTTP contract of [`super::contract`], with a
//! per-attempt timeout, retries with exponential backoff and jitter (`backon`) for transient
//! failures, a [`CircuitBreaker`], and `Idempotency-Key: <order_id>` on every call, so a retry
//! after a lost answer returns the first charge instead of charging again.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::FutureExt;
use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use orderpipe_schemas::PaymentRef;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use super::contract::{
    ChargeRequest, ChargeResponse, RefundRequest, RefundResponse, CHARGES_PATH, IDEMPOTENCY_KEY,
    REFUNDS_PATH,
};
use super::gateway::{Charge, GatewayError, PaymentGateway, Refund};
use crate::shared::http::{
    http_client, join, parse_http_url, post_json, HttpClient, HttpFailure, RetryPolicy,
};
use backon::Retryable as _;

/// Settings of an [`HttpGateway`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGatewayConfig {
    /// Base URL of the gateway, e.g. `http://127.0.0.1:8089`.
    pub base_url: String,
    /// Longest wait for one attempt (connect, send, whole answer).
    pub request_timeout: Duration,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
}

impl HttpGatewayConfig {
    /// Defaults for `base_url`: 2 s per attempt, 4 attempts (50 ms .. 1 s backoff), breaker
    /// opening after 5 consecutive failures for 5 s.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            request_timeout: Duration::from_secs(2),
            retry: RetryPolicy::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// An HTTP payment gateway client.
#[derive(Debug)]
pub struct HttpGateway {
    client: HttpClient,
    charges: Uri,
    refunds: Uri,
    timeout: Duration,
    retry: RetryPolicy,
    breaker: CircuitBreaker,
}

impl HttpGateway {
    /// A client for the gateway at `config.base_url` (must be `http://`).
    pub fn new(config: HttpGatewayConfig) -> Result<Self, String> {
        let base = parse_http_url(&config.base_url)?;
        Ok(Self {
            client: http_client(config.request_timeout),
            charges: join(&base, CHARGES_PATH)?,
            refunds: join(&base, REFUNDS_PATH)?,
            timeout: config.request_timeout,
            retry: config.retry,
            breaker: CircuitBreaker::new(config.breaker),
        })
    }

    /// The circuit breaker's state (metrics, tests).
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// POSTs `body` to `uri` with the order's idempotency key, retrying transient failures.
    async fn call<T, R>(&self, uri: &Uri, order_id: Uuid, body: Bytes) -> Result<T, GatewayError>
    where
        R: DeserializeOwned,
        T: TryFrom<R, Error = String>,
    {
        let key = HeaderValue::from_str(&order_id.to_string())
            .expect("a hyphenated UUID is a valid header value");
        let headers = [(HeaderName::from_static(IDEMPOTENCY_KEY), key)];
        let attempt = || async {
            if !self.breaker.try_acquire() {
                return Err(GatewayError::CircuitOpen);
            }
            let response =
                match post_json(&self.client, uri, &headers, body.clone(), self.timeout).await {
                    Ok(response) => response,
                    Err(failure) => {
                        self.breaker.on_failure();
                        return Err(match failure {
                            HttpFailure::Timeout(after) => GatewayError::Timeout(after),
                            HttpFailure::Io(message) => GatewayError::Unavailable(message),
                        });
                    }
                };
            let status = response.status;
            if status.is_server_error() || status.as_u16() == 429 {
                self.breaker.on_failure();
                return Err(GatewayError::Unavailable(format!("HTTP {status}")));
            }
            // The gateway is up and answering; whatever it said, the circuit is healthy.
            self.breaker.on_success();
            if status.as_u16() == 409 {
                return Err(GatewayError::Unavailable(
                    "HTTP 409: the same key is in progress".to_owned(),
                ));
            }
            if !status.is_success() {
                return Err(GatewayError::Refused {
                    status: status.as_u16(),
                    message: String::from_utf8_lossy(&response.body).into_owned(),
                });
            }
            let wire: R = serde_json::from_slice(&response.body)
                .map_err(|e| GatewayError::InvalidResponse(e.to_string()))?;
            T::try_from(wire).map_err(GatewayError::InvalidResponse)
        };
        attempt
            .retry(self.retry.backoff())
            .when(GatewayError::is_retryable)
            .notify(|err, after| {
                tracing::debug!(%order_id, error = %err, retry_in = ?after, "gateway call failed; retrying");
            })
            .await
    }
}

impl PaymentGateway for HttpGateway {
    fn charge<'a>(
        &'a self,
        order_id: Uuid,
        amount_minor: i64,
        currency: &'a str,
        payment: &'a PaymentRef,
    ) -> BoxFuture<'a, Result<Charge, GatewayError>> {
        let body = serde_json::to_vec(&ChargeRequest {
            order_id,
            amount_minor,
            currency: currency.to_owned(),
            payment: payment.clone(),
        })
        .expect("charge requests always serialize");
        async move {
            self.call::<Charge, ChargeResponse>(&self.charges, order_id, Bytes::from(body))
                .await
        }
        .boxed()
    }

    fn refund(&self, order_id: Uuid) -> BoxFuture<'_, Result<Refund, GatewayError>> {
        let body = serde_json::to_vec(&RefundRequest { order_id })
            .expect("refund requests always serialize");
        async move {
            self.call::<Refund, RefundResponse>(&self.refunds, order_id, Bytes::from(body))
                .await
        }
        .boxed()
    }
}
