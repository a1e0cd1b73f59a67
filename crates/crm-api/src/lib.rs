//! The CRM HTTP service: an actix-web shell over the use cases in `crm-app`.
//!
//! This crate is the composition root: it reads configuration, picks the store adapter,
//! loads the workflows and contracts, and maps every error to its wire code exactly
//! once (`error`). Handlers validate a body against its contract, turn it into a
//! command and call one use case; no business rule lives here.

pub mod auth;
pub mod config;
pub mod endpoint;
pub mod error;
mod extract;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod startup;
pub mod telemetry;
