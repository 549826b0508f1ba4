//! Gateway work of one order that is not finished yet: the `payments.changelog` value
//! ([`PendingOp`], with its [`Cause`]) and the backoff of its retries ([`RetrySchedule`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use orderpipe_schemas::{OrderEnvelope, PaymentRequested};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::shared::doubling_delay;

/// Gateway work of one order that is not finished yet (the `payments.changelog` value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum PendingOp {
    /// A charge the gateway could not be asked successfully yet.
    Charge {
        /// The `payment_requested` event: its id, time and correlation id (the answer derives
        /// its event id from them, so a retried answer is the same event).
        cause: Cause,
        /// What to charge.
        request: PaymentRequested,
        /// After this instant a failing charge is declined with `gateway_timeout`.
        give_up_at: DateTime<Utc>,
    },
    /// A refund (or void) of a rejected or cancelled order the gateway has not confirmed yet.
    Refund {
        /// The `order_rejected` or `order_cancelled` event.
        cause: Cause,
    },
}

/// The input a pending operation answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// `event_id` of the input.
    pub event_id: Uuid,
    /// Its `occurred_at`.
    pub occurred_at: DateTime<Utc>,
    /// Its `correlation_id`.
    pub correlation_id: Uuid,
}

impl Cause {
    pub(crate) fn of(event: &OrderEnvelope) -> Self {
        Self {
            event_id: event.event_id,
            occurred_at: event.occurred_at,
            correlation_id: event.correlation_id,
        }
    }
}

impl PendingOp {
    /// Changelog value (JSON).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("pending operations always serialize")
    }

    /// Parses a changelog value.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Backoff of pending gateway work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Delay before the first retry (doubles per failed retry).
    pub min_delay: Duration,
    /// Longest delay between two retries.
    pub max_delay: Duration,
    /// How long after `payment_requested` a charge is retried before it is declined.
    pub charge_retry_for: Duration,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            charge_retry_for: Duration::from_secs(60),
        }
    }
}

impl RetrySchedule {
    /// The delay after `failures` failed attempts.
    pub fn delay(&self, failures: u32) -> Duration {
        doubling_delay(self.min_delay, self.max_delay, failures)
    }
}
