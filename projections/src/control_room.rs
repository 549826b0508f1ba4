//! The control room: a live page for the people running a sale, served by the query API.
//!
//! - `GET /`: one HTML page (HTML, CSS and JS embedded in the binary with `include_str!`: no
//!   CDN, works offline; responsive, readable on a phone).
//! - `GET /v1/control-room/stream`: server-sent events, one `snapshot` event (JSON, see
//!   [`Snapshot`]) about every second, for every viewer. One collector task builds the
//!   snapshot and every viewer receives the same one (a `watch` channel), so N viewers cost one
//!   set of reads; the collector runs only while someone watches. At most
//!   `--control-room-max-viewers` streams at once; past that, 503 problem+json with
//!   Retry-After. Streams end when the server shuts down.
//!
//! Where the figures come from (the query API may run apart from ingest and the stages, so only
//! shared sources are used):
//! - stock per SKU: the `stock_by_sku` view of the keyspace the query API serves (the same
//!   numbers as `GET /v1/stock/{sku}`), the first [`MAX_SKUS`] SKUs;
//! - everything else (orders/s acknowledged, outcomes by reason, acknowledgement latency, lag per
//!   stage and projector, dead letters, payment breaker): the pipeline's Prometheus metrics,
//!   scraped from the admin `/metrics` URLs in `--control-room-scrape`, or by default this
//!   process's own registry (right when every component runs in one process, as with
//!   `ops/run-local`). Counts are since those processes started (counters restart with them).
//!
//! A figure that no source has is `null` with the reason in `unavailable`, and the page says
//! so rather than showing zero. End-to-end latency (placement to decision) is not measured by
//! any process yet: the page lists it as unavailable (`orderpipe-load --e2e-sample` measures it
//! from the client side).
//!
//! When the process has an admin key, both routes require it like `/metrics` (these figures
//! are operational data): a browser then reaches the page through a proxy that adds the header.

mod figures;

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::Extension;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use orderpipe_runtime::problem::Problem;
use scylla::statement::prepared::PreparedStatement;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::figures::{MetricFigures, Scrape};
use crate::api::Slot;
use crate::error::CqlContext;
use crate::switch::ActiveViews;

/// Most SKUs on the page (a flash sale has a handful; a full catalogue would not fit a screen
/// and its scan would cost the cluster every second).
pub(crate) const MAX_SKUS: usize = 200;

/// How often a snapshot is taken.
const PERIOD: Duration = Duration::from_secs(1);

/// Rates and latency quantiles describe the last this many snapshots (about five seconds).
const WINDOW: usize = 5;

/// Longest wait for one `/metrics` scrape before it counts as failed for this snapshot.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);

/// `--control-room-*`: where the control room reads its figures.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ControlRoomConfig {
    /// Admin `/metrics` URLs of the pipeline's processes (comma-separated, e.g.
    /// `http://ingest-1:9464/metrics,http://processors:9464/metrics`) that the control room at
    /// `/` reads rates, latency, lag, dead letters and the payment breaker from. Empty: this
    /// process's own metrics (every component in one process).
    #[arg(
        long = "control-room-scrape",
        env = "ORDERPIPE_CONTROL_ROOM_SCRAPE",
        value_delimiter = ','
    )]
    pub scrape: Vec<String>,

    /// File holding the admin key of the scraped processes (sent as `Authorization: Bearer`),
    /// when their `/metrics` require one.
    #[arg(
        long = "control-room-scrape-key-file",
        env = "ORDERPIPE_CONTROL_ROOM_SCRAPE_KEY_FILE"
    )]
    pub scrape_key_file: Option<PathBuf>,

    /// Most control-room streams open at once; past it, 503.
    #[arg(
        long = "control-room-max-viewers",
        env = "ORDERPIPE_CONTROL_ROOM_MAX_VIEWERS",
        default_value_t = 32
    )]
    pub max_viewers: usize,
}

impl Default for ControlRoomConfig {
    fn default() -> Self {
        Self {
            scrape: Vec::new(),
            scrape_key_file: None,
            max_viewers: 32,
        }
    }
}

/// Stock of one SKU as the views hold it.
#[derive(Debug, Clone, PartialEq, Serialize)]
struct SkuStock {
    sku: String,
    available: i64,
    reserved: i64,
    sold: i64,
}

/// What one scrape source answered.
#[derive(Debug, Clone, Serialize)]
struct Source {
    /// The URL, or `self` for this process's registry.
    source: String,
    /// Why it could not be read this time, `null` when it was.
    error: Option<String>,
}

/// One `snapshot` event of the stream.
#[derive(Debug, Clone, Serialize)]
struct Snapshot {
    /// When it was taken (RFC 3339, UTC).
    at: String,
    /// Seconds the rates and latencies cover (`null` until two scrapes exist).
    window_seconds: Option<f64>,
    /// The keyspace whose views the stock comes from.
    keyspace: String,
    /// Stock per SKU (`null` when the view could not be read; see `unavailable.stock`).
    stock: Option<Vec<SkuStock>>,
    /// More SKUs exist than are shown.
    stock_truncated: bool,
    #[serde(flatten)]
    metrics: MetricFigures,
    /// The metric sources and their state.
    sources: Vec<Source>,
}

/// The control room's shared state: one per query API router.
pub(crate) struct ControlRoom {
    views: Arc<ActiveViews>,
    config: ControlRoomConfig,
    shutdown: CancellationToken,
    viewers: Arc<AtomicUsize>,
    /// The latest snapshot (JSON); `None` before the first.
    latest: watch::Sender<Option<Arc<str>>>,
    /// Whether the collector runs; changed only under this lock, together with the decision
    /// to start or stop it, so a viewer arriving as the collector stops never waits forever.
    running: Mutex<bool>,
}

/// The routes, for the query API's [`OpenApiRouter`] (documented by their `#[utoipa::path]`).
/// They find their state in an [`Extension`] ([`layer`]), so they fit any router state.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(stream))
}

/// The state the routes read, as a layer for the query API's router.
pub(crate) fn layer(
    views: &Arc<ActiveViews>,
    config: &crate::config::QueryConfig,
    shutdown: &CancellationToken,
) -> Extension<Arc<ControlRoom>> {
    Extension(Arc::new(ControlRoom {
        views: views.clone(),
        config: config.control_room.clone(),
        shutdown: shutdown.clone(),
        viewers: Arc::new(AtomicUsize::new(0)),
        latest: watch::Sender::new(None),
        running: Mutex::new(false),
    }))
}

/// The admin key check (see the module docs): the 401 answer when the request is refused.
fn refusal(headers: &HeaderMap) -> Option<Response> {
    let key = orderpipe_runtime::auth::admin_key()?;
    key.check(headers).err().map(|refusal| *refusal)
}

const INDEX_HTML: &str = include_str!("control_room/index.html");
const STYLE_CSS: &str = include_str!("control_room/style.css");
const APP_JS: &str = include_str!("control_room/app.js");

/// The page: HTML with its CSS and script inlined (one request, nothing from elsewhere).
fn page_html() -> String {
    INDEX_HTML
        .replace("/*STYLE*/", STYLE_CSS)
        .replace("/*APP*/", APP_JS)
}

/// The control room page.
#[utoipa::path(
    get,
    path = "/",
    tag = "control room",
    operation_id = "control_room_page",
    responses(
        (status = 200, description = "The control room: an HTML page that follows `/v1/control-room/stream`.",
         content_type = "text/html", body = String),
        (status = 401, description = "The process has an admin key and the request did not send it.",
         body = Problem, content_type = "application/problem+json"),
    ),
)]
async fn page(headers: HeaderMap) -> Response {
    if let Some(refusal) = refusal(&headers) {
        return refusal;
    }
    crate::metrics::request("control_room", 200);
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        Html(page_html()),
    )
        .into_response()
}

/// Live figures of the sale as server-sent events: a `snapshot` event (JSON) about every
/// second, and a comment line as keep-alive. Unavailable figures are `null`, with the reason
/// in `unavailable`.
#[utoipa::path(
    get,
    path = "/v1/control-room/stream",
    tag = "control room",
    operation_id = "control_room_stream",
    responses(
        (status = 200, description = "An endless `text/event-stream` of `snapshot` events.",
         content_type = "text/event-stream", body = String),
        (status = 401, description = "The process has an admin key and the request did not send it.",
         body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many control-room streams are open.", body = Problem,
         content_type = "application/problem+json",
         headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
    ),
)]
async fn stream(Extension(room): Extension<Arc<ControlRoom>>, headers: HeaderMap) -> Response {
    if let Some(refusal) = refusal(&headers) {
        return refusal;
    }
    // No gauge of its own: the request counter says how many streams were opened.
    let Some(viewer) = Slot::acquire(&room.viewers, room.config.max_viewers, |_| {}) else {
        crate::metrics::request("control_room_stream", 503);
        return Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too-many-viewers",
            "Too many control-room viewers",
            format!(
                "at most {} control-room streams may be open at once",
                room.config.max_viewers
            ),
        )
        .into_response_with(Some(Duration::from_secs(5)));
    };
    crate::metrics::request("control_room_stream", 200);
    let mut rx = room.subscribe();
    // The latest snapshot at once (a page opened mid-sale is not blank for a second).
    rx.mark_changed();
    let events = futures::stream::unfold((rx, viewer), |(mut rx, viewer)| async move {
        rx.changed().await.ok()?;
        let json = rx.borrow_and_update().clone();
        let event = match json {
            Some(json) => Event::default().event("snapshot").data(&*json),
            None => Event::default().comment("waiting for the first snapshot"),
        };
        Some((Ok::<_, std::convert::Infallible>(event), (rx, viewer)))
    })
    .take_until(room.shutdown.clone().cancelled_owned());
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

impl ControlRoom {
    /// A receiver of the snapshots, starting the collector if it is not running.
    fn subscribe(self: &Arc<Self>) -> watch::Receiver<Option<Arc<str>>> {
        let mut running = self.running.lock().expect("control room lock");
        let rx = self.latest.subscribe();
        if !*running {
            *running = true;
            tokio::spawn(self.clone().collect());
        }
        rx
    }

    /// Takes a snapshot every [`PERIOD`] while anyone watches.
    async fn collect(self: Arc<Self>) {
        let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let mut window: std::collections::VecDeque<(Instant, Scrape)> = Default::default();
        let mut stock_reads: Option<(String, PreparedStatement)> = None;
        let mut ticks = tokio::time::interval(PERIOD);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            {
                let mut running = self.running.lock().expect("control room lock");
                if self.latest.receiver_count() == 0 {
                    *running = false;
                    return;
                }
            }
            let (scrape, sources) = self.scrape(&client).await;
            let now = Instant::now();
            window.push_back((now, scrape));
            while window.len() > WINDOW + 1 {
                window.pop_front();
            }
            let newest = &window.back().expect("just pushed").1;
            let oldest = (window.len() > 1).then(|| {
                let (at, scrape) = window.front().expect("not empty");
                (scrape, now.duration_since(*at).as_secs_f64())
            });
            let mut metrics = figures::figures(oldest, newest);
            let keyspace = self.views.keyspace();
            let (stock, stock_truncated) = match self.stock(&keyspace, &mut stock_reads).await {
                Ok((rows, truncated)) => (Some(rows), truncated),
                Err(err) => {
                    tracing::warn!(error = %err, "control room: stock view unreadable");
                    metrics.unavailable.insert(
                        "stock".into(),
                        "the stock view cannot be read right now".into(),
                    );
                    (None, false)
                }
            };
            metrics.unavailable.insert(
                "end_to_end_latency".into(),
                "no process measures placement-to-decision time yet (orderpipe-load --e2e-sample does, from the client)".into(),
            );
            let snapshot = Snapshot {
                at: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
                window_seconds: oldest.map(|(_, s)| (s * 10.0).round() / 10.0),
                keyspace,
                stock,
                stock_truncated,
                metrics,
                sources,
            };
            let json: Arc<str> = serde_json::to_string(&snapshot)
                .expect("snapshots serialize")
                .into();
            self.latest.send_replace(Some(json));
        }
        *self.running.lock().expect("control room lock") = false;
    }

    /// Every metric source, read concurrently (each bounded by [`SCRAPE_TIMEOUT`]).
    async fn scrape(&self, client: &Client<HttpConnector, Empty<Bytes>>) -> (Scrape, Vec<Source>) {
        let mut scrape = Scrape::default();
        if self.config.scrape.is_empty() {
            scrape.add_text(&orderpipe_runtime::metrics::render());
            let own = Source {
                source: "self".into(),
                error: None,
            };
            return (scrape, vec![own]);
        }
        // Read each time: a rotated secret is picked up without a restart.
        let key = self.config.scrape_key_file.as_ref().map(|path| {
            std::fs::read_to_string(path)
                .map(|k| k.trim().to_owned())
                .map_err(|err| format!("reading the scrape key file: {err}"))
        });
        let key = &key;
        let answers = futures::future::join_all(self.config.scrape.iter().map(|url| async move {
            let text = match key {
                Some(Err(err)) => Err(err.clone()),
                Some(Ok(key)) => fetch(client, url, Some(key)).await,
                None => fetch(client, url, None).await,
            };
            (url.clone(), text)
        }))
        .await;
        let mut sources = Vec::new();
        for (url, text) in answers {
            let error = match text {
                Ok(text) => {
                    scrape.add_text(&text);
                    None
                }
                Err(err) => Some(err),
            };
            sources.push(Source { source: url, error });
        }
        (scrape, sources)
    }

    /// The first [`MAX_SKUS`] rows of `stock_by_sku` in `keyspace` (the statement is prepared
    /// once per keyspace, again after `orderpipe switch`).
    async fn stock(
        &self,
        keyspace: &str,
        prepared: &mut Option<(String, PreparedStatement)>,
    ) -> Result<(Vec<SkuStock>, bool), crate::Error> {
        let session = self.views.session();
        if prepared.as_ref().is_none_or(|(ks, _)| ks != keyspace) {
            let mut statement = session
                .prepare(format!(
                    "SELECT sku, available, reserved, sold FROM {keyspace}.stock_by_sku LIMIT {}",
                    MAX_SKUS + 1
                ))
                .await
                .cql("preparing the control room's stock read")?;
            statement.set_page_size(100);
            *prepared = Some((keyspace.to_owned(), statement));
        }
        let (_, statement) = prepared.as_ref().expect("prepared above");
        let context = "reading stock_by_sku for the control room";
        let mut rows = session
            .execute_iter(statement.clone(), &[])
            .await
            .cql(context)?
            .rows_stream::<(String, Option<i64>, Option<i64>, Option<i64>)>()
            .cql(context)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let (sku, available, reserved, sold) = row.cql(context)?;
            out.push(SkuStock {
                sku,
                available: available.unwrap_or(0),
                reserved: reserved.unwrap_or(0),
                sold: sold.unwrap_or(0),
            });
        }
        let truncated = out.len() > MAX_SKUS;
        out.truncate(MAX_SKUS);
        out.sort_by(|a, b| a.sku.cmp(&b.sku));
        Ok((out, truncated))
    }
}

/// GET `url`; the body as text, or why not.
async fn fetch(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    key: Option<&str>,
) -> Result<String, String> {
    let mut request = axum::http::Request::get(url);
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let request = request.body(Empty::new()).map_err(|e| e.to_string())?;
    let read = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        String::from_utf8(body.to_bytes().to_vec()).map_err(|e| e.to_string())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {SCRAPE_TIMEOUT:?}")))
}
