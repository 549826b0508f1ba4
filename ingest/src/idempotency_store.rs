//! The shared Idempotency-Key store (`--ingest-idempotency-store cql`): a ScyllaDB/Cassandra
//! table of (client id, key) -> (body fingerprint, order id), shared by every ingest instance and
//! surviving restarts, so that "same key, other body: 422" holds across them.
//!
//! ```text
//! CREATE TABLE <keyspace>.idempotency_keys (
//!     client_id text, idem_key text, fingerprint text, order_id uuid,
//!     PRIMARY KEY ((client_id, idem_key)))
//! ```
//!
//! Each check is one lightweight transaction on the key's own partition (no hot partition):
//! `INSERT ... IF NOT EXISTS USING TTL <idempotency TTL>` at QUORUM with SERIAL for the Paxos
//! phase. Applied: the key is new. Not applied: the server returns the stored row, whose
//! fingerprint says "same order" or "other body". Only valid CQL on ScyllaDB and Cassandra 2.1.
//!
//! The keyspace (SimpleStrategy, when missing) and the table are created at start and the insert
//! prepared once. When the store cannot be reached at start, the server starts anyway and keeps
//! connecting in the background; until then, and whenever a check fails or outlasts the ack
//! deadline, keyed orders are answered 503 (never accepted unchecked).

use std::sync::Arc;
use std::time::{Duration, Instant};

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::Config;
use crate::error::{CqlContext as _, StoreError};
use crate::metrics;

/// Name of the table.
pub const TABLE: &str = "idempotency_keys";

/// Pause between connection attempts while the store is unreachable.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(2);

/// What the store says about a (client, key) and a body fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The key was not known: it is now recorded with this fingerprint.
    New,
    /// The key is known with this same fingerprint: a retry of the same order.
    SameBody,
    /// The key is known with another fingerprint (given): refuse with 422.
    OtherBody(String),
}

/// A connected store: the session and its prepared insert.
struct Connected {
    session: Session,
    insert: PreparedStatement,
}

/// The `cql` idempotency store (see the module documentation).
pub struct CqlStore {
    nodes: Vec<String>,
    keyspace: String,
    replication_factor: u32,
    credentials: Option<orderpipe_runtime::cql::Credentials>,
    ttl_secs: u64,
    timeout: Duration,
    connected: OnceCell<Connected>,
}

impl CqlStore {
    /// A store on the settings of `config` (not connected yet: see [`CqlStore::connect`]).
    /// Statements time out after the ack deadline.
    pub fn new(config: &Config) -> Self {
        Self {
            nodes: config.cql_node_list(),
            keyspace: config.cql_keyspace.clone(),
            replication_factor: config.cql_replication_factor,
            credentials: config.cql_credentials.clone(),
            ttl_secs: config.idempotency_ttl.as_secs(),
            timeout: config.ack_deadline,
            connected: OnceCell::new(),
        }
    }

    /// Whether the store is connected, its table created and its insert prepared.
    pub fn is_connected(&self) -> bool {
        self.connected.initialized()
    }

    /// Connects, creates the keyspace and table when missing, and prepares the insert; does
    /// nothing once that succeeded. Concurrent calls wait for one attempt.
    pub async fn connect(&self) -> Result<(), StoreError> {
        self.connected
            .get_or_try_init(|| self.open())
            .await
            .map(|_| ())
    }

    async fn open(&self) -> Result<Connected, StoreError> {
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::Quorum)
            .serial_consistency(Some(SerialConsistency::Serial))
            .request_timeout(Some(self.timeout))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(&self.nodes)
            .connection_timeout(self.timeout.max(Duration::from_secs(1)))
            .default_execution_profile_handle(profile.into_handle());
        if let Some(login) = &self.credentials {
            builder = builder.user(login.username(), login.password());
        }
        let session = builder
            .build()
            .await
            .cql(format!("connecting to CQL nodes {:?}", self.nodes))?;
        let ks = &self.keyspace;
        // DDL may take longer than a request: run it with the driver's default timeout.
        let ddl_profile = ExecutionProfile::builder()
            .consistency(Consistency::Quorum)
            .build()
            .into_handle();
        for (what, text) in [
            (
                "creating the keyspace",
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
                     {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                    self.replication_factor
                ),
            ),
            (
                "creating the table",
                format!(
                    "CREATE TABLE IF NOT EXISTS {ks}.{TABLE} (client_id text, idem_key text, \
                     fingerprint text, order_id uuid, PRIMARY KEY ((client_id, idem_key)))"
                ),
            ),
        ] {
            let mut statement = scylla::statement::unprepared::Statement::new(text);
            statement.set_execution_profile_handle(Some(ddl_profile.clone()));
            session
                .query_unpaged(statement, &[])
                .await
                .cql(format!("{what} {ks}.{TABLE}"))?;
        }
        session
            .await_schema_agreement()
            .await
            .cql("waiting for schema agreement")?;
        let mut insert = session
            .prepare(format!(
                "INSERT INTO {ks}.{TABLE} (client_id, idem_key, fingerprint, order_id) \
                 VALUES (?, ?, ?, ?) IF NOT EXISTS USING TTL {}",
                self.ttl_secs
            ))
            .await
            .cql("preparing the idempotency insert")?;
        insert.set_consistency(Consistency::Quorum);
        insert.set_serial_consistency(Some(SerialConsistency::Serial));
        tracing::info!(nodes = ?self.nodes, keyspace = %ks, "idempotency store connected");
        Ok(Connected { session, insert })
    }

    /// Retries [`CqlStore::connect`] every few seconds until it succeeds or `stop` is cancelled.
    pub async fn connect_until_done(self: Arc<Self>, stop: CancellationToken) {
        while !self.is_connected() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT_INTERVAL) => {}
            }
            let attempt = tokio::select! {
                _ = stop.cancelled() => return,
                attempt = self.connect() => attempt,
            };
            if let Err(err) = attempt {
                tracing::warn!(
                    error = format!("{err:#}"),
                    "idempotency store still unreachable"
                );
            }
        }
    }

    /// Records (client, key) -> (fingerprint, order id) unless the key is known, and says which.
    /// Errors when the store is not connected, fails, or takes longer than the ack deadline:
    /// the key was then not checked (it may or may not have been recorded).
    pub async fn check(
        &self,
        client_id: &str,
        key: &str,
        fingerprint: &str,
        order_id: Uuid,
    ) -> Result<Outcome, StoreError> {
        let started = Instant::now();
        let outcome = self
            .check_inner(client_id, key, fingerprint, order_id)
            .await;
        metrics::store_checked(
            match &outcome {
                Ok(Outcome::New) => "new",
                Ok(Outcome::SameBody) => "same-body",
                Ok(Outcome::OtherBody(_)) => "other-body",
                Err(_) => "error",
            },
            started.elapsed(),
        );
        outcome
    }

    async fn check_inner(
        &self,
        client_id: &str,
        key: &str,
        fingerprint: &str,
        order_id: Uuid,
    ) -> Result<Outcome, StoreError> {
        let Some(connected) = self.connected.get() else {
            return Err(StoreError::NotConnected("idempotency store"));
        };
        let result = tokio::time::timeout(
            self.timeout,
            connected
                .session
                .execute_unpaged(&connected.insert, (client_id, key, fingerprint, order_id)),
        )
        .await
        .map_err(|_| StoreError::TimedOut("idempotency insert"))?
        .cql("idempotency insert")?;
        let rows = result.into_rows_result().cql("idempotency insert result")?;
        let specs = rows.column_specs();
        let column = |name: &str| {
            specs.get_by_name(name).map(|(i, _)| i).ok_or_else(|| {
                StoreError::Unexpected(format!("no {name} column in the LWT result"))
            })
        };
        let applied_at = column("[applied]")?;
        let row: Row = rows.first_row().cql("idempotency insert result")?;
        let mut columns = row.columns;
        match columns.get(applied_at).cloned().flatten() {
            Some(CqlValue::Boolean(true)) => return Ok(Outcome::New),
            Some(CqlValue::Boolean(false)) => {}
            other => {
                return Err(StoreError::Unexpected(format!(
                    "unexpected [applied] value {other:?}"
                )))
            }
        }
        let fingerprint_at = column("fingerprint")?;
        match columns.get_mut(fingerprint_at).and_then(Option::take) {
            Some(CqlValue::Text(stored) | CqlValue::Ascii(stored)) => {
                Ok(if stored == fingerprint {
                    Outcome::SameBody
                } else {
                    Outcome::OtherBody(stored)
                })
            }
            other => Err(StoreError::Unexpected(format!(
                "unexpected stored fingerprint {other:?}"
            ))),
        }
    }
}
