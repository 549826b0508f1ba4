//! Idempotency-Key handling.
//!
//! The order id of a request with an Idempotency-Key is *derived* from it: UUID v5 over
//! (client id, key) in [`ORDER_ID_NAMESPACE`]. A retry, to any ingest instance and after any
//! restart, therefore gets the same order id, and re-producing its `order_placed` is harmless:
//! downstream stages deduplicate `order_placed` by order id. No database is needed for
//! "one key never creates two orders".
//!
//! What the id cannot tell is whether a retry carries the *same body*. [`RecentKeys`] remembers
//! the body fingerprint of each key this instance saw (bounded, with a TTL) and refuses a
//! different body with 422. Across instances and restarts that check needs the shared store of
//! [`crate::idempotency_store`] (`--ingest-idempotency-store cql`), with [`RecentKeys`] as its
//! fast path.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use uuid::Uuid;

use crate::error::ApiError;

/// Name of the header.
pub const HEADER: &str = "idempotency-key";

/// Longest accepted key, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// Namespace of order ids derived from Idempotency-Keys. Never change it: every retry of an
/// order placed before the change would get a new order id.
pub const ORDER_ID_NAMESPACE: Uuid = uuid::uuid!("856dea81-49eb-49ac-9594-1dd426599a2f");

/// A validated Idempotency-Key: 1 to 255 visible ASCII characters (`!` to `~`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Validates a header value; 400 when it breaks the rules.
    pub fn parse(value: &HeaderValue) -> Result<Self, ApiError> {
        let bytes = value.as_bytes();
        if bytes.is_empty() {
            return Err(ApiError::InvalidIdempotencyKey("must not be empty"));
        }
        if bytes.len() > MAX_KEY_LEN {
            return Err(ApiError::InvalidIdempotencyKey(
                "must be at most 255 characters",
            ));
        }
        if !bytes.iter().all(|b| (b'!'..=b'~').contains(b)) {
            return Err(ApiError::InvalidIdempotencyKey(
                "must be visible ASCII characters only (no spaces)",
            ));
        }
        Ok(Self(
            std::str::from_utf8(bytes)
                .expect("visible ASCII is UTF-8")
                .to_owned(),
        ))
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The order id of `key` sent by `client_id`: the same on every instance, forever.
pub fn order_id_for(client_id: &str, key: &IdempotencyKey) -> Uuid {
    // Length-prefixed so that ("ab", "c") and ("a", "bc") never collide.
    let name = format!("{}:{}{}", client_id.len(), client_id, key.as_str());
    Uuid::new_v5(&ORDER_ID_NAMESPACE, name.as_bytes())
}

/// Body fingerprints of recently seen keys, by derived order id: bounded in count and age.
#[derive(Debug)]
pub struct RecentKeys {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    fingerprints: HashMap<Uuid, String>,
    /// Insertion order, which is also expiry order since every entry lives `ttl`.
    order: VecDeque<(Uuid, Instant)>,
}

impl Inner {
    /// Forgets the entries expired at `now`.
    fn expire(&mut self, now: Instant) {
        while let Some(&(id, expires)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            self.fingerprints.remove(&id);
        }
    }

    /// See [`RecentKeys::check`].
    fn lookup(
        &mut self,
        order_id: Uuid,
        fingerprint: &str,
        now: Instant,
    ) -> Result<bool, ApiError> {
        self.expire(now);
        match self.fingerprints.get(&order_id) {
            Some(seen) if seen == fingerprint => Ok(true),
            Some(_) => Err(ApiError::IdempotencyKeyReused),
            None => Ok(false),
        }
    }

    /// Adds an entry known to be absent, evicting the oldest past `capacity`.
    fn insert(&mut self, order_id: Uuid, fingerprint: &str, expires: Instant, capacity: usize) {
        if self.order.len() >= capacity {
            if let Some((id, _)) = self.order.pop_front() {
                self.fingerprints.remove(&id);
            }
        }
        self.fingerprints.insert(order_id, fingerprint.to_owned());
        self.order.push_back((order_id, expires));
    }
}

impl RecentKeys {
    /// Remembers at most `capacity` keys, each for `ttl`.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records that `order_id` was requested with body `fingerprint`; 422 when this instance saw
    /// it with another body within the TTL. Call before producing: a failed produce keeps the
    /// entry, since the message may still have reached the broker with this body.
    pub fn check_and_remember(&self, order_id: Uuid, fingerprint: &str) -> Result<(), ApiError> {
        self.check_and_remember_at(order_id, fingerprint, Instant::now())
    }

    fn check_and_remember_at(
        &self,
        order_id: Uuid,
        fingerprint: &str,
        now: Instant,
    ) -> Result<(), ApiError> {
        if self.capacity == 0 {
            return Ok(());
        }
        let mut inner = self.inner.lock().expect("idempotency lock");
        if inner.lookup(order_id, fingerprint, now)? {
            return Ok(());
        }
        inner.insert(order_id, fingerprint, now + self.ttl, self.capacity);
        Ok(())
    }

    /// Looks `order_id` up without recording it: `Ok(true)` when it was seen with this body
    /// within the TTL, `Ok(false)` when it is unknown here, 422 when seen with another body.
    /// For the shared store's fast path: record with [`RecentKeys::remember`] only once the store
    /// has confirmed the fingerprint, so that a failed store check is never skipped later.
    pub fn check(&self, order_id: Uuid, fingerprint: &str) -> Result<bool, ApiError> {
        if self.capacity == 0 {
            return Ok(false);
        }
        self.inner
            .lock()
            .expect("idempotency lock")
            .lookup(order_id, fingerprint, Instant::now())
    }

    /// Records that `order_id` belongs to a body with `fingerprint` (kept as is when already known).
    pub fn remember(&self, order_id: Uuid, fingerprint: &str) {
        if self.capacity == 0 {
            return;
        }
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("idempotency lock");
        inner.expire(now);
        if !inner.fingerprints.contains_key(&order_id) {
            inner.insert(order_id, fingerprint, now + self.ttl, self.capacity);
        }
    }

    /// How many keys are remembered now.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .expect("idempotency lock")
            .fingerprints
            .len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> IdempotencyKey {
        IdempotencyKey::parse(&HeaderValue::from_str(s).unwrap()).unwrap()
    }

    #[test]
    fn keys_are_visible_ascii_up_to_255() {
        assert_eq!(key("order-2024-abc_~!").as_str(), "order-2024-abc_~!");
        assert_eq!(key(&"k".repeat(255)).as_str().len(), 255);
        for bad in ["", " ", "a b", &"k".repeat(256)] {
            let value = HeaderValue::from_str(bad).unwrap();
            assert!(
                matches!(
                    IdempotencyKey::parse(&value),
                    Err(ApiError::InvalidIdempotencyKey(_))
                ),
                "{bad:?}"
            );
        }
        let tab = HeaderValue::from_bytes(b"a\tb").unwrap();
        assert!(IdempotencyKey::parse(&tab).is_err());
        let latin1 = HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert!(IdempotencyKey::parse(&latin1).is_err());
    }

    #[test]
    fn order_ids_are_deterministic_and_scoped_by_client() {
        let a = order_id_for("shop-eu", &key("k1"));
        // Same client and key: same id, on any instance, in any release (pinned here).
        assert_eq!(a, order_id_for("shop-eu", &key("k1")));
        assert_eq!(a.get_version_num(), 5);
        assert_eq!(
            a.to_string(),
            order_id_for("shop-eu", &key("k1")).to_string()
        );
        assert_ne!(a, order_id_for("shop-us", &key("k1")));
        assert_ne!(a, order_id_for("shop-eu", &key("k2")));
        // Length prefix: moving characters between client and key gives another id.
        assert_ne!(order_id_for("ab", &key("c")), order_id_for("a", &key("bc")));
    }

    #[test]
    fn order_id_is_stable_across_releases() {
        assert_eq!(
            order_id_for("anonymous", &key("k1")).to_string(),
            Uuid::new_v5(&ORDER_ID_NAMESPACE, b"9:anonymousk1").to_string()
        );
    }

    #[test]
    fn same_key_other_body_is_refused_until_expiry() {
        let keys = RecentKeys::new(Duration::from_secs(60), 10);
        let id = Uuid::now_v7();
        let t0 = Instant::now();
        assert!(keys.check_and_remember_at(id, "f1", t0).is_ok());
        assert!(keys.check_and_remember_at(id, "f1", t0).is_ok());
        assert!(matches!(
            keys.check_and_remember_at(id, "f2", t0 + Duration::from_secs(59)),
            Err(ApiError::IdempotencyKeyReused)
        ));
        // After the TTL the key is forgotten (the order id stays the same: no second order).
        assert!(keys
            .check_and_remember_at(id, "f2", t0 + Duration::from_secs(61))
            .is_ok());
        assert_eq!(keys.len(), 1);
    }

    #[test]
    fn capacity_bounds_memory_oldest_first() {
        let keys = RecentKeys::new(Duration::from_secs(60), 3);
        let now = Instant::now();
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            keys.check_and_remember_at(*id, "f", now).unwrap();
        }
        assert_eq!(keys.len(), 3);
        // The oldest was forgotten, the newest are still checked.
        assert!(keys.check_and_remember_at(ids[3], "other", now).is_err());
        assert!(keys.check_and_remember_at(ids[1], "other", now).is_err());
    }

    #[test]
    fn check_does_not_record_and_remember_keeps_the_first_body() {
        let keys = RecentKeys::new(Duration::from_secs(60), 10);
        let id = Uuid::now_v7();
        assert!(!keys.check(id, "f1").unwrap());
        assert!(
            !keys.check(id, "f2").unwrap(),
            "an unconfirmed body is not recorded"
        );
        keys.remember(id, "f1");
        keys.remember(id, "f2");
        assert!(keys.check(id, "f1").unwrap());
        assert!(matches!(
            keys.check(id, "f2"),
            Err(ApiError::IdempotencyKeyReused)
        ));
        assert_eq!(keys.len(), 1);
        let off = RecentKeys::new(Duration::from_secs(60), 0);
        off.remember(id, "f1");
        assert!(!off.check(id, "f2").unwrap());
    }
}
