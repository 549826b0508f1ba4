//! orderpipe projections (placeholder until its issue lands).
