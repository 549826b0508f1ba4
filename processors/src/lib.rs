//! orderpipe processors (placeholder until its issue lands).
