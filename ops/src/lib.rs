//! The `orderpipe` binary's library: command line, component wiring, process lifecycle.
//!
//! Layout:
//! - [`cli`]: the clap command line (flags, environment variables, defaults).
//! - [`components`]: the pipeline components `orderpipe run` can start.
//! - [`admin`]: admin commands (`stock set`, `rebuild`, `gateway-sim`, `verify`).
//! - [`run`]: starts the chosen components, waits for a shutdown signal, stops them gracefully.
//! - [`dlq`]: `orderpipe dlq list|show|redrive` (dead letters, redrive exactly once).
//! - [`lag`]: `orderpipe lag` (committed vs end offsets, age of the oldest unprocessed record).
//! - [`topic_reader`]: topics read to their end offsets (behind `verify` and `dlq`).
//! - [`topics`]: `orderpipe topics create|describe` (the topic plan and its drift).
//! - [`stock`]: `orderpipe stock adjust|show`.
//! - [`replay`]: `orderpipe replay` (resumable, from a time or the beginning) and `switch`.
//! - [`verify`]: the invariant audit behind `orderpipe verify` and the end-to-end tests.
//! - [`prompt`]: confirmation questions before bulk or destructive commands.
//! - [`local_query`]: the query API's answers in process (for `stock show`, `verify --views`).

pub mod admin;
pub mod cli;
pub mod components;
pub mod dlq;
pub mod lag;
pub mod local_query;
pub mod prompt;
pub mod replay;
pub mod run;
pub mod stock;
pub mod topic_reader;
pub mod topics;
pub mod verify;
