//! Assembles `target/bench/report.json` and `target/bench/summary.txt` from the JSON files the
//! bench binaries of one `benches/run` wrote into `--dir`. A figure whose input is missing or
//! holds no number is `null`, with `<key>_why` saying why (the step's own `.why` file when the
//! run script recorded one) - never a made-up number.
//!
//! Inputs (all optional): `ingest-load.json`, `stages.json`, `projection.json`,
//! `load-e2e.json`, `load-max.json`, `load-ack.json`, `rss.json`; `<name>.why` explains a missing
//! `<name>.json`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use orderpipe_benches::report::{self, figure, number_at};
use serde_json::{json, Map, Value};

#[derive(Debug, Parser)]
struct Args {
    /// Directory with the step reports; report.json and summary.txt are written there.
    #[arg(long, default_value = "target/bench")]
    dir: PathBuf,
    /// The command that produced the run (recorded as is).
    #[arg(long, default_value = "benches/run")]
    command: String,
    /// Run mode (full, quick, tiny).
    #[arg(long, default_value = "full")]
    mode: String,
    /// CQL contact points (for the server's version).
    #[arg(long, env = "SCYLLA_NODES", default_value = "127.0.0.1:9042")]
    nodes: String,
    /// Repository root (for the testbed's Kafka jars and Cargo.lock).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
}

/// The report of one step, or why there is none.
fn step(dir: &Path, name: &str) -> Result<Value, String> {
    let path = dir.join(format!("{name}.json"));
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(_) => Err(std::fs::read_to_string(dir.join(format!("{name}.why")))
            .map(|why| format!("{name}: {}", why.trim()))
            .unwrap_or_else(|_| format!("{name}.json missing: the step did not run"))),
    }
}

/// Version of a crate in Cargo.lock.
fn locked_version(repo: &Path, krate: &str) -> Option<String> {
    let lock = std::fs::read_to_string(repo.join("Cargo.lock")).ok()?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == format!("name = \"{krate}\"") {
            return lines
                .next()
                .and_then(|v| v.strip_prefix("version = \""))
                .map(|v| v.trim_end_matches('"').to_owned());
        }
    }
    None
}

/// Kafka version from the testbed's jars (`kafka-clients-X.jar`).
fn testbed_kafka(repo: &Path) -> Result<String, String> {
    let libs = repo.join(".testbed/kafka/libs");
    let entries = std::fs::read_dir(&libs).map_err(|e| format!("{}: {e}", libs.display()))?;
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|name| {
            name.strip_prefix("kafka-clients-")
                .and_then(|v| v.strip_suffix(".jar"))
                .map(str::to_owned)
        })
        .ok_or_else(|| "no kafka-clients jar in the testbed".into())
}

async fn cql_version(nodes: &str) -> Result<String, String> {
    let nodes = orderpipe_projections::parse_nodes(nodes);
    let session = scylla::client::session_builder::SessionBuilder::new()
        .known_nodes(&nodes)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let rows = session
        .query_unpaged("SELECT release_version FROM system.local", &[])
        .await
        .map_err(|e| e.to_string())?
        .into_rows_result()
        .map_err(|e| e.to_string())?;
    let (version,): (String,) = rows.first_row().map_err(|e| e.to_string())?;
    Ok(version)
}

/// An end-to-end quantile of the followed orders that were not rejected. Orders still not
/// confirmed at the e2e timeout are censored: when more than `1 - q` of them timed out, the
/// quantile lies beyond the timeout and the confirmed-only histogram cannot give it.
fn e2e_quantile(e2e: &Result<Value, String>, q: f64, name: &str) -> Result<f64, String> {
    let confirmed = number_at(e2e, "/e2e/outcomes/confirmed").unwrap_or(0.0);
    let timed_out = number_at(e2e, "/e2e/outcomes/e2e_timeout").unwrap_or(0.0);
    let followed = confirmed + timed_out;
    if followed == 0.0 {
        return Err("no followed order was confirmed".into());
    }
    if timed_out / followed > 1.0 - q {
        let timeout = e2e
            .as_ref()
            .ok()
            .and_then(|v| v.pointer("/scenario/e2e_timeout_ms"))
            .and_then(Value::as_f64)
            .map_or("the e2e timeout".to_owned(), |ms| format!("{ms:.0} ms"));
        return Err(format!(
            "{timed_out:.0} of {followed:.0} followed orders were not confirmed within {timeout}: {name} is beyond it (the pipeline did not keep up with the rate)"
        ));
    }
    number_at(e2e, &format!("/e2e/confirmed_visible_ms/{name}"))
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn version_value(v: Result<String, String>) -> Value {
    match v {
        Ok(v) => json!(v),
        Err(why) => json!({"version": null, "why": why}),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = &args.dir;
    let ingest = step(dir, "ingest-load");
    let stages = step(dir, "stages");
    let projection = step(dir, "projection");
    let e2e = step(dir, "load-e2e");
    let max = step(dir, "load-max");
    let ack = step(dir, "load-ack");
    let rss = step(dir, "rss");

    let mut out = Map::new();
    out.insert("mode".into(), json!(args.mode));
    out.insert("command".into(), json!(args.command));
    figure(
        &mut out,
        "ingest_vs_raw_produce",
        number_at(&ingest, "/ratio_to_baseline/throughput"),
    );
    figure(
        &mut out,
        "ingest_max_orders_per_second",
        number_at(&max, "/acked_per_second"),
    );
    figure(
        &mut out,
        "ack_rate_orders_per_second",
        number_at(&ack, "/target_rate"),
    );
    figure(
        &mut out,
        "ack_p50_ms",
        number_at(&ack, "/ack_latency_ms/p50"),
    );
    figure(
        &mut out,
        "ack_p99_ms",
        number_at(&ack, "/ack_latency_ms/p99"),
    );
    figure(
        &mut out,
        "ack_p999_ms",
        number_at(&ack, "/ack_latency_ms/p99_9"),
    );
    figure(
        &mut out,
        "e2e_rate_orders_per_second",
        number_at(&e2e, "/target_rate"),
    );
    figure(&mut out, "e2e_p50_ms", e2e_quantile(&e2e, 0.5, "p50"));
    figure(&mut out, "e2e_p99_ms", e2e_quantile(&e2e, 0.99, "p99"));
    figure(
        &mut out,
        "stock_vs_txn_copy",
        number_at(&stages, "/ratios/stock_vs_txn_copy"),
    );
    figure(
        &mut out,
        "saga_vs_txn_copy",
        number_at(&stages, "/ratios/saga_vs_txn_copy"),
    );
    figure(
        &mut out,
        "eos_vs_alo",
        number_at(&stages, "/ratios/eos_vs_alo"),
    );
    figure(
        &mut out,
        "projection_vs_raw_cql",
        number_at(&projection, "/projection_vs_raw_cql"),
    );
    figure(
        &mut out,
        "rss_mb_all_in_one",
        number_at(&rss, "/peak_rss_mb"),
    );
    // How many followed orders were seen confirmed: the sample behind e2e_p50/p99.
    figure(
        &mut out,
        "e2e_confirmed_sampled",
        number_at(&e2e, "/e2e/outcomes/confirmed"),
    );

    let targets = [
        ("ingest_vs_raw_produce", 0.9, true),
        ("ack_p99_ms", 10.0, false),
        ("e2e_p99_ms", 150.0, false),
        ("stock_vs_txn_copy", 0.7, true),
        ("saga_vs_txn_copy", 0.5, true),
        ("eos_vs_alo", 0.8, true),
        ("projection_vs_raw_cql", 0.7, true),
        ("rss_mb_all_in_one", 300.0, false),
    ];
    let mut target_json = Map::new();
    for (key, target, at_least) in targets {
        let value = out.get(key).and_then(Value::as_f64);
        // A censored latency (beyond the timeout) misses a latency target for sure.
        let beyond = out
            .get(&format!("{key}_why"))
            .and_then(Value::as_str)
            .is_some_and(|why| why.contains("is beyond it"));
        target_json.insert(
            key.into(),
            json!({
                "target": format!("{} {target}", if at_least { ">=" } else { "<=" }),
                "met": value
                    .map(|v| if at_least { v >= target } else { v <= target })
                    .or((beyond && !at_least).then_some(false)),
            }),
        );
    }
    out.insert("targets".into(), Value::Object(target_json));

    out.insert("machine".into(), report::machine());
    let rdkafka_version = rdkafka::util::get_rdkafka_version().1;
    out.insert(
        "versions".into(),
        json!({
            "orderpipe": env!("CARGO_PKG_VERSION"),
            "git_commit": command_output("git", &["-C", &args.repo.to_string_lossy(), "rev-parse", "HEAD"]),
            "rustc": command_output("rustc", &["-V"]),
            "librdkafka": rdkafka_version,
            "rdkafka_crate": locked_version(&args.repo, "rdkafka"),
            "scylla_crate": locked_version(&args.repo, "scylla"),
            "kafka_broker": version_value(testbed_kafka(&args.repo)),
            "cql_server": version_value(cql_version(&args.nodes).await),
        }),
    );
    out.insert(
        "steps".into(),
        json!({
            "ingest_load": ingest.clone().unwrap_or_else(|why| json!({"why": why})),
            "stages": stages.clone().unwrap_or_else(|why| json!({"why": why})),
            "projection": projection.clone().unwrap_or_else(|why| json!({"why": why})),
            "load_max": max.clone().unwrap_or_else(|why| json!({"why": why})),
            "load_ack": ack.clone().unwrap_or_else(|why| json!({"why": why})),
            "load_e2e": e2e.clone().unwrap_or_else(|why| json!({"why": why})),
            "rss": rss.clone().unwrap_or_else(|why| json!({"why": why})),
        }),
    );
    let report = Value::Object(out);
    std::fs::create_dir_all(dir).ok();
    let json_path = dir.join("report.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;

    let summary = summary(&report, &ingest, &stages, &projection);
    let summary_path = dir.join("summary.txt");
    std::fs::write(&summary_path, &summary)?;
    print!("{summary}");
    println!(
        "\nreport: {}\nsummary: {}",
        json_path.display(),
        summary_path.display()
    );
    Ok(())
}

fn summary(
    report: &Value,
    ingest: &Result<Value, String>,
    stages: &Result<Value, String>,
    projection: &Result<Value, String>,
) -> String {
    let mut s = String::new();
    let fmt = |key: &str| -> String {
        match report.get(key).and_then(Value::as_f64) {
            Some(v) if v >= 100.0 => format!("{v:.0}"),
            Some(v) => format!("{v:.3}"),
            None => format!(
                "n/a ({})",
                report
                    .get(format!("{key}_why"))
                    .and_then(Value::as_str)
                    .unwrap_or("no figure")
            ),
        }
    };
    let target = |key: &str| -> String {
        let t = &report["targets"][key];
        match (t["target"].as_str(), t["met"].as_bool()) {
            (Some(goal), Some(true)) => format!("target {goal}: met"),
            (Some(goal), Some(false)) => format!("target {goal}: MISSED"),
            (Some(goal), None) => format!("target {goal}: no figure"),
            _ => String::new(),
        }
    };
    s.push_str(&format!(
        "orderpipe benchmarks ({} run)\ncommand: {}\nmachine: {}\n\n",
        report["mode"].as_str().unwrap_or("?"),
        report["command"].as_str().unwrap_or("?"),
        report["machine"]
    ));
    for key in [
        "ingest_vs_raw_produce",
        "ingest_max_orders_per_second",
        "ack_rate_orders_per_second",
        "ack_p50_ms",
        "ack_p99_ms",
        "ack_p999_ms",
        "e2e_rate_orders_per_second",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "stock_vs_txn_copy",
        "saga_vs_txn_copy",
        "eos_vs_alo",
        "projection_vs_raw_cql",
        "rss_mb_all_in_one",
    ] {
        s.push_str(&format!("  {key:<30} {:<24} {}\n", fmt(key), target(key)));
    }
    s.push_str("\nbaselines (same run):\n");
    if let Ok(v) = ingest {
        s.push_str(&format!(
            "  raw idempotent produce        {:.0} msgs/s   ingest {:.0} orders/s (closed loop, {} clients)\n",
            v["baseline"]["messages_per_second"].as_f64().unwrap_or(f64::NAN),
            v["ingest"]["orders_per_second"].as_f64().unwrap_or(f64::NAN),
            v["clients"]
        ));
    }
    if let Ok(v) = stages {
        s.push_str(&format!(
            "  plain copy                    {:.0} msgs/s\n  transactional copy            {:.0} msgs/s (batch {})\n",
            v["baseline"]["messages_per_second"].as_f64().unwrap_or(f64::NAN),
            v["txn_copy"]["messages_per_second"].as_f64().unwrap_or(f64::NAN),
            v["batch_max_messages"]
        ));
        if let Some(runs) = v["runs"].as_array() {
            for run in runs {
                s.push_str(&format!(
                    "  stock {:<23} {:.0} decisions/s\n",
                    run["mode"].as_str().unwrap_or("?"),
                    run["decisions_per_second"].as_f64().unwrap_or(f64::NAN)
                ));
            }
        }
        if v["saga"].is_object() {
            s.push_str(&format!(
                "  saga txn copy                 {:.0} msgs/s\n  saga exactly-once             {:.0} decisions/s\n",
                v["saga"]["txn_copy_messages_per_second"].as_f64().unwrap_or(f64::NAN),
                v["saga"]["decisions_per_second"].as_f64().unwrap_or(f64::NAN)
            ));
        }
    }
    if let Ok(v) = projection {
        s.push_str(&format!(
            "  raw CQL writes                {:.0} rows/s   projector {:.0} rows/s ({:.0} events/s)\n",
            v["raw_cql"]["rows_per_second"].as_f64().unwrap_or(f64::NAN),
            v["projector"]["rows_per_second"].as_f64().unwrap_or(f64::NAN),
            v["projector"]["events_per_second"].as_f64().unwrap_or(f64::NAN)
        ));
    }
    s
}
