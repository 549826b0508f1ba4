//! The order saga: one state machine per order, placed -> stock reserved -> paid -> confirmed, or
//! rejected with compensation (reserved stock released; charges refunded by the payments stage).
//!
//! Layout:
//! - [`state`]: [`OrderState`], the per-order record kept in memory and in `saga.changelog`.
//! - [`decide`](mod@decide): the pure decision function [`decide()`] and its rules.
//! - [`deadlines`]: phase deadlines ([`Timeouts`]) and the decision when one passes
//!   ([`decide_timeout`]).
//! - [`stage`]: [`SagaStage`], the runner stage around it (deadlines from its tick, compaction,
//!   retention).
//! - [`config`]: [`SagaArgs`] (`--saga-stock-timeout`, `--saga-payment-timeout`, `--saga-retention`).
//!
//! Every order ends in exactly one terminal event (`order_confirmed` or `order_rejected`): the
//! state machine decides it on the transition into a terminal phase, once. A redelivered input
//! repeats its outputs with the same event ids (a repeat, not a second event: consumers dedupe
//! by event id), and a terminal order keeps a small record (phase and reason or charge id) so
//! that duplicates and late events of it are recognised and ignored, across restarts (the
//! changelog restores it).

pub mod config;
pub mod deadlines;
pub mod decide;
pub mod stage;
pub mod state;

pub use config::SagaArgs;
pub use deadlines::{after, deadline, deadline_outputs, decide_timeout, TimedOut, Timeouts};
pub use decide::{decide, outputs_of, Decision, Ignored, Output, OutputEnvelope, Verdict};
pub use stage::SagaStage;
pub use state::{
    LineAnswer, LineState, OrderDetails, OrderState, Phase, Transition, TransitionKind,
};
