//! Closed-loop load on the ingest API against a live broker, as a ratio to a baseline measured in
//! the same run.
//!
//!     cargo run --release -p orderpipe-benches --bin ingest-load -- --clients 50 --seconds 10
//!
//! Each run gets fresh topics under a unique `bench-ingest-...` prefix (deleted afterwards). Two
//! measurements, one after the other, each with N clients sending back to back (closed loop: a
//! client sends its next order once the previous one is answered) for D seconds:
//! - `baseline`: raw produce of `order_placed` envelopes (the bytes ingest would write for the
//!   same orders) straight to the broker, to a topic with the same partition count, by one
//!   idempotent producer (`enable.idempotence=true`, `acks=all`, the linger and timeout ingest
//!   uses): what the broker and client allow at this concurrency on this machine. Latency is
//!   send to delivery report.
//! - `ingest`: the ingest API (`Server::with_listener` on port 0, in this process, rate limit
//!   off), each client with its own keep-alive HTTP connection posting orders. Latency is the HTTP
//!   round trip as the client sees it (the broker's acknowledgement included).
//!
//! Both are warmed up (one send) before the clock starts. Rates count acknowledged sends only:
//! `202` for ingest, a delivery report without error for the baseline. Latencies are HDR
//! histograms in microseconds (p50/p90/p99/p99.9/max reported in ms). Prints progress every
//! second and a human summary to the terminal and writes JSON (`--json`, default
//! `target/ingest-load.json`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use orderpipe_ingest::{Config, Server};
use orderpipe_runtime::kafka::TopicSettings;
use orderpipe_schemas::{NewOrder, OrderEnvelope, OrderEvent, Topics};
use orderpipe_testkit::http;
use orderpipe_testkit::kafka::TestTopics;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Ingest acked orders/s and ack latency vs raw idempotent produce, closed loop.
#[derive(Debug, Parser)]
struct Args {
    /// Concurrent clients (in-flight sends), each with one keep-alive connection.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Duration of each measurement, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Partitions of the orders topic (and of the baseline topic).
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Send an Idempotency-Key with every order (a new one each time).
    #[arg(long)]
    idempotency_keys: bool,
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/ingest-load.json")]
    json: PathBuf,
}

/// What the clients of one measurement saw.
struct Tally {
    latency_us: Histogram<u64>,
    acked: u64,
    refused: BTreeMap<u16, u64>,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            acked: 0,
            refused: BTreeMap::new(),
            errors: 0,
        }
    }

    fn ack(&mut self, sent: Instant) {
        self.acked += 1;
        let us = sent.elapsed().as_micros() as u64;
        self.latency_us.saturating_record(us.max(1));
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.acked += other.acked;
        self.errors += other.errors;
        for (status, count) in other.refused {
            *self.refused.entry(status).or_default() += count;
        }
        self.latency_us.add(other.latency_us)?;
        Ok(())
    }
}

/// One measurement.
struct Measured {
    name: &'static str,
    tally: Tally,
    elapsed: Duration,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.tally.acked as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.tally.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.tally.latency_us.max() as f64 / 1000.0
    }

    fn latency_json(&self) -> serde_json::Value {
        json!({
            "p50": self.ms(0.5),
            "p90": self.ms(0.9),
            "p99": self.ms(0.99),
            "p99_9": self.ms(0.999),
            "max": self.max_ms(),
            "mean": self.tally.latency_us.mean() / 1000.0,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(args.clients > 0, "--clients must be positive");
    ensure!(args.seconds > 0, "--seconds must be positive");
    ensure!(args.partitions > 0, "--partitions must be positive");
    // The testkit creates and deletes topics through KAFKA_BOOTSTRAP.
    std::env::set_var("KAFKA_BOOTSTRAP", &args.bootstrap);
    orderpipe_runtime::telemetry::init("warn");

    let mut test_topics = TestTopics::new()?;
    test_topics.prefix = format!("bench-ingest-{}", test_topics.prefix);
    let topics = Topics::with_prefix(test_topics.prefix.clone());
    for spec in topics.plan(args.partitions, 1) {
        test_topics.adopt(&spec.name);
    }
    let baseline_topic = test_topics.create("baseline", args.partitions).await?;
    eprintln!(
        "ingest-load: {} clients x {} s, {} partitions, idempotency keys {}, broker {}, topics {}*",
        args.clients,
        args.seconds,
        args.partitions,
        args.idempotency_keys,
        args.bootstrap,
        test_topics.prefix
    );

    let config = Config {
        topics: TopicSettings::with_partitions(args.partitions),
        // Every client shares 127.0.0.1: no per-IP limit in a load run.
        rate_limit_per_second: 0,
        ..Config::default()
    };

    let baseline = baseline(&args, &config, &baseline_topic).await?;
    report_line(&baseline);
    let (ingest, on_topic) = ingest(&args, config, topics).await?;
    report_line(&ingest);

    // Every order the baseline got acknowledged (plus the warm-up one) must be on its topic.
    let reader = orderpipe_testkit::kafka::consumer(&test_topics.name("check"), false)?;
    let mut baseline_on_topic = 0;
    for partition in 0..args.partitions {
        baseline_on_topic +=
            orderpipe_testkit::kafka::high_watermark(&reader, &baseline_topic, partition)?;
    }
    drop(reader);

    let throughput = ingest.rate() / baseline.rate();
    let p50 = ingest.ms(0.5) / baseline.ms(0.5);
    let p99 = ingest.ms(0.99) / baseline.ms(0.99);
    println!();
    println!(
        "ingest closed loop, {} clients x {} s, {} partitions, idempotency keys {}:",
        args.clients, args.seconds, args.partitions, args.idempotency_keys
    );
    println!(
        "  {:<9} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}   (latency ms)",
        "run", "acked/s", "acked", "p50", "p90", "p99", "p99.9", "max"
    );
    for run in [&baseline, &ingest] {
        println!(
            "  {:<9} {:>10.0} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            run.name,
            run.rate(),
            run.tally.acked,
            run.ms(0.5),
            run.ms(0.9),
            run.ms(0.99),
            run.ms(0.999),
            run.max_ms()
        );
    }
    println!(
        "  ingest / baseline: throughput {:.1}% ({throughput:.3}), p50 latency x{p50:.2}, p99 latency x{p99:.2}",
        100.0 * throughput
    );
    for run in [&baseline, &ingest] {
        if !run.tally.refused.is_empty() || run.tally.errors > 0 {
            println!(
                "  {}: refused {:?}, transport/delivery errors {}",
                run.name, run.tally.refused, run.tally.errors
            );
        }
    }
    println!(
        "  on topic: baseline {baseline_on_topic} (acked + 1 warm-up = {}), ingest {on_topic} (acked + 1 warm-up = {})",
        baseline.tally.acked + 1,
        ingest.tally.acked + 1
    );

    let report = json!({
        "benchmark": "ingest-closed-loop",
        "clients": args.clients,
        "seconds": args.seconds,
        "partitions": args.partitions,
        "idempotency_keys": args.idempotency_keys,
        "latency_unit": "ms",
        "baseline": {
            "kind": "raw produce of order_placed envelopes, one idempotent producer (acks=all), same concurrency",
            "messages_per_second": baseline.rate(),
            "acked": baseline.tally.acked,
            "errors": baseline.tally.errors,
            "elapsed_seconds": baseline.elapsed.as_secs_f64(),
            "latency_ms": baseline.latency_json(),
            "on_topic": baseline_on_topic,
        },
        "ingest": {
            "kind": "POST /v1/orders, one keep-alive HTTP/1.1 connection per client, 202 once acked",
            "orders_per_second": ingest.rate(),
            "acked": ingest.tally.acked,
            "refused": ingest.tally.refused.iter().map(|(s, n)| (s.to_string(), *n)).collect::<BTreeMap<_, _>>(),
            "errors": ingest.tally.errors,
            "elapsed_seconds": ingest.elapsed.as_secs_f64(),
            "latency_ms": ingest.latency_json(),
            "on_topic": on_topic,
        },
        "ratio_to_baseline": {
            "throughput": throughput,
            "latency_p50": p50,
            "latency_p99": p99,
            "latency_p99_9": ingest.ms(0.999) / baseline.ms(0.999),
        },
    });
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", args.json.display()))?;
    println!("\nJSON report: {}", args.json.display());
    // Deletes every topic of this run.
    drop(test_topics);
    Ok(())
}

fn report_line(run: &Measured) {
    eprintln!(
        "  {}: {} acked in {:.2} s = {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        run.name,
        run.tally.acked,
        run.elapsed.as_secs_f64(),
        run.rate(),
        run.ms(0.5),
        run.ms(0.99)
    );
}

/// Runs `args.clients` clients until `args.seconds` have passed, printing progress every second;
/// `client(index, deadline, acked)` spawns one, which counts its acknowledgements in `acked`.
async fn closed_loop(
    name: &'static str,
    args: &Args,
    client: impl Fn(usize, Instant, Arc<AtomicU64>) -> JoinHandle<Tally>,
) -> anyhow::Result<Measured> {
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let clients: Vec<_> = (0..args.clients)
        .map(|i| client(i, until, acked.clone()))
        .collect();
    let progress = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::from_std(started) + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            let mut last = 0;
            loop {
                tick.tick().await;
                let now = acked.load(Ordering::Relaxed);
                eprintln!(
                    "    {name}: {now} acked, {}/s ({:.0} s)",
                    now - last,
                    started.elapsed().as_secs_f64()
                );
                last = now;
            }
        })
    };
    let mut total = Tally::new();
    for client in clients {
        total.merge(client.await?)?;
    }
    let elapsed = started.elapsed();
    progress.abort();
    Ok(Measured {
        name,
        tally: total,
        elapsed,
    })
}

/// Raw produce of the same `order_placed` payloads, as ingest's producer is configured.
async fn baseline(args: &Args, config: &Config, topic: &str) -> anyhow::Result<Measured> {
    eprintln!(
        "baseline: raw idempotent produce to {topic}, {} in flight",
        args.clients
    );
    // Ingest's producer settings, from the one place the benches keep Kafka client settings.
    let producer: FutureProducer =
        orderpipe_benches::kafka::ingest_producer(&args.bootstrap, config)
            .create()
            .context("creating baseline producer")?;
    // Warm-up: metadata, producer id, connections to partition leaders.
    let (key, payload) = order_placed(0, 0)?;
    producer
        .send(
            FutureRecord::to(topic).key(&key).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .context("baseline warm-up")?;

    let topic = topic.to_owned();
    closed_loop("baseline", args, |client, until, acked| {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let (key, payload) = order_placed(client, n).expect("valid order");
                let sent = Instant::now();
                let record = FutureRecord::to(&topic).key(&key).payload(&payload);
                match producer.send_result(record) {
                    Ok(delivery) => match delivery.await {
                        Ok(Ok(_)) => {
                            tally.ack(sent);
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => tally.errors += 1,
                    },
                    // Queue full: ingest answers 503 at once; count it and back off a little.
                    Err(_) => {
                        *tally.refused.entry(503).or_default() += 1;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            tally
        })
    })
    .await
}

/// The ingest API in this process; returns the measurement and the events on its orders topic.
async fn ingest(args: &Args, config: Config, topics: Topics) -> anyhow::Result<(Measured, i64)> {
    let orders_topic = topics.orders.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = Server::with_listener(listener, config, &args.bootstrap, topics).await?;
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));
    eprintln!(
        "ingest: POST /v1/orders on {addr}, {} clients",
        args.clients
    );

    // Warm-up: connections to the broker and partition leaders, producer id.
    let warm_up = http::Conn::new(addr)
        .send(
            hyper::Method::POST,
            "/v1/orders",
            &[("content-type", "application/json")],
            http::full(order(0, 0)),
        )
        .await?;
    ensure!(
        warm_up.status == 202,
        "ingest warm-up answered {}: {:?}",
        warm_up.status,
        String::from_utf8_lossy(&warm_up.body)
    );

    let idempotency = args.idempotency_keys;
    let run = closed_loop("ingest", args, |client, until, acked| {
        tokio::spawn(async move {
            let mut conn = http::Conn::new(addr);
            let mut tally = Tally::new();
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let key = format!("load-{client}-{n}-{}", Uuid::new_v4().simple());
                let mut headers = vec![("content-type", "application/json")];
                if idempotency {
                    headers.push(("idempotency-key", key.as_str()));
                }
                let body = order(client, n);
                let sent = Instant::now();
                let reply = conn
                    .send(
                        hyper::Method::POST,
                        "/v1/orders",
                        &headers,
                        http::full(body),
                    )
                    .await;
                match reply {
                    Ok(reply) if reply.status == 202 => {
                        tally.ack(sent);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(reply) => *tally.refused.entry(reply.status.as_u16()).or_default() += 1,
                    Err(_) => tally.errors += 1,
                }
            }
            tally
        })
    })
    .await?;
    shutdown.cancel();
    serving.await??;

    // Every acknowledged order (plus the warm-up one) must be on the topic.
    let reader = orderpipe_testkit::kafka::consumer(
        &format!("bench-ingest-check-{}", Uuid::new_v4().simple()),
        false,
    )?;
    let mut on_topic = 0;
    for partition in 0..args.partitions {
        on_topic += orderpipe_testkit::kafka::high_watermark(&reader, &orders_topic, partition)?;
    }
    Ok((run, on_topic))
}

/// A valid order of 1 to 3 lines, varied per client and request.
fn order(client: usize, n: u64) -> String {
    let lines: Vec<_> = (0..(n % 3 + 1))
        .map(|i| json!({"sku": format!("SKU-{}", (n + i) % 50), "quantity": 1 + i, "unit_price_minor": 999}))
        .collect();
    let total: u64 = (0..(n % 3 + 1)).map(|i| (1 + i) * 999).sum();
    json!({
        "customer_id": format!("load-{client}"),
        "currency": "EUR",
        "lines": lines,
        "total_minor": total,
        "payment": {"method": "card", "token": "tok_load"}
    })
    .to_string()
}

/// Key and payload of the `order_placed` event ingest would produce for `order(client, n)`.
fn order_placed(client: usize, n: u64) -> anyhow::Result<(String, Vec<u8>)> {
    let order: NewOrder = serde_json::from_str(&order(client, n))?;
    let order_id = Uuid::now_v7();
    let envelope = OrderEnvelope::new(
        order_id,
        OrderEvent::OrderPlaced(order.into_order_placed()),
        None,
        order_id,
    );
    Ok((envelope.key(), envelope.encode()))
}
