//! Structured logging to stderr through `tracing`.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber with `filter` (e.g. `info`, `orderpipe_ingest=debug`).
/// Safe to call more than once; later calls do nothing.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        // stdout is for command output (`--json` reports must parse); logs go to stderr.
        .with_writer(std::io::stderr)
        .try_init();
}
