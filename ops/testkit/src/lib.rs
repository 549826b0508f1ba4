//! Shared harness for integration tests against the real broker and CQL server.
//!
//! Layout:
//! - [`kafka`]: a unique topic prefix and consumer group per test, producers and consumers
//!   configured for the broker in `KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`), topics deleted after.
//! - [`committed`]: generated files that are committed (a test fails when they are stale).
//! - [`http`]: a small keep-alive HTTP/1.1 client for the services' APIs.
//! - [`broker`]: a private Apache Kafka node a test may stop and restart.
//! - [`cql`]: a unique keyspace per test on the CQL server in `SCYLLA_NODES`
//!   (default `127.0.0.1:9042`), dropped after.
//!
//! The testbed (`ops/testbed/up`) or any real cluster named by those variables must be running.

pub mod broker;
pub mod committed;
pub mod cql;
pub mod http;
pub mod kafka;

/// A short, unique, lowercase identifier for names of test topics, groups and keyspaces.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A port nobody listens on and no other test process has taken: child processes bind it later,
/// so asking the kernel for port 0 would race (two tests running at once were handed the same
/// port, and one test's readiness probe then reached the other's process). Ports come from
/// 20000-29999, below Linux's ephemeral range (32768+) so no client socket holds them either;
/// each is reserved by creating a marker file (O_EXCL) shared by every test process, and a marker
/// older than 15 minutes counts as free again.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("orderpipe-test-ports");
    std::fs::create_dir_all(&dir).unwrap();
    for _ in 0..10_000 {
        let port = 20_000 + (uuid::Uuid::new_v4().as_u128() % 10_000) as u16;
        let marker = dir.join(port.to_string());
        let stale = std::fs::metadata(&marker)
            .and_then(|m| m.modified())
            .is_ok_and(|at| at.elapsed().unwrap_or_default() > std::time::Duration::from_secs(900));
        if stale {
            let _ = std::fs::remove_file(&marker);
        }
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_err()
        {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-29999");
}

/// Runs each named async test body (`async fn body(mode: ProcessingMode)`) once per processing
/// mode, as tests `body::exactly_once` and `body::at_least_once`: one test body, both guarantees.
/// The calling file has `ProcessingMode` in scope. The runtime has 2 worker threads, or as many
/// as a leading `worker_threads = N;` says.
#[macro_export]
macro_rules! both_modes {
    (worker_threads = $threads:tt; $($body:ident),* $(,)?) => {$(
        mod $body {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
            async fn exactly_once() {
                super::$body(ProcessingMode::ExactlyOnce).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = $threads)]
            async fn at_least_once() {
                super::$body(ProcessingMode::AtLeastOnce).await;
            }
        }
    )*};
    ($($body:ident),* $(,)?) => {
        $crate::both_modes!(worker_threads = 2; $($body),*);
    };
}
