//! Which keyspace the query APIs serve, switchable without downtime.
//!
//! Every query API is configured with one keyspace (`--keyspace`, the *control* keyspace). Its
//! `active_views` table holds at most one row, `name = 'query'`, naming the keyspace to serve;
//! no row means the control keyspace itself. `orderpipe switch` writes the row
//! ([`switch_active_keyspace`]); each query API reads it at start and re-reads it every
//! `--query-keyspace-check-interval` ([`ActiveViews::follow`]). On a change it prepares the
//! reads of the new keyspace first and only then swaps them in (one pointer behind a lock
//! held for a clone), so requests keep being answered throughout: those already running finish on
//! the old keyspace, later ones read the new one. Every instance sharing the control keyspace
//! follows within one check interval.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use scylla::client::session::Session;
use scylla::value::CqlTimestamp;
use tokio_util::sync::CancellationToken;

use crate::config::check_keyspace;
use crate::error::{CqlContext, Error};
use crate::store::Reader;

/// The row of `active_views` the query APIs read.
const ROW: &str = "query";

/// The keyspace a query API currently serves and its prepared reads.
struct Serving {
    keyspace: String,
    reader: Arc<Reader>,
}

/// The reads a query API serves from, following `active_views` of its control keyspace.
pub(crate) struct ActiveViews {
    session: Arc<Session>,
    control: String,
    serving: RwLock<Serving>,
}

impl ActiveViews {
    /// Prepares the reads of the keyspace `active_views` in `control` names (or of `control`).
    /// If the named keyspace cannot be prepared, serves `control` and says so in the log.
    pub(crate) async fn new(session: Arc<Session>, control: &str) -> Result<Self, Error> {
        let named = match active_keyspace(&session, control).await {
            Ok(named) => named,
            Err(err) => {
                // A keyspace migrated before `active_views` existed: nothing was ever switched.
                tracing::warn!(error = %err, control, "no active_views table; serving the configured keyspace");
                None
            }
        };
        let mut serving = None;
        if let Some(keyspace) = named.filter(|k| k != control) {
            match Reader::new(session.clone(), &keyspace).await {
                Ok(reader) => {
                    serving = Some(Serving {
                        keyspace,
                        reader: Arc::new(reader),
                    })
                }
                Err(err) => {
                    tracing::error!(error = %err, keyspace, control, "the active keyspace cannot be read; serving the configured one")
                }
            }
        }
        let serving = match serving {
            Some(serving) => serving,
            None => Serving {
                keyspace: control.to_owned(),
                reader: Arc::new(Reader::new(session.clone(), control).await?),
            },
        };
        tracing::info!(keyspace = %serving.keyspace, control, "query API serves keyspace");
        Ok(Self {
            session,
            control: control.to_owned(),
            serving: RwLock::new(serving),
        })
    }

    /// The reads to use for one request.
    pub(crate) fn reader(&self) -> Arc<Reader> {
        self.serving.read().expect("serving lock").reader.clone()
    }

    /// The session the reads run on (for reads prepared elsewhere, e.g. the control room's).
    pub(crate) fn session(&self) -> &Arc<Session> {
        &self.session
    }

    /// The keyspace served now.
    pub(crate) fn keyspace(&self) -> String {
        self.serving.read().expect("serving lock").keyspace.clone()
    }

    /// Re-reads `active_views` and swaps to the keyspace it names if that changed. Errors leave
    /// the current keyspace in service.
    pub(crate) async fn refresh(&self) -> Result<(), Error> {
        let wanted = active_keyspace(&self.session, &self.control)
            .await?
            .unwrap_or_else(|| self.control.clone());
        let current = self.keyspace();
        if wanted == current {
            return Ok(());
        }
        // Prepared before the swap: no request ever waits for a prepare.
        let reader = Arc::new(Reader::new(self.session.clone(), &wanted).await?);
        *self.serving.write().expect("serving lock") = Serving {
            keyspace: wanted.clone(),
            reader,
        };
        tracing::info!(from = %current, to = %wanted, control = %self.control, "query API switched keyspace");
        Ok(())
    }

    /// Calls [`refresh`](Self::refresh) every `interval` until `shutdown`.
    pub(crate) async fn follow(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(err) = self.refresh().await {
                tracing::warn!(error = %err, keyspace = %self.keyspace(), "checking the active keyspace failed; still serving it");
            }
        }
    }
}

/// The keyspace `active_views` in `control` names, if any.
pub async fn active_keyspace(session: &Session, control: &str) -> Result<Option<String>, Error> {
    check_keyspace(control).map_err(Error::Config)?;
    let context = format!("reading {control}.active_views");
    let rows = session
        .query_unpaged(
            format!("SELECT keyspace_name FROM {control}.active_views WHERE name = ?"),
            (ROW,),
        )
        .await
        .cql(&context)?
        .into_rows_result()
        .cql(&context)?;
    Ok(rows
        .maybe_first_row::<(Option<String>,)>()
        .cql(&context)?
        .and_then(|(keyspace,)| keyspace))
}

/// Points every query API configured with `control` at `target` (`target == control` switches
/// back). `target` must hold the migrated views. Returns the keyspace served before.
pub async fn switch_active_keyspace(
    session: &Arc<Session>,
    control: &str,
    target: &str,
) -> Result<String, Error> {
    check_keyspace(control).map_err(Error::Config)?;
    check_keyspace(target).map_err(Error::Config)?;
    // Preparing the reads proves the target has every view table (what a query API needs).
    Reader::new(session.clone(), target)
        .await
        .map_err(|err| {
            Error::Config(format!(
                "keyspace {target} cannot be served (are its views migrated? replay into it first): {err}"
            ))
        })?;
    let previous = active_keyspace(session, control)
        .await?
        .unwrap_or_else(|| control.to_owned());
    let now = CqlTimestamp(chrono::Utc::now().timestamp_millis());
    session
        .query_unpaged(
            format!(
                "INSERT INTO {control}.active_views (name, keyspace_name, switched_at) VALUES (?, ?, ?)"
            ),
            (ROW, target, now),
        )
        .await
        .cql(&format!("writing {control}.active_views"))?;
    Ok(previous)
}
