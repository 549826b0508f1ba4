//! Stock stage (in progress).
