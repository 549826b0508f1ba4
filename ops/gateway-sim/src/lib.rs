//! The payment gateway simulator as an HTTP server: a [`SimulatedGateway`] behind the contract of
//! [`orderpipe_processors::payments::contract`], so a test (or `orderpipe gateway-sim`) can run the
//! gateway in a process of its own and count charges across processor crashes. A crate of its own
//! so that the processors library, whose payments stage is only a client of a gateway, carries no
//! web server. Test hooks: `GET /v1/charges/stats` and `POST /v1/faults` (fail the next N requests
//! with a status). With an admin key (`--admin-key`, `--admin-key-file`), `POST /v1/faults` refuses
//! requests without it: it changes what the gateway answers everybody.
//!
//! Layout:
//! - [`GatewaySimArgs`]: the clap/env options of `orderpipe gateway-sim`.
//! - [`router`]: the routes; [`serve`]: them on a listener until shutdown; [`spawn`]: them on a
//!   free local port, in a task of their own (tests).
#![warn(missing_docs)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use orderpipe_processors::payments::config::parse_rate;
use orderpipe_processors::payments::contract::{
    ChargeRequest, ChargeResponse, ErrorResponse, FaultsRequest, RefundRequest, RefundResponse,
    StatsResponse, CHARGES_PATH, FAULTS_PATH, IDEMPOTENCY_KEY, REFUNDS_PATH, STATS_PATH,
};
use orderpipe_processors::payments::{PaymentGateway as _, SimConfig, SimulatedGateway};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Options of a standalone gateway simulator (for the ops binary's `gateway-sim` command).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewaySimArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(
        id = "gateway_sim_listen",
        long = "gateway-sim-listen",
        env = "ORDERPIPE_GATEWAY_SIM_LISTEN",
        default_value = "127.0.0.1:8089"
    )]
    pub listen: SocketAddr,
    /// Time every gateway call takes (e.g. `20ms`).
    #[arg(id = "gateway_sim_latency", long = "gateway-sim-latency", env = "ORDERPIPE_GATEWAY_SIM_LATENCY", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Share of orders declined, 0.0 to 1.0.
    #[arg(id = "gateway_sim_decline_rate", long = "gateway-sim-decline-rate", env = "ORDERPIPE_GATEWAY_SIM_DECLINE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub decline_rate: f64,
    /// Seed of the decline decision (same seed, same declines).
    #[arg(
        id = "gateway_sim_seed",
        long = "gateway-sim-seed",
        env = "ORDERPIPE_GATEWAY_SIM_SEED",
        default_value_t = 0
    )]
    pub seed: u64,
    /// Admin key guarding `POST /v1/faults`.
    #[command(flatten)]
    pub admin: orderpipe_runtime::auth::AdminKeyArgs,
}

impl GatewaySimArgs {
    /// The simulated gateway these options describe.
    pub fn gateway(&self) -> SimulatedGateway {
        SimulatedGateway::new(SimConfig {
            latency: self.latency,
            decline_rate: self.decline_rate,
            seed: self.seed,
        })
    }
}

#[derive(Debug, Default)]
struct Faults {
    remaining: u32,
    until: Option<std::time::Instant>,
    status: u16,
}

#[derive(Clone)]
struct AppState {
    gateway: Arc<SimulatedGateway>,
    faults: Arc<Mutex<Faults>>,
    faults_served: Arc<AtomicU64>,
}

/// The simulator's routes (see [`orderpipe_processors::payments::contract`]); `POST /v1/faults`
/// behind the process's admin key, if one is installed ([`orderpipe_runtime::auth::set_admin_key`]).
pub fn router(gateway: Arc<SimulatedGateway>) -> Router {
    let state = AppState {
        gateway,
        faults: Arc::default(),
        faults_served: Arc::default(),
    };
    Router::new()
        .route(CHARGES_PATH, post(charge))
        .route(REFUNDS_PATH, post(refund))
        .route(STATS_PATH, get(stats))
        .merge(orderpipe_runtime::auth::require_admin(
            Router::new().route(FAULTS_PATH, post(faults)),
        ))
        .route("/healthz", get(|| async { StatusCode::OK }))
        .with_state(state)
}

/// Serves the simulator on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<SimulatedGateway>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, config = ?gateway.config(), "gateway simulator listening");
    }
    axum::serve(listener, router(gateway))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Serves `gateway` on a free port of 127.0.0.1, in a task, until `shutdown` is cancelled; returns
/// the address (the gateway's URL is `http://{address}`).
pub async fn spawn(
    gateway: Arc<SimulatedGateway>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, gateway, shutdown));
    Ok(addr)
}

/// An error answer with a JSON body.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorResponse {
            error: message.into(),
        }),
    )
        .into_response()
}

/// A pending injected fault, if any (consumes it).
fn take_fault(state: &AppState) -> Option<Response> {
    let mut faults = state.faults.lock().unwrap_or_else(|e| e.into_inner());
    let outage = faults
        .until
        .is_some_and(|until| std::time::Instant::now() < until);
    if faults.remaining == 0 && !outage {
        return None;
    }
    faults.remaining = faults.remaining.saturating_sub(u32::from(!outage));
    state.faults_served.fetch_add(1, Ordering::Relaxed);
    let status = StatusCode::from_u16(faults.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    Some(error(status, "injected fault"))
}

/// The request of a mutating call, or the answer that refuses it: an injected fault, a body
/// that is not the contract's JSON, or an Idempotency-Key that is not the body's order id.
fn admit<T>(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Json<T>, JsonRejection>,
    order_id: impl Fn(&T) -> Uuid,
) -> Result<T, Box<Response>> {
    if let Some(fault) = take_fault(state) {
        return Err(Box::new(fault));
    }
    let Json(request) =
        body.map_err(|rejection| error(StatusCode::BAD_REQUEST, rejection.body_text()))?;
    idempotency_key(headers, order_id(&request))?;
    Ok(request)
}

/// `Err` with the answer if the Idempotency-Key is missing or differs from the body's order id.
fn idempotency_key(headers: &HeaderMap, order_id: Uuid) -> Result<(), Box<Response>> {
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "Idempotency-Key header required"))?;
    let key: Uuid = key.parse().map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            "Idempotency-Key must be the order id (a UUID)",
        )
    })?;
    if key != order_id {
        return Err(Box::new(error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency-Key differs from order_id",
        )));
    }
    Ok(())
}

async fn charge(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<ChargeRequest>, JsonRejection>,
) -> Response {
    let request = match admit(&state, &headers, body, |r: &ChargeRequest| r.order_id) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    match state
        .gateway
        .charge(
            request.order_id,
            request.amount_minor,
            &request.currency,
            &request.payment,
        )
        .await
    {
        Ok(charge) => Json(ChargeResponse::from(charge)).into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

async fn refund(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<RefundRequest>, JsonRejection>,
) -> Response {
    let request = match admit(&state, &headers, body, |r: &RefundRequest| r.order_id) {
        Ok(request) => request,
        Err(refusal) => return *refusal,
    };
    match state.gateway.refund(request.order_id).await {
        Ok(refund) => Json(RefundResponse::from(refund)).into_response(),
        Err(err) => error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

async fn stats(State(state): State<AppState>) -> Json<StatsResponse> {
    Json(StatsResponse {
        totals: state.gateway.totals(),
        orders: state.gateway.all_stats(),
        faults_served: state.faults_served.load(Ordering::Relaxed),
    })
}

async fn faults(
    State(state): State<AppState>,
    body: Result<Json<FaultsRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(body) => body,
        Err(rejection) => return error(StatusCode::BAD_REQUEST, rejection.body_text()),
    };
    let mut faults = state.faults.lock().unwrap_or_else(|e| e.into_inner());
    faults.remaining = request.fail_next;
    faults.until = (request.fail_for_ms > 0)
        .then(|| std::time::Instant::now() + Duration::from_millis(request.fail_for_ms));
    faults.status = request.status;
    StatusCode::NO_CONTENT.into_response()
}
