//! `/healthz` (the process is alive), `/readyz` (every registered readiness check passes) and
//! `/metrics` (Prometheus text), as routes any service merges into its own router.
//!
//! With an admin key installed ([`crate::auth::set_admin_key`]), `/readyz` and `/metrics` answer
//! 401 without it: the exposition names SKUs, stages and error rates, and readiness failures
//! name brokers and components, which an outsider has no business reading. `/healthz` stays open
//! and says nothing but `ok`: liveness probes (Docker `HEALTHCHECK`, a kubelet) usually cannot
//! send a secret, and a probe that got 401 would restart a healthy process.

use std::sync::{Arc, Mutex};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// A readiness check: `Ok(())` when ready, or why not.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The named readiness checks of one service.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<(String, Check)>>>,
}

impl Readiness {
    /// No checks yet: ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a named check.
    pub fn add(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.checks
            .lock()
            .expect("readiness lock")
            .push((name.into(), Arc::new(check)));
    }

    /// Every failing check as `name: reason`; empty when ready.
    pub fn failures(&self) -> Vec<String> {
        let checks = self.checks.lock().expect("readiness lock").clone();
        checks
            .iter()
            .filter_map(|(name, check)| check().err().map(|why| format!("{name}: {why}")))
            .collect()
    }
}

/// Routes for `/healthz`, `/readyz` and `/metrics`, the last two behind the process's admin key
/// when one is installed.
pub fn routes<S: Clone + Send + Sync + 'static>(readiness: Readiness) -> Router<S> {
    routes_with_key(readiness, crate::auth::admin_key())
}

/// [`routes`] with `/readyz` and `/metrics` behind `admin_key` (open without one).
pub fn routes_with_key<S: Clone + Send + Sync + 'static>(
    readiness: Readiness,
    admin_key: Option<crate::auth::AdminKey>,
) -> Router<S> {
    let guarded = Router::new()
        .route("/readyz", get(move || ready(readiness.clone())))
        .route("/metrics", get(metrics));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(crate::auth::guard(guarded, admin_key))
}

async fn ready(readiness: Readiness) -> Response {
    let failures = readiness.failures();
    if failures.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{}\n", failures.join("\n")),
        )
            .into_response()
    }
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt;

    async fn get_status(router: &Router, path: &str) -> StatusCode {
        let request = Request::get(path).body(Body::empty()).unwrap();
        router.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn readyz_follows_registered_checks() {
        let readiness = Readiness::new();
        let broker_up = Arc::new(AtomicBool::new(false));
        let flag = broker_up.clone();
        readiness.add("broker", move || {
            if flag.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("unreachable".into())
            }
        });
        let router: Router = routes(readiness.clone());

        assert_eq!(get_status(&router, "/healthz").await, StatusCode::OK);
        assert_eq!(
            get_status(&router, "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            readiness.failures(),
            vec!["broker: unreachable".to_string()]
        );

        broker_up.store(true, Ordering::Relaxed);
        assert_eq!(get_status(&router, "/readyz").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn admin_key_guards_readyz_and_metrics_but_not_healthz() {
        let key = crate::auth::AdminKey::new("admin-test-key").unwrap();
        let open: Router = routes_with_key(Readiness::new(), None);
        let guarded: Router = routes_with_key(Readiness::new(), Some(key));
        let call = |router: &Router, path: &str, authorization: Option<&str>| {
            let mut request = Request::get(path);
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            router.clone().oneshot(request.body(Body::empty()).unwrap())
        };
        for path in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(
                call(&open, path, None).await.unwrap().status(),
                StatusCode::OK,
                "{path}"
            );
            let with_key = call(&guarded, path, Some("Bearer admin-test-key"))
                .await
                .unwrap();
            assert_eq!(with_key.status(), StatusCode::OK, "{path}");
        }
        assert_eq!(
            call(&guarded, "/healthz", None).await.unwrap().status(),
            StatusCode::OK
        );
        for path in ["/readyz", "/metrics"] {
            for sent in [None, Some("Bearer wrong"), Some("admin-test-key")] {
                let refused = call(&guarded, path, sent).await.unwrap();
                assert_eq!(
                    refused.status(),
                    StatusCode::UNAUTHORIZED,
                    "{path} {sent:?}"
                );
                assert_eq!(
                    refused.headers()[header::CONTENT_TYPE],
                    "application/problem+json"
                );
                assert!(refused.headers().contains_key(header::WWW_AUTHENTICATE));
            }
        }
    }

    #[tokio::test]
    async fn metrics_renders_recorded_values() {
        let router: Router = routes(Readiness::new());
        crate::metrics::handle();
        ::metrics::counter!("orderpipe_runtime_test_total").increment(3);
        let response = router
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("orderpipe_runtime_test_total 3"), "{text}");
    }
}
