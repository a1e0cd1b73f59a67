//! `FileStore`: the ports implemented over the in-memory image and the journal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use crm_domain::campaign::Campaign;
use crm_domain::event::EventEnvelope;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, FollowUpId, TenantId};
use crm_domain::outbound::OutboundItem;
use crm_domain::page::Page;
use crm_domain::timestamp::Timestamp;
use crm_ports::{
    CampaignQuery, CampaignStore, Created, DispatchDecision, Dispatcher, DrainOutcome, DrainStatus,
    DueFollowUp, EventEmitter, EventPage, FollowUpQuery, FollowUpStore, OutboundQueue, Store,
    StoreError, TraceQuery,
};
use serde_json::value::RawValue;

use crate::compactor::Compactor;
use crate::frame;
use crate::journal::{self, Journal};
use crate::open::{self, FileStoreOptions, OpenError};
use crate::records::{CampaignRecord, EntryRecord, EventRecord, FollowUpRecord, OutboundRecord};
use crate::shared::{Shared, Ticket, Touch};
use crate::state::{Change, State, StoredEvent, StoredOutbound};

/// The embedded store. Cheap to clone; all clones share one data dir.
#[derive(Debug, Clone)]
pub struct FileStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub dir: PathBuf,
    pub options: FileStoreOptions,
    pub shared: Mutex<Shared>,
    pub journal: Journal,
    pub compactor: Compactor,
    /// Held, never read: the OS lock on `.lock` lives as long as this handle.
    _lock: std::fs::File,
}

impl FileStore {
    /// Opens (or creates) a data dir. Fails with the path of any file it cannot read or
    /// verify (having changed nothing), and when another process holds the dir.
    pub fn open(dir: impl Into<PathBuf>, options: FileStoreOptions) -> Result<Self, OpenError> {
        let dir = dir.into();
        let loaded = open::load(&dir)?;
        let dir_error = |source| OpenError::Dir {
            path: dir.clone(),
            source,
        };
        let generation = loaded.generation + 1;
        let file = journal::create_journal(&dir, generation).map_err(dir_error)?;
        let journal =
            Journal::start(dir.clone(), file, loaded.state.image().last_seq).map_err(dir_error)?;
        let store = Self {
            inner: Arc::new_cyclic(|weak| Inner {
                dir: dir.clone(),
                options,
                shared: Mutex::new(Shared::new(
                    loaded.state,
                    loaded.manifest,
                    generation,
                    loaded.journal_bytes,
                )),
                journal,
                compactor: Compactor::start(weak.clone()),
                _lock: loaded.lock,
            }),
        };
        store.maybe_compact(&mut store.lock());
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves no half-applied change behind (changes
        // are applied whole in `catch_up`), so the image is still consistent.
        self.inner
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lock, with every durable change applied.
    pub(crate) fn current(&self) -> MutexGuard<'_, Shared> {
        let mut shared = self.lock();
        shared.catch_up(&self.inner.journal);
        shared
    }

    /// Asks for a compaction once the journal is as large as the snapshots.
    fn maybe_compact(&self, shared: &mut Shared) {
        let threshold = self
            .inner
            .options
            .compact_after_bytes
            .max(shared.manifest.snapshot_bytes());
        if shared.generation_bytes >= threshold && !shared.snapshot.active {
            self.inner.compactor.request();
        }
    }

    /// Sends `change` to the journal; the caller then waits on the ticket.
    fn commit(
        &self,
        shared: &mut Shared,
        change: Change,
        keys: Vec<Touch>,
        claims: Vec<FollowUpId>,
    ) -> Result<Ticket, StoreError> {
        let (ticket, _) = shared
            .commit(&self.inner.journal, change, keys, claims, journal_line)
            .map_err(StoreError::unavailable)?;
        self.maybe_compact(shared);
        Ok(ticket)
    }

    /// Waits until the change of `ticket` is durable: nothing is acknowledged before.
    async fn durable(&self, ticket: Ticket) -> Result<(), StoreError> {
        self.inner
            .journal
            .wait(ticket.seq, ticket.epoch)
            .await
            .map_err(|reason| StoreError::unavailable(reason.to_string()))
    }

    /// An idempotent create: `existing` finds the record this one repeats (or refuses
    /// the id) among durable records; a create of the same id or key still on its way to
    /// the disk is waited for first.
    async fn create<T: Clone>(
        &self,
        record: &T,
        change: Change,
        keys: Vec<Touch>,
        existing: impl Fn(&State) -> Result<Option<T>, StoreError>,
    ) -> Result<Created<T>, StoreError> {
        loop {
            let ticket = {
                let mut shared = self.current();
                if let Some(conflict) = shared.conflict(&keys) {
                    Err(conflict)
                } else if let Some(found) = existing(&shared.state)? {
                    return Ok(Created::Existing(found));
                } else {
                    Ok(self.commit(&mut shared, change.clone(), keys.clone(), Vec::new())?)
                }
            };
            match ticket {
                Ok(ticket) => {
                    self.durable(ticket).await?;
                    return Ok(Created::Created(record.clone()));
                }
                // Decided either way, the other write changes what this one finds.
                Err(conflict) => {
                    let _ = self.durable(conflict).await;
                }
            }
        }
    }

    /// Writes a probe file and syncs it: whether the data dir takes writes right now.
    fn probe(&self) -> std::io::Result<()> {
        use std::io::Write;
        let path = self.inner.dir.join(".probe");
        let result = std::fs::File::create(&path).and_then(|mut file| {
            file.write_all(&[0; 64 * 1024])?;
            file.sync_all()
        });
        let _ = std::fs::remove_file(&path);
        result
    }
}

/// The journal line of change number `seq`.
fn journal_line(seq: u64, change: &Change) -> Vec<u8> {
    frame::encode(&EntryRecord {
        seq,
        campaigns: change.campaigns.iter().map(CampaignRecord::from).collect(),
        follow_ups: change.follow_ups.iter().map(FollowUpRecord::from).collect(),
        events: change
            .events
            .iter()
            .map(|event| EventRecord {
                seq: event.seq,
                envelope: std::borrow::Cow::Borrowed(&event.json),
            })
            .collect(),
        outbound: change
            .outbound
            .iter()
            .map(|item| OutboundRecord {
                seq: item.seq,
                followup_id: item.followup_id.as_uuid(),
                item: std::borrow::Cow::Borrowed(&item.json),
            })
            .collect(),
    })
}

fn stored_events(events: &[EventEnvelope]) -> Vec<StoredEvent> {
    events
        .iter()
        .map(|event| StoredEvent {
            // Numbered at commit.
            seq: 0,
            tenant_id: event.tenant_id.clone(),
            correlation_id: event.correlation_id,
            emitted_at: event.emitted_at,
            json: serde_json::value::to_raw_value(event).expect("envelopes always serialize"),
        })
        .collect()
}

/// The stored record a create repeats: the one with its id (an id of another tenant is a
/// conflict), else the tenant's one with its external key.
fn repeated<'a, T: Clone>(
    by_id: Option<&'a T>,
    tenant_of: impl Fn(&T) -> &TenantId,
    tenant_id: &TenantId,
    id: uuid::Uuid,
    by_key: impl FnOnce() -> Option<&'a T>,
) -> Result<Option<T>, StoreError> {
    match by_id {
        Some(found) if tenant_of(found) != tenant_id => Err(StoreError::IdConflict { id }),
        Some(found) => Ok(Some(found.clone())),
        None => Ok(by_key().cloned()),
    }
}

/// Follow-ups a drain has claimed; the claim ends when they are handed to a commit, or
/// when this is dropped (a drain cut short: its client hung up).
struct Claim<'a> {
    store: &'a FileStore,
    ids: Vec<FollowUpId>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let mut shared = self.store.lock();
            for id in self.ids.drain(..) {
                shared.claimed.remove(&id);
            }
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(json: &RawValue) -> Result<T, StoreError> {
    serde_json::from_str(json.get()).map_err(StoreError::unavailable)
}

#[async_trait]
impl CampaignStore for FileStore {
    async fn create_campaign(
        &self,
        campaign: &Campaign,
        events: &[EventEnvelope],
    ) -> Result<Created<Campaign>, StoreError> {
        let change = Change {
            campaigns: vec![campaign.clone()],
            events: stored_events(events),
            ..Change::default()
        };
        self.create(campaign, change, Touch::of_campaign(campaign), |state| {
            repeated(
                state.campaign(campaign.campaign_id).map(Arc::as_ref),
                |found| &found.tenant_id,
                &campaign.tenant_id,
                campaign.campaign_id.as_uuid(),
                || {
                    let key = campaign.external_key.as_deref()?;
                    state.campaign_by_key(&campaign.tenant_id, key)
                },
            )
        })
        .await
    }

    async fn campaign(
        &self,
        tenant_id: &TenantId,
        campaign_id: CampaignId,
    ) -> Result<Option<Campaign>, StoreError> {
        let shared = self.current();
        Ok(shared
            .state
            .tenant_campaign(tenant_id, campaign_id)
            .cloned())
    }

    async fn update_campaign(
        &self,
        changed: &Campaign,
        events: &[EventEnvelope],
    ) -> Result<(), StoreError> {
        let keys = vec![Touch::Campaign(changed.campaign_id)];
        loop {
            let ticket = {
                let mut shared = self.current();
                match shared.conflict(&keys) {
                    Some(conflict) => Err(conflict),
                    None => {
                        let current = shared
                            .state
                            .tenant_campaign(&changed.tenant_id, changed.campaign_id)
                            .ok_or(StoreError::NotFound {
                                campaign_id: changed.campaign_id,
                            })?;
                        if current.revision + 1 != changed.revision {
                            return Err(StoreError::Stale {
                                campaign_id: changed.campaign_id,
                            });
                        }
                        let change = Change {
                            campaigns: vec![changed.clone()],
                            events: stored_events(events),
                            ..Change::default()
                        };
                        Ok(self.commit(&mut shared, change, keys.clone(), Vec::new())?)
                    }
                }
            };
            match ticket {
                Ok(ticket) => return self.durable(ticket).await,
                Err(conflict) => {
                    let _ = self.durable(conflict).await;
                }
            }
        }
    }

    async fn list_campaigns(&self, query: &CampaignQuery) -> Result<Page<Campaign>, StoreError> {
        Ok(self.current().state.list_campaigns(query))
    }
}

#[async_trait]
impl FollowUpStore for FileStore {
    async fn create_follow_up(
        &self,
        follow_up: &FollowUp,
        events: &[EventEnvelope],
    ) -> Result<Created<FollowUp>, StoreError> {
        let change = Change {
            follow_ups: vec![follow_up.clone()],
            events: stored_events(events),
            ..Change::default()
        };
        self.create(follow_up, change, Touch::of_follow_up(follow_up), |state| {
            repeated(
                state.follow_up(follow_up.followup_id).map(Arc::as_ref),
                |found| &found.tenant_id,
                &follow_up.tenant_id,
                follow_up.followup_id.as_uuid(),
                || {
                    let key = follow_up.external_key.as_deref()?;
                    state.follow_up_by_key(&follow_up.tenant_id, key)
                },
            )
        })
        .await
    }

    async fn list_follow_ups(&self, query: &FollowUpQuery) -> Result<Page<FollowUp>, StoreError> {
        Ok(self.current().state.list_follow_ups(query))
    }

    async fn drain(
        &self,
        now: Timestamp,
        limit: usize,
        dispatcher: &dyn Dispatcher,
    ) -> Result<Vec<DrainOutcome>, StoreError> {
        // Claim under the lock, decide outside it, commit under it again. A claimed
        // follow-up is invisible to every other drain until its decision is applied.
        let claimed = {
            let mut shared = self.current();
            let shared = &mut *shared;
            let due = shared
                .state
                .due(now, limit, dispatcher.held_states(), |id| {
                    shared.claimed.contains(&id) || shared.is_pending(&Touch::FollowUp(id))
                });
            tracing::debug!(
                claimed = due.follow_ups.len(),
                examined = due.examined,
                "drain claim"
            );
            for (follow_up, _) in &due.follow_ups {
                shared.claimed.insert(follow_up.followup_id);
            }
            due.follow_ups
        };
        let mut claim = Claim {
            store: self,
            ids: claimed.iter().map(|(f, _)| f.followup_id).collect(),
        };

        let mut change = Change::default();
        let mut keys = Vec::new();
        let mut outcomes = Vec::with_capacity(claimed.len());
        for (follow_up, campaign_state) in claimed {
            let due = DueFollowUp {
                follow_up: (*follow_up).clone(),
                campaign_state,
            };
            let followup_id = follow_up.followup_id;
            let (record, events, item, status) = match dispatcher.decide(&due) {
                DispatchDecision::Send {
                    follow_up,
                    item,
                    events,
                } => (follow_up, events, Some(item), DrainStatus::Sent),
                DispatchDecision::Fail { follow_up, events } => {
                    (follow_up, events, None, DrainStatus::Failed)
                }
                DispatchDecision::Skip { reason } => {
                    outcomes.push(DrainOutcome {
                        followup_id,
                        status: DrainStatus::Skipped,
                        reason: Some(reason),
                    });
                    continue;
                }
            };
            outcomes.push(DrainOutcome {
                followup_id,
                status,
                reason: (status == DrainStatus::Failed)
                    .then(|| record.last_error_code.clone())
                    .flatten(),
            });
            if let Some(item) = item {
                change.outbound.push(stored_outbound(&item));
            }
            change.events.extend(stored_events(&events));
            keys.push(Touch::FollowUp(followup_id));
            change.follow_ups.push(*record);
        }
        let ticket = {
            let mut shared = self.current();
            if change.is_empty() {
                return Ok(outcomes);
            }
            // The claims pass to the commit: they end once it is decided.
            let claims = std::mem::take(&mut claim.ids);
            self.commit(&mut shared, change, keys, claims)?
        };
        self.durable(ticket).await?;
        Ok(outcomes)
    }

    async fn count_due(&self, now: Timestamp) -> Result<u64, StoreError> {
        let shared = self.current();
        let held = crm_domain::follow_up::holding_states();
        Ok(shared.state.count_due(now, &held, COUNT_DUE_CAP) as u64)
    }
}

/// `count_due` stops counting here: the gauge says "at least this many".
pub const COUNT_DUE_CAP: usize = 10_000;

fn stored_outbound(item: &OutboundItem) -> StoredOutbound {
    StoredOutbound {
        // Numbered at commit.
        seq: 0,
        followup_id: FollowUpId::new(item.context.context_id),
        json: serde_json::value::to_raw_value(item).expect("outbound items always serialize"),
    }
}

#[async_trait]
impl EventEmitter for FileStore {
    async fn events_by_correlation(&self, query: &TraceQuery) -> Result<EventPage, StoreError> {
        let (events, next) = self.current().state.events_by_correlation(
            query.correlation_id,
            query.tenant_id.as_ref(),
            query.after,
            query.limit,
        );
        Ok(EventPage {
            items: events
                .iter()
                .map(|event| decode(&event.json))
                .collect::<Result<_, _>>()?,
            next,
        })
    }
}

#[async_trait]
impl OutboundQueue for FileStore {
    async fn outbound_items(
        &self,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<OutboundItem>, StoreError> {
        let items = self.current().state.outbound_items(offset, limit);
        items.iter().map(|item| decode(&item.json)).collect()
    }
}

#[async_trait]
impl Store for FileStore {
    fn backend(&self) -> &'static str {
        "file"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let healthy = {
            let _shared = self.current();
            self.inner.journal.progress().healthy
        };
        if healthy {
            return Ok(());
        }
        // The last journal write failed: serve again once the disk takes writes.
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.probe())
            .await
            .map_err(StoreError::unavailable)?
            .map_err(StoreError::unavailable)
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let done = self.inner.compactor.request_and_watch();
        let wait = self.inner.options.shutdown_wait;
        match tokio::time::timeout(wait, done).await {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::unavailable(format!(
                "the final compaction did not finish within {} ms; the journal keeps every acknowledged write",
                wait.as_millis()
            ))),
        }
    }
}
