//! What more than one stage uses: outbound HTTP and its retry policy (payments' gateway,
//! notifications' webhook), deterministic output event ids (every stage), configuration errors,
//! and the check that a stage was given a runtime its blocking calls can use.
//!
//! Layout:
//! - [`http`]: the pooled HTTP/1 client, one POST with a timeout, [`RetryPolicy`].
//! - [`ids`]: [`derived_event_id`], the event id of a stage's output from its cause.

pub mod http;
pub mod ids;

use std::time::Duration;

use tokio::runtime::Handle;

pub use http::RetryPolicy;
pub use ids::derived_event_id;

/// A configuration value that cannot work; the message says which option and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required option is missing: fix the command line or environment.
    #[error("{0} is required")]
    Missing(&'static str),
    /// An option has an unusable value: fix the command line or environment.
    #[error("{option}: {message}")]
    Invalid {
        /// The option.
        option: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// Warns about a handle that [`Handle::block_on`] from the stage thread would hang on.
pub(crate) fn warn_if_current_thread(handle: &Handle, stage: &str) {
    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        tracing::warn!(
            stage,
            "stage given a current-thread runtime handle: its gateway/webhook \
            timers and IO only progress while that runtime's own block_on runs; use a \
            multi-thread runtime"
        );
    }
}

/// The wait before the next try of work that failed `failures` times in a row (at least once):
/// `first`, doubling per failure, at most `max`. Stages that keep failed work pending and retry
/// it from `tick` (payments' gateway calls, notifications' deliveries) pace it with this.
pub(crate) fn doubling_delay(first: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    first.saturating_mul(factor).min(max)
}
