//! Deterministic event ids for what a stage emits: a UUID v7 whose timestamp bits are the
//! cause's (its first 48 bits: the cause's own v7 time) and whose random bits are a hash of
//! (stage, cause event id, output index).
//!
//! Why: a stage that handles the same input twice (at-least-once redelivery, or a repeated
//! decision after a restore) emits the very same event ids, so every consumer's dedup by event id
//! (notifications, projections) sees one event, not two. The id depends on the cause's id only,
//! never on a time (a repeated cause with another `occurred_at` would otherwise get other ids one
//! hop later). The ids still sort by time like v7 ids.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The id of output number `index` that `stage` emits for the input whose `event_id` is `cause`.
/// Different stages get different ids for the same cause.
pub fn derived_event_id(stage: &str, cause: Uuid, index: u32) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(b"orderpipe-event-id\0");
    hash.update(stage.as_bytes());
    hash.update([0]);
    hash.update(cause.as_bytes());
    hash.update(index.to_be_bytes());
    let digest = hash.finalize();
    let mut random = [0u8; 10];
    random.copy_from_slice(&digest[..10]);
    let b = cause.as_bytes();
    let millis = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_v7() {
        let cause = Uuid::now_v7();
        let a = derived_event_id("saga", cause, 0);
        assert_eq!(a, derived_event_id("saga", cause, 0));
        assert_ne!(a, derived_event_id("saga", cause, 1));
        assert_ne!(a, derived_event_id("payments", cause, 0));
        assert_ne!(a, derived_event_id("saga", Uuid::now_v7(), 0));
        assert_eq!(a.get_version_num(), 7);
        // The id carries the cause's time (ids still sort by time).
        assert_eq!(a.get_timestamp(), cause.get_timestamp());
        // and one hop later, still a function of the first cause only
        let b = derived_event_id("payments", a, 0);
        assert_eq!(
            b,
            derived_event_id("payments", derived_event_id("saga", cause, 0), 0)
        );
        assert_eq!(b.get_timestamp(), cause.get_timestamp());
    }
}
