//! Structured logging to stderr through `tracing`.

use tracing_subscriber::EnvFilter;

/// Install the global subscriber with `filter` (e.g. `info`, `orderpipe_ingest=debug`).
/// Safe to call more than once; later calls do nothing.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        // Colours only on a terminal: log files and collectors got raw escape codes before.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // stdout is for command output (`--json` reports must parse); logs go to stderr.
        .with_writer(std::io::stderr)
        .try_init();
}
