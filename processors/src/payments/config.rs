//! Command-line/env configuration of the payments stage (flatten [`PaymentsArgs`] into a binary's
//! clap config).

use std::sync::Arc;
use std::time::Duration;

use super::breaker::BreakerConfig;
use super::gateway::PaymentGateway;
use super::http_gateway::{HttpGateway, HttpGatewayConfig};
use super::pending::RetrySchedule;
use super::simulated::{SimConfig, SimulatedGateway};
use crate::shared::{ConfigError, RetryPolicy};

/// Which gateway the payments stage talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GatewayKind {
    /// The in-process [`SimulatedGateway`] (default).
    Sim,
    /// An HTTP gateway at `--payments-gateway-url` ([`HttpGateway`]).
    Http,
}

/// Options of the payments stage.
#[derive(Debug, Clone, clap::Args)]
pub struct PaymentsArgs {
    /// Payment gateway: `sim` (in-process simulated gateway) or `http`.
    #[arg(id = "payments_gateway", long = "payments-gateway", env = "ORDERPIPE_PAYMENTS_GATEWAY", value_enum, default_value_t = GatewayKind::Sim)]
    pub gateway: GatewayKind,
    /// Base URL of the HTTP gateway (`http://host:port`), required with `--payments-gateway http`.
    #[arg(
        id = "payments_gateway_url",
        long = "payments-gateway-url",
        env = "ORDERPIPE_PAYMENTS_GATEWAY_URL"
    )]
    pub gateway_url: Option<String>,
    /// Simulated gateway: time every call takes (e.g. `20ms`).
    #[arg(id = "payments_sim_latency", long = "payments-sim-latency", env = "ORDERPIPE_PAYMENTS_SIM_LATENCY", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub sim_latency: Duration,
    /// Simulated gateway: share of orders declined, 0.0 to 1.0.
    #[arg(id = "payments_sim_decline_rate", long = "payments-sim-decline-rate", env = "ORDERPIPE_PAYMENTS_SIM_DECLINE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub sim_decline_rate: f64,
    /// Simulated gateway: seed of the decline decision (same seed, same declines).
    #[arg(
        id = "payments_sim_seed",
        long = "payments-sim-seed",
        env = "ORDERPIPE_PAYMENTS_SIM_SEED",
        default_value_t = 0
    )]
    pub sim_seed: u64,
    /// HTTP gateway: longest wait for one attempt.
    #[arg(id = "payments_http_timeout", long = "payments-http-timeout", env = "ORDERPIPE_PAYMENTS_HTTP_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub http_timeout: Duration,
    /// HTTP gateway: attempts per call, retries included (1 = no retry).
    #[arg(
        id = "payments_http_attempts",
        long = "payments-http-attempts",
        env = "ORDERPIPE_PAYMENTS_HTTP_ATTEMPTS",
        default_value_t = 4
    )]
    pub http_attempts: u32,
    /// HTTP gateway: delay before the first retry (doubles per retry, with jitter).
    #[arg(id = "payments_http_backoff_min", long = "payments-http-backoff-min", env = "ORDERPIPE_PAYMENTS_HTTP_BACKOFF_MIN", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub http_backoff_min: Duration,
    /// HTTP gateway: longest delay between two attempts.
    #[arg(id = "payments_http_backoff_max", long = "payments-http-backoff-max", env = "ORDERPIPE_PAYMENTS_HTTP_BACKOFF_MAX", default_value = "1s", value_parser = humantime::parse_duration)]
    pub http_backoff_max: Duration,
    /// HTTP gateway: consecutive failures that open the circuit breaker.
    #[arg(
        id = "payments_breaker_failures",
        long = "payments-breaker-failures",
        env = "ORDERPIPE_PAYMENTS_BREAKER_FAILURES",
        default_value_t = 5
    )]
    pub breaker_failures: u32,
    /// HTTP gateway: how long an open circuit fails calls fast before a trial call.
    #[arg(id = "payments_breaker_open_for", long = "payments-breaker-open-for", env = "ORDERPIPE_PAYMENTS_BREAKER_OPEN_FOR", default_value = "5s", value_parser = humantime::parse_duration)]
    pub breaker_open_for: Duration,
    /// Most gateway calls in flight at once (per batch; calls of one order stay sequential).
    #[arg(
        id = "payments_concurrency",
        long = "payments-concurrency",
        env = "ORDERPIPE_PAYMENTS_CONCURRENCY",
        default_value_t = 64
    )]
    pub concurrency: usize,
    /// Delay before retrying a charge or refund the gateway could not take (open breaker,
    /// timeout, 5xx); doubles per failed retry.
    #[arg(id = "payments_retry_min", long = "payments-retry-min", env = "ORDERPIPE_PAYMENTS_RETRY_MIN", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub retry_min: Duration,
    /// Longest delay between two retries of pending gateway work.
    #[arg(id = "payments_retry_max", long = "payments-retry-max", env = "ORDERPIPE_PAYMENTS_RETRY_MAX", default_value = "10s", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,
    /// How long after `payment_requested` a charge the gateway could not take is retried before
    /// it is declined with `gateway_timeout` (keep it at the saga's `--saga-payment-timeout`).
    /// Refunds are retried without limit.
    #[arg(id = "payments_charge_retry_for", long = "payments-charge-retry-for", env = "ORDERPIPE_PAYMENTS_CHARGE_RETRY_FOR", default_value = "60s", value_parser = humantime::parse_duration)]
    pub charge_retry_for: Duration,
}

impl Default for PaymentsArgs {
    fn default() -> Self {
        Self {
            gateway: GatewayKind::Sim,
            gateway_url: None,
            sim_latency: Duration::ZERO,
            sim_decline_rate: 0.0,
            sim_seed: 0,
            http_timeout: Duration::from_secs(2),
            http_attempts: 4,
            http_backoff_min: Duration::from_millis(50),
            http_backoff_max: Duration::from_secs(1),
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(5),
            concurrency: 64,
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(10),
            charge_retry_for: Duration::from_secs(60),
        }
    }
}

impl PaymentsArgs {
    /// The simulated gateway's settings.
    pub fn sim_config(&self) -> SimConfig {
        SimConfig {
            latency: self.sim_latency,
            decline_rate: self.sim_decline_rate,
            seed: self.sim_seed,
        }
    }

    /// How pending charges and refunds are retried.
    pub fn retry_schedule(&self) -> RetrySchedule {
        RetrySchedule {
            min_delay: self.retry_min,
            max_delay: self.retry_max.max(self.retry_min),
            charge_retry_for: self.charge_retry_for,
        }
    }

    /// The HTTP gateway's settings (errors without `--payments-gateway-url`).
    pub fn http_config(&self) -> Result<HttpGatewayConfig, ConfigError> {
        let url = self
            .gateway_url
            .clone()
            .ok_or(ConfigError::Missing("--payments-gateway-url"))?;
        Ok(HttpGatewayConfig {
            base_url: url,
            request_timeout: self.http_timeout,
            retry: RetryPolicy {
                max_attempts: self.http_attempts.max(1),
                min_delay: self.http_backoff_min,
                max_delay: self.http_backoff_max,
            },
            breaker: BreakerConfig {
                failure_threshold: self.breaker_failures.max(1),
                open_for: self.breaker_open_for,
            },
        })
    }

    /// The configured gateway.
    pub fn gateway(&self) -> Result<Arc<dyn PaymentGateway>, ConfigError> {
        Ok(match self.gateway {
            GatewayKind::Sim => Arc::new(SimulatedGateway::new(self.sim_config())),
            GatewayKind::Http => {
                Arc::new(HttpGateway::new(self.http_config()?).map_err(|message| {
                    ConfigError::Invalid {
                        option: "--payments-gateway-url",
                        message,
                    }
                })?)
            }
        })
    }
}

/// Parses a rate in `0.0..=1.0`.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0.0 and 1.0"))
    }
}
