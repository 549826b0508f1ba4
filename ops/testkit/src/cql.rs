//! CQL helpers.
