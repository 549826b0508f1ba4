//! A protocol adapter that lets CQL native protocol v4 clients (the `scylla` crate speaks only v4)
//! use Apache Cassandra 2.1, which speaks v3. Used by the local testbed only; production talks to
//! ScyllaDB directly. See shared/TESTBED.md ("CQL").
//!
//! What it does, per frame (pure functions in [`translate`], tables in [`system`]):
//! - rewrites the version byte 4 <-> 3 (the 9-byte header is the same in both);
//! - STARTUP: CQL_VERSION 3.0.0, compression removed; SUPPORTED: compression hidden;
//! - PREPARED results: inserts v4's `pk_count = 0` that v3 lacks;
//! - answers `system.local`, `system.peers`, `system.peers_v2` and `system_schema.*` itself;
//! - refuses cleanly what v3 cannot carry (unset values, custom payloads, compression).
//!
//! The TCP plumbing is in [`proxy`]: one task per client connection.

pub mod frame;
pub mod proxy;
pub mod system;
pub mod translate;
