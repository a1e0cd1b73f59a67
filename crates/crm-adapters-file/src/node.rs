//! Adopting the data dir of the Node.js service this one replaces.
//!
//! That service kept `campaigns.json` and `followups.json`, each `{"items": [...]}` and
//! pretty-printed, and nothing else. A data dir holding only those is adopted on first
//! start: every record is read and checked (by the application's rules, then as a set)
//! before anything is written; a single broken rule refuses the whole dir with a report
//! and leaves it byte-for-byte as it was. Otherwise the originals are copied, byte for
//! byte, into `node-backup/` (fsynced), and only then is the store's own snapshot
//! committed, which replaces them. A crash before that commit leaves the originals in
//! place and adoption starts over; after it, the store opens as any other.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use crm_ports::adoption::{Adopted, AdoptionReport, LegacyRecord, RecordRules, adopt};
use serde::Deserialize;
use serde_json::Value;

use crate::journal::sync_dir;
use crate::legacy::{CAMPAIGNS, FOLLOW_UPS};
use crate::open::{OpenError, corrupt, read_error};
use crate::state::{Change, State};

/// Where the originals are kept once adopted.
pub const BACKUP_DIR: &str = "node-backup";

/// The files of the Node.js service.
const FILES: [&str; 2] = [CAMPAIGNS, FOLLOW_UPS];

/// Whether `dir` holds a file of the Node.js service (the caller knows it has no
/// manifest and no journal of this store).
pub(crate) fn present(dir: &Path) -> bool {
    FILES.iter().any(|name| dir.join(name).exists())
}

/// The files' bytes as read, `None` for a file that is not there.
pub(crate) struct Originals {
    files: Vec<(&'static str, Option<Vec<u8>>)>,
}

#[derive(Deserialize)]
struct Items {
    items: Vec<Value>,
}

/// Reads both files and every record in them; a file that is not `{"items": [...]}` is
/// corrupt, named.
pub(crate) fn read(dir: &Path) -> Result<(Originals, Vec<Vec<LegacyRecord>>), OpenError> {
    let mut originals = Originals { files: Vec::new() };
    let mut records = Vec::new();
    for name in FILES {
        let path = dir.join(name);
        let bytes = match fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(read_error(&path)(error)),
        };
        let items = match &bytes {
            None => Vec::new(),
            Some(bytes) => {
                serde_json::from_slice::<Items>(bytes)
                    .map_err(|e| {
                        corrupt(
                            &path,
                            format!(
                                "not a file of the Node.js service ({{\"items\": [...]}}): {e}"
                            ),
                        )
                    })?
                    .items
            }
        };
        records.push(
            items
                .into_iter()
                .enumerate()
                .map(|(index, json)| LegacyRecord {
                    origin: name.to_owned(),
                    index,
                    json,
                })
                .collect(),
        );
        originals.files.push((name, bytes));
    }
    Ok((originals, records))
}

/// Reads and checks every record; nothing is written.
pub(crate) fn check(dir: &Path, rules: &dyn RecordRules) -> Result<Adopted, OpenError> {
    let (_, records) = read(dir)?;
    adopt(&records[0], &records[1], rules).map_err(|report| refused(dir, report))
}

fn refused(dir: &Path, report: AdoptionReport) -> OpenError {
    OpenError::Refused {
        path: dir.to_owned(),
        report,
    }
}

/// Checks every record, keeps the originals in `node-backup/` and returns the state to
/// commit. Nothing in the data dir itself has changed when this returns.
pub(crate) fn prepare(dir: &Path, rules: &dyn RecordRules) -> Result<State, OpenError> {
    let (originals, records) = read(dir)?;
    let adopted = adopt(&records[0], &records[1], rules).map_err(|report| refused(dir, report))?;
    back_up(dir, &originals).map_err(|source| OpenError::Dir {
        path: dir.join(BACKUP_DIR),
        source,
    })?;
    let mut state = State::default();
    state.apply(
        0,
        Change {
            campaigns: adopted.campaigns,
            follow_ups: adopted.follow_ups,
            ..Change::default()
        },
    );
    tracing::info!(
        dir = %dir.display(),
        campaigns = state.image().campaigns.len(),
        follow_ups = state.image().follow_ups.len(),
        "adopting the records of the Node.js service; the originals are kept in {BACKUP_DIR}/"
    );
    Ok(state)
}

/// Copies each original into `node-backup/`, each through a temporary name so that a
/// copy under its final name is always whole.
fn back_up(dir: &Path, originals: &Originals) -> io::Result<()> {
    let backup = dir.join(BACKUP_DIR);
    fs::create_dir_all(&backup)?;
    for (name, bytes) in &originals.files {
        let Some(bytes) = bytes else { continue };
        let temporary = backup.join(format!("{name}.tmp"));
        let mut file = File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, backup.join(name))?;
    }
    sync_dir(&backup)?;
    sync_dir(dir)
}
