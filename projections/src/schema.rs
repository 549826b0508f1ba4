//! The views' keyspace and tables, created by versioned, idempotent migrations, and the session
//! every component of this crate uses.
//!
//! Each migration is a numbered list of `CREATE ... IF NOT EXISTS` statements; the versions
//! applied are recorded in `<keyspace>.schema_migrations`. Running the migrations again is a
//! no-op; a migration that failed half-way is resumed by running them again (its statements are
//! idempotent). A new view is a new migration appended to [`MIGRATIONS`]; a migration already
//! released is never edited.
//!
//! Only CQL that Cassandra 2.1 and ScyllaDB both accept: text, uuid, int, bigint, timestamp,
//! static columns, no frozen collections (Cassandra 2.1.0 refuses them), no materialized views.

use std::sync::Arc;
use std::time::Duration;

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::{SerialConsistency, Statement};
use scylla::value::CqlTimestamp;

use crate::config::{check_keyspace, CqlConfig, Replication};
use crate::error::{CqlContext, Error};

/// One schema version: statements with `{ks}` standing for the keyspace name.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Version number; migrations run in increasing order.
    pub version: i32,
    /// What the migration adds.
    pub description: &'static str,
    /// `CREATE ... IF NOT EXISTS` statements.
    pub statements: &'static [&'static str],
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
    version: 1,
    description: "orders (status + timeline), order_lines, orders_by_customer, stock_by_sku, sales_by_minute, sales_by_sku_minute",
    statements: &[
        // One partition per order: the static columns are the order (each stage's column written
        // by its own event), the clustering rows its timeline (one row per event).
        "CREATE TABLE IF NOT EXISTS {ks}.orders (
            order_id uuid,
            occurred_at timestamp,
            event_id uuid,
            event_type text,
            detail text,
            event_offset bigint,
            customer_id text static,
            currency text static,
            total_minor bigint static,
            line_count int static,
            placed_at timestamp static,
            placed_offset bigint static,
            reserved_at timestamp static,
            paid_at timestamp static,
            declined_at timestamp static,
            terminal_status text static,
            terminal_reason text static,
            terminal_at timestamp static,
            terminal_offset bigint static,
            cancelled_at timestamp static,
            refunded_at timestamp static,
            refunded_minor bigint static,
            PRIMARY KEY (order_id, occurred_at, event_id)
        )",
        "CREATE TABLE IF NOT EXISTS {ks}.order_lines (
            order_id uuid,
            line_index int,
            sku text,
            quantity int,
            unit_price_minor bigint,
            PRIMARY KEY (order_id, line_index)
        )",
        "CREATE TABLE IF NOT EXISTS {ks}.orders_by_customer (
            customer_id text,
            placed_at timestamp,
            order_id uuid,
            currency text,
            total_minor bigint,
            line_count int,
            PRIMARY KEY (customer_id, placed_at, order_id)
        ) WITH CLUSTERING ORDER BY (placed_at DESC, order_id DESC)",
        "CREATE TABLE IF NOT EXISTS {ks}.stock_by_sku (
            sku text PRIMARY KEY,
            available bigint,
            reserved bigint,
            sold bigint,
            per_customer_limit int,
            updated_at timestamp,
            event_offset bigint
        )",
        // One partition per hour; one row per confirmed order (no counters: not idempotent).
        "CREATE TABLE IF NOT EXISTS {ks}.sales_by_minute (
            hour timestamp,
            minute timestamp,
            order_id uuid,
            currency text,
            units bigint,
            revenue_minor bigint,
            PRIMARY KEY (hour, minute, order_id)
        )",
        "CREATE TABLE IF NOT EXISTS {ks}.sales_by_sku_minute (
            sku text,
            hour timestamp,
            minute timestamp,
            order_id uuid,
            line_index int,
            currency text,
            units bigint,
            revenue_minor bigint,
            PRIMARY KEY ((sku, hour), minute, order_id, line_index)
        )",
    ],
    },
    Migration {
        version: 2,
        description: "replay_positions (how far a replay got), active_views (the keyspace the query API serves)",
        statements: &[
            // Written by `orderpipe replay`/`rebuild` after each applied batch: every event of
            // topic/partition before next_offset is in this keyspace's views, so an interrupted
            // replay continues from here. The live projectors keep their place in Kafka instead.
            "CREATE TABLE IF NOT EXISTS {ks}.replay_positions (
                topic text,
                partition int,
                next_offset bigint,
                base text,
                updated_at timestamp,
                PRIMARY KEY (topic, partition)
            )",
            // One row (name 'query') in the keyspace the query APIs are configured with: which
            // keyspace they serve. `orderpipe switch` writes it; every query API re-reads it.
            "CREATE TABLE IF NOT EXISTS {ks}.active_views (
                name text PRIMARY KEY,
                keyspace_name text,
                switched_at timestamp
            )",
        ],
    },
];

/// The view tables, for tools that dump or compare them (the migrations table excluded).
pub const VIEW_TABLES: &[&str] = &[
    "orders",
    "order_lines",
    "orders_by_customer",
    "stock_by_sku",
    "sales_by_minute",
    "sales_by_sku_minute",
];

/// Key and value columns of each of [`VIEW_TABLES`] (`WRITETIME` is defined for the values
/// only); [`crate::dump_views`] selects both, plus the write time of each value.
pub fn view_columns(table: &str) -> (&'static [&'static str], &'static [&'static str]) {
    match table {
        "orders" => (
            &["order_id", "occurred_at", "event_id"],
            &[
                "event_type",
                "detail",
                "event_offset",
                "customer_id",
                "currency",
                "total_minor",
                "line_count",
                "placed_at",
                "placed_offset",
                "reserved_at",
                "paid_at",
                "declined_at",
                "terminal_status",
                "terminal_reason",
                "terminal_at",
                "terminal_offset",
                "cancelled_at",
                "refunded_at",
                "refunded_minor",
            ],
        ),
        "order_lines" => (
            &["order_id", "line_index"],
            &["sku", "quantity", "unit_price_minor"],
        ),
        "orders_by_customer" => (
            &["customer_id", "placed_at", "order_id"],
            &["currency", "total_minor", "line_count"],
        ),
        "stock_by_sku" => (
            &["sku"],
            &[
                "available",
                "reserved",
                "sold",
                "per_customer_limit",
                "updated_at",
                "event_offset",
            ],
        ),
        "sales_by_minute" => (
            &["hour", "minute", "order_id"],
            &["currency", "units", "revenue_minor"],
        ),
        "sales_by_sku_minute" => (
            &["sku", "hour", "minute", "order_id", "line_index"],
            &["currency", "units", "revenue_minor"],
        ),
        _ => (&[], &[]),
    }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call, in order.
    pub applied: Vec<i32>,
    /// Versions found already applied.
    pub already_applied: Vec<i32>,
}

/// Contact points from a comma-separated `host:port` list (as `SCYLLA_NODES` holds them).
pub fn parse_nodes(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A session on `nodes`, logged in with the configured credentials, whose default execution
/// profile carries the configured consistency and request timeout (every statement of this crate
/// runs with it).
pub async fn connect(nodes: &[String], cql: &CqlConfig) -> Result<Arc<Session>, Error> {
    if nodes.is_empty() {
        return Err(Error::Config("no CQL contact points".into()));
    }
    let profile = ExecutionProfile::builder()
        .consistency(cql.consistency.into())
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(cql.request_timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(nodes)
        .connection_timeout(Duration::from_secs(10))
        .default_execution_profile_handle(profile.into_handle());
    if let Some(login) = &cql.credentials {
        builder = builder.user(login.username(), login.password());
    }
    let session = builder
        .build()
        .await
        .cql(&format!("connecting to {nodes:?}"))?;
    Ok(Arc::new(session))
}

/// Request timeout of schema changes. A DDL statement is answered once the schema change has
/// reached the cluster, which on a loaded node (or Cassandra's first changes after start) takes
/// longer than the reads' timeout: a process starting beside a busy CQL server failed with
/// "creating keyspace: Request execution exceeded a client timeout of 5000ms".
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// `text` as a schema-change statement, with [`DDL_TIMEOUT`].
fn ddl(text: String) -> Statement {
    let mut statement = Statement::new(text);
    statement.set_request_timeout(Some(DDL_TIMEOUT));
    statement
}

/// Creates the keyspace (with `replication`, when missing) and applies every migration not yet
/// recorded in `schema_migrations`. Idempotent.
pub async fn migrate(
    session: &Session,
    keyspace: &str,
    replication: &Replication,
) -> Result<MigrationReport, Error> {
    check_keyspace(keyspace).map_err(Error::Config)?;
    session
        .query_unpaged(
            ddl(format!(
                "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
                replication.to_cql()
            )),
            &[],
        )
        .await
        .cql("creating keyspace")?;
    session
        .query_unpaged(
            ddl(format!(
                "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (
                    version int PRIMARY KEY, description text, applied_at timestamp)"
            )),
            &[],
        )
        .await
        .cql("creating schema_migrations")?;
    session
        .await_schema_agreement()
        .await
        .cql("waiting for schema agreement")?;

    let applied: Vec<i32> = session
        .query_unpaged(
            format!("SELECT version FROM {keyspace}.schema_migrations"),
            &[],
        )
        .await
        .cql("reading schema_migrations")?
        .into_rows_result()
        .cql("reading schema_migrations")?
        .rows::<(i32,)>()
        .cql("reading schema_migrations")?
        .map(|row| row.map(|(v,)| v))
        .collect::<Result<_, _>>()
        .cql("reading schema_migrations")?;

    let mut report = MigrationReport {
        applied: Vec::new(),
        already_applied: Vec::new(),
    };
    let record = session
        .prepare(format!(
            "INSERT INTO {keyspace}.schema_migrations (version, description, applied_at)
             VALUES (?, ?, ?) IF NOT EXISTS"
        ))
        .await
        .cql("preparing schema_migrations insert")?;
    for migration in MIGRATIONS {
        if applied.contains(&migration.version) {
            report.already_applied.push(migration.version);
            continue;
        }
        let failed = |e: &dyn std::fmt::Display| Error::Migration {
            version: migration.version,
            description: migration.description,
            message: e.to_string(),
        };
        for statement in migration.statements {
            session
                .query_unpaged(ddl(statement.replace("{ks}", keyspace)), &[])
                .await
                .map_err(|e| failed(&e))?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(|e| failed(&e))?;
        let now = CqlTimestamp(chrono::Utc::now().timestamp_millis());
        session
            .execute_unpaged(&record, (migration.version, migration.description, now))
            .await
            .map_err(|e| failed(&e))?;
        tracing::info!(
            keyspace,
            version = migration.version,
            description = migration.description,
            "schema migration applied"
        );
        report.applied.push(migration.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_a_comma_separated_list() {
        assert_eq!(
            parse_nodes(" 10.0.0.1:9042, 10.0.0.2:9042,,"),
            vec!["10.0.0.1:9042", "10.0.0.2:9042"]
        );
        assert!(parse_nodes("").is_empty());
    }

    #[test]
    fn migrations_are_numbered_and_idempotent_statements() {
        let mut last = 0;
        for m in MIGRATIONS {
            assert!(m.version > last, "versions increase");
            last = m.version;
            for s in m.statements {
                assert!(s.starts_with("CREATE "), "{s}");
                assert!(s.contains("IF NOT EXISTS"), "{s}");
                assert!(s.contains("{ks}."), "{s}");
            }
        }
        for table in VIEW_TABLES {
            assert!(
                MIGRATIONS.iter().any(|m| m
                    .statements
                    .iter()
                    .any(|s| s.contains(&format!("{{ks}}.{table} ")))),
                "{table} is created by a migration"
            );
        }
    }
}
