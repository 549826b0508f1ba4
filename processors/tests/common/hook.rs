//! A local webhook receiver's plumbing: serving it, and checking what it is sent.

use axum::http::HeaderMap;
use axum::routing::MethodRouter;
use orderpipe_processors::notifications::{verify, SIGNATURE_HEADER};

/// Serves `route` at `/hook` with `state` on a free local port; returns its URL.
pub(crate) async fn serve_hook<S>(route: MethodRouter<S>, state: S) -> String
where
    S: Clone + Send + Sync + 'static,
{
    let app = axum::Router::new().route("/hook", route).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Whether `headers` carry a valid signature of `body` with `secret`.
pub(crate) fn signed(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let signature = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    verify(secret.as_bytes(), body, signature)
}
