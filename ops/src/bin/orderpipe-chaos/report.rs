//! The report: what the run did, the counts, and (soak) memory and latency drift per interval.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::checks::Findings;
use crate::http;
use crate::sale::{Driven, Pipeline};

/// Prints what the run did and the counts; true if every count is 0.
pub(crate) async fn print_report(
    pipeline: &Pipeline<'_>,
    driven: &Driven,
    findings: Findings,
    settle_secs: f64,
) -> bool {
    let (args, soak, testbed, procs, gateway) = (
        pipeline.args,
        pipeline.soak,
        pipeline.testbed,
        &pipeline.procs,
        &pipeline.gateway,
    );
    let (count, per_sku, stocked) = (pipeline.count, pipeline.per_sku, &pipeline.stocked);
    let (acked, sale_state, samples, sale_secs) = (
        &driven.acked,
        &driven.sale_state,
        &driven.samples,
        driven.sale_secs,
    );
    let Findings {
        counts,
        status_of,
        confirmed_units,
        deliveries,
        redeliveries,
        disagreeing,
        report,
        verify,
        client_errors,
        supervised,
        panics,
        leaks,
        done,
    } = findings;
    // What it did.
    let totals = gateway.totals();
    let [confirmed, rejected, cancelled] = ["confirmed", "rejected", "cancelled"]
        .map(|s| status_of.values().filter(|v| **v == s).count());
    let faults_served = http::request(
        procs.gateway,
        "GET",
        "/v1/charges/stats",
        &[],
        None,
        Duration::from_secs(5),
    )
    .await
    .map(|r| r.json()["faults_served"].as_u64().unwrap_or(0))
    .unwrap_or(0);
    println!(
        "== orderpipe chaos {} (seed {}, {} s, {} broker(s){}) ==",
        if soak { "soak" } else { "flash sale" },
        args.seed,
        args.duration,
        if testbed.is_some() {
            args.brokers.to_string()
        } else {
            "shared".into()
        },
        if testbed.is_some_and(|t| t.cql.is_some()) {
            ", private CQL"
        } else {
            ", shared CQL: not restarted"
        }
    );
    println!("orders: {count} sent, {} acked, {} cancellations acked; {confirmed} confirmed, {rejected} rejected, {cancelled} cancelled", acked.len(), sale_state.cancels_acked.load(Ordering::Relaxed));
    println!("client retries: {} after 503, {} after 429, {} after a cut connection or timeout ({} requests)", sale_state.retried_503.load(Ordering::Relaxed), sale_state.retried_429.load(Ordering::Relaxed), sale_state.retried_cut.load(Ordering::Relaxed), sale_state.attempts.load(Ordering::Relaxed));
    println!(
        "stock: {} SKUs x {per_sku}; sold {} units",
        stocked.len(),
        confirmed_units.values().sum::<u64>()
    );
    println!("gateway: {} charge requests, {} charges kept, {} refunds, {faults_served} requests failed by injected faults", totals.charge_attempts, totals.charges, totals.refunds);
    println!(
        "webhook: {} deliveries, {redeliveries} redeliveries of an event id already received, {} refused during outages",
        deliveries.len(),
        pipeline.receiver.refused.load(std::sync::atomic::Ordering::Relaxed)
    );
    let kills: u32 = done.kills.values().sum();
    println!(
        "kills: {kills} ({})",
        done.kills
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "restarts: {} components, {} broker stops + {} starts, {} gateway faults, {} CQL restarts, {} webhook outages",
        done.restarts.values().sum::<u32>(),
        done.broker_stops,
        done.broker_starts,
        done.gateway_faults,
        done.cql_restarts,
        done.webhook_outages
    );
    println!(
        "supervisor: {} restarts of processes that exited on their own",
        supervised.len()
    );
    for line in &supervised {
        println!("  {line}");
    }
    println!("time: sale {sale_secs:.0} s, settle {settle_secs:.0} s");
    if soak {
        print_soak(
            &samples.lock().unwrap(),
            &sale_state.ack_ms.lock().unwrap(),
            args.interval.max(5) as f64,
        );
    }
    println!("-- checks --");
    for (name, n) in counts.rows() {
        println!("{n:>6}  {name}");
    }
    for line in disagreeing.iter().take(10) {
        println!("  view: {line}");
    }
    for line in client_errors.iter().take(10) {
        println!("  client: {line}");
    }
    for line in &done.errors {
        println!("  fault: {line}");
    }
    for line in &leaks {
        println!("  leak: {line}");
    }
    for line in &panics {
        println!("  panic: {line}");
    }
    if !report.ok() || !verify.status.success() {
        print!("{}", orderpipe_ops::verify::render(&report));
        print!("{}", String::from_utf8_lossy(&verify.stdout));
    }
    let ok = counts.rows().iter().all(|(_, n)| *n == 0);
    println!(
        "result: {}",
        if ok {
            "PASS (every count is 0)"
        } else {
            "FAIL"
        }
    );
    ok
}

fn print_soak(samples: &[(f64, BTreeMap<&'static str, u64>)], acks: &[(f64, u64)], interval: f64) {
    println!("-- soak: resident memory (MiB) per process over time --");
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        for (name, start) in &first.1 {
            let end = last.1.get(name).copied().unwrap_or(0);
            println!(
                "{name:>14}: {:7.1} -> {:7.1} MiB ({:+.1}%)",
                *start as f64 / 1024.0,
                end as f64 / 1024.0,
                (end as f64 / (*start).max(1) as f64 - 1.0) * 100.0
            );
        }
    }
    println!(
        "-- soak: acknowledgement latency from intended send time, per {interval:.0} s interval --"
    );
    let mut buckets: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (at, ms) in acks {
        buckets.entry((at / interval) as u64).or_default().push(*ms);
    }
    let mut first_p99 = None;
    for (bucket, mut lat) in buckets {
        lat.sort_unstable();
        let q = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
        let p99 = q(0.99);
        let base = *first_p99.get_or_insert(p99);
        println!(
            "  {:6.0}s  n={:6}  p50 {:5} ms  p99 {:5} ms  max {:5} ms  p99 drift {:+.0}%",
            bucket as f64 * interval,
            lat.len(),
            q(0.5),
            p99,
            lat[lat.len() - 1],
            (p99 as f64 / base.max(1) as f64 - 1.0) * 100.0
        );
    }
}
