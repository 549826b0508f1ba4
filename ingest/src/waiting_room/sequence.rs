//! The waiting room's shared row in CQL: the ticket sequence and the admission watermark of one
//! room, read and moved only by compare-and-set (lightweight transactions), so every ingest
//! instance sees one order of tickets.
//!
//! ```text
//! CREATE TABLE <keyspace>.waiting_room (
//!     room text PRIMARY KEY, next_ticket bigint, admitted_up_to bigint, advanced_at_us bigint)
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::CqlValue;

use crate::error::{CqlContext as _, StoreError};

/// Name of the table.
pub const TABLE: &str = "waiting_room";

/// Most compare-and-set attempts for one batch before giving up (the caller answers 503).
const MAX_ATTEMPTS: u32 = 16;

/// The room's row: tickets `1..next` are issued; tickets `..=admitted_up_to` are admitted;
/// `advanced_at_us` is the wall-clock time (µs since the epoch) the watermark's accrual counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomState {
    /// The next ticket number to issue (numbers start at 1).
    pub next: i64,
    /// The admission watermark: every ticket up to this number is admitted.
    pub admitted: i64,
    /// Where the watermark's accrual counts from (µs since the Unix epoch).
    pub advanced_at_us: i64,
}

impl RoomState {
    /// Whether `other` is at least as far along as `self` (both numbers only ever grow).
    pub fn is_behind(&self, other: &RoomState) -> bool {
        (self.admitted, self.next) < (other.admitted, other.next)
    }

    /// This state after `issue` more tickets and the watermark's accrual up to `now_us` at `rate`
    /// per second, capped at `burst` admissions ahead of the last ticket issued (an idle room
    /// saves up at most `burst` admissions, like a full token bucket).
    ///
    /// The accrual counts whole admissions only and moves `advanced_at_us` forward by exactly
    /// the time they took, so no fraction is lost between steps; at the cap the clock restarts
    /// at `now_us` (nothing accrues while the bucket is full).
    pub fn advanced(&self, issue: i64, now_us: i64, rate: u32, burst: u32) -> RoomState {
        let next = self.next + issue;
        let cap = next - 1 + i64::from(burst);
        let rate = i64::from(rate.max(1));
        let elapsed = (now_us - self.advanced_at_us).max(0);
        let gained = elapsed.saturating_mul(rate) / 1_000_000;
        let (admitted, advanced_at_us) = if self.admitted.saturating_add(gained) >= cap {
            (cap.max(self.admitted), now_us)
        } else {
            (
                self.admitted + gained,
                self.advanced_at_us + gained * 1_000_000 / rate,
            )
        };
        RoomState {
            next,
            admitted,
            advanced_at_us,
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A connected room row: the session and its prepared statements.
pub struct Sequence {
    session: Session,
    room: String,
    rate: u32,
    burst: u32,
    timeout: Duration,
    read: PreparedStatement,
    cas: PreparedStatement,
}

/// Settings of the row's connection.
pub struct SequenceSettings<'a> {
    /// CQL contact points.
    pub nodes: &'a [String],
    /// Their login (`None`: no authentication).
    pub credentials: Option<&'a orderpipe_runtime::cql::Credentials>,
    /// Keyspace (created with SimpleStrategy when missing).
    pub keyspace: &'a str,
    /// Replication factor of a keyspace created here.
    pub replication_factor: u32,
    /// The room's name (its row).
    pub room: &'a str,
    /// Fleet-wide admissions per second.
    pub rate: u32,
    /// Admissions an idle room saves up.
    pub burst: u32,
    /// Deadline of one statement.
    pub timeout: Duration,
}

impl Sequence {
    /// Connects, creates the keyspace, table and the room's row when missing (the row starts with
    /// a full burst of admissions), and prepares the statements.
    pub async fn connect(settings: SequenceSettings<'_>) -> Result<Self, StoreError> {
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::Quorum)
            .serial_consistency(Some(SerialConsistency::Serial))
            .request_timeout(Some(settings.timeout))
            .build();
        let mut builder = SessionBuilder::new()
            .known_nodes(settings.nodes)
            .connection_timeout(settings.timeout.max(Duration::from_secs(1)))
            .default_execution_profile_handle(profile.into_handle());
        if let Some(login) = settings.credentials {
            builder = builder.user(login.username(), login.password());
        }
        let session = builder
            .build()
            .await
            .cql(format!("connecting to CQL nodes {:?}", settings.nodes))?;
        let ks = settings.keyspace;
        // DDL may take longer than a request: the driver's default timeout.
        let ddl_profile = ExecutionProfile::builder()
            .consistency(Consistency::Quorum)
            .build()
            .into_handle();
        for text in [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                settings.replication_factor
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.{TABLE} (room text PRIMARY KEY, \
                 next_ticket bigint, admitted_up_to bigint, advanced_at_us bigint)"
            ),
        ] {
            let mut statement = scylla::statement::unprepared::Statement::new(text);
            statement.set_execution_profile_handle(Some(ddl_profile.clone()));
            session
                .query_unpaged(statement, &[])
                .await
                .cql(format!("creating {ks}.{TABLE}"))?;
        }
        session
            .await_schema_agreement()
            .await
            .cql("waiting for schema agreement")?;
        let insert = session
            .prepare(format!(
                "INSERT INTO {ks}.{TABLE} (room, next_ticket, admitted_up_to, advanced_at_us) \
                 VALUES (?, 1, ?, ?) IF NOT EXISTS"
            ))
            .await
            .cql("preparing the waiting room insert")?;
        let mut read = session
            .prepare(format!(
                "SELECT next_ticket, admitted_up_to, advanced_at_us FROM {ks}.{TABLE} WHERE room = ?"
            ))
            .await
            .cql("preparing the waiting room read")?;
        // A SERIAL read sees every compare-and-set that completed (and finishes one in flight).
        read.set_consistency(Consistency::Serial);
        let cas = session
            .prepare(format!(
                "UPDATE {ks}.{TABLE} SET next_ticket = ?, admitted_up_to = ?, advanced_at_us = ? \
                 WHERE room = ? IF next_ticket = ? AND admitted_up_to = ? AND advanced_at_us = ?"
            ))
            .await
            .cql("preparing the waiting room update")?;
        session
            .execute_unpaged(
                &insert,
                (settings.room, i64::from(settings.burst), now_us()),
            )
            .await
            .cql("creating the waiting room's row")?;
        tracing::info!(nodes = ?settings.nodes, keyspace = %ks, room = %settings.room, "waiting room connected");
        Ok(Self {
            session,
            room: settings.room.to_owned(),
            rate: settings.rate,
            burst: settings.burst,
            timeout: settings.timeout,
            read,
            cas,
        })
    }

    /// The row as it is now (a SERIAL read).
    pub async fn read(&self) -> Result<RoomState, StoreError> {
        let result = tokio::time::timeout(
            self.timeout,
            self.session.execute_unpaged(&self.read, (&self.room,)),
        )
        .await
        .map_err(|_| StoreError::TimedOut("waiting room read"))?
        .cql("waiting room read")?;
        let rows = result.into_rows_result().cql("waiting room read")?;
        let (next, admitted, advanced_at_us): (i64, i64, i64) = rows
            .maybe_first_row()
            .cql("waiting room row")?
            .ok_or_else(|| StoreError::Unexpected("the waiting room's row is missing".into()))?;
        Ok(RoomState {
            next,
            admitted,
            advanced_at_us,
        })
    }

    /// Issues `count` tickets (0: only moves the watermark) on top of `known`, retrying the
    /// compare-and-set on the row as others move it. Returns the first ticket issued and the
    /// state written.
    pub async fn take(&self, count: i64, known: RoomState) -> Result<(i64, RoomState), StoreError> {
        let mut current = known;
        for attempt in 0..MAX_ATTEMPTS {
            let wanted = current.advanced(count, now_us(), self.rate, self.burst);
            if count == 0 && wanted == current {
                return Ok((current.next, current));
            }
            if self.compare_and_set(&current, &wanted).await? {
                return Ok((current.next, wanted));
            }
            // Another instance moved the row first: read it and try again on top of it, after a
            // pause that grows with the attempts so that instances stop colliding.
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 2)).await;
            }
            current = self.read().await?;
        }
        Err(StoreError::Contended(MAX_ATTEMPTS))
    }

    async fn compare_and_set(&self, from: &RoomState, to: &RoomState) -> Result<bool, StoreError> {
        let values = (
            to.next,
            to.admitted,
            to.advanced_at_us,
            &self.room,
            from.next,
            from.admitted,
            from.advanced_at_us,
        );
        let result = tokio::time::timeout(
            self.timeout,
            self.session.execute_unpaged(&self.cas, values),
        )
        .await
        .map_err(|_| StoreError::TimedOut("waiting room update"))?
        .cql("waiting room update")?;
        let rows = result
            .into_rows_result()
            .cql("waiting room update result")?;
        let (applied_at, _) = rows
            .column_specs()
            .get_by_name("[applied]")
            .ok_or_else(|| {
                StoreError::Unexpected("no [applied] column in the LWT result".into())
            })?;
        let row = rows
            .first_row::<scylla::value::Row>()
            .cql("waiting room update result")?;
        match row.columns.get(applied_at).cloned().flatten() {
            Some(CqlValue::Boolean(applied)) => Ok(applied),
            other => Err(StoreError::Unexpected(format!(
                "unexpected [applied] value {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000;

    fn state(next: i64, admitted: i64, at: i64) -> RoomState {
        RoomState {
            next,
            admitted,
            advanced_at_us: at,
        }
    }

    #[test]
    fn the_watermark_accrues_at_the_rate_without_losing_fractions() {
        // 10 tickets waiting (1..=10 issued, 0 admitted), 4 per second.
        let s = state(11, 0, 0);
        let a = s.advanced(0, S / 2, 4, 2);
        assert_eq!(a, state(11, 2, S / 2));
        // 0.3 s later: one more (1.2 admissions accrued, 0.2 kept for the next step).
        let b = a.advanced(0, S / 2 + 3 * S / 10, 4, 2);
        assert_eq!(b, state(11, 3, S / 2 + S / 4));
        let c = b.advanced(0, S, 4, 2);
        assert_eq!(c.admitted, 4);
    }

    #[test]
    fn an_idle_room_saves_up_only_its_burst() {
        let s = state(11, 10, 0);
        let a = s.advanced(0, 100 * S, 5, 3);
        assert_eq!(a, state(11, 13, 100 * S));
        // A batch of 5 new tickets: 3 admitted at once from the saved burst, then the rate.
        let b = a.advanced(5, 100 * S, 5, 3);
        assert_eq!(b.next, 16);
        assert_eq!(b.admitted, 13);
        let c = b.advanced(0, 100 * S + S / 5, 5, 3);
        assert_eq!(c.admitted, 14);
    }

    #[test]
    fn a_batch_under_the_saved_burst_is_admitted_at_once() {
        let s = state(1, 100, 0);
        let a = s.advanced(50, S, 10, 100);
        assert_eq!(a.next, 51);
        // One second at 10/s on top of the 100 saved: all 50 are admitted.
        assert_eq!(a.admitted, 110);
    }

    #[test]
    fn a_clock_behind_the_row_accrues_nothing() {
        let s = state(5, 1, 10 * S);
        assert_eq!(s.advanced(0, 9 * S, 5, 1), s);
        assert!(state(5, 1, 0).is_behind(&state(6, 1, 0)));
        assert!(!state(6, 2, 0).is_behind(&state(9, 1, 0)));
    }
}
