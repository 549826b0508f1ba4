//! orderpipe schemas (placeholder until its issue lands).
