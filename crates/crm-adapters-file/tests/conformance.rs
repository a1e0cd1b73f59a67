//! The shared store suite, run against the file store, once as configured by default
//! and once compacting after almost every write, so compaction runs under the suite too.

use crm_adapters_file::{FileStore, FileStoreOptions};
use crm_ports::Store;
use tempfile::TempDir;

struct Opened {
    store: FileStore,
    _dir: TempDir,
}

impl std::ops::Deref for Opened {
    type Target = dyn Store;

    fn deref(&self) -> &Self::Target {
        &self.store
    }
}

fn open(options: FileStoreOptions) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path(), options).unwrap();
    Opened { store, _dir: dir }
}

#[tokio::test]
async fn the_file_store_passes_the_conformance_suite() {
    crm_ports::conformance::run_all(|| async { open(FileStoreOptions::default()) }).await;
}

#[tokio::test]
async fn the_file_store_passes_the_conformance_suite_while_compacting_constantly() {
    let options = FileStoreOptions {
        compact_after_bytes: 1,
        ..FileStoreOptions::default()
    };
    crm_ports::conformance::run_all(|| async { open(options.clone()) }).await;
}
