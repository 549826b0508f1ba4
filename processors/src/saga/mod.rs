//! The order saga: one state machine per order, placed -> stock reserved -> paid -> confirmed, or
//! rejected with compensation (reserved stock released; charges refunded by the payments stage).
//!
//! Layout:
//! - [`state`]: [`OrderState`], the per-order record kept in memory and in `saga.changelog`.
//! - [`decide`](mod@decide): the pure decision function [`decide()`] and its rules.
//! - [`stage`]: [`SagaStage`], the runner stage around it.
//!
//! Every order ends in exactly one terminal event (`order_confirmed` or `order_rejected`): the
//! state machine emits it on the transition into a terminal phase, and a terminal order keeps a
//! small record (phase and reason or charge id) so that duplicates and late events of it are
//! recognised and ignored, across restarts (the changelog restores it).

pub mod decide;
pub mod stage;
pub mod state;

pub use decide::{decide, Decision, Ignored, Output, OutputEnvelope, Verdict};
pub use stage::SagaStage;
pub use state::{LineAnswer, LineState, OpenOrder, OrderState, Phase};
