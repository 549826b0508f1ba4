//! Admin commands of the `orderpipe` binary (everything but `run`).

use anyhow::Context;
use orderpipe_gateway_sim::GatewaySimArgs;
use orderpipe_schemas::{StockAdjustment, Topics};
use tokio_util::sync::CancellationToken;

use crate::cli::{RebuildArgs, StockSetArgs, VerifyArgs};

/// `orderpipe stock set`: emit `stock_adjusted`, acknowledged by the broker.
pub async fn stock_set(args: StockSetArgs) -> anyhow::Result<()> {
    let topics = Topics::with_prefix(args.connections.topic_prefix.clone());
    let adjustment = StockAdjustment::Set {
        quantity: args.quantity,
    };
    let event_id = orderpipe_processors::stock::set_stock(
        &args.connections.kafka_bootstrap,
        &args.connections.kafka_options,
        &topics,
        &args.sku,
        adjustment,
        args.limit,
    )
    .await
    .with_context(|| format!("setting stock of {}", args.sku))?;
    let limit = args.limit.map_or("no limit".to_string(), |l| {
        format!("limit {l} per customer")
    });
    println!(
        "{}: {} units, {limit} (event {event_id})",
        args.sku, args.quantity
    );
    Ok(())
}

/// `orderpipe gateway-sim`: serve the simulated payment gateway until a signal.
pub async fn gateway_sim(args: GatewaySimArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    args.admin.install().context("admin key")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    orderpipe_gateway_sim::serve(listener, std::sync::Arc::new(args.gateway()), shutdown).await?;
    Ok(())
}

/// `orderpipe rebuild`: every view from offset 0 into a fresh keyspace, with progress on stderr.
pub async fn rebuild(args: RebuildArgs) -> anyhow::Result<()> {
    let topics = Topics::with_prefix(args.connections.topic_prefix.clone());
    let nodes = orderpipe_projections::parse_nodes(&args.connections.scylla_nodes);
    let config = args.connections.projections(&args.projections)?;
    let report = orderpipe_projections::rebuild(
        &config,
        &args.connections.kafka_bootstrap,
        &nodes,
        &topics,
        &args.target_keyspace,
        |p| {
            eprintln!(
                "rebuild: {} events applied, {} remaining, {:.0} events/s, {} poison skipped{}",
                p.events,
                p.remaining,
                p.events_per_second,
                p.poison,
                if p.done { " (done)" } else { "" }
            )
        },
    )
    .await
    .context("rebuilding the views")?;
    println!(
        "rebuilt keyspace {}: {} events in {:.1} s ({:.0} events/s), {} poison events skipped",
        report.keyspace,
        report.events,
        report.elapsed.as_secs_f64(),
        report.events_per_second,
        report.poison
    );
    Ok(())
}

/// `orderpipe verify`: prints the audit (table or JSON); `Ok(false)` when an invariant is broken.
pub async fn verify(args: VerifyArgs) -> anyhow::Result<bool> {
    let topics = Topics::with_prefix(args.connections.topic_prefix.clone());
    let bootstrap = args.connections.kafka_bootstrap.clone();
    let options = args.connections.kafka_options.clone();
    let within = args.read_timeout;
    let history = tokio::task::spawn_blocking(move || {
        crate::verify::read_history(&bootstrap, &options, &topics, within)
    })
    .await
    .context("verify reader panicked")??;
    let window = crate::verify::Window {
        from: args.from,
        to: args.to,
        settle: args.settle,
        now: chrono::Utc::now(),
    };
    let mut report = crate::verify::audit(&history, &window);
    if let Some(keyspace) = &args.views {
        let nodes = orderpipe_projections::parse_nodes(&args.connections.scylla_nodes);
        let config = args
            .connections
            .projections(&orderpipe_projections::Config::default())?;
        let views = crate::verify::read_views(&nodes, &config, keyspace, &history, &window)
            .await
            .with_context(|| format!("reading the views of {keyspace}"))?;
        crate::verify::audit_views(&history, &window, &views, &mut report);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::verify::render(&report));
    }
    Ok(report.ok())
}
