//! Kafka helpers (filled in by the foundation work).
