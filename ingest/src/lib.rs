//! orderpipe ingest (placeholder until its issue lands).
