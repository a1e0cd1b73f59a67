//! The embedded file store, the default backend: no server needed.
//!
//! Layout of a data dir:
//! - `journal.<generation>.ndjson`: every committed change since the last compaction, one
//!   checksummed line each, fsynced before the change is acknowledged;
//! - `campaigns.json`, `followups.json`: snapshots `{"items": [...]}` of every record, as of
//!   the last compaction;
//! - `events.ndjson`, `outbound-queue.ndjson`: the event log and the outbound queue, one
//!   JSON document per line, as of the last compaction;
//! - `manifest.json`: which journal generations the snapshots and logs already hold;
//! - `.lock`: held while a process owns the dir.
//!
//! A write costs one appended line, whatever the number of records. Compaction runs in
//! the background once the journal is large, writing new snapshots by write-temp, fsync,
//! rename. Start-up loads the snapshots and replays the journal; any file it cannot read
//! stops it with the file's path, and it never overwrites what it could not read.
//!
//! All records live in memory too, so this store suits one process and data that fits
//! in RAM; PostgreSQL is the backend for replicas and big tenants.

mod compaction;
mod journal;
mod open;
mod state;
mod store;

pub use open::{FileStoreOptions, OpenError};
pub use store::FileStore;
