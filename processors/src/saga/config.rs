//! Command-line/env configuration of the saga stage (flatten [`SagaArgs`] into a binary's clap
//! config).

use std::time::Duration;

use super::deadlines::Timeouts;

/// Options of the saga stage.
#[derive(Debug, Clone, clap::Args)]
pub struct SagaArgs {
    /// Longest time from `order_placed` to the last stock answer; then the order is rejected
    /// with `stock_timeout` and its reserved lines are released.
    #[arg(id = "saga_stock_timeout", long = "saga-stock-timeout", env = "ORDERPIPE_SAGA_STOCK_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub stock_timeout: Duration,
    /// Longest time from the last stock answer (all reserved) to the payment outcome; then the
    /// order is rejected with `payment_timeout`, its lines are released and any charge refunded.
    #[arg(id = "saga_payment_timeout", long = "saga-payment-timeout", env = "ORDERPIPE_SAGA_PAYMENT_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub payment_timeout: Duration,
    /// How long the state of a terminal order is kept (to recognise duplicates and late events)
    /// before it is tombstoned in `saga.changelog`. Keep it above the ingest idempotency TTL.
    #[arg(id = "saga_retention", long = "saga-retention", env = "ORDERPIPE_SAGA_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention: Duration,
}

impl Default for SagaArgs {
    fn default() -> Self {
        Self {
            stock_timeout: Timeouts::default().stock,
            payment_timeout: Timeouts::default().payment,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl SagaArgs {
    /// The phase deadlines.
    pub fn timeouts(&self) -> Timeouts {
        Timeouts {
            stock: self.stock_timeout,
            payment: self.payment_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        saga: SagaArgs,
    }

    #[test]
    fn defaults_match_and_flags_parse() {
        let parsed = Cli::parse_from(["x"]).saga;
        let default = SagaArgs::default();
        assert_eq!(parsed.timeouts(), default.timeouts());
        assert_eq!(parsed.retention, default.retention);
        let c = Cli::parse_from([
            "x",
            "--saga-stock-timeout",
            "5s",
            "--saga-payment-timeout",
            "2m",
            "--saga-retention",
            "1h",
        ])
        .saga;
        assert_eq!(c.stock_timeout, Duration::from_secs(5));
        assert_eq!(c.payment_timeout, Duration::from_secs(120));
        assert_eq!(c.retention, Duration::from_secs(3600));
    }
}
