//! Quick closed-loop load run of the ingest API against a real broker: N clients, each with its
//! own keep-alive connection, post orders back to back for D seconds. Prints acknowledged orders
//! per second and the ack latency seen by clients (HTTP round trip, broker ack included).
//!
//!     cargo run --release -p orderpipe-ingest --example load -- --clients 50 --seconds 10
//!
//! Ingest runs in this process on port 0 under a fresh topic prefix (deleted at the end), on the
//! broker in `KAFKA_BOOTSTRAP` (default 127.0.0.1:9092). The proper open-loop load generator
//! lives in `benches/`.

use orderpipe_testkit::http;

use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use orderpipe_ingest::{kafka, Config, Server};
use orderpipe_schemas::Topics;
use orderpipe_testkit::kafka::{bootstrap, TestTopics};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Load run settings.
#[derive(Debug, Parser)]
struct Args {
    /// Concurrent clients, each with one keep-alive connection.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Duration of the run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Partitions of the orders topic.
    #[arg(long, default_value_t = 12)]
    partitions: i32,
    /// Send an Idempotency-Key with every order (a new one each time).
    #[arg(long)]
    idempotency_keys: bool,
}

#[derive(Default)]
struct Tally {
    latency_us: Option<Histogram<u64>>,
    accepted: u64,
    refused: std::collections::BTreeMap<u16, u64>,
    errors: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    orderpipe_runtime::telemetry::init("warn");
    let mut test_topics = TestTopics::new()?;
    let topics = Topics::with_prefix(format!("load-{}", test_topics.prefix));
    let orders_topic = topics.orders.clone();
    for spec in kafka::topic_plan(&topics, args.partitions) {
        test_topics.adopt(&spec.name);
    }
    let config = Config {
        partitions: args.partitions,
        // Every client shares 127.0.0.1: no per-IP limit in a load run.
        rate_limit_per_second: 0,
        ..Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let server = Server::with_listener(listener, config, &bootstrap(), topics).await?;
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let serving = tokio::spawn(server.serve(shutdown.clone()));

    // Warm-up: connections to the broker and partition leaders.
    http::Conn::new(addr).post_order(&[], &order(0, 0)).await;

    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut clients = Vec::new();
    for client in 0..args.clients {
        let idempotency = args.idempotency_keys;
        clients.push(tokio::spawn(async move {
            let mut conn = http::Conn::new(addr);
            let mut tally = Tally {
                latency_us: Some(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
                ..Tally::default()
            };
            let mut n = 0u64;
            while Instant::now() < until {
                n += 1;
                let key = format!("load-{client}-{n}-{}", uuid::Uuid::new_v4().simple());
                let headers: Vec<(&str, &str)> = if idempotency {
                    vec![("idempotency-key", key.as_str())]
                } else {
                    vec![]
                };
                let body = order(client, n);
                let sent = Instant::now();
                let reply = conn
                    .send(
                        hyper::Method::POST,
                        "/v1/orders",
                        &[&[("content-type", "application/json")][..], &headers].concat(),
                        http::full(body),
                    )
                    .await;
                match reply {
                    Ok(reply) if reply.status == 202 => {
                        tally.accepted += 1;
                        let us = sent.elapsed().as_micros() as u64;
                        tally
                            .latency_us
                            .as_mut()
                            .unwrap()
                            .saturating_record(us.max(1));
                    }
                    Ok(reply) => *tally.refused.entry(reply.status.as_u16()).or_default() += 1,
                    Err(_) => tally.errors += 1,
                }
            }
            tally
        }));
    }
    let mut total = Tally {
        latency_us: Some(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
        ..Tally::default()
    };
    for client in clients {
        let tally = client.await?;
        total.accepted += tally.accepted;
        total.errors += tally.errors;
        for (status, count) in tally.refused {
            *total.refused.entry(status).or_default() += count;
        }
        total
            .latency_us
            .as_mut()
            .unwrap()
            .add(tally.latency_us.unwrap())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    shutdown.cancel();
    serving.await??;

    let h = total.latency_us.unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "clients={} duration={elapsed:.1}s partitions={} idempotency_keys={}",
        args.clients, args.partitions, args.idempotency_keys
    );
    println!(
        "acked orders: {} ({:.0}/s); refused: {:?}; transport errors: {}",
        total.accepted,
        total.accepted as f64 / elapsed,
        total.refused,
        total.errors
    );
    println!(
        "ack latency ms: p50={:.2} p90={:.2} p99={:.2} p99.9={:.2} max={:.2}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    // Every acknowledged order (plus the warm-up one) must be on the topic.
    let reader = orderpipe_testkit::kafka::consumer("load-check", false)?;
    let mut on_topic = 0;
    for partition in 0..args.partitions {
        on_topic += orderpipe_testkit::kafka::high_watermark(&reader, &orders_topic, partition)?;
    }
    println!(
        "events on the orders topic: {on_topic} (acked + 1 warm-up = {})",
        total.accepted + 1
    );
    drop(test_topics);
    Ok(())
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
