//! orderpipe benches (placeholder until its issue lands).
