//! `orderpipe run`: start the chosen components as tasks of one process, stop them on a signal.

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::components::{self, Component};

/// Run the components `args` asks for until `shutdown` is cancelled or one of them fails.
/// On shutdown every component gets `args.shutdown_grace` to finish in-flight work (answer requests,
/// commit what it has done); what is still running then is aborted.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let chosen = components::select(&args.components).map_err(anyhow::Error::msg)?;
    tracing::info!(components = ?chosen.iter().map(|c| c.name()).collect::<Vec<_>>(), "starting");

    let topics = orderpipe_schemas::Topics::with_prefix(args.connections.topic_prefix.clone());
    let mut tasks = JoinSet::new();
    for component in chosen {
        let token = shutdown.child_token();
        let args = &args;
        let future = match component {
            Component::Ingest => {
                let config = args.ingest.clone();
                let bootstrap = args.connections.kafka_bootstrap.clone();
                let topics = topics.clone();
                let listen = args.ingest_listen;
                async move { orderpipe_ingest::run(config, &bootstrap, topics, listen, token).await }
            }
            other => unreachable!(
                "components::select lets only available components through, got {other}"
            ),
        };
        tasks.spawn(async move { (component, future.await) });
    }

    // The first component to stop (failure or not) stops the others: a half-running pipeline
    // would acknowledge orders nobody processes.
    let first = tokio::select! {
        _ = shutdown.cancelled() => None,
        done = tasks.join_next() => done,
    };
    shutdown.cancel();
    let mut result = Ok(());
    if let Some(done) = first {
        result = report(done);
    }
    let drained = tokio::time::timeout(args.shutdown_grace, async {
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            result = result.and(report(done));
        }
        result
    })
    .await;
    match drained {
        Ok(rest) => result.and(rest),
        Err(_) => {
            tracing::warn!(grace = ?args.shutdown_grace, "components did not stop within the grace period: aborting");
            tasks.abort_all();
            result.and(Err(anyhow::anyhow!("shutdown grace period exceeded")))
        }
    }
}

fn report(
    done: Result<(Component, anyhow::Result<()>), tokio::task::JoinError>,
) -> anyhow::Result<()> {
    let (component, outcome) = done.context("component task panicked")?;
    match &outcome {
        Ok(()) => tracing::info!(component = component.name(), "stopped"),
        Err(err) => {
            tracing::error!(component = component.name(), error = %format!("{err:#}"), "failed")
        }
    }
    outcome.with_context(|| format!("component {component}"))
}
