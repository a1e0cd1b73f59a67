//! Reading a data dir written by the first release (format 1), so that upgrading keeps
//! every record.
//!
//! Format 1 had a manifest without checksums (`generation`, `events_bytes`,
//! `outbound_bytes`, `snapshot_bytes`), snapshots of the domain structs of that release,
//! NDJSON logs appended by each compaction and journals of `<crc32> <entry>` lines without
//! a header or sequence numbers. The types below freeze that shape; nothing else in the
//! store reads it. Everything is read and checked before anything is written: the
//! upgrade then writes a format 2 snapshot like any compaction, and the old files stay
//! valid until its manifest commits.

use std::fs;
use std::io;
use std::path::Path;

use crm_domain::campaign::Campaign;
use crm_domain::delivery::QueueEntry;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::FollowUpId;
use crm_domain::outbound::OutboundItem;
use crm_domain::timestamp::Timestamp;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::frame;
use crate::journal::{journal_generations, journal_path};
use crate::open::{OpenError, corrupt, read_error};
use crate::records::{CampaignRecord, FollowUpRecord};
use crate::state::{Change, State, StoredOutbound};

pub(crate) const CAMPAIGNS: &str = "campaigns.json";
pub(crate) const FOLLOW_UPS: &str = "followups.json";
pub(crate) const EVENTS: &str = "events.ndjson";
pub(crate) const OUTBOUND: &str = "outbound-queue.ndjson";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LegacyManifest {
    pub generation: u64,
    pub events_bytes: u64,
    pub outbound_bytes: u64,
    #[serde(default)]
    pub snapshot_bytes: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyCampaign {
    campaign_id: Uuid,
    tenant_id: String,
    external_key: Option<String>,
    name: String,
    channel: String,
    audience_segment: Option<String>,
    state: String,
    scheduled_at: Option<Timestamp>,
    metadata: Map<String, Value>,
    created_at: Timestamp,
    updated_at: Timestamp,
    #[serde(default)]
    revision: u64,
}

impl TryFrom<LegacyCampaign> for Campaign {
    type Error = String;

    fn try_from(old: LegacyCampaign) -> Result<Self, String> {
        Campaign::try_from(CampaignRecord {
            campaign_id: old.campaign_id,
            tenant_id: old.tenant_id.into(),
            external_key: old.external_key.map(Into::into),
            name: old.name.into(),
            channel: old.channel.into(),
            audience_segment: old.audience_segment.map(Into::into),
            state: old.state.into(),
            scheduled_at: old.scheduled_at,
            metadata: std::borrow::Cow::Owned(old.metadata),
            created_at: old.created_at,
            updated_at: old.updated_at,
            // The release before revisions counted from zero.
            revision: old.revision.max(1),
        })
        .map_err(|e| e.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyFollowUp {
    followup_id: Uuid,
    tenant_id: String,
    campaign_id: Option<Uuid>,
    external_key: Option<String>,
    lead_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    phone_e164: String,
    message: String,
    schedule_at: Timestamp,
    channel: String,
    status: String,
    /// Always a queue item id (a uuid) in that release, which is text too.
    provider_message_id: Option<String>,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
    metadata: Map<String, Value>,
    correlation_id: Uuid,
    trace_id: String,
    created_at: Timestamp,
    updated_at: Timestamp,
}

/// A follow-up of the first release: it had no time zone and no delivery yet.
fn follow_up(old: LegacyFollowUp) -> Result<FollowUp, String> {
    FollowUp::try_from(FollowUpRecord {
        sender: None,
        sent_at: None,
        followup_id: old.followup_id,
        tenant_id: old.tenant_id.into(),
        campaign_id: old.campaign_id,
        external_key: old.external_key.map(Into::into),
        lead_id: old.lead_id,
        customer_id: old.customer_id,
        phone_e164: old.phone_e164.into(),
        message: old.message.into(),
        schedule_at: old.schedule_at,
        channel: old.channel.into(),
        status: old.status.into(),
        provider_message_id: old.provider_message_id.map(Into::into),
        last_error_code: old.last_error_code.map(Into::into),
        last_error_message: old.last_error_message.map(Into::into),
        metadata: std::borrow::Cow::Owned(old.metadata),
        correlation_id: old.correlation_id,
        trace_id: old.trace_id.into(),
        time_zone: None,
        delivery: None,
        created_at: old.created_at,
        updated_at: old.updated_at,
    })
    .map_err(|e| e.to_string())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyEntry {
    #[serde(default)]
    campaigns: Vec<LegacyCampaign>,
    #[serde(default)]
    follow_ups: Vec<LegacyFollowUp>,
    #[serde(default)]
    events: Vec<Box<RawValue>>,
    #[serde(default)]
    outbound: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct Snapshot<T> {
    items: Vec<T>,
}

/// Where the follow-up of an outbound item is named.
#[derive(Deserialize)]
struct ItemContext {
    context: ContextId,
}

#[derive(Deserialize)]
struct ContextId {
    context_id: Uuid,
}

/// A format 1 data dir, read whole: the state it holds and the generations to fold.
pub(crate) struct Legacy {
    pub state: State,
    /// The highest journal generation present; the upgrade folds everything up to it.
    pub generation: u64,
}

/// Whether `dir` looks like format 1 without a manifest: journals without a format 2
/// header (a store of the first release that never compacted, or whose first compaction
/// was cut short).
pub(crate) fn journals_are_legacy(dir: &Path, generations: &[u64]) -> Result<bool, OpenError> {
    for &generation in generations {
        let path = journal_path(dir, generation);
        let bytes = fs::read(&path).map_err(read_error(&path))?;
        let first = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
        if first.is_empty() {
            continue;
        }
        let header = frame::decode(first)
            .ok()
            .and_then(|json| serde_json::from_slice::<crate::records::HeaderLine>(json).ok());
        return Ok(header.is_none());
    }
    // Only empty journal files: the first release made one at every start.
    Ok(!generations.is_empty())
}

/// Reads a format 1 data dir. `manifest` is `None` when the dir has none: then nothing
/// but the journals is committed data (a first compaction that was cut short may have
/// left snapshot or log files behind, which are ignored).
pub(crate) fn read(dir: &Path, manifest: Option<LegacyManifest>) -> Result<Legacy, OpenError> {
    let mut state = State::default();
    let mut change = Change::default();
    let mut seq = 0;
    if let Some(manifest) = manifest {
        let compacted = manifest.generation > 0;
        for campaign in read_snapshot::<LegacyCampaign>(&dir.join(CAMPAIGNS), compacted)? {
            let path = dir.join(CAMPAIGNS);
            change.campaigns.push(
                Campaign::try_from(campaign.1)
                    .map_err(|e| corrupt(&path, format!("item {}: {e}", campaign.0)))?,
            );
        }
        for (index, record) in read_snapshot::<LegacyFollowUp>(&dir.join(FOLLOW_UPS), compacted)? {
            let path = dir.join(FOLLOW_UPS);
            change
                .follow_ups
                .push(follow_up(record).map_err(|e| corrupt(&path, format!("item {index}: {e}")))?);
        }
        for event in read_log(dir, EVENTS, manifest.events_bytes)? {
            let stored = crate::open::stored_event(&event, state.image().last_event_seq + 1)
                .map_err(|e| corrupt(&dir.join(EVENTS), e))?;
            state.put_event(stored);
        }
        for item in read_log(dir, OUTBOUND, manifest.outbound_bytes)? {
            change.outbound.push(
                outbound(
                    &item,
                    state.image().last_outbound_seq + 1 + change.outbound.len() as u64,
                )
                .map_err(|e| corrupt(&dir.join(OUTBOUND), e))?,
            );
        }
    }
    state.apply(0, change);

    let generations = journal_generations(dir).map_err(|source| OpenError::Dir {
        path: dir.to_owned(),
        source,
    })?;
    let folded = manifest.map_or(0, |m| m.generation);
    for &generation in generations.iter().filter(|g| **g > folded) {
        let path = journal_path(dir, generation);
        let bytes = fs::read(&path).map_err(read_error(&path))?;
        for (number, line) in lines(&bytes) {
            let json = match frame::decode(line.0) {
                Ok(json) => json,
                // A torn last line of the first release was a write never acknowledged.
                Err(_) if line.1 => {
                    tracing::warn!(path = %path.display(), "ignoring a torn final journal line (a write that was never acknowledged)");
                    continue;
                }
                Err(e) => return Err(corrupt(&path, format!("line {number}: {e}"))),
            };
            let entry: LegacyEntry = serde_json::from_slice(json)
                .map_err(|e| corrupt(&path, format!("line {number}: {e}")))?;
            seq += 1;
            let mut change = Change::default();
            for campaign in entry.campaigns {
                change.campaigns.push(
                    Campaign::try_from(campaign)
                        .map_err(|e| corrupt(&path, format!("line {number}: {e}")))?,
                );
            }
            for record in entry.follow_ups {
                change.follow_ups.push(
                    follow_up(record).map_err(|e| corrupt(&path, format!("line {number}: {e}")))?,
                );
            }
            for (offset, event) in entry.events.iter().enumerate() {
                change.events.push(
                    crate::open::stored_event(
                        event,
                        state.image().last_event_seq + 1 + offset as u64,
                    )
                    .map_err(|e| corrupt(&path, format!("line {number}: {e}")))?,
                );
            }
            for (offset, item) in entry.outbound.iter().enumerate() {
                change.outbound.push(
                    outbound(item, state.image().last_outbound_seq + 1 + offset as u64)
                        .map_err(|e| corrupt(&path, format!("line {number}: {e}")))?,
                );
            }
            state.apply(seq, change);
        }
    }
    Ok(Legacy {
        state,
        generation: generations.last().copied().unwrap_or(0).max(folded),
    })
}

/// The lines of a file with their numbers, each with whether it is the unterminated
/// last one. A complete, checked line stays a record whether or not its newline made it.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, (&[u8], bool))> {
    let unterminated = !bytes.is_empty() && !bytes.ends_with(b"\n");
    let count = bytes.split(|&b| b == b'\n').count();
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(move |(index, line)| (index + 1, (line, unterminated && index + 1 == count)))
}

/// An outbound item of the first release, which had no consumer side: ready to be
/// claimed, never attempted.
fn outbound(item: &RawValue, seq: u64) -> Result<StoredOutbound, String> {
    let context: ItemContext =
        serde_json::from_str(item.get()).map_err(|e| format!("outbound item: {e}"))?;
    let parsed: OutboundItem =
        serde_json::from_str(item.get()).map_err(|e| format!("outbound item: {e}"))?;
    Ok(StoredOutbound {
        seq,
        entry: QueueEntry::new(&parsed, FollowUpId::new(context.context.context_id), None),
        json: item.to_owned(),
    })
}

fn read_snapshot<T: for<'de> Deserialize<'de>>(
    path: &Path,
    must_exist: bool,
) -> Result<Vec<(usize, T)>, OpenError> {
    match fs::read(path) {
        Ok(bytes) => {
            let snapshot: Snapshot<T> =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(path, e))?;
            Ok(snapshot.items.into_iter().enumerate().collect())
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound && must_exist => Err(corrupt(
            path,
            "missing, but manifest.json records a compaction that wrote it",
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(read_error(path)(error)),
    }
}

/// An NDJSON log up to the length the manifest vouches for. Bytes past it were appended by
/// a compaction that did not commit; the journals still hold them.
fn read_log(dir: &Path, name: &str, committed: u64) -> Result<Vec<Box<RawValue>>, OpenError> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound && committed == 0 => {
            return Ok(Vec::new());
        }
        Err(error) => return Err(read_error(&path)(error)),
    };
    let Some(committed_bytes) = usize::try_from(committed)
        .ok()
        .and_then(|length| bytes.get(..length))
    else {
        return Err(corrupt(
            &path,
            format!(
                "{} bytes, but the manifest records {committed}",
                bytes.len()
            ),
        ));
    };
    if !committed_bytes.is_empty() && !committed_bytes.ends_with(b"\n") {
        return Err(corrupt(
            &path,
            format!("the manifest's length {committed} ends inside a line"),
        ));
    }
    committed_bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| {
            serde_json::from_slice::<Box<RawValue>>(line)
                .map_err(|e| corrupt(&path, format!("line {}: {e}", index + 1)))
        })
        .collect()
}
