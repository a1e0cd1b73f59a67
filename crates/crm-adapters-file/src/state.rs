//! The in-memory image of the store: every durable record, plus the indexes queries need.
//!
//! `Image` holds the records in persistent maps, so a compaction snapshot is an O(1)
//! clone taken under the lock and written out without it. `Indexes` are derived from the
//! image and never written down. `apply` is the only way either changes, used for live
//! commits and for replay alike, so the two cannot disagree.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use crm_domain::campaign::{Campaign, CampaignState, CampaignStats};
use crm_domain::delivery::{QueueEntry, QueueStatus};
use crm_domain::failure_window::FinishedDelivery;
use crm_domain::follow_up::{FollowUp, FollowUpStatus};
use crm_domain::ids::QueueItemId;
use crm_domain::ids::{CampaignId, CorrelationId, FollowUpId, TenantId};
use crm_domain::opt_out::OptOut;
use crm_domain::page::{Cursor, EventCursor, Page};
use crm_domain::policy::SendingPolicy;
use crm_domain::timestamp::Timestamp;
use crm_ports::{
    CampaignQuery, Candidate, DueEntry, FollowUpQuery, Lane as PortLane, LaneState, Scan,
    bounded_page,
};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::ledger::Ledger;

/// An event as stored: its place in commit order, what the queries filter on, and the
/// envelope exactly as it was validated.
#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    pub seq: u64,
    pub tenant_id: TenantId,
    pub correlation_id: CorrelationId,
    pub name: String,
    pub emitted_at: Timestamp,
    pub json: Box<RawValue>,
}

/// An outbound item as stored: its place in enqueue order, where it is in its delivery,
/// and the item's JSON as handed out.
#[derive(Debug, Clone)]
pub(crate) struct StoredOutbound {
    /// 0 for an item not numbered yet (a new one on its way to a commit).
    pub seq: u64,
    pub entry: QueueEntry,
    pub json: Box<RawValue>,
}

/// One committed unit: the records it changed (whole, so applying is an upsert), the
/// events it produced and the outbound items it added or moved, each numbered.
#[derive(Debug, Clone, Default)]
pub(crate) struct Change {
    pub campaigns: Vec<Campaign>,
    pub follow_ups: Vec<FollowUp>,
    pub events: Vec<StoredEvent>,
    pub outbound: Vec<StoredOutbound>,
    pub opt_outs: Vec<OptOut>,
    pub opt_outs_removed: Vec<(TenantId, String)>,
    pub policies: Vec<(TenantId, SendingPolicy)>,
    pub policies_removed: Vec<TenantId>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.campaigns.is_empty()
            && self.follow_ups.is_empty()
            && self.events.is_empty()
            && self.outbound.is_empty()
            && self.opt_outs.is_empty()
            && self.opt_outs_removed.is_empty()
            && self.policies.is_empty()
            && self.policies_removed.is_empty()
    }
}

/// Every durable record and the counters that continue from them. Cloning is O(1).
#[derive(Debug, Clone, Default)]
pub(crate) struct Image {
    pub campaigns: imbl::HashMap<CampaignId, Arc<Campaign>>,
    pub follow_ups: imbl::HashMap<FollowUpId, Arc<FollowUp>>,
    pub events: imbl::OrdMap<u64, Arc<StoredEvent>>,
    pub outbound: imbl::OrdMap<u64, Arc<StoredOutbound>>,
    pub opt_outs: imbl::OrdMap<(TenantId, String), Arc<OptOut>>,
    pub policies: imbl::OrdMap<TenantId, Arc<SendingPolicy>>,
    /// The last journal record applied.
    pub last_seq: u64,
    pub last_event_seq: u64,
    pub last_outbound_seq: u64,
    /// Events up to here were removed by retention.
    pub events_deleted_through: u64,
}

type Millis = i64;
/// A tenant, interned: index keys stay small however long tenant ids are.
type TenantKey = u32;

/// A recipient time zone, interned; 0 is none (the tenant's).
type ZoneKey = u32;

/// Pending follow-ups are queued per lane. A drain visits lanes, not follow-ups, so
/// follow-ups held back (a paused campaign, quiet hours, a tenant over its rate) cost it
/// nothing however many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Lane {
    tenant: TenantKey,
    campaign: Option<CampaignId>,
    zone: ZoneKey,
}

#[derive(Debug, Default)]
struct Indexes {
    tenants: HashMap<TenantId, TenantKey>,
    /// Tenants by key, for turning lanes back into ids.
    tenant_ids: Vec<TenantId>,
    zones: HashMap<String, ZoneKey>,
    /// Zone names by key - 1.
    zone_names: Vec<String>,
    /// The counts of each campaign's follow-ups, kept as they change.
    campaign_stats: HashMap<CampaignId, CampaignStats>,
    campaign_keys: HashMap<(TenantKey, String), CampaignId>,
    campaign_order: BTreeSet<(TenantKey, Millis, Uuid)>,
    campaign_state_order: BTreeSet<(TenantKey, CampaignState, Millis, Uuid)>,
    follow_up_keys: HashMap<(TenantKey, String), FollowUpId>,
    follow_up_order: BTreeSet<(TenantKey, Millis, Uuid)>,
    follow_up_status_order: BTreeSet<(TenantKey, FollowUpStatus, Millis, Uuid)>,
    campaign_follow_ups: BTreeSet<(CampaignId, Millis, Uuid)>,
    campaign_status_follow_ups: BTreeSet<(CampaignId, FollowUpStatus, Millis, Uuid)>,
    lanes: BTreeMap<Lane, BTreeSet<(Millis, FollowUpId)>>,
    events_by_correlation: BTreeSet<(CorrelationId, u64)>,
    /// Outbound items not done, by when they can be claimed.
    available: BTreeSet<(Millis, u64)>,
    /// Outbound items done, by when they finished (for retention).
    finished: BTreeSet<(Millis, u64)>,
    item_seq: HashMap<QueueItemId, u64>,
    /// The follow-ups whose delivery recorded each provider message id (one, unless a
    /// sender reported one id twice).
    provider_messages: HashMap<String, Vec<FollowUpId>>,
    /// Each campaign's finished deliveries by when they last changed, and whether they
    /// failed (the failure windows of `auto_pause`).
    finished_deliveries: BTreeMap<(CampaignId, Millis, Uuid), bool>,
}

impl Indexes {
    fn tenant(&mut self, tenant_id: &TenantId) -> TenantKey {
        if let Some(key) = self.tenants.get(tenant_id) {
            return *key;
        }
        let next = TenantKey::try_from(self.tenants.len()).expect("fewer than 2^32 tenants");
        self.tenants.insert(tenant_id.clone(), next);
        self.tenant_ids.push(tenant_id.clone());
        next
    }

    /// Moves `follow_up` in the finished deliveries of its campaign from where `old` had it.
    fn index_finished_delivery(&mut self, old: Option<&FollowUp>, follow_up: &FollowUp) {
        let key = |f: &FollowUp| {
            let campaign = f.campaign_id?;
            let finished = FinishedDelivery::of(f)?;
            Some((
                (
                    campaign,
                    f.updated_at.unix_millis(),
                    f.followup_id.as_uuid(),
                ),
                finished.failed,
            ))
        };
        if let Some((before, _)) = old.and_then(key) {
            self.finished_deliveries.remove(&before);
        }
        if let Some((after, failed)) = key(follow_up) {
            self.finished_deliveries.insert(after, failed);
        }
    }

    /// Moves `follow_up` in the provider message index from where `old` had it.
    fn index_provider_message(&mut self, old: Option<&FollowUp>, follow_up: &FollowUp) {
        let message_id = |f: &FollowUp| {
            f.delivery
                .as_ref()
                .and_then(|delivery| delivery.provider_message_id.clone())
        };
        let (before, after) = (old.and_then(message_id), message_id(follow_up));
        if before == after {
            return;
        }
        let id = follow_up.followup_id;
        if let Some(before) = before
            && let Some(ids) = self.provider_messages.get_mut(&before)
        {
            ids.retain(|known| *known != id);
            if ids.is_empty() {
                self.provider_messages.remove(&before);
            }
        }
        if let Some(after) = after {
            self.provider_messages.entry(after).or_default().push(id);
        }
    }

    fn zone(&mut self, time_zone: Option<&str>) -> ZoneKey {
        let Some(name) = time_zone else { return 0 };
        if let Some(key) = self.zones.get(name) {
            return *key;
        }
        self.zone_names.push(name.to_owned());
        let key = ZoneKey::try_from(self.zone_names.len()).expect("fewer than 2^32 zones");
        self.zones.insert(name.to_owned(), key);
        key
    }
}

/// The image, its indexes, and the ledger of sends derived from it.
#[derive(Debug, Default)]
pub(crate) struct State {
    image: Image,
    indexes: Indexes,
    ledger: Ledger,
}

/// A follow-up as the limits see it.
fn candidate(follow_up: &FollowUp) -> Candidate {
    Candidate {
        followup_id: follow_up.followup_id,
        tenant_id: follow_up.tenant_id.clone(),
        schedule_at: follow_up.schedule_at,
        sender: follow_up.sender.clone(),
        phone_e164: follow_up.phone_e164.clone(),
    }
}

impl State {
    pub fn image(&self) -> &Image {
        &self.image
    }

    /// Applies one committed unit numbered `seq`.
    pub fn apply(&mut self, seq: u64, change: Change) {
        for campaign in change.campaigns {
            self.put_campaign(campaign);
        }
        for follow_up in change.follow_ups {
            self.put_follow_up(follow_up);
        }
        for event in change.events {
            self.put_event(event);
        }
        for item in change.outbound {
            self.put_outbound(item);
        }
        for opt_out in change.opt_outs {
            let key = (opt_out.tenant_id.clone(), opt_out.phone_e164.clone());
            self.image.opt_outs.insert(key, Arc::new(opt_out));
        }
        for key in change.opt_outs_removed {
            self.image.opt_outs.remove(&key);
        }
        for (tenant_id, policy) in change.policies {
            self.image.policies.insert(tenant_id, Arc::new(policy));
        }
        for tenant_id in change.policies_removed {
            self.image.policies.remove(&tenant_id);
        }
        self.image.last_seq = seq;
    }

    pub fn put_outbound(&mut self, item: StoredOutbound) {
        let seq = item.seq;
        if let Some(old) = self.image.outbound.get(&seq) {
            if let Some(at) = old.entry.available_at {
                self.indexes.available.remove(&(at.unix_millis(), seq));
            }
            if let Some(at) = old.entry.finished_at {
                self.indexes.finished.remove(&(at.unix_millis(), seq));
            }
        }
        match (item.entry.status, item.entry.available_at) {
            (QueueStatus::Done, _) => {
                let finished = item.entry.finished_at.unwrap_or(item.entry.enqueued_at);
                self.indexes.finished.insert((finished.unix_millis(), seq));
            }
            (_, Some(at)) => {
                self.indexes.available.insert((at.unix_millis(), seq));
            }
            (_, None) => {}
        }
        self.indexes.item_seq.insert(item.entry.queue_item_id, seq);
        self.image.last_outbound_seq = self.image.last_outbound_seq.max(seq);
        self.image.outbound.insert(seq, Arc::new(item));
    }

    /// Removes outbound items that finished before `cutoff` (retention), at most `budget`
    /// of them; returns how many went and whether more are left.
    pub fn forget_finished_before(&mut self, cutoff: Timestamp, budget: usize) -> (u64, bool) {
        let mut removed = 0;
        while removed < budget as u64 {
            let Some(&(finished, seq)) = self.indexes.finished.first() else {
                return (removed, false);
            };
            if finished >= cutoff.unix_millis() {
                return (removed, false);
            }
            self.indexes.finished.remove(&(finished, seq));
            if let Some(item) = self.image.outbound.remove(&seq) {
                self.indexes.item_seq.remove(&item.entry.queue_item_id);
            }
            removed += 1;
        }
        (removed, true)
    }

    /// Whether an event emitted, or an outbound item finished, before `cutoff` is held.
    pub fn has_expired(&self, cutoff: Timestamp) -> bool {
        let old_event = self
            .image
            .events
            .get_min()
            .is_some_and(|(_, event)| event.emitted_at < cutoff);
        let old_item = self
            .indexes
            .finished
            .first()
            .is_some_and(|(finished, _)| *finished < cutoff.unix_millis());
        old_event || old_item
    }

    /// The outbound item with this id.
    pub fn outbound_item(&self, id: QueueItemId) -> Option<&Arc<StoredOutbound>> {
        let seq = self.indexes.item_seq.get(&id)?;
        self.image.outbound.get(seq)
    }

    /// Up to `limit` items a claim at `now` may take, earliest available first, passing
    /// over those `skip` says are busy.
    pub fn claimable(
        &self,
        now: Timestamp,
        limit: usize,
        skip: impl Fn(QueueItemId) -> bool,
    ) -> Vec<Arc<StoredOutbound>> {
        self.indexes
            .available
            .iter()
            .take_while(|(at, _)| *at <= now.unix_millis())
            .filter_map(|(_, seq)| self.image.outbound.get(seq))
            .filter(|item| !skip(item.entry.queue_item_id))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Events after `after` in commit order, filtered (see `crm_ports::bounded_page`).
    pub fn feed(
        &self,
        after: u64,
        limit: usize,
        tenant_id: Option<&TenantId>,
        name_prefix: Option<&str>,
    ) -> Scan<Arc<StoredEvent>> {
        bounded_page(
            self.image
                .events
                .range((Bound::Excluded(after), Bound::Unbounded))
                .map(|(seq, event)| (*seq, event.clone())),
            |event| {
                tenant_id.is_none_or(|t| &event.tenant_id == t)
                    && name_prefix.is_none_or(|prefix| event.name.starts_with(prefix))
            },
            limit,
        )
    }

    pub fn policy(&self, tenant_id: &TenantId) -> Option<&Arc<SendingPolicy>> {
        self.image.policies.get(tenant_id)
    }

    pub fn campaign_stats(&self, campaign_id: CampaignId) -> CampaignStats {
        self.indexes
            .campaign_stats
            .get(&campaign_id)
            .copied()
            .unwrap_or_default()
    }

    pub fn opt_out(&self, tenant_id: &TenantId, phone_e164: &str) -> Option<&Arc<OptOut>> {
        self.image
            .opt_outs
            .get(&(tenant_id.clone(), phone_e164.to_owned()))
    }

    /// A page of a tenant's opt-outs in phone number order, after `after`.
    pub fn opt_outs(
        &self,
        tenant_id: &TenantId,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<OptOut>, Option<String>) {
        let start = match after {
            Some(phone) => Bound::Excluded((tenant_id.clone(), phone.to_owned())),
            None => Bound::Included((tenant_id.clone(), String::new())),
        };
        let mut items: Vec<OptOut> = self
            .image
            .opt_outs
            .range((start, Bound::Unbounded))
            .take_while(|((tenant, _), _)| tenant == tenant_id)
            .take(limit + 1)
            .map(|(_, opt_out)| (**opt_out).clone())
            .collect();
        let next = (items.len() > limit).then(|| {
            items.truncate(limit);
            items.last().map(|last| last.phone_e164.clone())
        });
        (items, next.flatten())
    }

    pub fn set_counters(&mut self, last_seq: u64, last_event_seq: u64, last_outbound_seq: u64) {
        self.image.last_seq = last_seq;
        self.image.last_event_seq = self.image.last_event_seq.max(last_event_seq);
        self.image.last_outbound_seq = self.image.last_outbound_seq.max(last_outbound_seq);
    }

    pub fn set_events_deleted_through(&mut self, seq: u64) {
        self.image.events_deleted_through = self.image.events_deleted_through.max(seq);
        self.image.last_event_seq = self.image.last_event_seq.max(seq);
    }

    pub fn put_campaign(&mut self, campaign: Campaign) {
        let tenant = self.indexes.tenant(&campaign.tenant_id);
        let id = campaign.campaign_id;
        let created = campaign.created_at.unix_millis();
        if let Some(old) = self.image.campaigns.get(&id) {
            self.indexes
                .campaign_state_order
                .remove(&(tenant, old.state, created, id.as_uuid()));
        }
        if let Some(key) = &campaign.external_key {
            self.indexes.campaign_keys.insert((tenant, key.clone()), id);
        }
        self.indexes
            .campaign_order
            .insert((tenant, created, id.as_uuid()));
        self.indexes
            .campaign_state_order
            .insert((tenant, campaign.state, created, id.as_uuid()));
        self.image.campaigns.insert(id, Arc::new(campaign));
    }

    pub fn put_follow_up(&mut self, follow_up: FollowUp) {
        let tenant = self.indexes.tenant(&follow_up.tenant_id);
        let id = follow_up.followup_id;
        let created = follow_up.created_at.unix_millis();
        let lane = Lane {
            tenant,
            campaign: follow_up.campaign_id,
            zone: self.indexes.zone(follow_up.time_zone.as_deref()),
        };
        let old = self.image.follow_ups.get(&id).cloned();
        self.indexes
            .index_provider_message(old.as_deref(), &follow_up);
        self.indexes
            .index_finished_delivery(old.as_deref(), &follow_up);
        if let Some(campaign) = follow_up.campaign_id {
            let change = CampaignStats::change(old.as_deref(), &follow_up);
            self.indexes
                .campaign_stats
                .entry(campaign)
                .or_default()
                .add(&change);
        }
        if let Some(old) = old {
            self.indexes.follow_up_status_order.remove(&(
                tenant,
                old.status,
                created,
                id.as_uuid(),
            ));
            if let Some(campaign) = old.campaign_id {
                self.indexes.campaign_status_follow_ups.remove(&(
                    campaign,
                    old.status,
                    created,
                    id.as_uuid(),
                ));
            }
            if old.status == FollowUpStatus::Pending {
                let old_lane = Lane {
                    tenant,
                    campaign: old.campaign_id,
                    zone: self.indexes.zone(old.time_zone.as_deref()),
                };
                if let Some(queue) = self.indexes.lanes.get_mut(&old_lane) {
                    queue.remove(&(old.schedule_at.unix_millis(), id));
                    if queue.is_empty() {
                        self.indexes.lanes.remove(&old_lane);
                    }
                }
            }
        }
        if let Some(key) = &follow_up.external_key {
            self.indexes
                .follow_up_keys
                .insert((tenant, key.clone()), id);
        }
        self.indexes
            .follow_up_order
            .insert((tenant, created, id.as_uuid()));
        self.indexes.follow_up_status_order.insert((
            tenant,
            follow_up.status,
            created,
            id.as_uuid(),
        ));
        if let Some(campaign) = follow_up.campaign_id {
            self.indexes
                .campaign_follow_ups
                .insert((campaign, created, id.as_uuid()));
            self.indexes.campaign_status_follow_ups.insert((
                campaign,
                follow_up.status,
                created,
                id.as_uuid(),
            ));
        }
        if follow_up.status == FollowUpStatus::Pending {
            self.indexes
                .lanes
                .entry(lane)
                .or_default()
                .insert((follow_up.schedule_at.unix_millis(), id));
        }
        self.ledger.record(&follow_up);
        self.image.follow_ups.insert(id, Arc::new(follow_up));
    }

    pub fn put_event(&mut self, event: StoredEvent) {
        self.image.last_event_seq = self.image.last_event_seq.max(event.seq);
        self.indexes
            .events_by_correlation
            .insert((event.correlation_id, event.seq));
        self.image.events.insert(event.seq, Arc::new(event));
    }

    /// Removes events up to `seq` (retention), at most `budget` of them; returns whether
    /// some are left to remove.
    pub fn forget_events_through(&mut self, seq: u64, budget: usize) -> bool {
        for _ in 0..budget {
            match self.image.events.get_min() {
                Some((first, event)) if *first <= seq => {
                    let (first, correlation_id) = (*first, event.correlation_id);
                    self.indexes
                        .events_by_correlation
                        .remove(&(correlation_id, first));
                    self.image.events.remove(&first);
                }
                _ => break,
            }
        }
        self.set_events_deleted_through(seq);
        self.image
            .events
            .get_min()
            .is_some_and(|(first, _)| *first <= seq)
    }

    pub fn campaign(&self, id: CampaignId) -> Option<&Arc<Campaign>> {
        self.image.campaigns.get(&id)
    }

    /// The follow-ups whose delivery recorded `provider_message_id`.
    pub fn follow_ups_by_provider_message(&self, provider_message_id: &str) -> Vec<FollowUp> {
        self.indexes
            .provider_messages
            .get(provider_message_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.image.follow_ups.get(id))
            .map(|follow_up| (**follow_up).clone())
            .collect()
    }

    /// The last `limit` finished deliveries of a campaign, newest change first.
    pub fn finished_deliveries(
        &self,
        campaign_id: CampaignId,
        limit: usize,
    ) -> impl Iterator<Item = FinishedDelivery> + '_ {
        self.indexes
            .finished_deliveries
            .range(
                (campaign_id, Millis::MIN, Uuid::nil())..=(campaign_id, Millis::MAX, Uuid::max()),
            )
            .rev()
            .take(limit)
            .map(|(&(_, _, id), &failed)| FinishedDelivery {
                followup_id: FollowUpId::new(id),
                failed,
            })
    }

    pub fn follow_up(&self, id: FollowUpId) -> Option<&Arc<FollowUp>> {
        self.image.follow_ups.get(&id)
    }

    pub fn tenant_campaign(&self, tenant_id: &TenantId, id: CampaignId) -> Option<&Campaign> {
        self.campaign(id)
            .map(Arc::as_ref)
            .filter(|c| &c.tenant_id == tenant_id)
    }

    pub fn campaign_by_key(&self, tenant_id: &TenantId, key: &str) -> Option<&Campaign> {
        let tenant = *self.indexes.tenants.get(tenant_id)?;
        let id = self.indexes.campaign_keys.get(&(tenant, key.to_owned()))?;
        self.campaign(*id).map(Arc::as_ref)
    }

    pub fn follow_up_by_key(&self, tenant_id: &TenantId, key: &str) -> Option<&FollowUp> {
        let tenant = *self.indexes.tenants.get(tenant_id)?;
        let id = self.indexes.follow_up_keys.get(&(tenant, key.to_owned()))?;
        self.follow_up(*id).map(Arc::as_ref)
    }

    pub fn list_campaigns(&self, query: &CampaignQuery) -> Page<Campaign> {
        let Some(&tenant) = self.indexes.tenants.get(&query.tenant_id) else {
            return empty_page();
        };
        let lookup = |id: Uuid| self.campaign(CampaignId::new(id)).map(|c| (**c).clone());
        match query.state {
            None => page(
                &self.indexes.campaign_order,
                (tenant, Millis::MIN, Uuid::nil()),
                (tenant, Millis::MAX, Uuid::max()),
                query
                    .after
                    .map(|c| (tenant, c.created_at.unix_millis(), c.id)),
                query.limit,
                |&(_, created, id)| (created, id),
                lookup,
            ),
            Some(state) => page(
                &self.indexes.campaign_state_order,
                (tenant, state, Millis::MIN, Uuid::nil()),
                (tenant, state, Millis::MAX, Uuid::max()),
                query
                    .after
                    .map(|c| (tenant, state, c.created_at.unix_millis(), c.id)),
                query.limit,
                |&(_, _, created, id)| (created, id),
                lookup,
            ),
        }
    }

    pub fn list_follow_ups(&self, query: &FollowUpQuery) -> Page<FollowUp> {
        let Some(&tenant) = self.indexes.tenants.get(&query.tenant_id) else {
            return empty_page();
        };
        let after = |c: Cursor| (c.created_at.unix_millis(), c.id);
        let lookup = |id: Uuid| {
            self.follow_up(FollowUpId::new(id))
                .filter(|f| f.tenant_id == query.tenant_id)
                .map(|f| (**f).clone())
        };
        match (query.campaign_id, query.status) {
            (None, None) => page(
                &self.indexes.follow_up_order,
                (tenant, Millis::MIN, Uuid::nil()),
                (tenant, Millis::MAX, Uuid::max()),
                query.after.map(after).map(|(m, id)| (tenant, m, id)),
                query.limit,
                |&(_, created, id)| (created, id),
                lookup,
            ),
            (None, Some(status)) => page(
                &self.indexes.follow_up_status_order,
                (tenant, status, Millis::MIN, Uuid::nil()),
                (tenant, status, Millis::MAX, Uuid::max()),
                query
                    .after
                    .map(after)
                    .map(|(m, id)| (tenant, status, m, id)),
                query.limit,
                |&(_, _, created, id)| (created, id),
                lookup,
            ),
            (Some(campaign), None) => page(
                &self.indexes.campaign_follow_ups,
                (campaign, Millis::MIN, Uuid::nil()),
                (campaign, Millis::MAX, Uuid::max()),
                query.after.map(after).map(|(m, id)| (campaign, m, id)),
                query.limit,
                |&(_, created, id)| (created, id),
                lookup,
            ),
            (Some(campaign), Some(status)) => page(
                &self.indexes.campaign_status_follow_ups,
                (campaign, status, Millis::MIN, Uuid::nil()),
                (campaign, status, Millis::MAX, Uuid::max()),
                query
                    .after
                    .map(after)
                    .map(|(m, id)| (campaign, status, m, id)),
                query.limit,
                |&(_, _, created, id)| (created, id),
                lookup,
            ),
        }
    }

    /// Every lane holding pending follow-ups, with its campaign's state and its tenant's
    /// policy.
    pub fn lanes(&self) -> Vec<LaneState> {
        self.indexes
            .lanes
            .keys()
            .map(|lane| {
                let tenant_id = self.indexes.tenant_ids[lane.tenant as usize].clone();
                LaneState {
                    campaign_state: lane
                        .campaign
                        .and_then(|id| self.campaign(id))
                        .map(|c| c.state),
                    policy: self.policy(&tenant_id).map(|policy| (**policy).clone()),
                    lane: PortLane {
                        tenant_id,
                        campaign_id: lane.campaign,
                        time_zone: (lane.zone > 0)
                            .then(|| self.indexes.zone_names[lane.zone as usize - 1].clone()),
                    },
                }
            })
            .collect()
    }

    /// The due follow-ups of the `open` lanes a claim looks at, as candidates for the
    /// limits: the oldest `limit` of each lane (none past its tenant's `caps`), or the
    /// oldest `deep_limit` for the lanes of `deep` tenants; `skip` passes over single
    /// follow-ups (claimed by another drain, or with a change on its way to the disk).
    /// Returns how many lanes and queue entries it looked at too.
    pub fn candidates(
        &self,
        now: Timestamp,
        open: &[PortLane],
        caps: &HashMap<TenantId, usize>,
        limit: usize,
        (deep, deep_limit): (&[TenantId], usize),
        skip: impl Fn(FollowUpId) -> bool,
    ) -> (Vec<Candidate>, usize) {
        let now = now.unix_millis();
        let mut examined = 0;
        let mut candidates = Vec::new();
        for lane in open {
            let Some(queue) = self.queue(lane) else {
                continue;
            };
            // No tenant gets more than `limit` (or its cap), so no lane need offer more:
            // its oldest are the only ones that can be taken; a deep tenant's limits may
            // hold some of them, so it offers more.
            let cap = if deep.contains(&lane.tenant_id) {
                deep_limit
            } else {
                caps.get(&lane.tenant_id)
                    .copied()
                    .unwrap_or(limit)
                    .min(limit)
            };
            let mut taken = 0;
            examined += 1;
            for &(_, id) in queue.iter().take_while(|(at, _)| *at <= now) {
                if taken >= cap {
                    break;
                }
                examined += 1;
                if skip(id) {
                    continue;
                }
                if let Some(follow_up) = self.follow_up(id) {
                    candidates.push(candidate(follow_up));
                    taken += 1;
                }
            }
        }
        (candidates, examined)
    }

    /// The pending follow-ups of `ids` in that order, each with its campaign's state and
    /// whether its recipient opted out.
    pub fn to_claim(
        &self,
        ids: &[FollowUpId],
    ) -> Vec<(Arc<FollowUp>, Option<CampaignState>, bool)> {
        ids.iter()
            .filter_map(|id| self.follow_up(*id))
            .filter(|follow_up| follow_up.status == FollowUpStatus::Pending)
            .map(|follow_up| {
                let state = follow_up
                    .campaign_id
                    .and_then(|id| self.campaign(id))
                    .map(|c| c.state);
                let opted_out = self
                    .opt_out(&follow_up.tenant_id, &follow_up.phone_e164)
                    .is_some();
                (follow_up.clone(), state, opted_out)
            })
            .collect()
    }

    /// The due follow-ups of `lanes`, each tenant's oldest first and at most `cap` of
    /// them, with the tenants that had more.
    pub fn due_in(
        &self,
        now: Timestamp,
        lanes: &[PortLane],
        cap: usize,
    ) -> (Vec<DueEntry>, Vec<TenantId>) {
        let now = now.unix_millis();
        let mut by_tenant: BTreeMap<&TenantId, Vec<(Millis, FollowUpId, &PortLane)>> =
            BTreeMap::new();
        for lane in lanes {
            let Some(queue) = self.queue(lane) else {
                continue;
            };
            let due = by_tenant.entry(&lane.tenant_id).or_default();
            due.extend(
                queue
                    .iter()
                    .take_while(|(at, _)| *at <= now)
                    .take(cap + 1)
                    .map(|&(at, id)| (at, id, lane)),
            );
        }
        let mut entries = Vec::new();
        let mut truncated = Vec::new();
        for (tenant_id, mut due) in by_tenant {
            due.sort_by_key(|(at, id, _)| (*at, *id));
            if due.len() > cap {
                due.truncate(cap);
                truncated.push(tenant_id.clone());
            }
            entries.extend(due.into_iter().filter_map(|(_, id, lane)| {
                Some(DueEntry {
                    lane: lane.clone(),
                    candidate: candidate(self.follow_up(id)?),
                })
            }));
        }
        (entries, truncated)
    }

    /// The ledger of sends.
    pub fn ledger(&mut self) -> &mut Ledger {
        &mut self.ledger
    }

    /// The pending follow-ups of one lane, by when they are due.
    fn queue(&self, lane: &PortLane) -> Option<&BTreeSet<(Millis, FollowUpId)>> {
        let tenant = *self.indexes.tenants.get(&lane.tenant_id)?;
        let zone = match lane.time_zone.as_deref() {
            None => 0,
            Some(name) => *self.indexes.zones.get(name)?,
        };
        self.indexes.lanes.get(&Lane {
            tenant,
            campaign: lane.campaign_id,
            zone,
        })
    }

    /// How many follow-ups are due in lanes that are not held, counting no further than
    /// `cap`.
    pub fn count_due(&self, now: Timestamp, held: &[CampaignState], cap: usize) -> usize {
        let now = now.unix_millis();
        let mut count = 0;
        for (lane, queue) in &self.indexes.lanes {
            let state = lane
                .campaign
                .and_then(|id| self.campaign(id))
                .map(|c| c.state);
            if state.is_some_and(|state| held.contains(&state)) {
                continue;
            }
            count += queue
                .iter()
                .take_while(|(at, _)| *at <= now)
                .take(cap - count)
                .count();
            if count >= cap {
                break;
            }
        }
        count
    }

    /// Events of one correlation after `after`, oldest first, only `tenant_id`'s when
    /// given (see `crm_ports::bounded_page`).
    pub fn events_by_correlation(
        &self,
        correlation_id: CorrelationId,
        tenant_id: Option<&TenantId>,
        after: Option<EventCursor>,
        limit: usize,
    ) -> Scan<Arc<StoredEvent>> {
        let after = after.map_or(0, |cursor| cursor.0);
        let range = self.indexes.events_by_correlation.range((
            Bound::Excluded((correlation_id, after)),
            Bound::Included((correlation_id, u64::MAX)),
        ));
        bounded_page(
            range.filter_map(|(_, seq)| Some((*seq, self.image.events.get(seq)?.clone()))),
            |event| tenant_id.is_none_or(|t| &event.tenant_id == t),
            limit,
        )
    }

    pub fn outbound_items(&self, offset: u64, limit: usize) -> Vec<Arc<StoredOutbound>> {
        // Enqueue order is number order.
        self.image
            .outbound
            .values()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit)
            .cloned()
            .collect()
    }
}

fn empty_page<T>() -> Page<T> {
    Page {
        items: Vec::new(),
        next_cursor: None,
    }
}

/// One page of an index ordered by `(created_at, id)` within `[from, to]`, resuming after
/// `after`. `position` reads the `(created_at, id)` of an entry; `lookup` makes the item.
fn page<K: Ord + Clone, T>(
    index: &BTreeSet<K>,
    from: K,
    to: K,
    after: Option<K>,
    limit: usize,
    position: impl Fn(&K) -> (Millis, Uuid),
    lookup: impl Fn(Uuid) -> Option<T>,
) -> Page<T> {
    let start = after.map_or(Bound::Included(from), Bound::Excluded);
    let mut items = Vec::new();
    let mut last = None;
    for key in index.range((start, Bound::Included(to))) {
        let (created, id) = position(key);
        let Some(item) = lookup(id) else { continue };
        if items.len() == limit {
            let next_cursor = last.and_then(|(created, id)| {
                Timestamp::from_unix_millis(created).map(|created_at| Cursor { created_at, id })
            });
            return Page { items, next_cursor };
        }
        items.push(item);
        last = Some((created, id));
    }
    Page {
        items,
        next_cursor: None,
    }
}

#[cfg(test)]
mod tests;
