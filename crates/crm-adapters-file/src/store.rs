//! `FileStore`: the ports implemented over the in-memory image and the journal.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use crm_domain::campaign::Campaign;
use crm_domain::event::EventEnvelope;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, FollowUpId};
use crm_domain::ids::{CorrelationId, TenantId};
use crm_domain::outbound::OutboundItem;
use crm_domain::page::Page;
use crm_domain::timestamp::Timestamp;
use crm_ports::{
    CampaignQuery, CampaignStore, Created, DispatchDecision, Dispatcher, DrainOutcome, DrainStatus,
    DueFollowUp, EventEmitter, FollowUpQuery, FollowUpStore, OutboundQueue, Store, StoreError,
};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::compaction::{self, Manifest};
use crate::journal::{self, Entry, Journal};
use crate::open::{self, FileStoreOptions, OpenError};
use crate::state::State;

/// The embedded store. Cheap to clone; all clones share one data dir.
#[derive(Debug, Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    options: FileStoreOptions,
    shared: Mutex<Shared>,
    journal: Journal,
    /// Held, never read: the OS lock on `.lock` lives as long as this handle.
    _lock: std::fs::File,
}

#[derive(Debug)]
struct Shared {
    state: State,
    /// Journal lines handed to the writer since the store opened.
    appended: u64,
    generation: u64,
    generation_bytes: u64,
    manifest: Manifest,
    compacting: bool,
}

impl FileStore {
    /// Opens (or creates) a data dir. Fails with the path of any file it cannot read,
    /// and when another process holds the dir.
    pub fn open(dir: impl Into<PathBuf>, options: FileStoreOptions) -> Result<Self, OpenError> {
        let dir = dir.into();
        let loaded = open::load(&dir)?;
        let journal = Journal::start(loaded.journal).map_err(|source| OpenError::Dir {
            path: dir.clone(),
            source,
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                options,
                shared: Mutex::new(Shared {
                    state: loaded.state,
                    appended: 0,
                    generation: loaded.generation,
                    generation_bytes: 0,
                    manifest: loaded.manifest,
                    compacting: false,
                }),
                journal,
                _lock: loaded.lock,
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves no half-applied write behind (apply runs
        // after every check), so the image is still consistent.
        self.inner
            .shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands `entry` to the journal and applies it to the image, in one critical section
    /// so that journal order is commit order. Returns the line number to wait for.
    fn commit(&self, shared: &mut Shared, entry: Entry, line: Vec<u8>) -> Result<u64, StoreError> {
        let bytes = line.len() as u64;
        self.inner
            .journal
            .append(line)
            .map_err(StoreError::unavailable)?;
        shared.appended += 1;
        shared.generation_bytes += bytes;
        shared.state.apply(entry).map_err(StoreError::unavailable)?;
        let threshold = self
            .inner
            .options
            .compact_after_bytes
            .max(shared.manifest.snapshot_bytes);
        if shared.generation_bytes >= threshold && !shared.compacting {
            // Runs on its own; `compacting` tells whether it is still going.
            drop(self.start_compaction(shared));
        }
        Ok(shared.appended)
    }

    /// Waits until journal line `line` is durable: nothing is acknowledged before that.
    async fn durable(&self, line: u64) -> Result<(), StoreError> {
        self.inner
            .journal
            .wait_durable(line)
            .await
            .map_err(|reason| StoreError::unavailable(reason.to_string()))
    }

    /// Rotates to a new journal generation and folds the old ones in the background.
    fn start_compaction(&self, shared: &mut Shared) -> Option<tokio::task::JoinHandle<()>> {
        let next = shared.generation + 1;
        let file = match std::fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(journal::journal_path(&self.inner.dir, next))
        {
            Ok(file) => file,
            Err(error) => {
                tracing::error!(%error, "cannot start a new journal generation; compaction postponed");
                return None;
            }
        };
        // The new file must survive a power loss before anything is acknowledged in it.
        if let Err(error) = compaction::sync_dir(&self.inner.dir) {
            tracing::error!(%error, "cannot sync the data dir; compaction postponed");
            return None;
        }
        self.inner.journal.rotate(file).ok()?;
        let through = shared.generation;
        shared.generation = next;
        shared.generation_bytes = 0;
        shared.compacting = true;
        let campaigns = shared.state.campaign_list();
        let follow_ups = shared.state.follow_up_list();
        let previous = shared.manifest;
        let wait_for = shared.appended;
        let store = self.clone();
        Some(tokio::spawn(async move {
            let dir = store.inner.dir.clone();
            let result = match store.durable(wait_for).await {
                Ok(()) => tokio::task::spawn_blocking(move || {
                    compaction::compact(&dir, previous, through, &campaigns, &follow_ups)
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string())),
                Err(error) => Err(error.to_string()),
            };
            let mut shared = store.lock();
            shared.compacting = false;
            match result {
                Ok(manifest) => {
                    tracing::info!(generation = through, "file store compacted");
                    shared.manifest = manifest;
                }
                Err(error) => {
                    tracing::error!(%error, "file store compaction failed; the journal keeps everything")
                }
            }
        }))
    }

    /// Waits until everything acknowledged or visible so far is durable, so a read never
    /// reports a record whose write could still be lost.
    async fn settle(&self, seen: u64) -> Result<(), StoreError> {
        self.durable(seen).await
    }
}

impl FileStore {
    /// An idempotent create: `existing` finds the record this one repeats (or refuses
    /// the id); otherwise `entry` is committed. Both happen under one lock.
    async fn create<T: Clone>(
        &self,
        record: &T,
        entry: Entry,
        existing: impl FnOnce(&State) -> Result<Option<T>, StoreError>,
    ) -> Result<Created<T>, StoreError> {
        let line = entry.encode();
        let (outcome, seen) = {
            let mut shared = self.lock();
            match existing(&shared.state)? {
                Some(found) => (Created::Existing(found), shared.appended),
                None => {
                    let seen = self.commit(&mut shared, entry, line)?;
                    (Created::Created(record.clone()), seen)
                }
            }
        };
        self.settle(seen).await?;
        Ok(outcome)
    }
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

/// Follow-ups a drain has claimed; the claim ends when this is released or dropped.
struct Claim<'a> {
    store: &'a FileStore,
    ids: Vec<FollowUpId>,
}

impl Claim<'_> {
    fn release(&mut self, shared: &mut Shared) {
        for id in self.ids.drain(..) {
            shared.state.claimed.remove(&id);
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.ids.is_empty() {
            let store = self.store;
            self.release(&mut store.lock());
        }
    }
}

fn raw<T: Serialize>(values: &[T]) -> Vec<Box<RawValue>> {
    values
        .iter()
        .map(|v| serde_json::value::to_raw_value(v).expect("records always serialize"))
        .collect()
}

#[async_trait]
impl CampaignStore for FileStore {
    async fn create_campaign(
        &self,
        campaign: &Campaign,
        events: &[EventEnvelope],
    ) -> Result<Created<Campaign>, StoreError> {
        let entry = Entry {
            campaigns: vec![campaign.clone()],
            events: raw(events),
            ..Entry::default()
        };
        self.create(campaign, entry, |state| {
            repeated(
                state.campaigns.get(&campaign.campaign_id).map(Arc::as_ref),
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
        let (found, seen) = {
            let shared = self.lock();
            let found = shared
                .state
                .tenant_campaign(tenant_id, campaign_id)
                .cloned();
            (found, shared.appended)
        };
        self.settle(seen).await?;
        Ok(found)
    }

    async fn update_campaign(
        &self,
        changed: &Campaign,
        events: &[EventEnvelope],
    ) -> Result<(), StoreError> {
        let entry = Entry {
            campaigns: vec![changed.clone()],
            events: raw(events),
            ..Entry::default()
        };
        let line = entry.encode();
        let seen = {
            let mut shared = self.lock();
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
            self.commit(&mut shared, entry, line)?
        };
        self.settle(seen).await
    }

    async fn list_campaigns(&self, query: &CampaignQuery) -> Result<Page<Campaign>, StoreError> {
        let (page, seen) = {
            let shared = self.lock();
            (shared.state.list_campaigns(query), shared.appended)
        };
        self.settle(seen).await?;
        Ok(page)
    }
}

#[async_trait]
impl FollowUpStore for FileStore {
    async fn create_follow_up(
        &self,
        follow_up: &FollowUp,
        events: &[EventEnvelope],
    ) -> Result<Created<FollowUp>, StoreError> {
        let entry = Entry {
            follow_ups: vec![follow_up.clone()],
            events: raw(events),
            ..Entry::default()
        };
        self.create(follow_up, entry, |state| {
            repeated(
                state
                    .follow_ups
                    .get(&follow_up.followup_id)
                    .map(Arc::as_ref),
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
        let (page, seen) = {
            let shared = self.lock();
            (shared.state.list_follow_ups(query), shared.appended)
        };
        self.settle(seen).await?;
        Ok(page)
    }

    async fn drain(
        &self,
        now: Timestamp,
        limit: usize,
        dispatcher: &dyn Dispatcher,
    ) -> Result<Vec<DrainOutcome>, StoreError> {
        // Claim under the lock, decide outside it, commit under it again. A claimed
        // follow-up is invisible to every other drain until its decision is applied.
        let (claimed, seen) = {
            let mut shared = self.lock();
            let claimed: Vec<DueFollowUp> = shared
                .state
                .due(now)
                .take(limit)
                .map(|(follow_up, campaign_state)| DueFollowUp {
                    follow_up: follow_up.clone(),
                    campaign_state,
                })
                .collect();
            for due in &claimed {
                shared.state.claimed.insert(due.follow_up.followup_id);
            }
            (claimed, shared.appended)
        };
        // Released however this call ends, including when its future is dropped mid-way
        // (a client that hangs up): a claim must never outlive its drain.
        let mut claim = Claim {
            store: self,
            ids: claimed
                .iter()
                .map(|due| due.follow_up.followup_id)
                .collect(),
        };
        self.settle(seen).await?;

        let mut entry = Entry::default();
        let mut items = Vec::new();
        let mut outcomes = Vec::with_capacity(claimed.len());
        for due in &claimed {
            let followup_id = due.follow_up.followup_id;
            match dispatcher.decide(due) {
                DispatchDecision::Send {
                    follow_up,
                    item,
                    events,
                } => {
                    entry.follow_ups.push(*follow_up);
                    entry.events.extend(raw(&events));
                    items.push(*item);
                    outcomes.push(DrainOutcome {
                        followup_id,
                        status: DrainStatus::Sent,
                        reason: None,
                    });
                }
                DispatchDecision::Fail { follow_up, events } => {
                    let reason = follow_up.last_error_code.clone();
                    entry.follow_ups.push(*follow_up);
                    entry.events.extend(raw(&events));
                    outcomes.push(DrainOutcome {
                        followup_id,
                        status: DrainStatus::Failed,
                        reason,
                    });
                }
                DispatchDecision::Skip { reason } => outcomes.push(DrainOutcome {
                    followup_id,
                    status: DrainStatus::Skipped,
                    reason: Some(reason),
                }),
            }
        }
        entry.outbound = raw(&items);

        let seen = {
            let mut shared = self.lock();
            claim.release(&mut shared);
            if entry.follow_ups.is_empty() {
                shared.appended
            } else {
                let line = entry.encode();
                self.commit(&mut shared, entry, line)?
            }
        };
        self.settle(seen).await?;
        Ok(outcomes)
    }

    async fn count_due(&self, now: Timestamp) -> Result<u64, StoreError> {
        let shared = self.lock();
        Ok(shared.state.due(now).count() as u64)
    }
}

#[async_trait]
impl EventEmitter for FileStore {
    async fn events_by_correlation(
        &self,
        correlation_id: CorrelationId,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let (events, seen) = {
            let shared = self.lock();
            let events: Result<Vec<EventEnvelope>, _> = shared
                .state
                .events(correlation_id)
                .iter()
                .map(|event| serde_json::from_str(event.get()))
                .collect();
            (events, shared.appended)
        };
        self.settle(seen).await?;
        events.map_err(StoreError::unavailable)
    }
}

#[async_trait]
impl OutboundQueue for FileStore {
    async fn outbound_items(
        &self,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<OutboundItem>, StoreError> {
        let (items, seen) = {
            let shared = self.lock();
            let items: Result<Vec<OutboundItem>, _> = shared
                .state
                .outbound
                .iter()
                .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                .take(limit)
                .map(|item| serde_json::from_str(item.get()))
                .collect();
            (items, shared.appended)
        };
        self.settle(seen).await?;
        items.map_err(StoreError::unavailable)
    }
}

#[async_trait]
impl Store for FileStore {
    fn backend(&self) -> &'static str {
        "file"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let seen = self.lock().appended;
        self.settle(seen).await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        // Let a compaction in progress finish, then fold whatever the journal holds.
        while self.lock().compacting {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let compaction = {
            let mut shared = self.lock();
            if shared.generation_bytes == 0 {
                return Ok(());
            }
            self.start_compaction(&mut shared)
        };
        if let Some(compaction) = compaction {
            compaction.await.map_err(StoreError::unavailable)?;
        }
        Ok(())
    }
}
