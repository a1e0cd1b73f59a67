//! A consistent copy of a data dir, taken while a store serves it or while it is stopped.
//!
//! The copy never takes the dir's lock and never pauses the store. It reads what a start
//! would trust: the manifest, the snapshot files it names (under their name, or under
//! `.next` when a compaction committed but had not renamed them yet), then every journal
//! after the manifest's generation. A journal is append-only until a compaction folds it,
//! and a compaction commits by renaming the manifest, so if the manifest is the same
//! after the copy as before it and every file matched, the copy holds every write
//! acknowledged before it began; a record still being written shows as a torn tail of
//! the newest journal, a write never acknowledged, which opening the copy cuts off.
//! Otherwise a compaction moved the files under the copy, and it starts again.
//!
//! The copy is written under a staging name, verified by opening it exactly as a start
//! would, and only then renamed to its final name: a backup that says it succeeded can
//! be started on. Restoring is starting the service on the copy.
//!
//! It does not copy the Node.js service's files or the first release's format: a data dir
//! is converted by its first start, and is backed up after that.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::compaction::{SNAPSHOT_FILES, next_path};
use crate::frame;
use crate::journal::{journal_generations, journal_path, sync_dir};
use crate::manifest::{self, MANIFEST, Manifest};
use crate::open::{self, OpenError};

/// How many times a copy starts again because a compaction moved the files under it.
const ATTEMPTS: u32 = 20;

/// What a verified copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub campaigns: usize,
    pub follow_ups: usize,
    pub events: usize,
    pub outbound_items: usize,
    /// Copies started; more than one when compactions moved files during the first.
    pub attempts: u32,
}

impl std::fmt::Display for BackupReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} campaigns, {} follow-ups, {} events and {} outbound items, verified",
            self.campaigns, self.follow_ups, self.events, self.outbound_items
        )?;
        if self.attempts > 1 {
            write!(
                f,
                " ({} copies: compactions committed during the first)",
                self.attempts
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path} already exists; a backup goes to a new directory")]
    Exists { path: PathBuf },
    #[error(
        "{path} holds no data dir of this store's format (a data dir of the Node.js service \
         or of the first release is converted by the service's first start: back it up after)"
    )]
    NotOurs { path: PathBuf },
    #[error("the data dir {path} is damaged; nothing was copied")]
    Source {
        path: PathBuf,
        #[source]
        source: OpenError,
    },
    #[error("cannot write the backup at {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "compactions kept moving the files of {path} during {ATTEMPTS} copies; try again later"
    )]
    Busy { path: PathBuf },
    #[error("the copy of {path} does not open as a start would open it, so none was kept")]
    Unverified {
        path: PathBuf,
        #[source]
        source: OpenError,
    },
}

/// Copies the data dir `from` to the new directory `to` and verifies the copy.
pub fn backup(from: &Path, to: &Path) -> Result<BackupReport, BackupError> {
    if to.exists() {
        return Err(BackupError::Exists {
            path: to.to_owned(),
        });
    }
    let staging = staging_path(to);
    for attempt in 1..=ATTEMPTS {
        remove_staging(&staging)?;
        match copy_once(from, &staging) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(error) => {
                remove_staging(&staging)?;
                return Err(error);
            }
        }
        // Every file matched a manifest that did not change during the copy, so a copy
        // that does not open means the data dir itself would not (a start refuses it).
        let mut report = match verify(&staging) {
            Ok(report) => report,
            Err(source) => {
                remove_staging(&staging)?;
                return Err(BackupError::Unverified {
                    path: from.to_owned(),
                    source,
                });
            }
        };
        // A bare name's parent is the working dir.
        let parent = to
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::rename(&staging, to)
            .and_then(|()| sync_dir(parent))
            .map_err(write_error(to))?;
        report.attempts = attempt;
        return Ok(report);
    }
    remove_staging(&staging)?;
    Err(BackupError::Busy {
        path: from.to_owned(),
    })
}

/// One copy into `staging`; `false` when a compaction committed during it.
fn copy_once(from: &Path, staging: &Path) -> Result<bool, BackupError> {
    let manifest_path = from.join(MANIFEST);
    let manifest_bytes = match fs::read(&manifest_path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(BackupError::NotOurs {
                path: from.to_owned(),
            });
        }
        Err(source) => {
            return Err(BackupError::Read {
                path: manifest_path,
                source,
            });
        }
    };
    let manifest = match manifest::parse(&manifest_bytes) {
        Ok(manifest::Read::Current(manifest)) => manifest,
        Ok(manifest::Read::Legacy(_)) => {
            return Err(BackupError::NotOurs {
                path: from.to_owned(),
            });
        }
        Err(detail) => {
            return Err(BackupError::Source {
                path: from.to_owned(),
                source: open::corrupt(&manifest_path, detail),
            });
        }
    };
    fs::create_dir_all(staging).map_err(write_error(staging))?;
    for name in SNAPSHOT_FILES {
        copy_snapshot(from, staging, name, &manifest)?;
    }
    let generations = journal_generations(from).map_err(read_error(from))?;
    for generation in generations
        .into_iter()
        .filter(|generation| *generation > manifest.generation)
    {
        let path = journal_path(from, generation);
        match fs::read(&path) {
            Ok(bytes) => write_file(&journal_path(staging, generation), &bytes)?,
            // Folded by a compaction (the manifest changed), or deleted (damage).
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(BackupError::Read { path, source }),
        }
    }
    let unchanged = fs::read(&manifest_path).ok().as_deref() == Some(manifest_bytes.as_slice());
    if !unchanged {
        // A compaction committed during the copy, and may have replaced what it read.
        return Ok(false);
    }
    // Under an unchanged manifest, a file that does not match it is damage, not a
    // compaction: the copy holds what was found, and opening it names the file.
    // The manifest goes last: a staging dir without one is never mistaken for a copy.
    write_file(&staging.join(MANIFEST), &manifest_bytes)?;
    sync_dir(staging).map_err(write_error(staging))?;
    Ok(true)
}

/// Copies snapshot file `name` as the manifest names it, from its final name or its
/// `.next`; when neither matches (a later compaction replaced it, or damage), the file
/// under its final name, if any, is copied as it is.
fn copy_snapshot(
    from: &Path,
    staging: &Path,
    name: &str,
    manifest: &Manifest,
) -> Result<(), BackupError> {
    let Some(digest) = manifest.files.get(name) else {
        return Err(BackupError::Source {
            path: from.to_owned(),
            source: open::corrupt(&from.join(MANIFEST), format!("it names no {name}")),
        });
    };
    let mut as_found = None;
    for path in [from.join(name), next_path(from, name)] {
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(BackupError::Read { path, source }),
        };
        if bytes.len() as u64 == digest.bytes && frame::checksum(&bytes) == digest.crc32 {
            return write_file(&staging.join(name), &bytes);
        }
        as_found.get_or_insert(bytes);
    }
    match as_found {
        Some(bytes) => write_file(&staging.join(name), &bytes),
        None => Ok(()),
    }
}

/// Opens the copy as a start would: every file and record checked, a torn journal tail
/// cut off. Nothing else of a store is started.
fn verify(dir: &Path) -> Result<BackupReport, OpenError> {
    let loaded = open::load(dir, None)?;
    drop(loaded.lock);
    let image = loaded.state.image();
    Ok(BackupReport {
        campaigns: image.campaigns.len(),
        follow_ups: image.follow_ups.len(),
        events: image.events.len(),
        outbound_items: image.outbound.len(),
        attempts: 0,
    })
}

fn staging_path(to: &Path) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    to.with_file_name(name)
}

fn remove_staging(staging: &Path) -> Result<(), BackupError> {
    match fs::remove_dir_all(staging) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BackupError::Write {
            path: staging.to_owned(),
            source,
        }),
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut file = File::create(path).map_err(write_error(path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(write_error(path))
}

fn write_error(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Write {
        path: path.to_owned(),
        source,
    }
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Read {
        path: path.to_owned(),
        source,
    }
}
