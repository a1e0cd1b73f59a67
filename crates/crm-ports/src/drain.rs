//! The drain's unit of work, as the stores see it.
//!
//! A store never decides a business rule. It lists the lanes that hold pending
//! follow-ups (a lane: one tenant's follow-ups of one campaign, or of none, for one
//! recipient time zone), each with what decides about it (the campaign's state, the
//! tenant's sending policy); the [`Dispatcher`] says which lanes are open and which
//! tenants are paced; the store then claims due follow-ups from the open lanes only
//! (tenants in turn, never more than a paced tenant's allowance), asks the dispatcher
//! about each, and commits every decision with its claim. Held work costs a drain one
//! index descent per lane, however many follow-ups wait in it.

use std::collections::HashMap;

use crm_domain::campaign::{CampaignState, CampaignStats};
use crm_domain::event::EventEnvelope;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, FollowUpId, TenantId};
use crm_domain::outbound::OutboundItem;
use crm_domain::policy::{SendingPolicy, allowance};
use crm_domain::timestamp::Timestamp;

/// Pending follow-ups of one tenant, one campaign (or none) and one recipient time zone
/// (or none: the tenant's).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lane {
    pub tenant_id: TenantId,
    pub campaign_id: Option<CampaignId>,
    pub time_zone: Option<String>,
}

/// A lane with what decides whether it may be drained now.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneState {
    pub lane: Lane,
    pub campaign_state: Option<CampaignState>,
    /// The tenant's stored policy (`None`: the default).
    pub policy: Option<SendingPolicy>,
}

/// What a drain may take: the open lanes, and the paced tenants with their rates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DrainPlan {
    pub open: Vec<Lane>,
    pub paced: Vec<(TenantId, u32)>,
    /// Follow-ups a paced tenant had marked sent since this instant count against it.
    pub window_start: Option<Timestamp>,
}

impl DrainPlan {
    /// How many follow-ups each paced tenant may still have claimed, given how many
    /// `sent_since_window_start` reports (absent: none).
    pub fn caps(
        &self,
        sent_since_window_start: &HashMap<TenantId, u64>,
    ) -> HashMap<TenantId, usize> {
        self.paced
            .iter()
            .map(|(tenant, rate)| {
                let sent = sent_since_window_start.get(tenant).copied().unwrap_or(0);
                let left = usize::try_from(allowance(*rate, sent)).unwrap_or(usize::MAX);
                (tenant.clone(), left)
            })
            .collect()
    }
}

/// A follow-up the drain claimed, with what the decision needs.
#[derive(Debug, Clone, PartialEq)]
pub struct DueFollowUp {
    pub follow_up: FollowUp,
    pub campaign_state: Option<CampaignState>,
    /// The tenant's opt-out list holds the recipient's number.
    pub recipient_opted_out: bool,
}

/// Why a claimed follow-up was left pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// Its campaign was paused after its lane was found open.
    CampaignPaused,
    /// It was no longer pending when decided.
    NotPending,
    /// Its event broke the event contract (a bug of ours): it waits for a fix.
    EventContractInvalid,
}

impl SkipReason {
    /// The word the drain reply gives.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CampaignPaused => "campaign_paused",
            Self::NotPending => "not_pending",
            Self::EventContractInvalid => "event_contract_invalid",
        }
    }
}

/// What to do with one claimed follow-up, decided by the use case.
#[derive(Debug, Clone, PartialEq)]
pub enum DispatchDecision {
    /// Hand `item` to the outbound queue and save `follow_up` (now sent) with `events`.
    Send {
        follow_up: Box<FollowUp>,
        item: Box<OutboundItem>,
        events: Vec<EventEnvelope>,
    },
    /// Save `follow_up` (now failed) with `events`; nothing goes to the queue.
    Fail {
        follow_up: Box<FollowUp>,
        events: Vec<EventEnvelope>,
    },
    /// Leave it pending and untouched.
    Skip { reason: SkipReason },
}

impl DispatchDecision {
    /// What the drain reports for it.
    pub fn outcome(&self, followup_id: FollowUpId) -> DrainOutcome {
        let (status, reason) = match self {
            Self::Send { .. } => (DrainStatus::Sent, None),
            Self::Fail { follow_up, .. } => {
                (DrainStatus::Failed, follow_up.last_error_code.clone())
            }
            Self::Skip { reason } => (DrainStatus::Skipped, Some(reason.as_str().to_owned())),
        };
        DrainOutcome {
            followup_id,
            status,
            reason,
        }
    }

    /// The record to save, when there is one.
    pub fn record(&self) -> Option<&FollowUp> {
        match self {
            Self::Send { follow_up, .. } | Self::Fail { follow_up, .. } => Some(follow_up),
            Self::Skip { .. } => None,
        }
    }
}

/// Decides the drain: which lanes are open, and the fate of each claimed follow-up.
/// Called by the store while it holds the claim, so it must be quick and must not block.
pub trait Dispatcher: Send + Sync {
    /// Of the lanes holding pending follow-ups, the ones a drain may take from now, and
    /// the tenants whose rate limits it.
    fn plan(&self, lanes: &[LaneState]) -> DrainPlan;

    fn decide(&self, due: &DueFollowUp) -> DispatchDecision;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainStatus {
    Sent,
    Failed,
    Skipped,
}

/// What happened to one claimed follow-up.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainOutcome {
    pub followup_id: FollowUpId,
    pub status: DrainStatus,
    /// The failure's error code, or why it was skipped.
    pub reason: Option<String>,
}

/// Orders due follow-ups the way a drain takes them: tenants in turn (each tenant's
/// oldest first, then every tenant's second, ...), so that a tenant with a long queue
/// delays another by at most one batch; within a turn, oldest `schedule_at` first. No
/// paced tenant gets more than its cap. `due` holds each tenant's candidates, any order.
pub fn in_turns<T>(
    mut due: Vec<T>,
    tenant_of: impl Fn(&T) -> &TenantId,
    order_of: impl Fn(&T) -> (Timestamp, FollowUpId),
    caps: &HashMap<TenantId, usize>,
    limit: usize,
) -> Vec<T> {
    due.sort_by(|a, b| (tenant_of(a), order_of(a)).cmp(&(tenant_of(b), order_of(b))));
    let mut turn_of = Vec::with_capacity(due.len());
    let mut previous: Option<&TenantId> = None;
    let mut turn = 0usize;
    for item in &due {
        let tenant = tenant_of(item);
        turn = if previous == Some(tenant) {
            turn + 1
        } else {
            0
        };
        previous = Some(tenant);
        turn_of.push(turn);
    }
    let mut ranked: Vec<(usize, (Timestamp, FollowUpId), T)> = due
        .into_iter()
        .zip(turn_of)
        .filter(|(item, turn)| caps.get(tenant_of(item)).is_none_or(|cap| turn < cap))
        .map(|(item, turn)| (turn, order_of(&item), item))
        .collect();
    ranked.sort_by_key(|(turn, order, _)| (*turn, *order));
    ranked
        .into_iter()
        .take(limit)
        .map(|(_, _, item)| item)
        .collect()
}

/// How the counts of each campaign change when `before` (none: a new follow-up) becomes
/// `after`, for every pair; campaigns in id order, the order stores lock them in.
pub fn stats_changes<'a>(
    changes: impl IntoIterator<Item = (Option<&'a FollowUp>, &'a FollowUp)>,
) -> Vec<(CampaignId, CampaignStats)> {
    let mut by_campaign: HashMap<CampaignId, CampaignStats> = HashMap::new();
    for (before, after) in changes {
        let Some(campaign_id) = after.campaign_id else {
            continue;
        };
        let change = CampaignStats::change(before, after);
        if !change.is_zero() {
            by_campaign.entry(campaign_id).or_default().add(&change);
        }
    }
    let mut changes: Vec<_> = by_campaign
        .into_iter()
        .filter(|(_, change)| !change.is_zero())
        .collect();
    changes.sort_by_key(|(id, _)| *id);
    changes
}
