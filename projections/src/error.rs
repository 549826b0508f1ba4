//! The crate's error type. Every variant says what the caller does about it.

/// Why a projector, the query API, a migration or a rebuild stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is unusable: fix the configuration; retrying will not help.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The CQL cluster refused or did not answer (unreachable, timeout, schema missing): the
    /// component stops; restart it when the cluster is back (views are replay-safe).
    #[error("CQL {context}: {message}")]
    Cql {
        /// What was being done.
        context: String,
        /// The driver's error.
        message: String,
    },
    /// A schema migration failed half-way: its statements are idempotent, so running the
    /// migrations again resumes it.
    #[error("schema migration {version} ({description}) failed: {message}")]
    Migration {
        /// Version of the failed migration.
        version: i32,
        /// Its description.
        description: &'static str,
        /// The driver's error.
        message: String,
    },
    /// The Kafka client failed (creation, subscription, assignment, commit): restart the
    /// component; uncommitted events are redelivered and re-applied idempotently.
    #[error("kafka {context}: {source}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client's error.
        source: rdkafka::error::KafkaError,
    },
    /// Creating the dead-letter topic failed: check the broker, then restart.
    #[error(transparent)]
    Topics(#[from] orderpipe_runtime::kafka::Error),
    /// The listener failed: restart the component.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    pub(crate) fn cql(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Cql {
            context: context.into(),
            message: err.to_string(),
        }
    }

    pub(crate) fn kafka(context: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Error::Kafka {
            context: context.into(),
            source,
        }
    }
}

/// Attach a context to any CQL driver error.
pub(crate) trait CqlContext<T> {
    fn cql(self, context: &str) -> Result<T, Error>;
}

impl<T, E: std::fmt::Display> CqlContext<T> for Result<T, E> {
    fn cql(self, context: &str) -> Result<T, Error> {
        self.map_err(|e| Error::cql(context, e))
    }
}
