//! Per-client rate limit (GCRA through `governor`), keyed by client id, or by peer IP for
//! anonymous callers.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::ApiError;

/// The limiter of one ingest instance (each instance limits on its own: behind a load balancer
/// spreading evenly over N instances, a client's effective limit is N times the configured one).
#[derive(Debug)]
pub struct RateLimit {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl RateLimit {
    /// `per_second` requests per second and key with bursts of `burst`; 0 per second: no limit.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from `key`'s allowance; 429 with the wait when it is used up.
    pub fn check(&self, key: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| ApiError::RateLimited {
                retry_after: not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_millis(1)),
            })
    }

    /// Forgets keys whose allowance is full again, so that the key table stays small.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_per_key() {
        let limit = RateLimit::new(1, 3);
        for _ in 0..3 {
            assert!(limit.check("a").is_ok());
        }
        match limit.check("a") {
            Err(ApiError::RateLimited { retry_after }) => {
                assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}")
            }
            other => panic!("expected 429, got {other:?}"),
        }
        // Another client has its own allowance.
        assert!(limit.check("b").is_ok());
        limit.forget_idle();
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let limit = RateLimit::new(0, 1);
        for _ in 0..10_000 {
            assert!(limit.check("a").is_ok());
        }
    }
}
