//! A circuit breaker for the HTTP gateway: after `failure_threshold` consecutive failures it opens
//! and calls fail fast for `open_for`; then one trial call is let through (half-open): success
//! closes it, failure opens it again.
//!
//! Hand-written on purpose: the crates for this (failsafe, recloser) wrap futures in policies of
//! their own and have seen few releases; this state machine is some fifty lines, and pure (time
//! is a parameter), so its tests need no clock.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit (at least 1).
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before a trial.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_for: Duration::from_secs(5),
        }
    }
}

/// The breaker's state, as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; `failures` consecutive failures so far.
    Closed {
        /// Consecutive failures.
        failures: u32,
    },
    /// Calls fail fast until `until`.
    Open {
        /// When a trial call is allowed.
        until: Instant,
    },
    /// One trial call is in flight (started at `since`); others fail fast.
    HalfOpen {
        /// When the trial started.
        since: Instant,
    },
}

/// A thread-safe circuit breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: Mutex<BreakerState>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        let state = BreakerState::Closed { failures: 0 };
        crate::metrics::breaker_state(&state);
        Self {
            config,
            state: Mutex::new(state),
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        *self.lock()
    }

    /// May a call start at `now`? (Open past its deadline turns half-open and admits one trial;
    /// a trial that never reported back within `open_for` is presumed lost and replaced.)
    pub fn try_acquire_at(&self, now: Instant) -> bool {
        let mut state = self.lock();
        let trial = match *state {
            BreakerState::Closed { .. } => return true,
            BreakerState::Open { until } => now >= until,
            BreakerState::HalfOpen { since } => now >= since + self.config.open_for,
        };
        if trial {
            *state = BreakerState::HalfOpen { since: now };
            crate::metrics::breaker_state(&state);
        }
        trial
    }

    /// [`Self::try_acquire_at`] now.
    pub fn try_acquire(&self) -> bool {
        self.try_acquire_at(Instant::now())
    }

    /// The call succeeded (the gateway answered): close.
    pub fn on_success(&self) {
        let mut state = self.lock();
        *state = BreakerState::Closed { failures: 0 };
        crate::metrics::breaker_state(&state);
    }

    /// The call failed at `now` (timeout, unreachable, 5xx).
    pub fn on_failure_at(&self, now: Instant) {
        let mut state = self.lock();
        let open = BreakerState::Open {
            until: now + self.config.open_for,
        };
        *state = match *state {
            BreakerState::Closed { failures } => {
                let failures = failures + 1;
                if failures >= self.config.failure_threshold.max(1) {
                    open
                } else {
                    BreakerState::Closed { failures }
                }
            }
            BreakerState::HalfOpen { .. } => open,
            // A call admitted before the circuit opened failed late: stay open as is.
            BreakerState::Open { until } => BreakerState::Open { until },
        };
        crate::metrics::breaker_state(&state);
    }

    /// [`Self::on_failure_at`] now.
    pub fn on_failure(&self) {
        self.on_failure_at(Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(10),
        })
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker();
        let t0 = Instant::now();
        b.on_failure_at(t0);
        b.on_failure_at(t0);
        b.on_success();
        b.on_failure_at(t0);
        b.on_failure_at(t0);
        assert_eq!(b.state(), BreakerState::Closed { failures: 2 });
        assert!(b.try_acquire_at(t0));
        b.on_failure_at(t0);
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        assert!(!b.try_acquire_at(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn half_open_admits_one_trial_then_closes_or_reopens() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.on_failure_at(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        // Given the open period is over, when two calls start, then only the first is a trial
        assert!(b.try_acquire_at(t1));
        assert!(!b.try_acquire_at(t1));
        // When the trial fails, the circuit opens again for a full period
        b.on_failure_at(t1);
        assert!(!b.try_acquire_at(t1 + Duration::from_secs(5)));
        let t2 = t1 + Duration::from_secs(10);
        assert!(b.try_acquire_at(t2));
        // When the next trial succeeds, the circuit closes
        b.on_success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
        assert!(b.try_acquire_at(t2));
    }

    #[test]
    fn lost_trial_is_replaced_after_open_for() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..3 {
            b.on_failure_at(t0);
        }
        let t1 = t0 + Duration::from_secs(10);
        assert!(b.try_acquire_at(t1));
        // The trial never reports; after another open period a new trial may start.
        assert!(!b.try_acquire_at(t1 + Duration::from_secs(9)));
        assert!(b.try_acquire_at(t1 + Duration::from_secs(10)));
    }
}
