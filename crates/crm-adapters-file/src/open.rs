//! Opening a data dir: take the lock, load the snapshots and logs, replay the journal.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use crm_domain::campaign::Campaign;
use crm_domain::follow_up::FollowUp;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::compaction::{self, Manifest};
use crate::journal::{self, read_lines};
use crate::state::State;

/// Tuning of the file store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStoreOptions {
    /// Compact once the current journal holds this many bytes.
    pub compact_after_bytes: u64,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        Self {
            compact_after_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a data dir could not be opened. Every message names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data dir {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "data dir {path} is in use by another process (it holds {path}/.lock); stop that process or choose another --data-dir"
    )]
    Locked { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is corrupt ({detail}); refusing to start so that nothing is lost: restore the file or move the data dir away"
    )]
    Corrupt { path: PathBuf, detail: String },
}

pub(crate) struct Loaded {
    pub lock: File,
    pub state: State,
    pub manifest: Manifest,
    /// The journal generation new writes go to; it is a new, empty file.
    pub generation: u64,
    pub journal: File,
}

pub(crate) fn load(dir: &Path) -> Result<Loaded, OpenError> {
    let dir_error = |source| OpenError::Dir {
        path: dir.to_owned(),
        source,
    };
    fs::create_dir_all(dir).map_err(dir_error)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(dir_error)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(OpenError::Locked {
                path: dir.to_owned(),
            });
        }
        Err(TryLockError::Error(source)) => return Err(dir_error(source)),
    }

    let manifest = read_manifest(dir)?;
    let mut state = State::default();
    // After a compaction both snapshots exist; one that is gone is lost data, not an
    // empty store.
    let compacted = manifest.generation > 0;
    for campaign in read_snapshot::<Campaign>(&dir.join(compaction::CAMPAIGNS), compacted)? {
        state.apply_campaign(campaign);
    }
    for follow_up in read_snapshot::<FollowUp>(&dir.join(compaction::FOLLOW_UPS), compacted)? {
        state.apply_follow_up(follow_up);
    }
    for event in read_log(dir, compaction::EVENTS, manifest.events_bytes)? {
        let path = dir.join(compaction::EVENTS);
        state.add_event(event).map_err(|e| corrupt(&path, e))?;
    }
    state.outbound = read_log(dir, compaction::OUTBOUND, manifest.outbound_bytes)?;

    let generations = compaction::journal_generations(dir).map_err(dir_error)?;
    let mut replayed = 0;
    for &generation in &generations {
        let path = journal::journal_path(dir, generation);
        if generation <= manifest.generation {
            // Folded in by a compaction that stopped before it could delete the file.
            fs::remove_file(&path).map_err(dir_error)?;
            continue;
        }
        for entry in journal_entries(&path)? {
            state.apply(entry).map_err(|e| corrupt(&path, e))?;
            replayed += 1;
        }
    }
    let last = generations
        .last()
        .copied()
        .unwrap_or(0)
        .max(manifest.generation);
    // Everything was read: fold the journal into the snapshots and logs now, so the
    // data dir holds plain `campaigns.json` / `followups.json` after every start.
    let manifest = if replayed > 0 {
        compaction::compact(
            dir,
            manifest,
            last,
            &state.campaign_list(),
            &state.follow_up_list(),
        )
        .map_err(|error| OpenError::Dir {
            path: dir.to_owned(),
            source: std::io::Error::other(error.to_string()),
        })?
    } else {
        manifest
    };
    let generation = last + 1;
    let journal_path = journal::journal_path(dir, generation);
    let journal = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&journal_path)
        .map_err(dir_error)?;
    compaction::sync_dir(dir).map_err(dir_error)?;
    Ok(Loaded {
        lock,
        state,
        manifest,
        generation,
        journal,
    })
}

pub(crate) fn corrupt(path: &Path, detail: impl ToString) -> OpenError {
    OpenError::Corrupt {
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

pub(crate) fn read_error(path: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Read {
        path: path.to_owned(),
        source,
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, OpenError> {
    let path = dir.join(compaction::MANIFEST);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt(&path, e)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            // Without a manifest the dir must hold no compacted data at all; otherwise
            // we could not know which journal lines those files already contain.
            for name in [
                compaction::CAMPAIGNS,
                compaction::FOLLOW_UPS,
                compaction::EVENTS,
                compaction::OUTBOUND,
            ] {
                if dir.join(name).exists() {
                    return Err(corrupt(&path, format!("missing, but {name} exists")));
                }
            }
            Ok(Manifest::default())
        }
        Err(error) => Err(read_error(&path)(error)),
    }
}

#[derive(Deserialize)]
struct Snapshot<T> {
    items: Vec<T>,
}

fn read_snapshot<T: for<'de> Deserialize<'de>>(
    path: &Path,
    must_exist: bool,
) -> Result<Vec<T>, OpenError> {
    match File::open(path) {
        Ok(file) => {
            let snapshot: Snapshot<T> =
                serde_json::from_reader(BufReader::new(file)).map_err(|e| corrupt(path, e))?;
            Ok(snapshot.items)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound && must_exist => Err(corrupt(
            path,
            "missing, but manifest.json records a compaction that wrote it",
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(read_error(path)(error)),
    }
}

/// Reads an NDJSON log up to the length the manifest vouches for. Bytes past it were
/// appended by a compaction that did not finish; the journal still holds them, so they
/// are cut off and written again by the next compaction.
fn read_log(dir: &Path, name: &str, committed: u64) -> Result<Vec<Box<RawValue>>, OpenError> {
    let path = dir.join(name);
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound && committed == 0 => {
            return Ok(Vec::new());
        }
        Err(error) => return Err(read_error(&path)(error)),
    };
    let length = file.metadata().map_err(read_error(&path))?.len();
    if length < committed {
        return Err(corrupt(
            &path,
            format!("{length} bytes, but the manifest records {committed}"),
        ));
    }
    if length > committed {
        tracing::warn!(path = %path.display(), extra_bytes = length - committed, "cutting off an unfinished compaction");
        file.set_len(committed).map_err(read_error(&path))?;
        file.sync_all().map_err(read_error(&path))?;
    }
    let mut items = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(read_error(&path))?;
        let item: Box<RawValue> = serde_json::from_str(&line)
            .map_err(|e| corrupt(&path, format!("line {}: {e}", index + 1)))?;
        items.push(item);
    }
    Ok(items)
}

/// Reads every complete line of a journal file; see `read_lines` for torn tails.
pub(crate) fn journal_entries(path: &Path) -> Result<Vec<journal::Entry>, OpenError> {
    let bytes = fs::read(path).map_err(read_error(path))?;
    let text = read_lines(bytes);
    if text.torn_tail_bytes > 0 {
        tracing::warn!(path = %path.display(), bytes = text.torn_tail_bytes, "ignoring a torn final journal line (a write that was never acknowledged)");
    }
    text.lines
        .into_iter()
        .map(|(number, line)| {
            journal::decode(&line).map_err(|e| corrupt(path, format!("line {number}: {e}")))
        })
        .collect()
}
