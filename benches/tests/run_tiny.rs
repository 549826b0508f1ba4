//! `benches/run --tiny` against the testbed (KAFKA_BOOTSTRAP / SCYLLA_NODES): every step runs
//! with tiny parameters (seconds), using this build's bench binaries and, when it was built in
//! the same profile, the `orderpipe` binary. Checks the report's keys and their shape, not the
//! numbers: every required key is present, each a number or `null` with a `<key>_why`; the
//! steps that need only the bench binaries and the testbed must produce their figures.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const REQUIRED: &[&str] = &[
    "ingest_vs_raw_produce",
    "ack_p50_ms",
    "ack_p99_ms",
    "ack_p999_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "stock_vs_txn_copy",
    "saga_vs_txn_copy",
    "eos_vs_alo",
    "projection_vs_raw_cql",
    "rss_mb_all_in_one",
];

/// Figures that need only the bench binaries and the testbed: they must be numbers.
const ALWAYS: &[&str] = &[
    "ingest_vs_raw_produce",
    "stock_vs_txn_copy",
    "saga_vs_txn_copy",
    "eos_vs_alo",
    "projection_vs_raw_cql",
];

/// Figures of `orderpipe run`: numbers when that binary was built alongside.
const WITH_ORDERPIPE: &[&str] = &[
    "ack_p50_ms",
    "ack_p99_ms",
    "ack_p999_ms",
    "e2e_p50_ms",
    "e2e_p99_ms",
    "rss_mb_all_in_one",
];

fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_bench-report"))
        .parent()
        .expect("binary has a directory")
        .to_path_buf()
}

#[test]
fn tiny_run_writes_every_report_key() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let out = tempfile::tempdir().expect("temp dir");
    let bins = bin_dir();
    let orderpipe = bins.join("orderpipe");
    let status = Command::new(repo.join("benches/run"))
        .args(["--tiny", "--no-build", "--out"])
        .arg(out.path())
        .env("BENCH_BIN_DIR", &bins)
        // The testbed is the CI's (or the developer's) to start; `up` is idempotent but slow to check.
        .env("BENCH_SKIP_TESTBED", "1")
        .status()
        .expect("benches/run starts");
    assert!(status.success(), "benches/run --tiny failed: {status}");

    let text =
        std::fs::read_to_string(out.path().join("report.json")).expect("report.json written");
    let report: Value = serde_json::from_str(&text).expect("report.json is JSON");
    assert!(
        out.path().join("summary.txt").exists(),
        "summary.txt written"
    );
    for key in REQUIRED {
        let value = report
            .get(*key)
            .unwrap_or_else(|| panic!("{key} missing:\n{text}"));
        match value {
            Value::Number(_) => {}
            Value::Null => {
                let why = report.get(format!("{key}_why")).and_then(Value::as_str);
                assert!(
                    why.is_some_and(|w| !w.is_empty()),
                    "{key} is null without a reason:\n{text}"
                );
            }
            other => panic!("{key} is neither a number nor null: {other}"),
        }
    }
    for key in ALWAYS {
        assert!(
            report[*key].is_number(),
            "{key} has no figure: {:?}",
            report.get(format!("{key}_why"))
        );
    }
    if orderpipe.exists() {
        for key in WITH_ORDERPIPE {
            assert!(
                report[*key].is_number(),
                "{key} has no figure: {:?}",
                report.get(format!("{key}_why"))
            );
        }
    } else {
        for key in WITH_ORDERPIPE {
            let why = report[format!("{key}_why")].as_str().unwrap_or_default();
            assert!(why.contains("no orderpipe binary"), "{key}: {why}");
        }
    }
    for key in ["machine", "versions", "command"] {
        assert!(
            report.get(key).is_some_and(|v| !v.is_null()),
            "{key} missing"
        );
    }
    assert!(report["versions"]["librdkafka"].is_string());
    assert!(report["command"].as_str().unwrap().contains("--tiny"));
}
