//! The sale's phases up to quiescence: setting up the pipeline (gateway simulator, webhook
//! receiver, processes, stock), driving the sale under the fault schedule, and waiting until the
//! topics are quiet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use orderpipe_gateway_sim as gateway_sim;
use orderpipe_ops::verify::{History, Window};
use orderpipe_processors::payments::simulated::{SimConfig, SimulatedGateway};
use orderpipe_schemas::{StockAdjustment, Topics};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::audit::{read_history, terminals};
use crate::clients::{orders, place, OrderSpec, Sale};
use crate::faults::{apply, gateway_fault, Done};
use crate::plan::{self, Comp, Fault, Shape};
use crate::procs::{rss_kib, Procs};
use crate::receiver::{hook, Receiver};
use crate::testbed::Testbed;
use crate::{free_port, say, SaleArgs};

/// What the setup built; every later phase reads it.
pub(crate) struct Pipeline<'a> {
    pub(crate) args: &'a SaleArgs,
    pub(crate) soak: bool,
    pub(crate) bin: &'a Path,
    pub(crate) testbed: Option<&'a Testbed>,
    pub(crate) bootstrap: String,
    pub(crate) scylla: String,
    pub(crate) prefix: String,
    pub(crate) keyspace: String,
    pub(crate) topics: Topics,
    pub(crate) shutdown: CancellationToken,
    pub(crate) gateway: Arc<SimulatedGateway>,
    pub(crate) receiver: Receiver,
    pub(crate) procs: Arc<Procs>,
    pub(crate) count: usize,
    pub(crate) specs: Vec<OrderSpec>,
    pub(crate) per_sku: u32,
    pub(crate) stocked: BTreeMap<String, u64>,
}

/// Resident memory (KiB) of each process, sampled: (seconds since the sale started, per process).
pub(crate) type RssSamples = Vec<(f64, BTreeMap<&'static str, u64>)>;

/// What driving the sale leaves for the audit and the report.
pub(crate) struct Driven {
    pub(crate) started: Instant,
    pub(crate) sale_state: Arc<Sale>,
    pub(crate) done: Arc<Mutex<Done>>,
    pub(crate) samples: Arc<Mutex<RssSamples>>,
    pub(crate) sampler: JoinHandle<()>,
    pub(crate) supervised: Arc<Mutex<Vec<String>>>,
    pub(crate) supervisor: JoinHandle<()>,
    pub(crate) acked: HashMap<Uuid, usize>,
    pub(crate) sale_secs: f64,
}

/// The topics once quiet (or at the settle deadline).
pub(crate) struct Settled {
    pub(crate) history: History,
    pub(crate) window: Window,
    pub(crate) settle_secs: f64,
}

/// Starts the gateway simulator, the webhook receiver and every process, and stocks the SKUs.
pub(crate) async fn setup<'a>(
    args: &'a SaleArgs,
    soak: bool,
    bin: &'a Path,
    logs: &Path,
    testbed: Option<&'a Testbed>,
    started_up: Instant,
) -> anyhow::Result<Pipeline<'a>> {
    let bootstrap = match (&args.kafka_bootstrap, testbed) {
        (Some(b), _) => b.clone(),
        (None, Some(t)) => t.bootstrap(),
        (None, None) => unreachable!("a testbed or a bootstrap"),
    };
    let scylla = match testbed.and_then(|t| t.cql) {
        Some((port, _)) => format!("127.0.0.1:{port}"),
        None => args.scylla_nodes.clone(),
    };
    let stamp = chrono::Utc::now().format("%m%d%H%M%S").to_string();
    let prefix = format!("chaos{}x{stamp}.", args.seed);
    let keyspace = format!("chaos_{}_{stamp}", args.seed);
    let topics = Topics::with_prefix(prefix.clone());
    let replication = if testbed.is_some() { args.brokers } else { 1 };

    // Gateway simulator (HTTP, in this process) and webhook receiver.
    let shutdown = CancellationToken::new();
    let gateway = Arc::new(SimulatedGateway::new(SimConfig {
        latency: Duration::from_millis(2),
        decline_rate: args.decline_rate,
        seed: args.seed,
    }));
    let gateway_addr = gateway_sim::spawn(gateway.clone(), shutdown.clone()).await?;
    let secret = format!("whsec-chaos-{}", Uuid::new_v4().simple());
    let receiver = Receiver::new(secret.clone());
    let hook_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let webhook_addr = hook_listener.local_addr()?;
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(receiver.clone());
    let hook_shutdown = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(hook_listener, router)
            .with_graceful_shutdown(hook_shutdown.cancelled_owned())
            .await
    });

    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let procs = Procs {
        bin: bin.to_path_buf(),
        logs: logs.to_path_buf(),
        common: vec![
            "--kafka-bootstrap".into(),
            bootstrap.clone(),
            "--topic-prefix".into(),
            prefix.clone(),
            "--scylla-nodes".into(),
            scylla.clone(),
            "--keyspace".into(),
            keyspace.clone(),
            "--processing".into(),
            "exactly-once".into(),
            "--partitions".into(),
            args.partitions.to_string(),
            "--replication-factor".into(),
            replication.to_string(),
            "--ingest-rate-limit".into(),
            "0".into(),
        ],
        admin: Comp::ALL.iter().map(|c| (*c, addr(free_port()))).collect(),
        ingest: [addr(free_port()), addr(free_port())],
        query: addr(free_port()),
        gateway: gateway_addr,
        webhook: webhook_addr,
        secret,
        log_filter: args.log.clone(),
        children: Mutex::default(),
    };

    // Ingest 1 creates the topics; then everything else.
    procs.start(Comp::Ingest1)?;
    procs
        .wait_ready(Comp::Ingest1, Duration::from_secs(120))
        .await?;
    for comp in &Comp::ALL[1..] {
        procs.start(*comp)?;
    }
    for comp in Comp::ALL {
        procs.wait_ready(comp, Duration::from_secs(180)).await?;
    }
    let count = (args.rate * args.duration as f64).round() as usize;
    let specs = orders(
        args.seed,
        count,
        args.skus,
        if soak { 0.0 } else { args.cancel_rate },
    );
    let demand: u64 = specs
        .iter()
        .flat_map(|s| s.lines.iter().map(|(_, q)| u64::from(*q)))
        .sum();
    let per_sku = args
        .stock
        .unwrap_or_else(|| ((demand / u64::from(args.skus) / 2).max(5)) as u32);
    let mut stocked = BTreeMap::new();
    for sku in 0..args.skus {
        let name = format!("SKU-{sku}");
        orderpipe_processors::stock::set_stock(
            &bootstrap,
            &[],
            &topics,
            &name,
            StockAdjustment::Set { quantity: per_sku },
            None,
        )
        .await
        .with_context(|| format!("stock set {name}"))?;
        stocked.insert(name, u64::from(per_sku));
    }
    say(format!(
        "pipeline up in {:.0} s: {} processes, topic prefix {prefix}, keyspace {keyspace}, {} SKUs x {per_sku} units, {count} orders at {}/s for {} s",
        started_up.elapsed().as_secs_f64(), Comp::ALL.len(), args.skus, args.rate, args.duration
    ));
    Ok(Pipeline {
        args,
        soak,
        bin,
        testbed,
        bootstrap,
        scylla,
        prefix,
        keyspace,
        topics,
        shutdown,
        gateway,
        receiver,
        procs: Arc::new(procs),
        count,
        specs,
        per_sku,
        stocked,
    })
}

/// Drives the sale: the clients at `--rate`, the fault schedule, the memory sampler and the
/// supervisor; returns once every order was sent and every client and fault is done.
pub(crate) async fn drive(pipeline: &Pipeline<'_>) -> anyhow::Result<Driven> {
    let (args, soak, testbed, procs) = (
        pipeline.args,
        pipeline.soak,
        pipeline.testbed,
        &pipeline.procs,
    );
    let (shutdown, specs, count) = (&pipeline.shutdown, &pipeline.specs, pipeline.count);
    // The schedule.
    let faults = if soak {
        Vec::new()
    } else {
        plan::plan(Shape {
            seed: args.seed,
            duration_ms: args.duration * 1000,
            brokers: args.brokers,
            broker_faults: testbed.is_some(),
            cql_restart: testbed.is_some_and(|t| t.cql.is_some()),
        })
    };
    if !soak {
        say(format!(
            "fault schedule of seed {} ({} faults):",
            args.seed,
            faults.len()
        ));
        for f in &faults {
            eprintln!("    {f}");
        }
    }

    // Go.
    let started = Instant::now();
    let sale_state = Arc::new(Sale::default());
    let done = Arc::new(Mutex::new(Done::default()));
    let testbed_ptr: Option<Arc<Testbed>> = testbed.map(|t| {
        Arc::new(Testbed {
            dir: t.dir.clone(),
            kafka_port: t.kafka_port,
            controller_port: t.controller_port,
            brokers: t.brokers,
            cql: t.cql,
        })
    });
    let mut by_actor: BTreeMap<String, Vec<Fault>> = BTreeMap::new();
    for f in faults {
        by_actor.entry(f.action.actor()).or_default().push(f);
    }
    let mut actors = Vec::new();
    for (_, list) in by_actor {
        let (procs, done, testbed) = (procs.clone(), done.clone(), testbed_ptr.clone());
        let receiver = pipeline.receiver.clone();
        actors.push(tokio::spawn(async move {
            for fault in list {
                tokio::time::sleep_until((started + Duration::from_millis(fault.at_ms)).into())
                    .await;
                apply(fault, &procs, &receiver, testbed.as_deref(), &done, started).await;
            }
        }));
    }
    // Soak: memory and latency per interval.
    let samples: Arc<Mutex<RssSamples>> = Arc::default();
    let sampler = {
        let (procs, samples, stop) = (procs.clone(), samples.clone(), shutdown.clone());
        let every = Duration::from_secs(if soak { args.interval.max(5) } else { 10 });
        tokio::spawn(async move {
            loop {
                let rss: BTreeMap<&'static str, u64> = Comp::ALL
                    .iter()
                    .filter_map(|c| Some((c.name(), rss_kib(procs.pid(*c)?)?)))
                    .collect();
                samples
                    .lock()
                    .unwrap()
                    .push((started.elapsed().as_secs_f64(), rss));
                tokio::select! { _ = tokio::time::sleep(every) => {}, _ = stop.cancelled() => return }
            }
        })
    };
    let supervised: Arc<Mutex<Vec<String>>> = Arc::default();
    let supervisor = {
        let (procs, supervised, stop) = (procs.clone(), supervised.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                for (comp, status) in procs.restart_exited() {
                    let line = format!(
                        "{:7.1}s  {} exited on its own ({status}): {}; started again",
                        started.elapsed().as_secs_f64(),
                        comp.name(),
                        procs.last_error(comp)
                    );
                    say(&line);
                    supervised.lock().unwrap().push(line);
                }
                tokio::select! { _ = tokio::time::sleep(Duration::from_secs(1)) => {}, _ = stop.cancelled() => return }
            }
        })
    };
    let mut clients = Vec::with_capacity(count);
    let mut progress = Instant::now();
    for (i, spec) in specs.iter().cloned().enumerate() {
        let due = started + Duration::from_secs_f64(i as f64 / args.rate);
        tokio::time::sleep_until(due.into()).await;
        clients.push(tokio::spawn(place(
            sale_state.clone(),
            procs.ingest,
            i,
            spec,
            due,
            started,
        )));
        if progress.elapsed() > Duration::from_secs(10) {
            progress = Instant::now();
            say(format!(
                "{:5.0}s  {} sent, {} acked, {} retries after 503, {} after a cut connection",
                started.elapsed().as_secs_f64(),
                i + 1,
                sale_state.acked.lock().unwrap().len(),
                sale_state.retried_503.load(Ordering::Relaxed),
                sale_state.retried_cut.load(Ordering::Relaxed)
            ));
        }
    }
    say("every order sent; waiting for the clients and the fault schedule to finish");
    for actor in actors {
        actor.await?;
    }
    // Whatever the gateway was told, it answers from now on.
    let _ = gateway_fault(
        procs.gateway,
        r#"{"fail_next": 0, "fail_for_ms": 0, "status": 503}"#,
    )
    .await;
    for client in clients {
        client.await?;
    }
    let sale_secs = started.elapsed().as_secs_f64();
    let acked: HashMap<Uuid, usize> = sale_state.acked.lock().unwrap().clone();
    say(format!(
        "sale over after {sale_secs:.0} s: {} orders acknowledged; waiting for quiescence",
        acked.len()
    ));
    Ok(Driven {
        started,
        sale_state,
        done,
        samples,
        sampler,
        supervised,
        supervisor,
        acked,
        sale_secs,
    })
}

/// Waits for quiescence: every process ready, every acknowledged order terminal, nothing in
/// flight for the audit and every terminal order's notification received, for 5 s in a row (or
/// until `--settle-timeout`).
pub(crate) async fn settle(pipeline: &Pipeline<'_>, driven: &Driven) -> anyhow::Result<Settled> {
    let (args, procs, receiver) = (pipeline.args, &pipeline.procs, &pipeline.receiver);
    let (bootstrap, topics) = (&pipeline.bootstrap, &pipeline.topics);
    let (acked, started, sale_secs) = (&driven.acked, driven.started, driven.sale_secs);
    for comp in Comp::ALL {
        procs.wait_ready(comp, Duration::from_secs(180)).await?;
    }

    // Quiescence: every acknowledged order terminal, nothing in flight for the audit, every
    // terminal order's notification received; then once more a few seconds later for late repeats.
    let settle_deadline = Instant::now() + Duration::from_secs(args.settle_timeout);
    let window = orderpipe_ops::verify::Window {
        settle: Duration::ZERO,
        ..Default::default()
    };
    let mut quiet_since: Option<Instant> = None;
    let history = loop {
        let history = read_history(bootstrap, topics).await?;
        let terms = terminals(&history);
        let delivered: BTreeSet<Uuid> = receiver
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d.kind != "refunded")
            .map(|d| d.order_id)
            .collect();
        let unsettled = acked
            .keys()
            .filter(|id| terms.get(id).is_none_or(Vec::is_empty))
            .count();
        let undelivered = terms
            .iter()
            .filter(|(id, t)| !t.is_empty() && !delivered.contains(id))
            .count();
        let report = orderpipe_ops::verify::audit(
            &history,
            &orderpipe_ops::verify::Window {
                now: chrono::Utc::now(),
                ..window.clone()
            },
        );
        let quiet = unsettled == 0 && undelivered == 0 && report.ok();
        match (quiet, quiet_since) {
            (true, Some(since)) if since.elapsed() > Duration::from_secs(5) => break history,
            (true, None) => quiet_since = Some(Instant::now()),
            (true, Some(_)) => {}
            (false, _) => quiet_since = None,
        }
        if Instant::now() > settle_deadline {
            say(format!("not quiet after {} s: {unsettled} acked orders without a terminal state, {undelivered} notifications not received, {} audit violations", args.settle_timeout, report.violations.len()));
            break history;
        }
        tokio::time::sleep(Duration::from_secs(if quiet { 2 } else { 5 })).await;
    };
    let settle_secs = started.elapsed().as_secs_f64() - sale_secs;
    Ok(Settled {
        history,
        window,
        settle_secs,
    })
}
