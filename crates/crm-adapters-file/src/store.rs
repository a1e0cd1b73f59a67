//! `FileStore`: the ports implemented over the in-memory image and the journal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use crm_domain::campaign::{Campaign, CampaignState, CampaignStats};
use crm_domain::delivery::{AckStatus, QueueEntry};
use crm_domain::event::EventEnvelope;
use crm_domain::failure_window::FailureWindow;
use crm_domain::follow_up::{FollowUp, FollowUpStatus};
use crm_domain::ids::{CampaignId, FollowUpId, QueueItemId, TenantId};
use crm_domain::opt_out::OptOut;
use crm_domain::outbound::OutboundItem;
use crm_domain::page::EventCursor;
use crm_domain::page::Page;
use crm_domain::policy::SendingPolicy;
use crm_domain::receipt::{Receipt, ReceiptAnswer};
use crm_domain::timestamp::Timestamp;
use crm_ports::{
    AckRequest, Acker, CampaignQuery, CampaignStore, Candidate, CreateResult, Created,
    DispatchDecision, Dispatcher, DrainOutcome, DrainPlan, DueFollowUp, Effects, EventEmitter,
    EventPage, Expired, FeedPage, FeedQuery, FollowUpQuery, FollowUpStore, HeldCampaign, LaneState,
    LeasedItem, Leaser, NewOptOut, OptOutPage, OptOutQuery, OptOutStore, OutboundQueue, Planner,
    PolicyStore, ReceiptApplier, Retention, Scheduled, SendingFacts, Store, StoreError, TraceQuery,
    ack_holds, decide_acks, decide_claims, decide_receipts, receipt_holds, window_needed,
};
use serde_json::value::RawValue;

use crate::compactor::Compactor;
use crate::frame;
use crate::journal::{self, Journal};
use crate::open::{self, FileStoreOptions, OpenError};
use crate::records::{
    CampaignRecord, EntryRecord, EventRecord, FollowUpRecord, OptOutKeyRecord, OptOutRecord,
    OutboundRecord, PolicyRecord,
};
use crate::shared::{Claims, Shared, Ticket, Touch};
use crate::state::{Change, State, StoredEvent, StoredOutbound};

/// The embedded store. Cheap to clone; all clones share one data dir.
/// What one look at the store decided (see `FileStore::decide_settled`).
enum Look<T> {
    /// A change to what it reads is on its way to the disk: look again after it.
    Wait(Ticket),
    /// Decided: the answer, and the change to wait for first, if it made one.
    Decided(Option<Ticket>, T),
}

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
    /// Woken when a drain's claims end: writes to a claimed follow-up wait for it.
    pub claims_ended: tokio::sync::Notify,
    /// Held, never read: the OS lock on `.lock` lives as long as this handle.
    _lock: std::fs::File,
}

impl FileStore {
    /// Opens (or creates) a data dir. Fails with the path of any file it cannot read or
    /// verify (having changed nothing), and when another process holds the dir.
    pub fn open(dir: impl Into<PathBuf>, options: FileStoreOptions) -> Result<Self, OpenError> {
        let dir = dir.into();
        let loaded = open::load(&dir, options.legacy_rules.as_deref())?;
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
                claims_ended: tokio::sync::Notify::new(),
                _lock: loaded.lock,
            }),
        };
        store.maybe_compact(&mut store.lock());
        Ok(store)
    }

    /// What opening `dir` would adopt from the Node.js service, changing nothing (not even
    /// the lock file): for operators to run before they switch.
    pub fn check_adoption(
        dir: &Path,
        rules: &dyn crm_ports::adoption::RecordRules,
    ) -> Result<crm_ports::adoption::AdoptionCheck, OpenError> {
        open::check_adoption(dir, rules)
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

    /// Asks for a compaction once one is due.
    fn maybe_compact(&self, shared: &mut Shared) {
        if self.compaction_due(shared) {
            self.inner.compactor.request();
        }
    }

    /// Whether the journal has grown as large as the snapshots (and at least
    /// `compact_after_bytes`), with no round under way.
    pub(crate) fn compaction_due(&self, shared: &Shared) -> bool {
        let threshold = self
            .inner
            .options
            .compact_after_bytes
            .max(shared.manifest.snapshot_bytes());
        shared.generation_bytes >= threshold && !shared.snapshot.active
    }

    /// Sends `change` to the journal; the caller then waits on the ticket.
    /// Decides a batch (acks, receipts) once nothing it reads has a change on its way to
    /// the disk: `look` either names such a change to wait for, or decides (committing
    /// what it changed, whose ticket it returns); answers once that is durable.
    async fn decide_settled<T>(
        &self,
        look: impl Fn(&mut Shared) -> Result<Look<T>, StoreError>,
    ) -> Result<T, StoreError> {
        loop {
            let looked = look(&mut self.current())?;
            match looked {
                Look::Decided(ticket, answer) => {
                    if let Some(ticket) = ticket {
                        self.durable(ticket).await?;
                    }
                    return Ok(answer);
                }
                // Another change to what this reads is on its way: decide after it.
                Look::Wait(conflict) => {
                    let _ = self.durable(conflict).await;
                }
            }
        }
    }

    /// Commits what a batch of acks or receipts decided, with the queue entries it moved:
    /// follow-ups, paused campaigns, events, and the opt-outs of numbers not on the list
    /// yet (a number on it already stays as it is, and its event is not stored again).
    fn commit_effects(
        &self,
        shared: &mut Shared,
        effects: Effects,
        outbound: Vec<StoredOutbound>,
    ) -> Result<Ticket, StoreError> {
        let mut touched: Vec<Touch> = outbound
            .iter()
            .map(|stored| Touch::QueueItem(stored.entry.queue_item_id))
            .chain(
                effects
                    .follow_ups
                    .iter()
                    .map(|f| Touch::FollowUp(f.followup_id)),
            )
            .chain(
                effects
                    .campaigns
                    .iter()
                    .map(|c| Touch::Campaign(c.campaign_id)),
            )
            .collect();
        let mut events = effects.events;
        let opt_outs: Vec<OptOut> = effects
            .opt_outs
            .into_iter()
            .filter(|new| {
                let o = &new.opt_out;
                shared.state.opt_out(&o.tenant_id, &o.phone_e164).is_none()
            })
            .map(|new| {
                events.push(new.event);
                new.opt_out
            })
            .collect();
        touched.extend(
            opt_outs
                .iter()
                .map(|o| Touch::OptOut(o.tenant_id.clone(), o.phone_e164.clone())),
        );
        let change = Change {
            outbound,
            follow_ups: effects.follow_ups,
            campaigns: effects.campaigns,
            events: stored_events(&events),
            opt_outs,
            ..Change::default()
        };
        self.commit(shared, change, touched, Claims::default())
    }

    fn commit(
        &self,
        shared: &mut Shared,
        change: Change,
        keys: Vec<Touch>,
        claims: Claims,
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
                    Ok(self.commit(&mut shared, change.clone(), keys.clone(), Claims::default())?)
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

    /// A conditional write: once no change touching `keys` is on its way to the disk,
    /// `decide` looks at the durable state and returns the change to make (`None`:
    /// none); returns whether one was made, once it is durable.
    async fn write_settled(
        &self,
        keys: &[Touch],
        decide: impl Fn(&Shared) -> Result<Option<Change>, StoreError>,
    ) -> Result<bool, StoreError> {
        /// What stands in the way of deciding now.
        enum Wait {
            /// Another write to these keys, on its way to the disk.
            Write(Ticket),
            /// A drain that claimed one of these follow-ups and is deciding it: its
            /// decision comes first (it may send it).
            Claim,
        }
        loop {
            // Listening from before the look, so that claims ending after it wake this.
            let mut claims_ended = std::pin::pin!(self.inner.claims_ended.notified());
            claims_ended.as_mut().enable();
            let decided = {
                let mut shared = self.current();
                let claimed = keys
                    .iter()
                    .any(|key| matches!(key, Touch::FollowUp(id) if shared.claimed.contains(id)));
                match shared.conflict(keys) {
                    Some(conflict) => Err(Wait::Write(conflict)),
                    None if claimed => Err(Wait::Claim),
                    None => match decide(&shared)? {
                        None => return Ok(false),
                        Some(change) => Ok(self.commit(
                            &mut shared,
                            change,
                            keys.to_vec(),
                            Claims::default(),
                        )?),
                    },
                }
            };
            match decided {
                Ok(ticket) => {
                    self.durable(ticket).await?;
                    return Ok(true);
                }
                // Decided either way, the other write changes what this one finds.
                Err(Wait::Write(conflict)) => {
                    let _ = self.durable(conflict).await;
                }
                // Once the drain has decided, its commit shows up as a write on its way.
                Err(Wait::Claim) => claims_ended.await,
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
            .map(|item| OutboundRecord::new(item.seq, &item.entry, &item.json))
            .collect(),
        opt_outs: change.opt_outs.iter().map(OptOutRecord::from).collect(),
        opt_outs_removed: change
            .opt_outs_removed
            .iter()
            .map(|(tenant_id, phone)| OptOutKeyRecord {
                tenant_id: std::borrow::Cow::Borrowed(tenant_id.as_str()),
                phone_e164: std::borrow::Cow::Borrowed(phone),
            })
            .collect(),
        policies: change
            .policies
            .iter()
            .map(|(tenant_id, policy)| PolicyRecord::new(tenant_id, policy))
            .collect(),
        policies_removed: change
            .policies_removed
            .iter()
            .map(|tenant_id| std::borrow::Cow::Borrowed(tenant_id.as_str()))
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
            name: event.name.clone(),
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

/// Decides creates one after the other as if each came alone: an item finds what the
/// state holds and what the items before it create. Returns each item's answer and the
/// change that stores the created ones.
fn decide_creates(state: &State, items: &[Scheduled]) -> (Vec<CreateResult>, Change) {
    let mut change = Change::default();
    // The items created so far, by id and by tenant key.
    let mut by_id: HashMap<FollowUpId, &FollowUp> = HashMap::new();
    let mut by_key: HashMap<(&TenantId, &str), &FollowUp> = HashMap::new();
    let results = items
        .iter()
        .map(|Scheduled { follow_up, events }| {
            let id = follow_up.followup_id;
            let found = repeated(
                state
                    .follow_up(id)
                    .map(Arc::as_ref)
                    .or_else(|| by_id.get(&id).copied()),
                |found| &found.tenant_id,
                &follow_up.tenant_id,
                id.as_uuid(),
                || {
                    let key = follow_up.external_key.as_deref()?;
                    state
                        .follow_up_by_key(&follow_up.tenant_id, key)
                        .or_else(|| by_key.get(&(&follow_up.tenant_id, key)).copied())
                },
            )?;
            if let Some(found) = found {
                return Ok(Created::Existing(found));
            }
            by_id.insert(id, follow_up);
            if let Some(key) = &follow_up.external_key {
                by_key.insert((&follow_up.tenant_id, key), follow_up);
            }
            change.follow_ups.push(follow_up.clone());
            change.events.extend(stored_events(events));
            Ok(Created::Created(follow_up.clone()))
        })
        .collect();
    (results, change)
}

/// Follow-ups a drain has claimed; the claim ends when they are handed to a commit, or
/// when this is dropped (a drain cut short: its client hung up).
/// What a drain holds while it decides; given back if it ends before its commit (an
/// early return, or the drain's future dropped).
struct Claim<'a> {
    store: &'a FileStore,
    claims: Claims,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let claims = std::mem::take(&mut self.claims);
        if !claims.follow_ups.is_empty() || !claims.tenants.is_empty() {
            self.store.lock().release(claims);
        }
        self.store.inner.claims_ended.notify_waiters();
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
        self.write_settled(&keys, |shared| {
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
            Ok(Some(Change {
                campaigns: vec![changed.clone()],
                events: stored_events(events),
                ..Change::default()
            }))
        })
        .await
        .map(|_| ())
    }

    async fn list_campaigns(&self, query: &CampaignQuery) -> Result<Page<Campaign>, StoreError> {
        Ok(self.current().state.list_campaigns(query))
    }

    async fn campaign_stats(&self, campaign_id: CampaignId) -> Result<CampaignStats, StoreError> {
        Ok(self.current().state.campaign_stats(campaign_id))
    }
}

#[async_trait]
impl PolicyStore for FileStore {
    async fn sending_policy(
        &self,
        tenant_id: &TenantId,
    ) -> Result<Option<SendingPolicy>, StoreError> {
        Ok(self
            .current()
            .state
            .policy(tenant_id)
            .map(|policy| (**policy).clone()))
    }

    async fn put_sending_policy(
        &self,
        tenant_id: &TenantId,
        policy: &SendingPolicy,
    ) -> Result<(), StoreError> {
        let keys = vec![Touch::Policy(tenant_id.clone())];
        self.write_settled(&keys, |_| {
            Ok(Some(Change {
                policies: vec![(tenant_id.clone(), policy.clone())],
                ..Change::default()
            }))
        })
        .await
        .map(|_| ())
    }

    async fn remove_sending_policy(&self, tenant_id: &TenantId) -> Result<bool, StoreError> {
        let keys = vec![Touch::Policy(tenant_id.clone())];
        self.write_settled(&keys, |shared| {
            Ok(shared.state.policy(tenant_id).map(|_| Change {
                policies_removed: vec![tenant_id.clone()],
                ..Change::default()
            }))
        })
        .await
    }
}

#[async_trait]
impl FollowUpStore for FileStore {
    async fn create_follow_ups(
        &self,
        items: &[Scheduled],
    ) -> Result<Vec<CreateResult>, StoreError> {
        let keys: Vec<Touch> = items
            .iter()
            .flat_map(|item| Touch::of_follow_up(&item.follow_up))
            .collect();
        loop {
            let ticket = {
                let mut shared = self.current();
                match shared.conflict(&keys) {
                    Some(conflict) => Err(conflict),
                    None => {
                        let (results, change) = decide_creates(&shared.state, items);
                        if change.is_empty() {
                            return Ok(results);
                        }
                        Ok((
                            self.commit(&mut shared, change, keys.clone(), Claims::default())?,
                            results,
                        ))
                    }
                }
            };
            match ticket {
                Ok((ticket, results)) => {
                    self.durable(ticket).await?;
                    return Ok(results);
                }
                // Decided either way, the other write changes what these find.
                Err(conflict) => {
                    let _ = self.durable(conflict).await;
                }
            }
        }
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
        // Plan and claim under the lock, decide outside it, commit under it again. A
        // claimed follow-up is invisible to every other drain until its decision is
        // applied; so is a limited tenant, whose ledger answers are then exact: every
        // send of it is in the image before another drain looks.
        let (claimed, mut claim) = {
            let mut shared = self.current();
            let shared = &mut *shared;
            let plan = dispatcher.plan(&shared.state.lanes());
            let mut claims = Claims::default();
            let mut usage = HashMap::new();
            for limited in &plan.limited {
                if shared.limiting.insert(limited.tenant_id.clone()) {
                    claims.tenants.push(limited.tenant_id.clone());
                    let answer = shared.state.ledger().usage(
                        &limited.tenant_id,
                        plan.windows,
                        limited.needs,
                    );
                    usage.insert(limited.tenant_id.clone(), answer);
                }
            }
            let caps = plan.caps(&usage, limit);
            let depth = limit.saturating_mul(CLAIM_DEPTH);
            let (mut candidates, mut examined) =
                claimable(shared, now, &plan.open, &caps, depth, (&[], 0));
            let recipients = recipient_usage(shared, &plan, &candidates);
            let mut take = plan.take(candidates.clone(), &usage, &recipients, &caps, limit);
            if let Some((deep, each)) = take.look_deeper {
                candidates.retain(|c| !deep.contains(&c.tenant_id));
                let lanes = plan.lanes_of(&deep);
                let (more, looked) = claimable(shared, now, &lanes, &caps, depth, (&deep, each));
                candidates.extend(more);
                examined += looked;
                let recipients = recipient_usage(shared, &plan, &candidates);
                take = plan.take(candidates, &usage, &recipients, &caps, limit);
            }
            let admitted: Vec<FollowUpId> = take
                .claim
                .into_iter()
                .map(|candidate| candidate.followup_id)
                .collect();
            tracing::debug!(claimed = admitted.len(), examined, "drain claim");
            let claimed = shared.state.to_claim(&admitted);
            for (follow_up, ..) in &claimed {
                shared.claimed.insert(follow_up.followup_id);
                claims.follow_ups.push(follow_up.followup_id);
            }
            (
                claimed,
                Claim {
                    store: self,
                    claims,
                },
            )
        };

        let mut change = Change::default();
        let mut keys = Vec::new();
        let mut outcomes = Vec::with_capacity(claimed.len());
        for (follow_up, campaign_state, recipient_opted_out) in claimed {
            let due = DueFollowUp {
                follow_up: (*follow_up).clone(),
                campaign_state,
                recipient_opted_out,
            };
            let decision = dispatcher.decide(&due);
            outcomes.push(decision.outcome(follow_up.followup_id));
            let (record, events, item) = match decision {
                DispatchDecision::Send {
                    follow_up,
                    item,
                    events,
                } => (follow_up, events, Some(item)),
                DispatchDecision::Fail { follow_up, events } => (follow_up, events, None),
                DispatchDecision::Skip { .. } => continue,
            };
            if let Some(item) = item {
                change.outbound.push(stored_outbound(&item, &record));
            }
            change.events.extend(stored_events(&events));
            keys.push(Touch::FollowUp(follow_up.followup_id));
            change.follow_ups.push(*record);
        }
        let ticket = {
            let mut shared = self.current();
            if change.is_empty() {
                return Ok(outcomes);
            }
            // The claims pass to the commit: they end once it is decided.
            let claims = std::mem::take(&mut claim.claims);
            self.commit(&mut shared, change, keys, claims)?
        };
        // Writes waiting for these follow-ups now find the commit on its way.
        self.inner.claims_ended.notify_waiters();
        self.durable(ticket).await?;
        Ok(outcomes)
    }

    async fn sending_facts(
        &self,
        tenant_id: Option<&TenantId>,
        now: Timestamp,
        cap: usize,
        planner: &dyn Planner,
    ) -> Result<(DrainPlan, SendingFacts), StoreError> {
        let mut shared = self.current();
        let lanes: Vec<LaneState> = shared
            .state
            .lanes()
            .into_iter()
            .filter(|state| tenant_id.is_none_or(|tenant| &state.lane.tenant_id == tenant))
            .collect();
        let plan = planner.plan(&lanes);
        let all: Vec<_> = lanes.iter().map(|state| state.lane.clone()).collect();
        let (due, truncated) = shared.state.due_in(now, &all, cap);
        let mut facts = SendingFacts {
            lanes,
            due,
            truncated,
            ..SendingFacts::default()
        };
        let ledger = shared.state.ledger();
        for limited in &plan.limited {
            let usage = ledger.usage(&limited.tenant_id, plan.windows, limited.needs);
            facts.usage.insert(limited.tenant_id.clone(), usage);
            if let Some(at) = ledger.next_release_at(&limited.tenant_id) {
                facts.next_release_at.insert(limited.tenant_id.clone(), at);
            }
        }
        let asked = plan.recipients_to_ask(
            &facts
                .due
                .iter()
                .map(|due| due.candidate.clone())
                .collect::<Vec<_>>(),
        );
        for (tenant, phone) in asked {
            let usage = ledger.recipient(&tenant, &phone, plan.windows);
            facts.recipients.insert((tenant, phone), usage);
        }
        Ok((plan, facts))
    }

    async fn count_due(&self, now: Timestamp, held: &[CampaignState]) -> Result<u64, StoreError> {
        let shared = self.current();
        Ok(shared.state.count_due(now, held, COUNT_DUE_CAP) as u64)
    }

    async fn follow_up(
        &self,
        tenant_id: &TenantId,
        followup_id: FollowUpId,
    ) -> Result<Option<FollowUp>, StoreError> {
        Ok(self
            .current()
            .state
            .follow_up(followup_id)
            .filter(|found| &found.tenant_id == tenant_id)
            .map(|found| (**found).clone()))
    }

    async fn save_follow_up(
        &self,
        follow_up: &FollowUp,
        expected: FollowUpStatus,
        events: &[EventEnvelope],
    ) -> Result<bool, StoreError> {
        let keys = vec![Touch::FollowUp(follow_up.followup_id)];
        self.write_settled(&keys, |shared| {
            let current = shared.state.follow_up(follow_up.followup_id);
            let unchanged = current.is_some_and(|current| {
                current.tenant_id == follow_up.tenant_id && current.status == expected
            });
            Ok(unchanged.then(|| Change {
                follow_ups: vec![follow_up.clone()],
                events: stored_events(events),
                ..Change::default()
            }))
        })
        .await
    }
}

/// `count_due` stops counting here: the gauge says "at least this many".
pub const COUNT_DUE_CAP: usize = 10_000;

/// How many times a batch a claim looks at, so that follow-ups the limits hold do not
/// leave the batch empty while others wait behind them.
const CLAIM_DEPTH: usize = 4;

/// A campaign a batch of acks or receipts holds (one of `held`), with the failure window
/// its tenant's policy asks for; `None` for a campaign the batch does not hold.
fn held_campaign(state: &State, held: &[CampaignId], id: CampaignId) -> Option<HeldCampaign> {
    if !held.contains(&id) {
        return None;
    }
    let campaign = (**state.campaign(id)?).clone();
    let policy = state.policy(&campaign.tenant_id).map(|policy| &**policy);
    let window = window_needed(&campaign, policy).map(|policy| {
        FailureWindow::new(
            policy,
            state.finished_deliveries(id, policy.window as usize),
        )
    });
    Some(HeldCampaign { campaign, window })
}

/// The due follow-ups of `lanes` a drain may claim (see `State::candidates`): none that
/// another drain claimed or a change on its way to the journal touches.
fn claimable(
    shared: &Shared,
    now: Timestamp,
    lanes: &[crm_ports::Lane],
    caps: &HashMap<TenantId, usize>,
    depth: usize,
    deep: (&[TenantId], usize),
) -> (Vec<Candidate>, usize) {
    shared
        .state
        .candidates(now, lanes, caps, depth, deep, |id| {
            shared.claimed.contains(&id) || shared.is_pending(&Touch::FollowUp(id))
        })
}

/// The ledger's answer for each recipient whose history the admission of `candidates`
/// needs.
fn recipient_usage(
    shared: &mut Shared,
    plan: &DrainPlan,
    candidates: &[Candidate],
) -> HashMap<(TenantId, String), crm_ports::RecipientUsage> {
    plan.recipients_to_ask(candidates)
        .into_iter()
        .map(|(tenant_id, phone)| {
            let answer = shared
                .state
                .ledger()
                .recipient(&tenant_id, &phone, plan.windows);
            ((tenant_id, phone), answer)
        })
        .collect()
}

fn stored_outbound(item: &OutboundItem, follow_up: &FollowUp) -> StoredOutbound {
    StoredOutbound {
        // Numbered at commit.
        seq: 0,
        entry: QueueEntry::new(item, follow_up.followup_id, follow_up.sender.clone()),
        json: serde_json::value::to_raw_value(item).expect("outbound items always serialize"),
    }
}

#[async_trait]
impl EventEmitter for FileStore {
    async fn events_by_correlation(&self, query: &TraceQuery) -> Result<EventPage, StoreError> {
        let scan = self.current().state.events_by_correlation(
            query.correlation_id,
            query.tenant_id.as_ref(),
            query.after,
            query.limit,
        );
        Ok(EventPage {
            next: scan.next(),
            items: scan
                .items
                .iter()
                .map(|event| decode(&event.json))
                .collect::<Result<_, _>>()?,
        })
    }

    async fn read_feed(&self, query: &FeedQuery) -> Result<FeedPage, StoreError> {
        let (scan, start) = {
            let shared = self.current();
            let image = shared.state.image();
            let oldest = EventCursor(image.events_deleted_through);
            let start = query.after.unwrap_or(oldest);
            if start.0 > image.last_event_seq {
                return Err(StoreError::CursorNotIssued);
            }
            if start < oldest {
                return Err(StoreError::CursorExpired { oldest });
            }
            let scan = shared.state.feed(
                start.0,
                query.limit,
                query.tenant_id.as_ref(),
                query.name_prefix.as_deref(),
            );
            (scan, start)
        };
        Ok(FeedPage {
            next: scan.last.unwrap_or(start),
            items: scan
                .items
                .iter()
                .map(|event| decode(&event.json))
                .collect::<Result<_, _>>()?,
        })
    }

    async fn wait_for_events(&self, after: EventCursor, wait: Duration) -> Result<(), StoreError> {
        // Each durable write moves the journal's status; the events it carries are then
        // in the image once caught up.
        let mut durable = self.inner.journal.watch();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            durable.borrow_and_update();
            if self.current().state.image().last_event_seq > after.0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, durable.changed())
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    }
}

#[async_trait]
impl OutboundQueue for FileStore {
    async fn claim(
        &self,
        now: Timestamp,
        limit: usize,
        leaser: &dyn Leaser,
    ) -> Result<Vec<LeasedItem>, StoreError> {
        let (ticket, leased) = {
            let mut shared = self.current();
            let shared = &mut *shared;
            let claimable = shared
                .state
                .claimable(now, limit, |id| shared.is_pending(&Touch::QueueItem(id)));
            let batch = decide_claims(
                claimable.iter().map(|stored| &stored.entry),
                |id| shared.state.follow_up(id).map(|follow_up| &**follow_up),
                leaser,
            );
            if batch.entries.is_empty() {
                return Ok(Vec::new());
            }
            let json_of = |id: QueueItemId| {
                claimable
                    .iter()
                    .find(|stored| stored.entry.queue_item_id == id)
                    .map(|stored| (stored.seq, stored.json.clone()))
                    .expect("a claimed entry was claimable")
            };
            let mut keys: Vec<Touch> = batch
                .entries
                .iter()
                .map(|entry| Touch::QueueItem(entry.queue_item_id))
                .collect();
            keys.extend(
                batch
                    .follow_ups
                    .iter()
                    .map(|f| Touch::FollowUp(f.followup_id)),
            );
            let leased: Vec<(QueueEntry, Box<RawValue>)> = batch
                .entries
                .iter()
                .filter(|entry| batch.leased.contains(&entry.queue_item_id))
                .map(|entry| (entry.clone(), json_of(entry.queue_item_id).1))
                .collect();
            let change = Change {
                outbound: batch
                    .entries
                    .into_iter()
                    .map(|entry| {
                        let (seq, json) = json_of(entry.queue_item_id);
                        StoredOutbound { seq, entry, json }
                    })
                    .collect(),
                follow_ups: batch.follow_ups,
                events: stored_events(&batch.events),
                ..Change::default()
            };
            (
                self.commit(shared, change, keys, Claims::default())?,
                leased,
            )
        };
        self.durable(ticket).await?;
        leased
            .into_iter()
            .map(|(entry, json)| {
                Ok(LeasedItem {
                    entry,
                    item: decode(&json)?,
                })
            })
            .collect()
    }

    async fn ack(
        &self,
        acks: &[AckRequest],
        acker: &dyn Acker,
    ) -> Result<Vec<AckStatus>, StoreError> {
        self.decide_settled(|shared| {
            // The campaigns these acks may pause are decided on too.
            let held = ack_holds(acks, acker, |id| {
                let item = shared.state.outbound_item(id)?;
                shared.state.follow_up(item.entry.followup_id)?.campaign_id
            });
            let keys: Vec<Touch> = acks
                .iter()
                .map(|ack| Touch::QueueItem(ack.queue_item_id))
                .chain(held.iter().copied().map(Touch::Campaign))
                .collect();
            if let Some(conflict) = shared.conflict(&keys) {
                return Ok(Look::Wait(conflict));
            }
            let state = &shared.state;
            let batch = decide_acks(
                acks,
                acker,
                |id| state.outbound_item(id).map(|stored| stored.entry.clone()),
                |id| state.follow_up(id).map(|follow_up| (**follow_up).clone()),
                |id| held_campaign(state, &held, id),
            );
            if batch.entries.is_empty() {
                return Ok(Look::Decided(None, batch.statuses));
            }
            let outbound: Vec<StoredOutbound> = batch
                .entries
                .into_iter()
                .filter_map(|entry| {
                    let stored = state.outbound_item(entry.queue_item_id)?;
                    Some(StoredOutbound {
                        seq: stored.seq,
                        entry,
                        json: stored.json.clone(),
                    })
                })
                .collect();
            let ticket = self.commit_effects(shared, batch.effects, outbound)?;
            Ok(Look::Decided(Some(ticket), batch.statuses))
        })
        .await
    }

    async fn apply_receipts(
        &self,
        receipts: &[Receipt],
        applier: &dyn ReceiptApplier,
    ) -> Result<Vec<ReceiptAnswer>, StoreError> {
        self.decide_settled(|shared| {
            let candidates = |id: &str| shared.state.follow_ups_by_provider_message(id);
            // The follow-ups the receipts are about, and the campaigns they may pause.
            let held = receipt_holds(receipts, applier, candidates);
            let keys: Vec<Touch> = receipts
                .iter()
                .flat_map(|receipt| candidates(&receipt.provider_message_id))
                .map(|follow_up| Touch::FollowUp(follow_up.followup_id))
                .chain(held.iter().copied().map(Touch::Campaign))
                .collect();
            if let Some(conflict) = shared.conflict(&keys) {
                return Ok(Look::Wait(conflict));
            }
            let batch = decide_receipts(receipts, applier, candidates, |id| {
                held_campaign(&shared.state, &held, id)
            });
            if batch.effects.follow_ups.is_empty() {
                return Ok(Look::Decided(None, batch.answers));
            }
            let ticket = self.commit_effects(shared, batch.effects, Vec::new())?;
            Ok(Look::Decided(Some(ticket), batch.answers))
        })
        .await
    }

    async fn queue_entry(&self, id: QueueItemId) -> Result<Option<QueueEntry>, StoreError> {
        Ok(self
            .current()
            .state
            .outbound_item(id)
            .map(|stored| stored.entry.clone()))
    }

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
impl OptOutStore for FileStore {
    async fn add_opt_out(&self, added: &NewOptOut) -> Result<Created<OptOut>, StoreError> {
        let opt_out = &added.opt_out;
        let keys = vec![Touch::OptOut(
            opt_out.tenant_id.clone(),
            opt_out.phone_e164.clone(),
        )];
        let change = Change {
            opt_outs: vec![opt_out.clone()],
            events: stored_events(std::slice::from_ref(&added.event)),
            ..Change::default()
        };
        self.create(opt_out, change, keys, |state| {
            Ok(state
                .opt_out(&opt_out.tenant_id, &opt_out.phone_e164)
                .map(|found| (**found).clone()))
        })
        .await
    }

    async fn remove_opt_out(
        &self,
        tenant_id: &TenantId,
        phone_e164: &str,
        event: &EventEnvelope,
    ) -> Result<bool, StoreError> {
        let keys = vec![Touch::OptOut(tenant_id.clone(), phone_e164.to_owned())];
        self.write_settled(&keys, |shared| {
            Ok(shared.state.opt_out(tenant_id, phone_e164).map(|_| Change {
                opt_outs_removed: vec![(tenant_id.clone(), phone_e164.to_owned())],
                events: stored_events(std::slice::from_ref(event)),
                ..Change::default()
            }))
        })
        .await
    }

    async fn opt_outs(&self, query: &OptOutQuery) -> Result<OptOutPage, StoreError> {
        let (items, next) =
            self.current()
                .state
                .opt_outs(&query.tenant_id, query.after.as_deref(), query.limit);
        Ok(OptOutPage { items, next })
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

    /// Retention happens when the store compacts: this asks for a compaction that leaves
    /// out what is older than the records' cutoff, and waits for it. The ledger of sends
    /// lives in memory and forgets what is older than its window by itself.
    async fn expire(&self, retention: Retention, _batch: usize) -> Result<Expired, StoreError> {
        let cutoff = retention.records_before;
        let before = {
            let mut shared = self.current();
            if !shared.state.has_expired(cutoff) {
                return Ok(Expired::default());
            }
            shared.retention_cutoff = shared.retention_cutoff.max(Some(cutoff));
            shared.retained_total
        };
        // A background round may do the work before the one requested here runs.
        self.inner.compactor.request_and_watch().await;
        let after = self.lock().retained_total;
        Ok(Expired {
            events: after.events_removed - before.events_removed,
            outbound_items: after.items_removed - before.items_removed,
            ledger_entries: 0,
        })
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
