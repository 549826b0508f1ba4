//! The process-wide Prometheus recorder. `metrics` macros anywhere in the process record into it;
//! every service's `/metrics` renders it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Histogram buckets in seconds, from 0.5 ms to 10 s: acknowledgement and processing latencies
/// live in the low milliseconds, and the tail is what a sale's operators need to see.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// The recorder's handle, installing the recorder on first use (once per process, so that
/// several services or tests in one process share it).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .install_recorder()
            .expect("no other metrics recorder is installed in this process")
    })
}

/// The current metrics in the Prometheus text format.
pub fn render() -> String {
    let handle = handle();
    // The exporter leaves histogram upkeep to its user; a scrape is a natural time for it.
    handle.run_upkeep();
    handle.render()
}
