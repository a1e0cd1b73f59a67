//! The PostgreSQL store: the production backend, shared by many API and worker replicas.
//!
//! Every change commits together with its events (and, in the drain, its outbound item)
//! in one transaction. Idempotent creates use `INSERT … ON CONFLICT DO NOTHING`, so
//! concurrent identical requests cannot both create. Campaign updates are conditional on
//! the revision they were decided on. The drain claims rows with `FOR UPDATE SKIP
//! LOCKED`, so concurrent drains in any number of processes never share a follow-up.
//! A database that cannot be reached is `StoreError::Unavailable`, bounded by the pool's
//! timeouts; nothing here retries on its own, but for a row that finds no day partition
//! (`partitions.rs`).

mod batch;
mod campaigns;
mod drain;
mod feed;
mod follow_ups;
mod ledger;
mod migrate;
mod node;
mod opt_outs;
mod outbound;
mod partitions;
mod policies;
mod primary;
mod read;
mod replica;
mod rows;
mod sql;
mod statement;
mod status;
mod store;
pub mod testing;
mod write;

pub use migrate::{check_adoption, migrate, migrate_through};
pub use store::{PgError, PgOptions, PgStore};
