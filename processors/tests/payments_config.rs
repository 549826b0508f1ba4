//! The stage options flatten into one command line (as the ops binary does) without clashing,
//! parse, and never show secrets.

use std::time::Duration;

use clap::{CommandFactory, Parser};
use orderpipe_gateway_sim::GatewaySimArgs;
use orderpipe_processors::notifications::{NotificationsArgs, SinkKind};
use orderpipe_processors::payments::{GatewayKind, PaymentsArgs};
use orderpipe_processors::Config;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    runner: Config,
    #[command(flatten)]
    payments: PaymentsArgs,
    #[command(flatten)]
    notifications: NotificationsArgs,
    #[command(flatten)]
    sim: GatewaySimArgs,
}

#[test]
fn options_flatten_together_and_parse() {
    Cli::command().debug_assert();
    let cli = Cli::try_parse_from([
        "orderpipe",
        "--payments-gateway",
        "http",
        "--payments-gateway-url",
        "http://127.0.0.1:8089",
        "--payments-http-timeout",
        "750ms",
        "--payments-sim-decline-rate",
        "0.2",
        "--payments-concurrency",
        "8",
        "--notifications-sink",
        "webhook",
        "--notifications-webhook-url",
        "http://127.0.0.1:9000/hook",
        "--notifications-webhook-secret",
        "very-secret-value",
        "--notifications-concurrency",
        "4",
    ])
    .unwrap();
    assert_eq!(cli.payments.gateway, GatewayKind::Http);
    assert_eq!(cli.payments.http_timeout, Duration::from_millis(750));
    assert_eq!(cli.payments.sim_decline_rate, 0.2);
    assert_eq!(
        (cli.payments.concurrency, cli.notifications.concurrency),
        (8, 4)
    );
    assert_eq!(cli.notifications.sink, SinkKind::Webhook);
    assert!(cli.payments.gateway().is_ok());
    assert!(cli.notifications.sink().is_ok());
    assert!(!format!("{cli:?}").contains("very-secret-value"));
    // Defaults: simulated gateway, no declines, log sink
    let defaults = Cli::try_parse_from(["orderpipe"]).unwrap();
    assert_eq!(defaults.payments.gateway, GatewayKind::Sim);
    assert_eq!(defaults.payments.sim_decline_rate, 0.0);
    assert_eq!(defaults.notifications.sink, SinkKind::Log);
    // A decline rate outside 0..=1 is refused
    assert!(Cli::try_parse_from(["orderpipe", "--payments-sim-decline-rate", "1.5"]).is_err());
    // The HTTP gateway needs its URL
    let missing = Cli::try_parse_from(["orderpipe", "--payments-gateway", "http"]).unwrap();
    assert!(missing.payments.gateway().is_err());
}
