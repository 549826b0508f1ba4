//! The CI variant of `ops/chaos/flash-sale` (README "Chaos and soak"): a 25-second flash sale on a
//! private one-node Kafka testbed (its own directory and ports; the shared broker is never
//! stopped), every component in its own process, and the fault schedule of seed 42: every
//! component SIGKILLed and restarted, the broker stopped or killed and restarted (a full outage
//! with one node), gateway outages, a webhook outage. Passes only if every count of the audit
//! is 0.

use std::process::Command;

#[test]
fn chaos_flash_sale_seed_42_one_broker_every_count_zero() {
    let work = std::env::temp_dir().join(format!("orderpipe-chaos-ci-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_orderpipe-chaos"))
        .args([
            "flash-sale",
            "--seed",
            "42",
            "--duration",
            "25",
            "--brokers",
            "1",
            "--rate",
            "12",
        ])
        .args(["--settle-timeout", "100", "--view-sample", "60"])
        .args(["--orderpipe", env!("CARGO_BIN_EXE_orderpipe")])
        .arg("--work-dir")
        .arg(&work)
        .output()
        .expect("running orderpipe-chaos");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success() && stdout.contains("result: PASS"),
        "chaos flash sale failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // The run really did what it says: orders acknowledged, every component killed, the broker
    // stopped and started.
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("orders:").contains(" acked"), "{stdout}");
    let kills = line("kills:");
    for component in [
        "ingest-1",
        "ingest-2",
        "stock",
        "saga",
        "payments",
        "notifications",
        "projections",
        "query",
    ] {
        assert!(
            kills.contains(component),
            "{component} never killed: {kills}"
        );
    }
    assert!(
        line("restarts:").contains("1 broker stops + 1 starts"),
        "{stdout}"
    );
    assert!(line("restarts:").ends_with("1 webhook outages"), "{stdout}");
    let _ = std::fs::remove_dir_all(&work);
}
