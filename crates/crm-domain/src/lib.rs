//! Pure domain logic of the CRM campaign and follow-up slice.
//!
//! Everything here is a decision: functions take the current record, a command, the
//! workflow and `now`, and return the new record plus the events it causes, or an error.
//! This crate never touches files, the clock, the environment, the network or an async
//! runtime; identifiers and timestamps come in as arguments, so other modules can reuse
//! it and every rule is unit-testable.

pub mod answers;
pub mod campaign;
pub mod delivery;
pub mod event;
pub mod failure_window;
pub mod follow_up;
pub mod ids;
pub mod limits;
pub mod metadata;
pub mod opt_out;
pub mod outbound;
pub mod page;
pub mod policy;
pub mod receipt;
pub mod timestamp;
pub mod workflow;
