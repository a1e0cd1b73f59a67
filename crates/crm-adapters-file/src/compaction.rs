//! Compaction: fold finished journal generations into the snapshots and the NDJSON logs.
//!
//! Crash-safe in every step. The manifest is the commit point: until it is renamed into
//! place, start-up still replays the old journals (replay is an upsert of whole records,
//! so snapshots that are already newer do no harm) and cuts the logs back to the lengths
//! the old manifest vouches for. Journals are deleted only after the manifest is durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use crm_domain::campaign::Campaign;
use crm_domain::follow_up::FollowUp;
use serde::{Deserialize, Serialize};

use crate::journal;
use crate::open::{OpenError, journal_entries};

pub(crate) const MANIFEST: &str = "manifest.json";
pub(crate) const CAMPAIGNS: &str = "campaigns.json";
pub(crate) const FOLLOW_UPS: &str = "followups.json";
pub(crate) const EVENTS: &str = "events.ndjson";
pub(crate) const OUTBOUND: &str = "outbound-queue.ndjson";

/// What the compacted files hold: every journal generation up to `generation`, and
/// exactly the first `events_bytes` / `outbound_bytes` bytes of the logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub generation: u64,
    pub events_bytes: u64,
    pub outbound_bytes: u64,
    /// Size of the two snapshots, so the next compaction waits for a journal at least as
    /// large: rewriting them then costs a bounded amount per write, whatever the size.
    #[serde(default)]
    pub snapshot_bytes: u64,
}

#[derive(Serialize)]
struct Snapshot<'a, T> {
    items: &'a [T],
}

/// The journal generations present in `dir`, oldest first.
pub(crate) fn journal_generations(dir: &Path) -> io::Result<Vec<u64>> {
    let mut generations = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let generation: Option<u64> = name
            .to_str()
            .and_then(|n| n.strip_prefix("journal."))
            .and_then(|n| n.strip_suffix(".ndjson"))
            .and_then(|n| n.parse().ok());
        generations.extend(generation);
    }
    generations.sort_unstable();
    Ok(generations)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CompactionError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Journal(#[from] OpenError),
}

/// Folds every journal generation up to `through` into the compacted files.
/// `campaigns` and `follow_ups` are every record as of the end of that generation or
/// later. Returns the new manifest.
pub(crate) fn compact(
    dir: &Path,
    previous: Manifest,
    through: u64,
    campaigns: &[Arc<Campaign>],
    follow_ups: &[Arc<FollowUp>],
) -> Result<Manifest, CompactionError> {
    let generations: Vec<u64> = journal_generations(dir)?
        .into_iter()
        .filter(|g| *g <= through)
        .collect();
    let mut events = open_log(&dir.join(EVENTS), previous.events_bytes)?;
    let mut outbound = open_log(&dir.join(OUTBOUND), previous.outbound_bytes)?;
    for &generation in &generations {
        for entry in journal_entries(&journal::journal_path(dir, generation))? {
            for event in &entry.events {
                writeln!(events, "{}", event.get())?;
            }
            for item in &entry.outbound {
                writeln!(outbound, "{}", item.get())?;
            }
        }
    }
    let events_bytes = finish_log(events)?;
    let outbound_bytes = finish_log(outbound)?;
    let campaigns_bytes = write_atomically(dir, CAMPAIGNS, &Snapshot { items: campaigns })?;
    let follow_ups_bytes = write_atomically(dir, FOLLOW_UPS, &Snapshot { items: follow_ups })?;
    let manifest = Manifest {
        generation: through,
        events_bytes,
        outbound_bytes,
        snapshot_bytes: campaigns_bytes + follow_ups_bytes,
    };
    write_atomically(dir, MANIFEST, &manifest)?;
    for generation in generations {
        fs::remove_file(journal::journal_path(dir, generation))?;
    }
    sync_dir(dir)?;
    Ok(manifest)
}

/// Opens a log for appending after cutting it back to its committed length, which
/// drops what an earlier, failed compaction may have appended.
fn open_log(path: &Path, committed: u64) -> io::Result<BufWriter<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .append(true)
        .open(path)?;
    file.set_len(committed)?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

fn finish_log(writer: BufWriter<File>) -> io::Result<u64> {
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Writes `name` whole or not at all; returns its size.
fn write_atomically(dir: &Path, name: &str, value: &impl Serialize) -> io::Result<u64> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut writer = BufWriter::with_capacity(1 << 20, File::create(&temporary)?);
    serde_json::to_writer(&mut writer, value)?;
    writer.write_all(b"\n")?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    fs::rename(&temporary, dir.join(name))?;
    sync_dir(dir)?;
    Ok(size)
}

/// Makes renames and new files in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
