//! Compaction: write the image as of one journal sequence number into the snapshot files
//! and commit them with a new manifest.
//!
//! Every file is written whole under `<name>.next` and synced first; nothing a reader
//! trusts has changed yet. Renaming the new manifest into place is the commit point: it
//! names each file with its length and crc32. Only then are the `.next` files renamed
//! over the old ones and the folded journals deleted. A crash at any instant leaves either
//! the old manifest with the old files (the `.next` files are leftovers) or the new
//! manifest with each file under its final or its `.next` name, which start-up finishes
//! renaming once everything has verified.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::ser::SerializeSeq;

use crate::journal::{journal_path, sync_dir};
use crate::manifest::{self, Digest, Manifest};
use crate::records::{
    CampaignRecord, EventRecord, FORMAT, FollowUpRecord, OptOutRecord, OutboundRecord, PolicyRecord,
};
use crate::state::{Image, StoredOutbound};
use crm_domain::delivery::QueueStatus;

pub(crate) const CAMPAIGNS: &str = "campaigns.json";
pub(crate) const FOLLOW_UPS: &str = "followups.json";
pub(crate) const EVENTS: &str = "events.ndjson";
pub(crate) const OUTBOUND: &str = "outbound-queue.ndjson";
pub(crate) const OPT_OUTS: &str = "opt-outs.json";
pub(crate) const POLICIES: &str = "sending-policies.json";

/// Every snapshot file a manifest names.
pub(crate) const SNAPSHOT_FILES: [&str; 6] =
    [CAMPAIGNS, FOLLOW_UPS, EVENTS, OUTBOUND, OPT_OUTS, POLICIES];

/// The name a snapshot file is written under before its manifest commits.
pub(crate) fn next_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.next"))
}

/// What a compaction folds: the image as of journal record `image.last_seq`, which is
/// the last record of journal generation `generation`.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub image: Image,
    pub generation: u64,
    /// Journals up to this generation that predate format 2.
    pub legacy_generation: u64,
}

/// How much of a snapshot may wait in the page cache before it is synced.
const SYNC_EVERY_BYTES: u64 = 8 << 20;

/// The file under a snapshot's buffer: counts and checksums what reaches it, and syncs
/// it after every [`SYNC_EVERY_BYTES`].
///
/// It sits below the buffer, so the checksum runs over whole buffers rather than the
/// serializer's small pieces. The periodic sync is for the journal: a snapshot is as
/// large as the store, and left to the end its dirty pages are written back all at once
/// while the journal syncs the records that requests wait for on the same file system.
struct Sink {
    file: File,
    hasher: crc32fast::Hasher,
    bytes: u64,
    unsynced: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.bytes += written as u64;
        self.unsynced += written as u64;
        if self.unsynced >= SYNC_EVERY_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Writes `name.next` with `fill`, synced; returns its digest.
fn write_next(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut BufWriter<Sink>) -> io::Result<()>,
) -> io::Result<Digest> {
    let sink = Sink {
        file: File::create(next_path(dir, name))?,
        hasher: crc32fast::Hasher::new(),
        bytes: 0,
        unsynced: 0,
    };
    let mut writer = BufWriter::with_capacity(1 << 20, sink);
    fill(&mut writer)?;
    let sink = writer.into_inner().map_err(|e| e.into_error())?;
    sink.file.sync_all()?;
    Ok(Digest {
        bytes: sink.bytes,
        crc32: format!("{:08x}", sink.hasher.finalize()),
    })
}

/// `{"items": [...]}` of records made by `record` from each value.
fn write_items<V, R: Serialize>(
    writer: &mut impl Write,
    values: impl Iterator<Item = V>,
    record: impl Fn(V) -> R,
) -> io::Result<()> {
    struct Items<I>(std::cell::RefCell<Option<I>>);
    impl<I: Iterator<Item = R2>, R2: Serialize> Serialize for Items<I> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut seq = serializer.serialize_seq(None)?;
            for item in self.0.borrow_mut().take().into_iter().flatten() {
                seq.serialize_element(&item)?;
            }
            seq.end()
        }
    }
    #[derive(Serialize)]
    struct Snapshot<I: Serialize> {
        items: I,
    }
    let items = Items(std::cell::RefCell::new(Some(values.map(record))));
    serde_json::to_writer(&mut *writer, &Snapshot { items })?;
    writer.write_all(b"\n")
}

fn write_lines<R: Serialize>(
    writer: &mut impl Write,
    records: impl Iterator<Item = R>,
) -> io::Result<()> {
    for record in records {
        serde_json::to_writer(&mut *writer, &record)?;
        writer.write_all(b"\n")?;
    }
    Ok(())
}

/// What a compaction left out under retention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Retained {
    pub events_removed: u64,
    pub items_removed: u64,
}

/// Writes the snapshot and commits it. Events emitted before `expire_before` are left out
/// while they lead the log (so the log has no holes: a feed position is either retained
/// or before `events_deleted_through`), and so are outbound items that finished before
/// it. Returns the committed manifest and what retention left out.
pub(crate) fn commit(
    dir: &Path,
    snapshot: &Snapshot,
    expire_before: Option<crm_domain::timestamp::Timestamp>,
) -> io::Result<(Manifest, Retained)> {
    let image = &snapshot.image;
    let mut deleted_through = image.events_deleted_through;
    let mut retained_counts = Retained::default();
    let retained = image.events.values().skip_while(|event| {
        let expired = expire_before.is_some_and(|cutoff| event.emitted_at < cutoff);
        if expired {
            deleted_through = deleted_through.max(event.seq);
            retained_counts.events_removed += 1;
        }
        expired
    });
    let finished_long_ago = |item: &StoredOutbound| {
        let finished = item
            .entry
            .finished_at
            .filter(|_| item.entry.status == QueueStatus::Done);
        matches!((finished, expire_before), (Some(at), Some(cutoff)) if at < cutoff)
    };
    retained_counts.items_removed = image
        .outbound
        .values()
        .filter(|item| finished_long_ago(item))
        .count() as u64;
    let mut files = BTreeMap::new();
    files.insert(
        CAMPAIGNS.to_owned(),
        write_next(dir, CAMPAIGNS, |writer| {
            write_items(writer, image.campaigns.values(), |c| {
                CampaignRecord::from(&**c)
            })
        })?,
    );
    files.insert(
        FOLLOW_UPS.to_owned(),
        write_next(dir, FOLLOW_UPS, |writer| {
            write_items(writer, image.follow_ups.values(), |f| {
                FollowUpRecord::from(&**f)
            })
        })?,
    );
    files.insert(
        EVENTS.to_owned(),
        write_next(dir, EVENTS, |writer| {
            write_lines(
                writer,
                retained.map(|event| EventRecord {
                    seq: event.seq,
                    envelope: Cow::Borrowed(&event.json),
                }),
            )
        })?,
    );
    files.insert(
        OUTBOUND.to_owned(),
        write_next(dir, OUTBOUND, |writer| {
            write_lines(
                writer,
                image
                    .outbound
                    .values()
                    .filter(|item| !finished_long_ago(item))
                    .map(|item| OutboundRecord::new(item.seq, &item.entry, &item.json)),
            )
        })?,
    );
    files.insert(
        OPT_OUTS.to_owned(),
        write_next(dir, OPT_OUTS, |writer| {
            write_items(writer, image.opt_outs.values(), |o| {
                OptOutRecord::from(&**o)
            })
        })?,
    );
    files.insert(
        POLICIES.to_owned(),
        write_next(dir, POLICIES, |writer| {
            write_items(writer, image.policies.iter(), |(tenant_id, policy)| {
                PolicyRecord::new(tenant_id, policy)
            })
        })?,
    );
    let committed = Manifest {
        format: FORMAT,
        generation: snapshot.generation,
        legacy_generation: snapshot.legacy_generation,
        last_seq: image.last_seq,
        last_event_seq: image.last_event_seq,
        last_outbound_seq: image.last_outbound_seq,
        events_deleted_through: deleted_through,
        files,
    };
    manifest::write(dir, &committed)?;
    finish(dir, &committed, committed.files.keys())?;
    Ok((committed, retained_counts))
}

/// After a manifest committed: puts the `.next` files of `names` in place, then deletes
/// the journals it folded. Start-up runs it again after a crash, naming only the files
/// it found (and verified) under their `.next` name.
pub(crate) fn finish<'a>(
    dir: &Path,
    committed: &Manifest,
    names: impl IntoIterator<Item = &'a String>,
) -> io::Result<()> {
    for name in names {
        fs::rename(next_path(dir, name), dir.join(name))?;
    }
    sync_dir(dir)?;
    for generation in crate::journal::journal_generations(dir)? {
        if generation <= committed.generation {
            fs::remove_file(journal_path(dir, generation))?;
        }
    }
    sync_dir(dir)
}

/// Removes what an unfinished write left behind (`.next` and `.tmp` files that no
/// committed manifest names). Called only after everything verified.
pub(crate) fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".next") || name.ends_with(".tmp") {
            fs::remove_file(&path)?;
        }
    }
    sync_dir(dir)
}
