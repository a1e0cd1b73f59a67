//! The embedded file store, the default backend: no server needed.
//!
//! Layout of a data dir (format 2):
//! - `manifest.json`: the commit point of the last compaction, sealed by its own crc32.
//!   It names each snapshot file with its length and crc32, and the journal generations
//!   and sequence numbers those files already hold;
//! - `campaigns.json`, `followups.json`: snapshots `{"items": [...]}` of every record;
//! - `events.ndjson`, `outbound-queue.ndjson`: the retained events and the outbound queue,
//!   one numbered record per line;
//! - `journal.<generation>.ndjson`: a header line, then one checksummed, numbered record
//!   per change since the last compaction, fsynced before the change is acknowledged;
//! - `.lock`: held while a process owns the dir.
//!
//! `backup` copies a data dir while a store serves it, without pausing it, and verifies
//! the copy by opening it.
//!
//! A write costs one appended line, whatever the number of records. A compaction thread
//! folds the journal into new snapshot files once it is as large as they are: the image
//! is cloned in O(1) under the lock and written without it, each file under a `.next`
//! name, and the new manifest's rename commits them all at once. Start-up verifies every
//! file before it changes any; a damaged one stops it with the file's path, untouched.
//! Data dirs of the first release are read and upgraded in place, and a data dir of the
//! Node.js service this one replaces is adopted (see `node.rs`).
//!
//! All records live in memory too, so this store suits one process and data that fits
//! in RAM; PostgreSQL is the backend for replicas and big tenants.

mod backup;
mod compaction;
mod compactor;
mod frame;
mod journal;
mod ledger;
mod legacy;
mod manifest;
mod node;
mod open;
mod records;
mod shared;
mod state;
mod store;

pub use backup::{BackupError, BackupReport, backup};
pub use open::{FileStoreOptions, OpenError};
pub use store::{COUNT_DUE_CAP, FileStore};
