//! Decoding errors. Every variant means the same thing to a consumer: this event cannot be
//! processed by this version of the code, so dead-letter it (with [`DecodeError::reason`]) and move on.

/// Why a message could not be decoded into an envelope; every variant: dead-letter this event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, not an object, or a field is missing or has the wrong type: dead-letter this event.
    #[error("malformed event: {0}")]
    Malformed(String),
    /// The `event_type` is not one of this topic's types: dead-letter this event.
    #[error("unknown event_type {0:?} for this topic")]
    UnknownEventType(String),
    /// The `schema_version` is newer than this code knows, zero, or has no upcaster: dead-letter
    /// this event (redrive it after deploying code that knows the version).
    #[error("unsupported schema_version {version} of event_type {event_type:?}")]
    UnsupportedVersion {
        /// The event's `event_type`.
        event_type: String,
        /// The event's `schema_version`.
        version: u64,
    },
    /// An upcaster could not rewrite the old document (e.g. data it cannot express): dead-letter
    /// this event.
    #[error("cannot upcast {event_type:?} from schema_version {from_version}: {message}")]
    UpcastFailed {
        /// The event's `event_type`.
        event_type: String,
        /// Version the failing upcaster starts from.
        from_version: u32,
        /// What was wrong with the document.
        message: String,
    },
}

impl DecodeError {
    /// Short machine-readable reason for the dead-letter record, e.g. `unknown_event_type`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownEventType(_) => "unknown_event_type",
            Self::UnsupportedVersion { .. } => "unsupported_version",
            Self::UpcastFailed { .. } => "upcast_failed",
        }
    }
}
