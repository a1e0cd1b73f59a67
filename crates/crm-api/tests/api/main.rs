//! Black-box HTTP tests: the real `Application` on a free loopback port, driven only
//! through HTTP and JSON, every reply checked against `contracts/`.
//!
//! The same tests run on the file store by default and on PostgreSQL when
//! `CRM_TEST_DATABASE_URL` is set, and on a store adopted from the Node.js service when
//! `CRM_TEST_ADOPTED` is set (see `helpers::TestStore::new`).

mod batch;
mod campaigns;
mod errors;
mod feed;
mod follow_ups;
mod health;
mod helpers;
mod hostile_queries;
mod limits;
mod ops;
mod outbound;
mod regressions;
mod sending;
mod strict_input;
mod tenants;
mod trace;
mod worker;
