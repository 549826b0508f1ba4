//! [`SimulatedGateway`]: an in-memory gateway with configurable latency and decline rate,
//! deterministic for a seed (whether an order is declined is a hash of the seed and the order id,
//! so a retry gets the same answer), idempotent per idempotency key (like a real gateway: the
//! key, not the order, decides what a repeat returns; [`PaymentGateway`] calls use the order id as
//! the key), and keeping a ledger of every charge request with its key
//! ([`SimulatedGateway::ledger`]): a second key for one order, or a request without a key, is a
//! second charge, so "charged at most once per order" ([`Totals::orders_charged_twice`]) and
//! "a rejected order nets to zero" ([`SimulatedGateway::net_charged`]) can fail.

use std::collections::{BTreeMap, HashMap};
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
    /// Distinct charges that moved money (refunded ones included): 0 or 1 unless idempotency is
    /// broken (a second key, or requests without a key).
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
    /// Charges kept: distinct charges that moved money and were not refunded.
    pub charges: u64,
    /// Distinct charges that moved money, refunded ones included.
    #[serde(default)]
    pub charges_accepted: u64,
    /// Orders with more than one distinct accepted charge (must stay 0).
    pub orders_charged_twice: u64,
    /// Charge requests that came without an idempotency key (must stay 0).
    #[serde(default)]
    pub charge_requests_without_key: u64,
    /// Refund requests.
    pub refund_attempts: u64,
    /// Refunds that moved money back.
    pub refunds: u64,
}

/// One charge request as the gateway received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRequest {
    /// Its idempotency key (`None`: sent without one).
    pub idempotency_key: Option<String>,
    /// Amount asked for.
    pub amount_minor: i64,
    /// Currency asked for.
    pub currency: String,
    /// What the gateway did with it.
    pub outcome: RequestOutcome,
}

/// What the gateway did with one charge request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestOutcome {
    /// A new charge: money moved.
    Charged,
    /// A repeat of an earlier key: answered like the first, no money moved.
    Repeated,
    /// Declined: no money moved.
    Declined,
}

/// One distinct charge that moved money.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerCharge {
    /// The key it was made under.
    pub idempotency_key: Option<String>,
    /// Amount charged.
    pub amount_minor: i64,
    /// Currency charged.
    pub currency: String,
    /// Refunded since.
    pub refunded: bool,
}

/// What the gateway's own ledger says about one order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLedger {
    /// Every charge request, in arrival order.
    pub requests: Vec<LedgerRequest>,
    /// Every distinct charge that moved money (one per key, one per request without a key).
    pub charges: Vec<LedgerCharge>,
}

impl OrderLedger {
    /// Distinct charges that moved money, refunded ones included.
    pub fn accepted_charges(&self) -> usize {
        self.charges.len()
    }

    /// Charge requests without an idempotency key.
    pub fn requests_without_key(&self) -> usize {
        self.requests
            .iter()
            .filter(|r| r.idempotency_key.is_none())
            .count()
    }

    /// Distinct idempotency keys its charge requests used.
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .requests
            .iter()
            .filter_map(|r| r.idempotency_key.as_deref())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// Net amount charged in minor units: charges minus refunds (0 for a rejected order, the
    /// order's total for a confirmed one).
    pub fn net_charged_minor(&self) -> i64 {
        self.charges
            .iter()
            .filter(|c| !c.refunded)
            .map(|c| c.amount_minor)
            .sum()
    }
}

#[derive(Debug, Default)]
struct SimOrder {
    stats: OrderStats,
    /// The answer given to each idempotency key.
    answers: HashMap<String, Answer>,
    /// The answer to the order's refund (idempotent per order).
    refund: Option<Refund>,
    /// Refunded before any charge: later charges are declined.
    voided: bool,
    ledger: OrderLedger,
}

#[derive(Debug, Clone)]
enum Answer {
    Settled { charge_id: String },
    Declined { reason: String },
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
            let ledger = &o.ledger;
            t.charge_attempts += u64::from(o.stats.charge_attempts);
            t.charges += ledger.charges.iter().filter(|c| !c.refunded).count() as u64;
            t.charges_accepted += ledger.accepted_charges() as u64;
            t.orders_charged_twice += u64::from(ledger.accepted_charges() > 1);
            t.charge_requests_without_key += ledger.requests_without_key() as u64;
            t.refund_attempts += u64::from(o.stats.refund_attempts);
            t.refunds += u64::from(o.stats.refunds);
        }
        t
    }

    /// The ledger of `order_id`: every charge request with its key, every distinct charge.
    pub fn ledger(&self, order_id: Uuid) -> OrderLedger {
        self.lock()
            .get(&order_id)
            .map(|o| o.ledger.clone())
            .unwrap_or_default()
    }

    /// The ledger of every order the gateway heard of.
    pub fn ledgers(&self) -> BTreeMap<Uuid, OrderLedger> {
        self.lock()
            .iter()
            .map(|(id, o)| (*id, o.ledger.clone()))
            .collect()
    }

    /// Net amount charged to `order_id` (charges minus refunds, minor units; 0 if never charged).
    pub fn net_charged(&self, order_id: Uuid) -> i64 {
        self.lock()
            .get(&order_id)
            .map_or(0, |o| o.ledger.net_charged_minor())
    }

    /// Charges synchronously, without the latency (the decision part of [`PaymentGateway::charge`]):
    /// the idempotency key is the order id.
    pub fn charge_now(&self, order_id: Uuid, amount_minor: i64, currency: &str) -> Charge {
        let key = order_id.to_string();
        self.charge_keyed(Some(&key), order_id, amount_minor, currency)
    }

    /// A charge request of `order_id` under `idempotency_key` (`None`: sent without one, so
    /// every such request is a new charge). A key seen before gets its first answer again, even
    /// after a refund; a new key is a new charge (unless declined).
    pub fn charge_keyed(
        &self,
        idempotency_key: Option<&str>,
        order_id: Uuid,
        amount_minor: i64,
        currency: &str,
    ) -> Charge {
        let mut orders = self.lock();
        let order = orders.entry(order_id).or_default();
        order.stats.charge_attempts += 1;
        let repeated = idempotency_key.and_then(|k| order.answers.get(k).cloned());
        let (answer, outcome) = match repeated {
            Some(answer) => (answer, RequestOutcome::Repeated),
            None => {
                let declined = if order.voided {
                    Some(VOIDED_REASON)
                } else if amount_minor <= 0 {
                    Some("invalid_amount")
                } else if self.declines(order_id) {
                    Some(SIM_DECLINE_REASON)
                } else {
                    None
                };
                match declined {
                    Some(reason) => (
                        Answer::Declined {
                            reason: reason.to_owned(),
                        },
                        RequestOutcome::Declined,
                    ),
                    None => {
                        let n = order.ledger.charges.len();
                        let charge_id = match n {
                            0 => format!("ch_{}", order_id.simple()),
                            n => format!("ch_{}_{n}", order_id.simple()),
                        };
                        order.ledger.charges.push(LedgerCharge {
                            idempotency_key: idempotency_key.map(str::to_owned),
                            amount_minor,
                            currency: currency.to_owned(),
                            refunded: false,
                        });
                        order.stats.charges += 1;
                        (Answer::Settled { charge_id }, RequestOutcome::Charged)
                    }
                }
            }
        };
        if let Some(key) = idempotency_key {
            order
                .answers
                .entry(key.to_owned())
                .or_insert(answer.clone());
        }
        order.ledger.requests.push(LedgerRequest {
            idempotency_key: idempotency_key.map(str::to_owned),
            amount_minor,
            currency: currency.to_owned(),
            outcome,
        });
        match answer {
            Answer::Settled { charge_id } => Charge {
                charge_id,
                outcome: ChargeOutcome::Settled,
            },
            Answer::Declined { reason } => {
                order.stats.declines += 1;
                Charge {
                    charge_id: format!("ch_{}", order_id.simple()),
                    outcome: ChargeOutcome::Declined { reason },
                }
            }
        }
    }

    /// Refunds synchronously, without the latency (the decision part of [`PaymentGateway::refund`]):
    /// idempotent per order (key = order id); refunds the order's first charge not refunded yet,
    /// or, before any charge, voids the order (later charges are declined).
    pub fn refund_now(&self, order_id: Uuid) -> Refund {
        let mut orders = self.lock();
        let order = orders.entry(order_id).or_default();
        order.stats.refund_attempts += 1;
        if let Some(refund) = &order.refund {
            return refund.clone();
        }
        let refund = match order.ledger.charges.iter_mut().find(|c| !c.refunded) {
            Some(charge) => {
                charge.refunded = true;
                order.stats.refunds += 1;
                Refund::Refunded {
                    refund_id: format!("re_{}", order_id.simple()),
                    amount_minor: charge.amount_minor,
                    currency: charge.currency.clone(),
                }
            }
            None => {
                if order.ledger.charges.is_empty() {
                    order.voided = true;
                }
                Refund::NoCharge
            }
        };
        order.refund = Some(refund.clone());
        refund
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
