//! `/healthz` (the process is alive), `/readyz` (every registered readiness check passes) and
//! `/metrics` (Prometheus text), as routes any service merges into its own router.

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

/// Routes for `/healthz`, `/readyz` and `/metrics`.
pub fn routes<S: Clone + Send + Sync + 'static>(readiness: Readiness) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(move || ready(readiness.clone())))
        .route("/metrics", get(metrics))
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
