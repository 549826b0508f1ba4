//! `orderpipe-load`: load generator for the ingest API, and the demo / chaos driver.
//!
//!     cargo run --release -p orderpipe-benches --bin orderpipe-load -- run \
//!         --mode open --rate 1000 --seconds 30 --set-stock 500 --customer-limit 2 --e2e-sample 0.1
//!
//! Modes:
//! - `open` (default): orders are due at a fixed arrival rate (`--rate`/s, evenly spaced) whatever
//!   the server does; every latency is measured from the order's *intended* send time, so a slow
//!   server cannot hide its queueing behind a slow client (coordinated omission). When more than
//!   `--max-in-flight` orders are pending, a due order is counted as `dropped` (never silently
//!   delayed).
//! - `closed`: `--connections` clients send back to back (next order once the previous one is
//!   answered): the maximum the server sustains; 503/429 are counted, not retried.
//!
//! Flash-sale scenario: a catalogue of `--skus` SKUs whose popularity follows a Zipf law
//! (`--zipf` exponent: a few hot SKUs take most of the demand), optionally stocked with
//! `--set-stock` units each and a `--customer-limit` per customer (sent as `stock_adjusted`
//! events before the load, needs `--kafka-bootstrap` and `--topic-prefix`), orders of 1 to
//! `--max-lines` distinct SKUs, customers drawn from a pool of `--customers`. Every order carries
//! an Idempotency-Key; after a 503/429 or a transport error it is retried with the same key
//! (at most `--retries` times, after the Retry-After the server gives, capped by `--retry-cap`).
//!
//! End to end (`--e2e-sample` > 0): that fraction of acknowledged orders is followed in the query
//! API (`GET /v1/orders/{id}?wait=..&status=<last seen>` long-polls) until a terminal status;
//! the time from intended send to `confirmed` (or `rejected`) being visible is recorded.
//!
//! Prints progress each second and a summary; writes JSON (`--json`).
//! `orderpipe-load cleanup --topic-prefix P` deletes the pipeline topics under a prefix.

mod cli;
mod client;
mod scenario;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use backon::Retryable as _;
use clap::Parser;
use hdrhistogram::Histogram;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use orderpipe_benches::latency;
use orderpipe_schemas::{StockAdjustment, Topics};
use serde_json::json;

use cli::{CleanupArgs, Cli, Command, LoadArgs, Mode};
use client::{one_order, post, Ctx, HttpClient, LiveCounters, Tally};
use scenario::{Order, Scenario};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => run(args).await,
        Command::Cleanup(args) => cleanup(args).await,
    }
}

async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    ensure!(
        !args.topic_prefix.is_empty(),
        "refusing to delete topics without a prefix"
    );
    std::env::set_var("KAFKA_BOOTSTRAP", &args.kafka_bootstrap);
    let topics = Topics::with_prefix(args.topic_prefix.clone());
    let mut doomed = orderpipe_testkit::kafka::TestTopics::new()?;
    // Partition count is irrelevant for names.
    for spec in topics.plan(1, 1) {
        doomed.adopt(&spec.name);
    }
    eprintln!("deleting the topics under {:?}", args.topic_prefix);
    drop(doomed);
    if let Some(keyspace) = args.keyspace {
        ensure!(
            keyspace.starts_with("bench_"),
            "refusing to drop {keyspace:?}: only bench_* keyspaces are dropped"
        );
        let nodes = orderpipe_projections::parse_nodes(&args.scylla_nodes);
        let session = scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(&nodes)
            .build()
            .await?;
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), &[])
            .await?;
        eprintln!("dropped keyspace {keyspace}");
    }
    Ok(())
}

async fn set_stock(args: &LoadArgs, units: u32) -> anyhow::Result<()> {
    let topics = Topics::with_prefix(args.topic_prefix.clone());
    let started = Instant::now();
    let sets = (1..=args.skus).map(|rank| {
        let topics = topics.clone();
        let sku = format!("{}{rank}", args.sku_prefix);
        let bootstrap = args.kafka_bootstrap.clone();
        let limit = args.customer_limit;
        async move {
            orderpipe_processors::stock::set_stock(
                &bootstrap,
                &[],
                &topics,
                &sku,
                StockAdjustment::Set { quantity: units },
                limit,
            )
            .await
            .with_context(|| format!("setting stock of {sku}"))
        }
    });
    futures::future::try_join_all(sets).await?;
    eprintln!(
        "stock: {} SKUs set to {units} units (customer limit {:?}) in {:.2} s",
        args.skus,
        args.customer_limit,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn run(args: LoadArgs) -> anyhow::Result<()> {
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    ensure!(
        args.skus > 0 && args.max_lines > 0 && args.max_quantity > 0 && args.customers > 0,
        "--skus, --max-lines, --max-quantity and --customers must be positive"
    );
    ensure!(
        args.mode == Mode::Closed || args.rate > 0.0,
        "--rate must be positive"
    );
    if let Some(units) = args.set_stock {
        set_stock(&args, units).await?;
    }
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let ctx = Arc::new(Ctx {
        client,
        args: args.clone(),
        tally: Mutex::new(Tally {
            ack_us: latency::histogram(),
            e2e_confirmed_us: latency::histogram(),
            e2e_rejected_us: latency::histogram(),
            statuses: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            reasons: BTreeMap::new(),
        }),
        live: LiveCounters::default(),
        run_id: uuid::Uuid::now_v7().simple().to_string(),
    });
    let mut scenario = Scenario::new(&args)?;

    // Warm-up (not measured): connections, and the ingest's producer is up.
    // A 503 or 429 here means "not yet" (a fresh broker's transaction coordinator still loading,
    // the previous step's backlog): ask again, with the same Idempotency-Key, for up to ~30 s.
    let warm = scenario.order(u64::MAX);
    let warm_key = format!("load-{}-warm", ctx.run_id);
    (|| async {
        let (status, _, _) = post(&ctx, &warm.body, &warm_key)
            .await
            .context("warm-up order")?;
        ensure!(status == 202, "warm-up order answered {status}");
        Ok(())
    })
    .retry(
        backon::ConstantBuilder::default()
            .with_delay(Duration::from_millis(500))
            .with_max_times(60),
    )
    .when(|err: &anyhow::Error| {
        let text = err.to_string();
        text.ends_with("answered 503") || text.ends_with("answered 429")
    })
    .await?;
    if args.e2e_sample > 0.0 {
        // The whole pipeline flows (stages assigned, views written) before the clock starts.
        let warm = Order {
            follow: true,
            ..scenario.order(u64::MAX - 1)
        };
        let started = Instant::now();
        one_order(&ctx, warm, started, true).await;
        let tally = ctx.tally.lock().expect("not poisoned");
        ensure!(
            tally
                .outcomes
                .keys()
                .any(|o| o == "confirmed" || o == "rejected" || o == "cancelled"),
            "warm-up order reached no terminal status in the query API: {:?}",
            tally.outcomes
        );
        eprintln!(
            "warm-up order {:?} in the query API after {:.2} s",
            tally.outcomes,
            started.elapsed().as_secs_f64()
        );
    }
    // Warm-up orders are not part of the measurement.
    {
        let mut tally = ctx.tally.lock().expect("not poisoned");
        tally.ack_us.reset();
        tally.e2e_confirmed_us.reset();
        tally.e2e_rejected_us.reset();
        tally.statuses.clear();
        tally.outcomes.clear();
        tally.reasons.clear();
    }
    for counter in [
        &ctx.live.sent,
        &ctx.live.acked,
        &ctx.live.refused,
        &ctx.live.retries,
        &ctx.live.transport_errors,
        &ctx.live.e2e_done,
    ] {
        counter.store(0, Ordering::Relaxed);
    }

    eprintln!(
        "{}: {:?} loop, {} for {} s against {} ({} SKUs, Zipf {}, <= {} lines, e2e sample {})",
        args.label,
        args.mode,
        match args.mode {
            Mode::Open => format!("{} orders/s", args.rate),
            Mode::Closed => format!("{} clients", args.connections),
        },
        args.seconds,
        args.ingest_url,
        args.skus,
        args.zipf,
        args.max_lines,
        args.e2e_sample
    );
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let progress = tokio::spawn(progress(ctx.clone(), started));
    let mut scheduler_lag_max = Duration::ZERO;
    let mut tasks = tokio::task::JoinSet::new();
    match args.mode {
        Mode::Open => {
            let interval = Duration::from_secs_f64(1.0 / args.rate);
            let mut seq = 0u64;
            let mut due = started;
            while due < until {
                let now = Instant::now();
                if due > now {
                    tokio::time::sleep_until(due.into()).await;
                    continue;
                }
                scheduler_lag_max = scheduler_lag_max.max(now - due);
                // Every order due by now goes out now, timed from when it was due.
                while due <= now && due < until {
                    let order = scenario.order(seq);
                    seq += 1;
                    if ctx.live.in_flight.load(Ordering::Relaxed) >= args.max_in_flight {
                        ctx.live.dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
                        ctx.live.in_flight.fetch_add(1, Ordering::Relaxed);
                        let ctx = ctx.clone();
                        let intended = due;
                        tasks.spawn(async move {
                            one_order(&ctx, order, intended, true).await;
                            ctx.live.in_flight.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    due += interval;
                }
                // Reap finished tasks so the set does not grow without bound.
                while tasks.try_join_next().is_some() {}
            }
        }
        Mode::Closed => {
            let seq = Arc::new(AtomicU64::new(0));
            let scenario = Arc::new(Mutex::new(scenario));
            for _ in 0..args.connections {
                let (ctx, seq, scenario) = (ctx.clone(), seq.clone(), scenario.clone());
                tasks.spawn(async move {
                    while Instant::now() < until {
                        let n = seq.fetch_add(1, Ordering::Relaxed);
                        let order = scenario.lock().expect("not poisoned").order(n);
                        ctx.live.in_flight.fetch_add(1, Ordering::Relaxed);
                        one_order(&ctx, order, Instant::now(), false).await;
                        ctx.live.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                });
            }
            tokio::time::sleep_until(until.into()).await;
        }
    }
    let send_window = started.elapsed().min(Duration::from_secs_f64(args.seconds));
    // Acknowledgements of the last orders, and the followed orders, finish after the window.
    let acked_in_window = ctx.live.acked.load(Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let finished = started.elapsed();
    progress.abort();

    let tally = ctx.tally.lock().expect("not poisoned");
    let live = &ctx.live;
    let acked = live.acked.load(Ordering::Relaxed);
    let acked_per_second = match args.mode {
        // Closed loop: what was acknowledged while clients were sending.
        Mode::Closed => acked_in_window as f64 / send_window.as_secs_f64(),
        Mode::Open => acked as f64 / send_window.as_secs_f64(),
    };
    let report = json!({
        "benchmark": "orderpipe-load",
        "label": args.label,
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "target_rate": (args.mode == Mode::Open).then_some(args.rate),
        "connections": (args.mode == Mode::Closed).then_some(args.connections),
        "seconds": args.seconds,
        "ingest_url": args.ingest_url,
        "scenario": {
            "skus": args.skus, "zipf_exponent": args.zipf, "max_lines": args.max_lines,
            "max_quantity": args.max_quantity, "customers": args.customers,
            "stock_per_sku": args.set_stock, "customer_limit": args.customer_limit,
            "retries": args.retries, "e2e_sample": args.e2e_sample, "seed": args.seed,
            "e2e_timeout_ms": args.e2e_timeout.as_millis() as u64,
        },
        "sent": live.sent.load(Ordering::Relaxed),
        "acked": acked,
        "acked_per_second": acked_per_second,
        "refused_answers": live.refused.load(Ordering::Relaxed),
        "retries": live.retries.load(Ordering::Relaxed),
        "transport_errors": live.transport_errors.load(Ordering::Relaxed),
        "dropped_over_in_flight_cap": live.dropped.load(Ordering::Relaxed),
        "scheduler_lag_max_ms": scheduler_lag_max.as_secs_f64() * 1000.0,
        "elapsed_seconds": finished.as_secs_f64(),
        "final_status": tally.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
        "latency_unit": "ms, from the intended send time",
        "ack_latency_ms": latency::summary(&tally.ack_us),
        "e2e": {
            "outcomes": tally.outcomes,
            "reject_reasons": tally.reasons,
            "confirmed_visible_ms": latency::summary(&tally.e2e_confirmed_us),
            "rejected_visible_ms": latency::summary(&tally.e2e_rejected_us),
        },
    });
    println!(
        "{}: {} sent, {} acked ({:.0}/s), final statuses {:?}, {} retries, {} dropped",
        args.label,
        live.sent.load(Ordering::Relaxed),
        acked,
        acked_per_second,
        tally.statuses,
        live.retries.load(Ordering::Relaxed),
        live.dropped.load(Ordering::Relaxed)
    );
    let show = |name: &str, h: &Histogram<u64>| {
        if !h.is_empty() {
            println!(
                "  {name:<20} n={:<7} p50 {:>8.2}  p90 {:>8.2}  p99 {:>8.2}  p99.9 {:>8.2}  max {:>8.2} ms",
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.9) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.value_at_quantile(0.999) as f64 / 1e3,
                h.max() as f64 / 1e3
            );
        }
    };
    show("ack", &tally.ack_us);
    show("e2e confirmed", &tally.e2e_confirmed_us);
    show("e2e rejected", &tally.e2e_rejected_us);
    if !tally.outcomes.is_empty() {
        println!(
            "  e2e outcomes {:?}, reject reasons {:?}",
            tally.outcomes, tally.reasons
        );
    }
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("  JSON report: {}", args.json.display());
    Ok(())
}

async fn progress(ctx: Arc<Ctx>, started: Instant) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(started) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last = 0;
    loop {
        tick.tick().await;
        let live = &ctx.live;
        let acked = live.acked.load(Ordering::Relaxed);
        let p99 = {
            let tally = ctx.tally.lock().expect("not poisoned");
            latency::ms(&tally.ack_us, 0.99)
        };
        eprintln!(
            "  [{:>4.0} s] sent {} acked {} (+{}/s) refused {} retries {} errors {} in flight {} dropped {} e2e done {} ack p99 {} ms",
            started.elapsed().as_secs_f64(),
            live.sent.load(Ordering::Relaxed),
            acked,
            acked - last,
            live.refused.load(Ordering::Relaxed),
            live.retries.load(Ordering::Relaxed),
            live.transport_errors.load(Ordering::Relaxed),
            live.in_flight.load(Ordering::Relaxed),
            live.dropped.load(Ordering::Relaxed),
            live.e2e_done.load(Ordering::Relaxed),
            p99.map_or("-".into(), |v| format!("{v:.2}")),
        );
        last = acked;
    }
}
