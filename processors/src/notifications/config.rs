//! Command-line/env configuration of the notifications stage, and [`Secret`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::sink::{LogSink, NotificationSink};
use super::webhook::{WebhookConfig, WebhookSink};
use crate::shared::{ConfigError, RetryPolicy};

/// A secret string: `Debug` and `Display` never show it; [`Secret::expose`] does, on purpose.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself (to sign with; never to log).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where notifications go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    /// The log (`tracing`), default.
    Log,
    /// A signed webhook at `--notifications-webhook-url`.
    Webhook,
}

/// Options of the notifications stage.
#[derive(Debug, Clone, clap::Args)]
pub struct NotificationsArgs {
    /// Sink: `log` or `webhook`.
    #[arg(id = "notifications_sink", long = "notifications-sink", env = "ORDERPIPE_NOTIFICATIONS_SINK", value_enum, default_value_t = SinkKind::Log)]
    pub sink: SinkKind,
    /// Webhook URL (`http://...`), required with `--notifications-sink webhook`.
    #[arg(
        id = "notifications_webhook_url",
        long = "notifications-webhook-url",
        env = "ORDERPIPE_NOTIFICATIONS_WEBHOOK_URL"
    )]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key of the webhook signature, required with the webhook sink. Prefer the
    /// environment variable: command lines are visible to other users of the machine.
    #[arg(
        id = "notifications_webhook_secret",
        long = "notifications-webhook-secret",
        env = "ORDERPIPE_NOTIFICATIONS_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<Secret>,
    /// Longest wait for one delivery attempt.
    #[arg(id = "notifications_timeout", long = "notifications-timeout", env = "ORDERPIPE_NOTIFICATIONS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Delivery attempts per notification within its batch (1 = no retry); a receiver still
    /// failing transiently after them is retried later (`--notifications-retry-for`).
    #[arg(
        id = "notifications_attempts",
        long = "notifications-attempts",
        env = "ORDERPIPE_NOTIFICATIONS_ATTEMPTS",
        default_value_t = 5
    )]
    pub attempts: u32,
    /// Delay before the first retry (doubles per retry, with jitter).
    #[arg(id = "notifications_backoff_min", long = "notifications-backoff-min", env = "ORDERPIPE_NOTIFICATIONS_BACKOFF_MIN", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub backoff_min: Duration,
    /// Longest delay between two attempts.
    #[arg(id = "notifications_backoff_max", long = "notifications-backoff-max", env = "ORDERPIPE_NOTIFICATIONS_BACKOFF_MAX", default_value = "2s", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// How long a notification whose receiver keeps failing transiently (timeouts, 5xx, 429)
    /// is retried, with backoff, after its first failure before `notification_failed` is
    /// recorded (0: give up after `--notifications-attempts`).
    #[arg(id = "notifications_retry_for", long = "notifications-retry-for", env = "ORDERPIPE_NOTIFICATIONS_RETRY_FOR", default_value = "15min", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
    /// Most deliveries in flight at once (per batch; one order's stay sequential).
    #[arg(
        id = "notifications_concurrency",
        long = "notifications-concurrency",
        env = "ORDERPIPE_NOTIFICATIONS_CONCURRENCY",
        default_value_t = 32
    )]
    pub concurrency: usize,
    /// How long an order's notification state (its customer and the events already notified,
    /// the dedup set) is kept after its last event before it is tombstoned in
    /// `notifications.changelog`. An event to notify that is older than this and not remembered
    /// is dead-lettered (`stale_event`), never sent twice: keep it above the longest lag or
    /// outage of the stage.
    #[arg(id = "notifications_retention", long = "notifications-retention", env = "ORDERPIPE_NOTIFICATIONS_RETENTION", default_value = "7days", value_parser = humantime::parse_duration)]
    pub retention: Duration,
}

impl Default for NotificationsArgs {
    fn default() -> Self {
        Self {
            sink: SinkKind::Log,
            webhook_url: None,
            webhook_secret: None,
            timeout: Duration::from_secs(2),
            attempts: 5,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            retry_for: super::stage::DEFAULT_RETRY_FOR,
            concurrency: 32,
            retention: super::stage::DEFAULT_RETENTION,
        }
    }
}

impl NotificationsArgs {
    /// The retry policy of deliveries.
    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.attempts.max(1),
            min_delay: self.backoff_min,
            max_delay: self.backoff_max,
        }
    }

    /// The configured sink.
    pub fn sink(&self) -> Result<Arc<dyn NotificationSink>, ConfigError> {
        Ok(match self.sink {
            SinkKind::Log => Arc::new(LogSink),
            SinkKind::Webhook => {
                let url = self
                    .webhook_url
                    .clone()
                    .ok_or(ConfigError::Missing("--notifications-webhook-url"))?;
                let secret = self
                    .webhook_secret
                    .clone()
                    .filter(|s| !s.expose().is_empty())
                    .ok_or(ConfigError::Missing("--notifications-webhook-secret"))?;
                let sink = WebhookSink::new(WebhookConfig {
                    url,
                    secret,
                    timeout: self.timeout,
                })
                .map_err(|message| ConfigError::Invalid {
                    option: "--notifications-webhook-url",
                    message,
                })?;
                Arc::new(sink)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_in_debug_of_the_config() {
        let args = NotificationsArgs {
            sink: SinkKind::Webhook,
            webhook_url: Some("http://127.0.0.1:1/hook".into()),
            webhook_secret: Some(Secret::new("s3cr3t-value")),
            ..NotificationsArgs::default()
        };
        let shown = format!("{args:?} {}", args.webhook_secret.as_ref().unwrap());
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn retention_defaults_to_seven_days_and_parses_humantime() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            notifications: NotificationsArgs,
        }
        let defaults = Cli::try_parse_from(["x"]).unwrap().notifications;
        assert_eq!(defaults.retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(defaults.retention, NotificationsArgs::default().retention);
        let set = Cli::try_parse_from(["x", "--notifications-retention", "36h"]).unwrap();
        assert_eq!(set.notifications.retention, Duration::from_secs(36 * 3600));
    }

    #[test]
    fn retry_for_defaults_to_fifteen_minutes_and_parses_humantime() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            notifications: NotificationsArgs,
        }
        let defaults = Cli::try_parse_from(["x"]).unwrap().notifications;
        assert_eq!(defaults.retry_for, Duration::from_secs(15 * 60));
        assert_eq!(defaults.retry_for, NotificationsArgs::default().retry_for);
        let set = Cli::try_parse_from(["x", "--notifications-retry-for", "0s"]).unwrap();
        assert_eq!(set.notifications.retry_for, Duration::ZERO);
    }

    #[test]
    fn webhook_needs_url_and_secret() {
        let mut args = NotificationsArgs {
            sink: SinkKind::Webhook,
            ..NotificationsArgs::default()
        };
        assert!(matches!(args.sink(), Err(ConfigError::Missing(_))));
        args.webhook_url = Some("http://127.0.0.1:1/hook".into());
        assert!(matches!(args.sink(), Err(ConfigError::Missing(_))));
        args.webhook_secret = Some(Secret::new("k"));
        assert!(args.sink().is_ok());
        args.webhook_url = Some("https://example.com/hook".into());
        assert!(matches!(args.sink(), Err(ConfigError::Invalid { .. })));
    }
}
