//! Opening a data dir: take the lock, verify everything, and only then change anything.
//!
//! Verification trusts nothing it has not checked: the manifest's own checksum, each
//! snapshot file's length and crc32 against the manifest (under its final name, or under
//! `.next` when a compaction committed but had not yet renamed it), every record in those
//! files, and every journal line (its checksum, its header, and a sequence that must run
//! on from the manifest without a gap). A damaged file stops start-up with its path (and
//! line or item), and not one byte of the data dir has changed. Once everything has
//! verified, start-up finishes what a crash interrupted: cuts off a torn tail of the
//! newest journal (a write never acknowledged), renames the verified `.next` files,
//! deletes folded journals and leftovers.
//!
//! Recovery depends on what was acknowledged, never on where a file stands: the torn tail
//! is forgiven only while its journal is the newest, and it is cut off durably before the
//! next generation is created, so no later start can find it behind a newer journal.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crm_domain::campaign::Campaign;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CorrelationId, TenantId};
use crm_domain::opt_out::OptOut;
use crm_domain::timestamp::Timestamp;
use crm_ports::adoption::{AdoptionCheck, AdoptionReport, RecordRules};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::compaction::{self, SNAPSHOT_FILES, Snapshot, next_path};
use crate::frame;
use crate::journal::{journal_generations, journal_path};
use crate::legacy;
use crate::manifest::{self, MANIFEST, Manifest};
use crate::node;
use crate::records::{
    CampaignRecord, EntryRecord, EventRecord, FORMAT, FollowUpRecord, HeaderLine, OptOutRecord,
    OutboundRecord, PolicyRecord,
};
use crate::state::{Change, State, StoredEvent, StoredOutbound};

/// Tuning of the file store.
#[derive(Clone)]
pub struct FileStoreOptions {
    /// Compact once the current journal holds this many bytes (and at least as many as
    /// the snapshots, so rewriting them costs a bounded amount per write).
    pub compact_after_bytes: u64,
    /// Events older than this are dropped at compaction; `None` keeps them all.
    pub retention: Option<Duration>,
    /// How long a graceful shutdown waits for its final compaction. Every acknowledged
    /// write is in the journal already, so giving up loses nothing.
    pub shutdown_wait: Duration,
    /// The rules a record of the Node.js service must pass to be adopted; without them
    /// a data dir of that service is refused.
    pub legacy_rules: Option<Arc<dyn RecordRules>>,
}

impl Default for FileStoreOptions {
    fn default() -> Self {
        Self {
            compact_after_bytes: 64 * 1024 * 1024,
            retention: None,
            shutdown_wait: Duration::from_secs(20),
            legacy_rules: None,
        }
    }
}

impl std::fmt::Debug for FileStoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStoreOptions")
            .field("compact_after_bytes", &self.compact_after_bytes)
            .field("retention", &self.retention)
            .field("shutdown_wait", &self.shutdown_wait)
            .field("legacy_rules", &self.legacy_rules.is_some())
            .finish()
    }
}

/// Why a data dir could not be opened. Every message names the file involved.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data dir {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "data dir {path} is in use by another process (it holds {path}/.lock); stop that process or choose another --data-dir"
    )]
    Locked { path: PathBuf },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} is corrupt ({detail}); refusing to start so that nothing is lost: restore the file or move the data dir away"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "the Node.js service's data dir {path} cannot be adopted, and nothing in it was changed; {report}"
    )]
    Refused {
        path: PathBuf,
        report: AdoptionReport,
    },
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

fn dir_error(dir: &Path) -> impl FnOnce(io::Error) -> OpenError + '_ {
    move |source| OpenError::Dir {
        path: dir.to_owned(),
        source,
    }
}

/// A verified data dir, ready to take writes.
pub(crate) struct Loaded {
    pub lock: File,
    pub state: State,
    pub manifest: Manifest,
    /// The highest journal generation present; new writes go to the next one.
    pub generation: u64,
    /// Bytes of journal records not folded into the snapshots yet.
    pub journal_bytes: u64,
}

pub(crate) fn load(
    dir: &Path,
    legacy_rules: Option<&dyn RecordRules>,
) -> Result<Loaded, OpenError> {
    fs::create_dir_all(dir).map_err(dir_error(dir))?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(dir_error(dir))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(OpenError::Locked {
                path: dir.to_owned(),
            });
        }
        Err(TryLockError::Error(source)) => return Err(dir_error(dir)(source)),
    }
    let manifest_path = dir.join(MANIFEST);
    let manifest = match fs::read(&manifest_path) {
        Ok(bytes) => Some(manifest::parse(&bytes).map_err(|e| corrupt(&manifest_path, e))?),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(read_error(&manifest_path)(error)),
    };
    let generations = journal_generations(dir).map_err(dir_error(dir))?;
    let (state, manifest, generation, journal_bytes) = match manifest {
        Some(manifest::Read::Current(manifest)) => {
            let verified = verify(dir, &manifest, &generations)?;
            // Everything verified: finish what a crash interrupted. The torn tail goes
            // first: once this start creates the next journal, it would be damage.
            if let Some(torn) = &verified.torn {
                torn.cut_off().map_err(dir_error(dir))?;
            }
            compaction::finish(dir, &manifest, &verified.renames).map_err(dir_error(dir))?;
            compaction::remove_leftovers(dir).map_err(dir_error(dir))?;
            let generation = generations
                .last()
                .copied()
                .unwrap_or(0)
                .max(manifest.generation);
            (verified.state, manifest, generation, verified.journal_bytes)
        }
        Some(manifest::Read::Legacy(old)) => upgrade(dir, legacy::read(dir, Some(old))?)?,
        None if !generations.is_empty() => {
            if !legacy::journals_are_legacy(dir, &generations)? {
                return Err(corrupt(
                    &manifest_path,
                    format!(
                        "missing, but {} exists: every data dir of this format has one",
                        journal_path(dir, generations[0]).display()
                    ),
                ));
            }
            // The first release before its first compaction committed: the journals
            // hold everything, and any snapshot or log file is an unfinished write.
            upgrade(dir, legacy::read(dir, None)?)?
        }
        None if node::present(dir) => {
            let Some(rules) = legacy_rules else {
                return Err(corrupt(
                    &manifest_path,
                    "missing: this looks like a data dir of the Node.js service, which this \
                     store adopts only when given the rules its records must pass",
                ));
            };
            adopt(dir, node::prepare(dir, rules)?)?
        }
        None => {
            if let Some(name) = SNAPSHOT_FILES.iter().find(|name| dir.join(name).exists()) {
                return Err(corrupt(
                    &manifest_path,
                    format!("missing, but {name} exists"),
                ));
            }
            // A new data dir: write its empty snapshot so that it always has a manifest.
            compaction::remove_leftovers(dir).map_err(dir_error(dir))?;
            let state = State::default();
            let (manifest, _) = compaction::commit(
                dir,
                &Snapshot {
                    image: state.image().clone(),
                    generation: 0,
                    legacy_generation: 0,
                },
                None,
            )
            .map_err(dir_error(dir))?;
            (state, manifest, 0, 0)
        }
    };
    Ok(Loaded {
        lock,
        state,
        manifest,
        generation,
        journal_bytes,
    })
}

/// Writes a data dir read in the first release's format as a format 2 snapshot, and
/// folds its journals. Until the new manifest commits, the old files are untouched.
fn upgrade(dir: &Path, old: legacy::Legacy) -> Result<(State, Manifest, u64, u64), OpenError> {
    let committed = commit_converted(dir, old.state, old.generation)?;
    tracing::info!(dir = %dir.display(), "data dir upgraded to format {FORMAT}");
    Ok(committed)
}

/// Commits the records adopted from the Node.js service as this store's first snapshot;
/// the commit replaces the originals, already kept in the backup dir.
fn adopt(dir: &Path, state: State) -> Result<(State, Manifest, u64, u64), OpenError> {
    let committed = commit_converted(dir, state, 0)?;
    tracing::info!(dir = %dir.display(), "the Node.js service's data dir is adopted");
    Ok(committed)
}

/// What `load` would adopt from the Node.js service in `dir`, reading only.
pub(crate) fn check_adoption(
    dir: &Path,
    rules: &dyn RecordRules,
) -> Result<AdoptionCheck, OpenError> {
    let ours = dir.join(MANIFEST).exists()
        || !journal_generations(dir).map_err(dir_error(dir))?.is_empty();
    if ours || !node::present(dir) {
        return Ok(AdoptionCheck::Nothing);
    }
    let adopted = node::check(dir, rules)?;
    Ok(AdoptionCheck::Adoptable {
        campaigns: adopted.campaigns.len(),
        follow_ups: adopted.follow_ups.len(),
    })
}

/// Commits `state`, read from another format whose journals (if any) end at
/// `generation`, like any compaction: the manifest's rename is the commit point.
fn commit_converted(
    dir: &Path,
    state: State,
    generation: u64,
) -> Result<(State, Manifest, u64, u64), OpenError> {
    compaction::remove_leftovers(dir).map_err(dir_error(dir))?;
    let (manifest, _) = compaction::commit(
        dir,
        &Snapshot {
            image: state.image().clone(),
            generation,
            legacy_generation: generation,
        },
        None,
    )
    .map_err(dir_error(dir))?;
    Ok((state, manifest, generation, 0))
}

struct Verified {
    state: State,
    /// Snapshot files found (and verified) under their `.next` name.
    renames: Vec<String>,
    journal_bytes: u64,
    /// The newest journal's torn last line, if it has one.
    torn: Option<TornTail>,
}

/// The end of the newest journal that is not a whole record: a write whose sync never
/// returned, so it was never acknowledged.
#[derive(Debug)]
struct TornTail {
    path: PathBuf,
    /// Where the last whole record ends; the torn bytes start here.
    valid_len: u64,
}

impl TornTail {
    /// Cuts the torn bytes off and makes the cut durable.
    fn cut_off(&self) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(&self.path)?;
        file.set_len(self.valid_len)?;
        file.sync_all()?;
        tracing::warn!(
            path = %self.path.display(),
            kept_bytes = self.valid_len,
            "cut off a torn final journal line (a write that was never acknowledged)"
        );
        Ok(())
    }
}

fn verify(dir: &Path, manifest: &Manifest, generations: &[u64]) -> Result<Verified, OpenError> {
    let manifest_path = dir.join(MANIFEST);
    let mut renames = Vec::new();
    let mut contents = Vec::new();
    for name in SNAPSHOT_FILES {
        let digest = manifest
            .files
            .get(name)
            .ok_or_else(|| corrupt(&manifest_path, format!("it names no {name}")))?;
        let (bytes, renamed) = verified_file(dir, name, digest)?;
        if renamed {
            renames.push(name.to_owned());
        }
        contents.push(bytes);
    }
    if let Some(unknown) = manifest
        .files
        .keys()
        .find(|name| !SNAPSHOT_FILES.contains(&name.as_str()))
    {
        return Err(corrupt(
            &manifest_path,
            format!("it names {unknown}, which this version does not know"),
        ));
    }
    let [campaigns, follow_ups, events, outbound, opt_outs, policies] =
        <[Vec<u8>; 6]>::try_from(contents).expect("six snapshot files");

    let mut state = State::default();
    let mut change = Change::default();
    read_items(
        dir,
        compaction::CAMPAIGNS,
        &campaigns,
        |record: CampaignRecord| {
            let campaign = Campaign::try_from(record).map_err(|e| e.to_string())?;
            change.campaigns.push(campaign);
            Ok(())
        },
    )?;
    read_items(
        dir,
        compaction::FOLLOW_UPS,
        &follow_ups,
        |record: FollowUpRecord| {
            let follow_up = FollowUp::try_from(record).map_err(|e| e.to_string())?;
            change.follow_ups.push(follow_up);
            Ok(())
        },
    )?;
    unique(
        dir,
        compaction::CAMPAIGNS,
        change.campaigns.iter().map(|c| c.campaign_id.as_uuid()),
    )?;
    unique(
        dir,
        compaction::FOLLOW_UPS,
        change.follow_ups.iter().map(|f| f.followup_id.as_uuid()),
    )?;
    let mut last_event = manifest.events_deleted_through;
    read_lines(dir, compaction::EVENTS, &events, |record: EventRecord| {
        if record.seq <= last_event || record.seq > manifest.last_event_seq {
            return Err(format!(
                "event number {} is out of order (after {last_event}, at most {})",
                record.seq, manifest.last_event_seq
            ));
        }
        last_event = record.seq;
        change
            .events
            .push(stored_event(&record.envelope, record.seq)?);
        Ok(())
    })?;
    let mut last_item = 0;
    read_lines(
        dir,
        compaction::OUTBOUND,
        &outbound,
        |record: OutboundRecord| {
            if record.seq <= last_item || record.seq > manifest.last_outbound_seq {
                return Err(format!(
                    "outbound item number {} is out of order",
                    record.seq
                ));
            }
            last_item = record.seq;
            change.outbound.push(StoredOutbound {
                seq: record.seq,
                entry: record.entry().map_err(|e| e.to_string())?,
                json: record.item.into_owned(),
            });
            Ok(())
        },
    )?;
    read_items(
        dir,
        compaction::OPT_OUTS,
        &opt_outs,
        |record: OptOutRecord| {
            change
                .opt_outs
                .push(OptOut::try_from(record).map_err(|e| e.to_string())?);
            Ok(())
        },
    )?;
    read_items(
        dir,
        compaction::POLICIES,
        &policies,
        |record: PolicyRecord| {
            change
                .policies
                .push(record.policy().map_err(|e| e.to_string())?);
            Ok(())
        },
    )?;
    drop((campaigns, follow_ups, events, outbound, opt_outs, policies));
    state.apply(manifest.last_seq, change);
    state.set_counters(
        manifest.last_seq,
        manifest.last_event_seq,
        manifest.last_outbound_seq,
    );
    state.set_events_deleted_through(manifest.events_deleted_through);

    let mut journal_bytes = 0;
    let mut torn = None;
    let mut expected_generation = manifest.generation + 1;
    let last_generation = generations.last().copied().unwrap_or(0);
    for &generation in generations {
        let path = journal_path(dir, generation);
        if generation <= manifest.generation {
            verify_folded(&path, generation, manifest)?;
            continue;
        }
        if generation != expected_generation {
            return Err(corrupt(
                &journal_path(dir, expected_generation),
                format!(
                    "missing: journals run from {} to {generation}",
                    manifest.generation + 1
                ),
            ));
        }
        expected_generation += 1;
        let replayed = replay(&path, generation, generation == last_generation, &mut state)?;
        journal_bytes += replayed.bytes;
        torn = replayed.torn.map(|valid_len| TornTail { path, valid_len });
    }
    Ok(Verified {
        state,
        renames,
        journal_bytes,
        torn,
    })
}

/// The bytes of snapshot file `name`: under its final name when they match the manifest,
/// else under `.next` (a compaction committed and was cut short before the rename).
fn verified_file(
    dir: &Path,
    name: &str,
    digest: &manifest::Digest,
) -> Result<(Vec<u8>, bool), OpenError> {
    let path = dir.join(name);
    let matches =
        |bytes: &[u8]| bytes.len() as u64 == digest.bytes && frame::checksum(bytes) == digest.crc32;
    let found = match fs::read(&path) {
        Ok(bytes) if matches(&bytes) => return Ok((bytes, false)),
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(read_error(&path)(error)),
    };
    if let Ok(bytes) = fs::read(next_path(dir, name))
        && matches(&bytes)
    {
        return Ok((bytes, true));
    }
    Err(corrupt(
        &path,
        match found {
            Some(bytes) => format!(
                "{} bytes with crc32 {}, but manifest.json records {} bytes with crc32 {}",
                bytes.len(),
                frame::checksum(&bytes),
                digest.bytes,
                digest.crc32
            ),
            None => "missing, but manifest.json records it".to_owned(),
        },
    ))
}

#[derive(Deserialize)]
struct Items<T> {
    items: Vec<T>,
}

fn read_items<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mut take: impl FnMut(T) -> Result<(), String>,
) -> Result<(), OpenError> {
    let path = dir.join(name);
    let items: Items<T> = serde_json::from_slice(bytes).map_err(|e| corrupt(&path, e))?;
    for (index, item) in items.items.into_iter().enumerate() {
        take(item).map_err(|e| corrupt(&path, format!("item {index}: {e}")))?;
    }
    Ok(())
}

fn read_lines<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mut take: impl FnMut(T) -> Result<(), String>,
) -> Result<(), OpenError> {
    let path = dir.join(name);
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        return Err(corrupt(&path, "the last line is unterminated"));
    }
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let record: T = serde_json::from_slice(line)
            .map_err(|e| corrupt(&path, format!("line {}: {e}", index + 1)))?;
        take(record).map_err(|e| corrupt(&path, format!("line {}: {e}", index + 1)))?;
    }
    Ok(())
}

fn unique(dir: &Path, name: &str, ids: impl Iterator<Item = uuid::Uuid>) -> Result<(), OpenError> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(corrupt(
                &dir.join(name),
                format!("record {id} appears twice"),
            ));
        }
    }
    Ok(())
}

/// Just enough of an event envelope to index it.
#[derive(Deserialize)]
struct EventKeys {
    tenant_id: String,
    correlation_id: uuid::Uuid,
    name: String,
    emitted_at: Timestamp,
}

pub(crate) fn stored_event(envelope: &RawValue, seq: u64) -> Result<StoredEvent, String> {
    let keys: EventKeys =
        serde_json::from_str(envelope.get()).map_err(|e| format!("event envelope: {e}"))?;
    Ok(StoredEvent {
        seq,
        tenant_id: TenantId::parse(keys.tenant_id)
            .ok_or_else(|| "event envelope: tenant_id is empty".to_owned())?,
        correlation_id: CorrelationId::new(keys.correlation_id),
        name: keys.name,
        emitted_at: keys.emitted_at,
        json: envelope.to_owned(),
    })
}

/// A journal line: its number, its text, where it starts in the file, and whether it is
/// the unterminated last one.
struct Line<'a> {
    number: usize,
    text: &'a [u8],
    offset: usize,
    unterminated: bool,
}

fn journal_lines(bytes: &[u8]) -> impl Iterator<Item = Line<'_>> {
    let unterminated = !bytes.ends_with(b"\n");
    let count = bytes.split(|&b| b == b'\n').count();
    let mut offset = 0;
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(move |(index, text)| {
            let start = offset;
            offset += text.len() + 1;
            (index, text, start)
        })
        .filter(move |(index, text, _)| !(text.is_empty() && index + 1 == count))
        .map(move |(index, text, offset)| Line {
            number: index + 1,
            text,
            offset,
            unterminated: unterminated && index + 1 == count,
        })
}

/// Checks a journal's header line.
fn check_header(path: &Path, generation: u64, line: Option<Line<'_>>) -> Result<(), OpenError> {
    let header = line
        .filter(|line| !line.unterminated)
        .and_then(|line| frame::decode(line.text).ok())
        .and_then(|json| serde_json::from_slice::<HeaderLine>(json).ok())
        .ok_or_else(|| {
            corrupt(
                path,
                "line 1: no journal header (the file is damaged or emptied)",
            )
        })?;
    if header.journal.format != FORMAT || header.journal.generation != generation {
        return Err(corrupt(
            path,
            format!(
                "line 1: header of format {} generation {}, expected format {FORMAT} generation {generation}",
                header.journal.format, header.journal.generation
            ),
        ));
    }
    Ok(())
}

/// A folded journal (start-up deletes it) must hold nothing the snapshots lack.
fn verify_folded(path: &Path, generation: u64, manifest: &Manifest) -> Result<(), OpenError> {
    if generation <= manifest.legacy_generation {
        return Ok(());
    }
    let bytes = fs::read(path).map_err(read_error(path))?;
    let mut lines = journal_lines(&bytes);
    check_header(path, generation, lines.next())?;
    for line in lines {
        let Ok(json) = frame::decode(line.text) else {
            continue;
        };
        let seq = serde_json::from_slice::<SeqOnly>(json).map_or(0, |record| record.seq);
        if seq > manifest.last_seq {
            return Err(corrupt(
                path,
                format!(
                    "line {}: record {seq} is past the snapshots' {}, yet manifest.json counts this journal as folded",
                    line.number, manifest.last_seq
                ),
            ));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// What replaying one journal found.
struct Replayed {
    /// The file's size.
    bytes: u64,
    /// Where the whole records end, when a torn last line follows them.
    torn: Option<u64>,
}

/// Replays one journal into `state`, checking that its records continue the sequence.
fn replay(
    path: &Path,
    generation: u64,
    last: bool,
    state: &mut State,
) -> Result<Replayed, OpenError> {
    let bytes = fs::read(path).map_err(read_error(path))?;
    let mut lines = journal_lines(&bytes);
    let mut torn = None;
    check_header(path, generation, lines.next())?;
    for line in lines {
        let json = match frame::decode(line.text) {
            Ok(json) => json,
            Err(_) if line.unterminated && last => {
                // The tail of the newest journal that is not a whole record is a write
                // whose sync never returned: it was never acknowledged. Anywhere else
                // (followed by a line, or in an older journal) it is damage.
                torn = Some(line.offset as u64);
                continue;
            }
            Err(error) => return Err(corrupt(path, format!("line {}: {error}", line.number))),
        };
        let record: EntryRecord = serde_json::from_slice(json)
            .map_err(|e| corrupt(path, format!("line {}: {e}", line.number)))?;
        let expected = state.image().last_seq + 1;
        if record.seq != expected {
            return Err(corrupt(
                path,
                format!(
                    "line {}: record {} where record {expected} belongs: records are missing",
                    line.number, record.seq
                ),
            ));
        }
        let change = change_of(record, state)
            .map_err(|e| corrupt(path, format!("line {}: {e}", line.number)))?;
        state.apply(expected, change);
    }
    Ok(Replayed {
        bytes: torn.unwrap_or(bytes.len() as u64),
        torn,
    })
}

fn change_of(record: EntryRecord<'_>, state: &State) -> Result<Change, String> {
    let mut change = Change::default();
    for campaign in record.campaigns {
        change
            .campaigns
            .push(Campaign::try_from(campaign).map_err(|e| e.to_string())?);
    }
    for follow_up in record.follow_ups {
        change
            .follow_ups
            .push(FollowUp::try_from(follow_up).map_err(|e| e.to_string())?);
    }
    let mut last_event = state.image().last_event_seq;
    for event in record.events {
        if event.seq <= last_event {
            return Err(format!("event number {} is out of order", event.seq));
        }
        last_event = event.seq;
        change
            .events
            .push(stored_event(&event.envelope, event.seq)?);
    }
    // An item is new (numbered past every earlier one) or moves one that exists.
    let mut last_item = state.image().last_outbound_seq;
    for item in record.outbound {
        let known = state.image().outbound.contains_key(&item.seq);
        if !known && item.seq <= last_item {
            return Err(format!("outbound item number {} is out of order", item.seq));
        }
        last_item = last_item.max(item.seq);
        change.outbound.push(StoredOutbound {
            seq: item.seq,
            entry: item.entry().map_err(|e| e.to_string())?,
            json: item.item.into_owned(),
        });
    }
    for opt_out in record.opt_outs {
        change
            .opt_outs
            .push(OptOut::try_from(opt_out).map_err(|e| e.to_string())?);
    }
    for policy in record.policies {
        change
            .policies
            .push(policy.policy().map_err(|e| e.to_string())?);
    }
    for tenant_id in record.policies_removed {
        change.policies_removed.push(
            TenantId::parse(tenant_id.into_owned())
                .ok_or_else(|| "policy tenant_id is empty".to_owned())?,
        );
    }
    for key in record.opt_outs_removed {
        let tenant_id = TenantId::parse(key.tenant_id.into_owned())
            .ok_or_else(|| "opt-out tenant_id is empty".to_owned())?;
        change
            .opt_outs_removed
            .push((tenant_id, key.phone_e164.into_owned()));
    }
    Ok(change)
}
