//! Shared harness for integration tests against the real broker and CQL server.
//!
//! Layout:
//! - [`kafka`]: a unique topic prefix and consumer group per test, producers and consumers
//!   configured for the broker in `KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`), topics deleted after.
//! - [`http`]: a small keep-alive HTTP/1.1 client for the services' APIs.
//! - [`cql`]: a unique keyspace per test on the CQL server in `SCYLLA_NODES`
//!   (default `127.0.0.1:9042`), dropped after.
//!
//! The testbed (`ops/testbed/up`) or any real cluster named by those variables must be running.

pub mod cql;
pub mod http;
pub mod kafka;

/// A short, unique, lowercase identifier for names of test topics, groups and keyspaces.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// Runs each named async test body (`async fn body(mode: ProcessingMode)`) once per processing
/// mode, as tests `body::exactly_once` and `body::at_least_once`: one test body, both guarantees.
/// The calling file has `ProcessingMode` in scope.
#[macro_export]
macro_rules! both_modes {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn exactly_once() {
                super::$body(ProcessingMode::ExactlyOnce).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn at_least_once() {
                super::$body(ProcessingMode::AtLeastOnce).await;
            }
        }
    )*};
}
