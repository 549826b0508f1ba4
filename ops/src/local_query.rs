//! Reading the views as the query API answers them, in process: the query API's own router over
//! a CQL session, so `stock show` and `verify --views` need no running service and can never
//! disagree with it about what a row means.

use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use tower::ServiceExt;

/// The query API's router, served to this process only.
pub struct LocalQuery {
    router: axum::Router,
}

impl LocalQuery {
    /// Connects to `nodes` and prepares the query API's reads of `config`'s keyspace.
    pub async fn connect(
        nodes: &[String],
        config: &orderpipe_projections::Config,
    ) -> anyhow::Result<Self> {
        let session = orderpipe_projections::connect(nodes, &config.cql)
            .await
            .context("connecting to the CQL cluster")?;
        let router = orderpipe_projections::QueryApi::new(Arc::clone(&session), config)
            .await
            .with_context(|| format!("preparing the reads of keyspace {}", config.cql.keyspace))?
            .router(
                orderpipe_runtime::health::Readiness::new(),
                tokio_util::sync::CancellationToken::new(),
            );
        Ok(Self { router })
    }

    /// `GET path`: the HTTP status and body the query API answers.
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .context("building a request")?;
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .context("reading the views")?;
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .context("reading an answer")?;
        Ok((status, body))
    }
}

/// `segment` as one URL path segment.
pub fn percent_encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
