//! The in-memory image of the store: every record, plus the indexes the queries need.
//!
//! `apply` is the only way records change, used both for live writes and for replaying
//! the journal at start-up, so the two can never disagree.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;

use crm_domain::campaign::{Campaign, CampaignState};
use crm_domain::follow_up::{FollowUp, FollowUpStatus};
use crm_domain::ids::{CampaignId, CorrelationId, FollowUpId, TenantId};
use crm_domain::page::{Cursor, Page};
use crm_domain::timestamp::Timestamp;
use crm_ports::{CampaignQuery, FollowUpQuery};
use serde::Deserialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::journal::Entry;

type ListKey = (TenantId, Timestamp, Uuid);

#[derive(Debug, Default)]
pub(crate) struct State {
    /// Shared, so a compaction snapshot costs a pointer per record, not a deep copy.
    pub campaigns: HashMap<CampaignId, Arc<Campaign>>,
    campaign_keys: HashMap<(TenantId, String), CampaignId>,
    campaign_order: BTreeSet<ListKey>,
    pub follow_ups: HashMap<FollowUpId, Arc<FollowUp>>,
    follow_up_keys: HashMap<(TenantId, String), FollowUpId>,
    follow_up_order: BTreeSet<ListKey>,
    /// Pending follow-ups by `(schedule_at, id)`: the drain's queue.
    due: BTreeSet<(Timestamp, FollowUpId)>,
    /// Follow-ups a drain in progress has claimed; no other drain may take them.
    pub claimed: HashSet<FollowUpId>,
    events: HashMap<CorrelationId, Vec<Box<RawValue>>>,
    pub outbound: Vec<Box<RawValue>>,
}

/// Just enough of an event to index it.
#[derive(Deserialize)]
struct EventKey {
    correlation_id: CorrelationId,
}

impl State {
    pub fn apply(&mut self, entry: Entry) -> Result<(), serde_json::Error> {
        for campaign in entry.campaigns {
            self.apply_campaign(campaign);
        }
        for follow_up in entry.follow_ups {
            self.apply_follow_up(follow_up);
        }
        for event in entry.events {
            self.add_event(event)?;
        }
        self.outbound.extend(entry.outbound);
        Ok(())
    }

    pub fn add_event(&mut self, event: Box<RawValue>) -> Result<(), serde_json::Error> {
        let key: EventKey = serde_json::from_str(event.get())?;
        self.events
            .entry(key.correlation_id)
            .or_default()
            .push(event);
        Ok(())
    }

    pub fn apply_campaign(&mut self, campaign: Campaign) {
        let id = campaign.campaign_id;
        if let Some(key) = &campaign.external_key {
            self.campaign_keys
                .insert((campaign.tenant_id.clone(), key.clone()), id);
        }
        self.campaign_order.insert((
            campaign.tenant_id.clone(),
            campaign.created_at,
            id.as_uuid(),
        ));
        self.campaigns.insert(id, Arc::new(campaign));
    }

    pub fn apply_follow_up(&mut self, follow_up: FollowUp) {
        let id = follow_up.followup_id;
        if let Some(old) = self.follow_ups.get(&id) {
            self.due.remove(&(old.schedule_at, id));
        }
        if let Some(key) = &follow_up.external_key {
            self.follow_up_keys
                .insert((follow_up.tenant_id.clone(), key.clone()), id);
        }
        self.follow_up_order.insert((
            follow_up.tenant_id.clone(),
            follow_up.created_at,
            id.as_uuid(),
        ));
        if follow_up.status == FollowUpStatus::Pending {
            self.due.insert((follow_up.schedule_at, id));
        }
        self.follow_ups.insert(id, Arc::new(follow_up));
    }

    pub fn campaign_by_key(&self, tenant_id: &TenantId, key: &str) -> Option<&Campaign> {
        let id = self
            .campaign_keys
            .get(&(tenant_id.clone(), key.to_owned()))?;
        self.campaigns.get(id).map(Arc::as_ref)
    }

    pub fn follow_up_by_key(&self, tenant_id: &TenantId, key: &str) -> Option<&FollowUp> {
        let id = self
            .follow_up_keys
            .get(&(tenant_id.clone(), key.to_owned()))?;
        self.follow_ups.get(id).map(Arc::as_ref)
    }

    pub fn tenant_campaign(&self, tenant_id: &TenantId, id: CampaignId) -> Option<&Campaign> {
        self.campaigns
            .get(&id)
            .map(Arc::as_ref)
            .filter(|c| &c.tenant_id == tenant_id)
    }

    pub fn list_campaigns(&self, query: &CampaignQuery) -> Page<Campaign> {
        page(
            &self.campaign_order,
            &query.tenant_id,
            query.after,
            query.limit,
            |id| {
                self.campaigns
                    .get(&CampaignId::new(id))
                    .map(Arc::as_ref)
                    .filter(|c| query.state.is_none_or(|state| c.state == state))
            },
        )
    }

    pub fn list_follow_ups(&self, query: &FollowUpQuery) -> Page<FollowUp> {
        page(
            &self.follow_up_order,
            &query.tenant_id,
            query.after,
            query.limit,
            |id| {
                self.follow_ups
                    .get(&FollowUpId::new(id))
                    .map(Arc::as_ref)
                    .filter(|f| {
                        query.status.is_none_or(|status| f.status == status)
                            && query.campaign_id.is_none_or(|c| f.campaign_id == Some(c))
                    })
            },
        )
    }

    /// Due follow-ups in drain order, skipping claimed ones and those a paused campaign
    /// holds, with their campaign's state.
    pub fn due(&self, now: Timestamp) -> impl Iterator<Item = (&FollowUp, Option<CampaignState>)> {
        self.due
            .iter()
            .take_while(move |(schedule_at, _)| *schedule_at <= now)
            .filter(|(_, id)| !self.claimed.contains(id))
            .filter_map(|(_, id)| {
                let follow_up = self.follow_ups.get(id).map(Arc::as_ref)?;
                let state = follow_up
                    .campaign_id
                    .and_then(|c| self.campaigns.get(&c))
                    .map(|c| c.state);
                (state != Some(CampaignState::Paused)).then_some((follow_up, state))
            })
    }

    pub fn events(&self, correlation_id: CorrelationId) -> &[Box<RawValue>] {
        self.events.get(&correlation_id).map_or(&[], Vec::as_slice)
    }

    pub fn campaign_list(&self) -> Vec<Arc<Campaign>> {
        self.campaigns.values().cloned().collect()
    }

    pub fn follow_up_list(&self) -> Vec<Arc<FollowUp>> {
        self.follow_ups.values().cloned().collect()
    }
}

fn page<'a, T: Clone + 'a>(
    order: &BTreeSet<ListKey>,
    tenant_id: &TenantId,
    after: Option<Cursor>,
    limit: usize,
    lookup: impl Fn(Uuid) -> Option<&'a T>,
) -> Page<T> {
    let start = match after {
        Some(cursor) => Bound::Excluded((tenant_id.clone(), cursor.created_at, cursor.id)),
        None => Bound::Included((tenant_id.clone(), Timestamp::MIN, Uuid::nil())),
    };
    let mut items = Vec::new();
    let mut last = None;
    let mut more = false;
    for (tenant, created_at, id) in order.range((start, Bound::Unbounded)) {
        if tenant != tenant_id {
            break;
        }
        let Some(item) = lookup(*id) else { continue };
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(item.clone());
        last = Some(Cursor {
            created_at: *created_at,
            id: *id,
        });
    }
    Page {
        items,
        next_cursor: if more { last } else { None },
    }
}
