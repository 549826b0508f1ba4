//! [`SimulatedGateway`]: an in-memory gateway with configurable latency and decline rate,
//! deterministic for a seed (whether an order is declined is a hash of the seed and the order id,
//! so a retry gets the same answer), idempotent per order, and counting what it was asked (tests
//! check "charged at most once per order" with [`SimulatedGateway::stats`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use orderpipe_schemas::PaymentRef;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::gateway::{Charge, ChargeOutcome, GatewayError, PaymentGateway, Refund};

/// Decline reason the simulated gateway gives for its random declines.
pub const SIM_DECLINE_REASON: &str = "insufficient_funds";
/// Decline reason for a charge of an order that was refunded or voided before.
pub const VOIDED_REASON: &str = "order_voided";

/// Behaviour of a [`SimulatedGateway`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimConfig {
    /// Time every call takes.
    pub latency: Duration,
    /// Share of orders declined, 0.0..=1.0 (default 0).
    pub decline_rate: f64,
    /// Seed of the decline decision.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            decline_rate: 0.0,
            seed: 0,
        }
    }
}

/// What the simulated gateway was asked about one order, and what it did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderStats {
    /// Charge requests received (retries and redeliveries included).
    pub charge_attempts: u32,
    /// Charges that moved money: 0 or 1 unless idempotency is broken.
    pub charges: u32,
    /// Charge requests answered with a decline.
    pub declines: u32,
    /// Refund requests received.
    pub refund_attempts: u32,
    /// Refunds that moved money back: 0 or 1.
    pub refunds: u32,
}

/// Sums over every order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Orders the gateway heard of.
    pub orders: u64,
    /// Charge requests.
    pub charge_attempts: u64,
    /// Charges that moved money.
    pub charges: u64,
    /// Orders charged more than once (must stay 0).
    pub orders_charged_twice: u64,
    /// Refund requests.
    pub refund_attempts: u64,
    /// Refunds that moved money back.
    pub refunds: u64,
}

#[derive(Debug, Default)]
struct SimOrder {
    stats: OrderStats,
    record: Option<Record>,
}

#[derive(Debug, Clone)]
enum Record {
    Settled {
        amount_minor: i64,
        currency: String,
        refunded: bool,
    },
    Declined {
        reason: String,
    },
    /// Refunded before any charge: later charges are declined.
    Voided,
}

/// An in-memory, seeded, idempotent payment gateway (the default gateway, and the one behind the
/// HTTP gateway simulator).
#[derive(Debug, Default)]
pub struct SimulatedGateway {
    config: SimConfig,
    orders: Mutex<HashMap<Uuid, SimOrder>>,
}

impl SimulatedGateway {
    /// A gateway behaving as `config` says.
    pub fn new(config: SimConfig) -> Self {
        Self {
            config,
            orders: Mutex::new(HashMap::new()),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> SimConfig {
        self.config
    }

    /// Whether this gateway declines `order_id`: a pure function of seed and order id.
    pub fn declines(&self, order_id: Uuid) -> bool {
        let rate = self.config.decline_rate;
        if rate <= 0.0 {
            return false;
        }
        if rate >= 1.0 {
            return true;
        }
        let (hi, lo) = order_id.as_u64_pair();
        let x = splitmix64(splitmix64(self.config.seed ^ hi) ^ lo);
        // 53 random bits as a fraction in [0, 1).
        let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
        unit < rate
    }

    /// What happened to `order_id` so far.
    pub fn stats(&self, order_id: Uuid) -> OrderStats {
        self.lock()
            .get(&order_id)
            .map(|o| o.stats)
            .unwrap_or_default()
    }

    /// Per-order statistics of every order.
    pub fn all_stats(&self) -> HashMap<Uuid, OrderStats> {
        self.lock().iter().map(|(id, o)| (*id, o.stats)).collect()
    }

    /// Sums over every order.
    pub fn totals(&self) -> Totals {
        let orders = self.lock();
        let mut t = Totals {
            orders: orders.len() as u64,
            ..Totals::default()
        };
        for o in orders.values() {
            t.charge_attempts += u64::from(o.stats.charge_attempts);
            t.charges += u64::from(o.stats.charges);
            t.orders_charged_twice += u64::from(o.stats.charges > 1);
            t.refund_attempts += u64::from(o.stats.refund_attempts);
            t.refunds += u64::from(o.stats.refunds);
        }
        t
    }

    /// Charges synchronously, without the latency (the decision part of [`PaymentGateway::charge`]).
    pub fn charge_now(&self, order_id: Uuid, amount_minor: i64, currency: &str) -> Charge {
        let mut orders = self.lock();
        let order = orders.entry(order_id).or_default();
        order.stats.charge_attempts += 1;
        let charge_id = format!("ch_{}", order_id.simple());
        let record = order.record.get_or_insert_with(|| {
            if amount_minor <= 0 {
                Record::Declined {
                    reason: "invalid_amount".to_owned(),
                }
            } else if self.declines(order_id) {
                Record::Declined {
                    reason: SIM_DECLINE_REASON.to_owned(),
                }
            } else {
                order.stats.charges += 1;
                Record::Settled {
                    amount_minor,
                    currency: currency.to_owned(),
                    refunded: false,
                }
            }
        });
        let outcome = match record {
            // A repeated key answers like the first request did, even after a refund.
            Record::Settled { .. } => ChargeOutcome::Settled,
            Record::Declined { reason } => ChargeOutcome::Declined {
                reason: reason.clone(),
            },
            Record::Voided => ChargeOutcome::Declined {
                reason: VOIDED_REASON.to_owned(),
            },
        };
        if matches!(outcome, ChargeOutcome::Declined { .. }) {
            order.stats.declines += 1;
        }
        Charge { charge_id, outcome }
    }

    /// Refunds synchronously, without the latency (the decision part of [`PaymentGateway::refund`]).
    pub fn refund_now(&self, order_id: Uuid) -> Refund {
        let mut orders = self.lock();
        let order = orders.entry(order_id).or_default();
        order.stats.refund_attempts += 1;
        match order.record.get_or_insert(Record::Voided) {
            Record::Settled {
                amount_minor,
                currency,
                refunded,
            } => {
                if !*refunded {
                    *refunded = true;
                    order.stats.refunds += 1;
                }
                Refund::Refunded {
                    refund_id: format!("re_{}", order_id.simple()),
                    amount_minor: *amount_minor,
                    currency: currency.clone(),
                }
            }
            Record::Declined { .. } | Record::Voided => Refund::NoCharge,
        }
    }

    async fn pause(&self) {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, SimOrder>> {
        // A panic while holding the lock cannot leave a half-written record: recover the map.
        self.orders.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PaymentGateway for SimulatedGateway {
    fn charge<'a>(
        &'a self,
        order_id: Uuid,
        amount_minor: i64,
        currency: &'a str,
        _payment: &'a PaymentRef,
    ) -> BoxFuture<'a, Result<Charge, GatewayError>> {
        async move {
            // Decide first, then take the latency: like a real gateway whose answer is slow, the
            // charge exists even if the caller gives up waiting.
            let charge = self.charge_now(order_id, amount_minor, currency);
            self.pause().await;
            Ok(charge)
        }
        .boxed()
    }

    fn refund(&self, order_id: Uuid) -> BoxFuture<'_, Result<Refund, GatewayError>> {
        async move {
            let refund = self.refund_now(order_id);
            self.pause().await;
            Ok(refund)
        }
        .boxed()
    }
}

/// SplitMix64 finaliser: a fixed, well-mixed 64-bit hash (stable across Rust releases, unlike
/// `DefaultHasher`), so a seed gives the same declines everywhere.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decline_rate_is_close_to_configured_and_seeded() {
        let gw = SimulatedGateway::new(SimConfig {
            decline_rate: 0.2,
            seed: 7,
            ..SimConfig::default()
        });
        let ids: Vec<Uuid> = (0..10_000u128).map(Uuid::from_u128).collect();
        let declined = ids.iter().filter(|id| gw.declines(**id)).count();
        assert!((1_700..2_300).contains(&declined), "{declined}");
        let other_seed = SimulatedGateway::new(SimConfig {
            seed: 8,
            ..gw.config()
        });
        assert!(ids
            .iter()
            .any(|id| gw.declines(*id) != other_seed.declines(*id)));
        // Same seed, same answers.
        let same = SimulatedGateway::new(gw.config());
        assert!(ids.iter().all(|id| gw.declines(*id) == same.declines(*id)));
    }
}
