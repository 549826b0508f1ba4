//! `orderpipe run`: start the chosen components as tasks of one process, stop them on a signal.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use orderpipe_processors::notifications::NotificationsStage;
use orderpipe_processors::payments::PaymentsStage;
use orderpipe_processors::saga::SagaStage;
use orderpipe_processors::stock::StockStage;
use orderpipe_processors::{spawn_stage, Stage};
use orderpipe_runtime::health::{self, Readiness};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cli::RunArgs;
use crate::components::{self, Component};

type ComponentFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// Run the components `args` asks for until `shutdown` is cancelled or one of them fails.
/// On shutdown every component gets `args.shutdown_grace` to finish in-flight work (answer requests,
/// commit what it has done); what is still running then is aborted.
pub async fn run(args: RunArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let args = with_connections(args)?;
    let chosen = components::select(&args.components);
    // Before any router is built: the admin routes read the key when they are built.
    args.admin.install().context("admin key")?;
    // Install the process-wide recorder before any component records a metric (earlier
    // recordings would be lost).
    orderpipe_runtime::metrics::handle();
    tracing::info!(components = ?chosen.iter().map(|c| c.name()).collect::<Vec<_>>(), "starting");

    // Every topic of the pipeline exists before any component starts: stages refuse to start
    // without their input, changelog and dead-letter topics. Production clusters that manage
    // topics elsewhere turn this off with `--create-topics=false`.
    if args.topics.create {
        let topics = orderpipe_schemas::Topics::with_prefix(args.connections.topic_prefix.clone());
        let plan = topics.plan(args.topics.partitions, args.topics.replication_factor);
        orderpipe_runtime::kafka::create_topics_at_start_up(
            &args.connections.kafka_bootstrap,
            &args.ingest.kafka_options,
            &plan,
        )
        .await?;
    }

    let readiness = Readiness::new();
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin listener {}", args.admin_listen))?;
    let mut tasks = JoinSet::new();
    {
        let routes = health::routes(readiness.clone());
        let token = shutdown.clone();
        tracing::info!(addr = %args.admin_listen, "metrics and health endpoints listening");
        tokio::spawn(async move {
            let served = axum::serve(admin, routes).with_graceful_shutdown(token.cancelled_owned());
            if let Err(err) = served.await {
                tracing::error!(error = %err, "admin listener failed");
            }
        });
    }

    for component in chosen {
        let future = start(component, &args, &readiness, shutdown.child_token());
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

/// `args` with what [`Connections`](crate::cli::Connections) owns for every component in the
/// components' configs: the `--kafka-option`s before each component's own options (which win),
/// the CQL login, its password file read once, here, so that a bad one stops the start, and the
/// CQL nodes for ingest's shared state unless `--ingest-cql-nodes` names other ones.
fn with_connections(mut args: RunArgs) -> anyhow::Result<RunArgs> {
    let connections = &args.connections;
    args.projections = connections.projections(&args.projections)?;
    args.ingest.kafka_options = connections.kafka_options_then(&args.ingest.kafka_options);
    args.ingest.cql_credentials = args.projections.cql.credentials.clone();
    if args.ingest.cql_nodes.is_empty() {
        args.ingest.cql_nodes = orderpipe_projections::parse_nodes(&connections.scylla_nodes);
    }
    args.processors.kafka_options = connections.kafka_options_then(&args.processors.kafka_options);
    Ok(args)
}

/// The future that runs `component` until `token` is cancelled.
fn start(
    component: Component,
    args: &RunArgs,
    readiness: &Readiness,
    token: CancellationToken,
) -> ComponentFuture {
    let bootstrap = args.connections.kafka_bootstrap.clone();
    let nodes = orderpipe_projections::parse_nodes(&args.connections.scylla_nodes);
    let topics = orderpipe_schemas::Topics::with_prefix(args.connections.topic_prefix.clone());
    let readiness = readiness.clone();
    // Not ready until the component has started (bound its port, joined its group): a check
    // per component from the first moment, so /readyz never answers 200 for a process whose
    // components have not said anything yet.
    let started = Arc::new(AtomicBool::new(false));
    let flag = started.clone();
    readiness.add(format!("{component:?} started").to_lowercase(), move || {
        if flag.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("starting".into())
        }
    });
    match component {
        Component::Ingest => {
            // The pipeline's topics were created above, once for every component.
            let config = orderpipe_ingest::Config {
                topics: args.topics.without_creation(),
                ..args.ingest.clone()
            };
            let listen: SocketAddr = args.ingest_listen;
            Box::pin(async move {
                let server =
                    orderpipe_ingest::Server::bind(config, &bootstrap, topics, listen).await?;
                started.store(true, Ordering::Relaxed);
                server.serve(token).await.map_err(anyhow::Error::from)
            })
        }
        Component::Projections => {
            let config = orderpipe_projections::Config {
                topics: args.topics.without_creation(),
                ..args.projections.clone()
            };
            Box::pin(async move {
                let projectors = orderpipe_projections::start_projectors(
                    &config, &bootstrap, &nodes, &topics, &readiness, token,
                )
                .await?;
                // Their own lag checks are registered now.
                started.store(true, Ordering::Relaxed);
                projectors.wait().await.map_err(anyhow::Error::from)
            })
        }
        Component::Query => {
            let config = args.projections.clone();
            let listen = args.query_listen;
            // The query API registers its own check ("waiting for the views' schema") first thing.
            started.store(true, Ordering::Relaxed);
            Box::pin(async move {
                orderpipe_projections::run_query(config, &nodes, listen, readiness, token)
                    .await
                    .map_err(anyhow::Error::from)
            })
        }
        Component::Stock | Component::Saga | Component::Payments | Component::Notifications => {
            let mut config = args.processors.clone();
            // `--instance-id` not given: <hostname>-<admin port>, unique and stable.
            config.resolve_instance_id(args.admin_listen);
            let payments = args.payments.clone();
            let saga = args.saga.clone();
            let notifications = args.notifications.clone();
            Box::pin(async move {
                let handle = tokio::runtime::Handle::current();
                let stage: Box<dyn Stage> = match component {
                    Component::Stock => Box::new(StockStage::new(topics.clone())),
                    Component::Saga => Box::new(SagaStage::from_args(&saga, topics.clone())),
                    Component::Payments => {
                        Box::new(PaymentsStage::from_args(&payments, topics.clone(), handle)?)
                    }
                    _ => Box::new(NotificationsStage::from_args(
                        &notifications,
                        topics.clone(),
                        handle,
                    )?),
                };
                // Setup talks to the broker with blocking calls (each bounded by a timeout).
                let stage = tokio::task::spawn_blocking(move || {
                    spawn_stage(stage, &config, &bootstrap, &topics, token)
                })
                .await??;
                readiness.add(format!("stage {}", stage.name()), stage.readiness_check());
                started.store(true, Ordering::Relaxed);
                stage.wait().await.map_err(anyhow::Error::from)
            })
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn run_args(args: &[&str]) -> RunArgs {
        let cli = Cli::try_parse_from([&["orderpipe", "run"], args].concat()).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("run expected")
        };
        run
    }

    fn pairs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn ingest_keeps_its_state_on_the_scylla_nodes_unless_told_otherwise() {
        let args = with_connections(run_args(&["--scylla-nodes", "db-1:9042, db-2:9042"])).unwrap();
        assert_eq!(args.ingest.cql_nodes, ["db-1:9042", "db-2:9042"]);
        let args = with_connections(run_args(&[
            "--scylla-nodes",
            "db-1:9042",
            "--ingest-cql-nodes",
            "state-1:9042",
        ]))
        .unwrap();
        assert_eq!(args.ingest.cql_nodes, ["state-1:9042"]);
    }

    #[test]
    fn every_component_gets_the_pipeline_options_then_its_own() {
        let args = with_connections(run_args(&[
            "--kafka-option",
            "security.protocol=SSL",
            "--ingest-kafka-option",
            "linger.ms=5",
            "--processor-kafka-option",
            "security.protocol=SASL_SSL",
            "--projections-kafka-option",
            "fetch.min.bytes=1",
        ]))
        .unwrap();
        let pipeline = ("security.protocol", "SSL");
        assert_eq!(
            args.ingest.kafka_options,
            pairs(&[pipeline, ("linger.ms", "5")])
        );
        assert_eq!(
            args.processors.kafka_options,
            pairs(&[pipeline, ("security.protocol", "SASL_SSL")])
        );
        assert_eq!(
            args.projections.projector.kafka_options,
            pairs(&[pipeline, ("fetch.min.bytes", "1")])
        );
    }

    #[test]
    fn the_cql_login_reaches_ingest_and_projections_and_a_bad_file_stops_the_start() {
        let path =
            std::env::temp_dir().join(format!("orderpipe-run-cql-pw-{}", std::process::id()));
        std::fs::write(&path, "cql-pw-run\n").unwrap();
        let file = path.to_str().unwrap();
        let args = with_connections(run_args(&[
            "--cql-username",
            "orderpipe",
            "--cql-password-file",
            file,
        ]));
        std::fs::write(&path, "").unwrap();
        let empty = with_connections(run_args(&[
            "--cql-username",
            "orderpipe",
            "--cql-password-file",
            file,
        ]));
        std::fs::remove_file(&path).unwrap();
        let args = args.unwrap();
        for login in [
            args.ingest.cql_credentials.as_ref(),
            args.projections.cql.credentials.as_ref(),
        ] {
            let login = login.expect("credentials");
            assert_eq!(
                (login.username(), login.password()),
                ("orderpipe", "cql-pw-run")
            );
        }
        let err = format!("{:#}", empty.unwrap_err());
        assert!(err.contains("is empty"), "{err}");
    }
}
