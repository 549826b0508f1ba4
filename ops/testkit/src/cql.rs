//! CQL helpers: a session on the CQL server named by `SCYLLA_NODES` (comma-separated host:port,
//! default `127.0.0.1:9042`, the testbed's Apache Cassandra) and a throw-away keyspace per test.
//!
//! Statements used in tests must be valid on ScyllaDB and on Cassandra alike (see shared/TESTBED.md).

use anyhow::Context as _;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use std::sync::Arc;
use std::time::Duration;

/// Used when `SCYLLA_NODES` is unset or empty.
pub const DEFAULT_NODES: &str = "127.0.0.1:9042";

/// The contact points from `SCYLLA_NODES`.
pub fn nodes() -> Vec<String> {
    parse_nodes(std::env::var("SCYLLA_NODES").ok().as_deref())
}

fn parse_nodes(value: Option<&str>) -> Vec<String> {
    let list: Vec<String> = value
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        vec![DEFAULT_NODES.to_owned()]
    } else {
        list
    }
}

/// A new session on [`nodes`], with the driver's default settings otherwise (so tests see what
/// production code sees).
pub async fn session() -> anyhow::Result<Session> {
    let nodes = nodes();
    SessionBuilder::new()
        .known_nodes(&nodes)
        .connection_timeout(Duration::from_secs(10))
        .build()
        .await
        .with_context(|| {
            format!("connecting to CQL nodes {nodes:?} (is the testbed up? ops/testbed/up)")
        })
}

/// The replication every test keyspace gets: one replica, valid on ScyllaDB and Cassandra 2.1.
const REPLICATION: &str = "{'class': 'SimpleStrategy', 'replication_factor': 1}";

/// A keyspace with a unique name (`test_<suffix>`), created on construction and dropped by
/// [`TestKeyspace::drop_keyspace`] (or, best effort, when the value is dropped, e.g. on panic).
/// Tables are referred to fully qualified: see [`TestKeyspace::table`].
pub struct TestKeyspace {
    name: String,
    session: Arc<Session>,
    dropped: bool,
}

impl TestKeyspace {
    /// Connects a new session and creates the keyspace.
    pub async fn new() -> anyhow::Result<Self> {
        Self::with_session(Arc::new(session().await?)).await
    }

    /// Creates the keyspace using an existing session.
    pub async fn with_session(session: Arc<Session>) -> anyhow::Result<Self> {
        let name = format!("test_{}", crate::unique_suffix());
        session
            .query_unpaged(
                format!("CREATE KEYSPACE {name} WITH replication = {REPLICATION}"),
                &[],
            )
            .await
            .with_context(|| format!("creating keyspace {name}"))?;
        Ok(TestKeyspace {
            name,
            session,
            dropped: false,
        })
    }

    /// The keyspace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The session the keyspace was created with.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// `keyspace.table`, for statements.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{}", self.name, table)
    }

    /// Drops the keyspace and waits for the server to confirm.
    pub async fn drop_keyspace(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        self.session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.name), &[])
            .await
            .with_context(|| format!("dropping keyspace {}", self.name))?;
        Ok(())
    }
}

impl Drop for TestKeyspace {
    /// Best effort when `drop_keyspace` was not called (a failed assertion, an early `?`).
    /// The test's own runtime may be single-threaded and is blocked in this call, so the
    /// session it drives cannot be used: a fresh thread with its own runtime and session does
    /// the drop, bounded by a timeout.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let statement = format!("DROP KEYSPACE IF EXISTS {}", self.name);
        let worker = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), async {
                    session()
                        .await
                        .ok()?
                        .query_unpaged(statement, &[])
                        .await
                        .ok()
                })
                .await
                .ok()
                .flatten()
            })
        });
        if worker.join().ok().flatten().is_none() {
            eprintln!("orderpipe-testkit: could not drop keyspace {}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_default_and_list() {
        assert_eq!(parse_nodes(None), vec![DEFAULT_NODES]);
        assert_eq!(parse_nodes(Some(" ")), vec![DEFAULT_NODES]);
        assert_eq!(
            parse_nodes(Some("10.0.0.1:9042, 10.0.0.2:9042,")),
            vec!["10.0.0.1:9042", "10.0.0.2:9042"]
        );
    }
}
