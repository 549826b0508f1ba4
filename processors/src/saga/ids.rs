//! Deterministic event ids for what a stage emits: a UUID v7 whose timestamp is the cause's
//! `occurred_at` and whose random bits are a hash of (stage, cause event id, output index).
//!
//! Why: a stage that handles the same input twice (at-least-once redelivery, or a repeated
//! decision after a restore) emits the very same event ids, so every consumer's dedup by event id
//! (notifications, projections) sees one event, not two. The ids still sort by time like v7 ids.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The id of output number `index` that `stage` emits for the input `cause` (which happened at
/// `cause_at`). Different stages get different ids for the same cause.
pub fn derived_event_id(stage: &str, cause: Uuid, cause_at: DateTime<Utc>, index: u32) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(b"orderpipe-event-id\0");
    hash.update(stage.as_bytes());
    hash.update([0]);
    hash.update(cause.as_bytes());
    hash.update(index.to_be_bytes());
    let digest = hash.finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(cause_at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_v7() {
        let cause = Uuid::now_v7();
        let at = Utc::now();
        let a = derived_event_id("saga", cause, at, 0);
        assert_eq!(a, derived_event_id("saga", cause, at, 0));
        assert_ne!(a, derived_event_id("saga", cause, at, 1));
        assert_ne!(a, derived_event_id("payments", cause, at, 0));
        assert_ne!(a, derived_event_id("saga", Uuid::now_v7(), at, 0));
        assert_eq!(a.get_version_num(), 7);
        let (secs, _) = a.get_timestamp().unwrap().to_unix();
        assert_eq!(secs, at.timestamp() as u64);
    }
}
