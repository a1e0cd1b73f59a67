//! The drain's unit of work, as the stores see it.
//!
//! A store never decides a business rule. It lists the lanes that hold pending
//! follow-ups (a lane: one tenant's follow-ups of one campaign, or of none, for one
//! recipient time zone), each with what decides about it (the campaign's state, the
//! tenant's sending policy); the [`Dispatcher`] plans which lanes are open and which
//! tenants are *limited*: their sends are counted exactly, so one drain at a time takes
//! their work. For those the store answers a few questions about its **ledger of
//! sends** (every follow-up marked sent, by tenant, sender and recipient, appended in the
//! commit that marks it sent, kept for `LEDGER_WINDOW_MILLIS`):
//!
//! - per tenant: the sends in the rate window, in all and per sender
//!   ([`TenantUsage::sends`], [`TenantUsage::sender_sends`]), and the distinct recipients
//!   of the day ([`TenantUsage::recipients`]), without reading the day's sends one by one;
//! - per recipient of the work it is about to claim: the last send of the day and the
//!   day's count ([`RecipientUsage`]).
//!
//! The plan turns the answers into caps ([`DrainPlan::caps`]) and admissions
//! ([`DrainPlan::admit`]); the store claims what is admitted, asks the dispatcher about
//! each, and commits every decision with its claim. Held work costs a drain one index
//! descent per lane, however many follow-ups wait in it.

use std::collections::HashMap;

use crm_domain::campaign::{CampaignState, CampaignStats};
use crm_domain::event::EventEnvelope;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, FollowUpId, TenantId};
use crm_domain::limits::{Admission, Candidate as Admitted};
pub use crm_domain::limits::{HoldReason, RecipientUsage, TenantUsage, UsageNeeds, Windows};
use crm_domain::outbound::OutboundItem;
use crm_domain::policy::SendingPolicy;
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

/// A tenant whose sends are counted exactly at this claim.
#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    pub tenant_id: TenantId,
    /// The policy in force: the tenant's own, or the default.
    pub policy: SendingPolicy,
    /// Its rate per second: the policy's, or the service's default.
    pub rate: Option<u32>,
    /// What the store must answer about it.
    pub needs: UsageNeeds,
}

/// What a drain may take: the open lanes, and the limited tenants.
#[derive(Debug, Clone, PartialEq)]
pub struct DrainPlan {
    pub open: Vec<Lane>,
    pub limited: Vec<Limited>,
    /// The windows of the ledger's answers.
    pub windows: Windows,
    pub now: Timestamp,
}

/// A due follow-up a drain may claim, with what the limits look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub followup_id: FollowUpId,
    pub tenant_id: TenantId,
    pub schedule_at: Timestamp,
    pub sender: Option<String>,
    pub phone_e164: String,
}

/// How many due follow-ups a second look takes in all from the tenants whose limits held
/// single follow-ups of the first (a sender's rate, a recipient's budget, interval or
/// cap): past the held ones, so that those behind them are not kept waiting by them. A
/// tenant held by nothing but its rate needs no second look: its rate holds all or
/// nothing.
pub const DEEP_LOOK: usize = 4_000;

/// What a claim takes from the candidates of one look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub claim: Vec<Candidate>,
    /// When the claim fell short because limits held single follow-ups: the tenants to
    /// look deeper into, and how many due follow-ups of each.
    pub look_deeper: Option<(Vec<TenantId>, usize)>,
}

impl Limited {
    /// Whether its limits can hold one due follow-up and let the next go.
    pub fn holds_singly(&self) -> bool {
        self.needs.recipient_history || self.policy.max_per_second_per_sender.is_some()
    }
}

impl DrainPlan {
    /// A plan at `now` that opens nothing.
    pub fn new(now: Timestamp) -> Self {
        Self {
            open: Vec::new(),
            limited: Vec::new(),
            windows: Windows::at(now),
            now,
        }
    }

    pub fn limited(&self, tenant_id: &TenantId) -> Option<&Limited> {
        self.limited.iter().find(|l| &l.tenant_id == tenant_id)
    }

    /// The open lanes of `tenants`.
    pub fn lanes_of(&self, tenants: &[TenantId]) -> Vec<Lane> {
        self.open
            .iter()
            .filter(|lane| tenants.contains(&lane.tenant_id))
            .cloned()
            .collect()
    }

    /// How many follow-ups each limited tenant may have claimed by this drain: what its
    /// rate still allows, given the ledger's `usage` of the tenants this drain holds, and
    /// no more than a `batch` (one drain at a time claims a limited tenant, so none of its
    /// follow-ups is skipped at the lock); a limited tenant without `usage` (another drain
    /// holds it) gets none. Tenants not limited take what comes.
    pub fn caps(
        &self,
        usage: &HashMap<TenantId, TenantUsage>,
        batch: usize,
    ) -> HashMap<TenantId, usize> {
        self.limited
            .iter()
            .map(|limited| {
                let cap = match (usage.get(&limited.tenant_id), limited.rate) {
                    (None, _) => 0,
                    (Some(_), None) => batch,
                    (Some(usage), Some(rate)) => {
                        usize::try_from(u64::from(rate).saturating_sub(usage.sends))
                            .unwrap_or(usize::MAX)
                            .min(batch)
                    }
                };
                (limited.tenant_id.clone(), cap)
            })
            .collect()
    }

    /// The recipients whose ledger history the admission of `candidates` needs.
    pub fn recipients_to_ask(&self, candidates: &[Candidate]) -> Vec<(TenantId, String)> {
        let mut asked: Vec<(TenantId, String)> = candidates
            .iter()
            .filter(|c| {
                self.limited(&c.tenant_id)
                    .is_some_and(|l| l.needs.recipient_history)
            })
            .map(|c| (c.tenant_id.clone(), c.phone_e164.clone()))
            .collect();
        asked.sort();
        asked.dedup();
        asked
    }

    /// What a claim takes: of `candidates` (each tenant's in its own order), the ones its
    /// limits admit, each counted before the next of its tenant is looked at; then tenants
    /// in turn (see `in_turns`) within `caps`, at most `limit`. A limited tenant without
    /// `usage` (another drain holds it) gets none.
    ///
    /// A store looks at a few times the batch first; when the claim is short of `limit`
    /// and limits held single follow-ups, it looks at the `look_deeper` tenants again,
    /// `DEEP_LOOK` of them in all, and takes from that look instead. Work no limit holds
    /// costs no second look.
    pub fn take(
        &self,
        candidates: Vec<Candidate>,
        usage: &HashMap<TenantId, TenantUsage>,
        recipients: &HashMap<(TenantId, String), RecipientUsage>,
        caps: &HashMap<TenantId, usize>,
        limit: usize,
    ) -> Take {
        let mut candidates = candidates;
        candidates.sort_by_key(|c| (c.schedule_at, c.followup_id));
        let mut offered: HashMap<TenantId, usize> = HashMap::new();
        for candidate in &candidates {
            *offered.entry(candidate.tenant_id.clone()).or_default() += 1;
        }
        let admitted = self.admit(candidates, usage, recipients);
        let claim = in_turns(
            admitted,
            |c| &c.tenant_id,
            |c| (c.schedule_at, c.followup_id),
            caps,
            limit,
        );
        let look_deeper = if claim.len() < limit {
            self.second_look(&claim, &offered, usage, caps, limit)
        } else {
            None
        };
        Take { claim, look_deeper }
    }

    /// The tenants of a short `claim` a second look goes deeper into: those this drain
    /// holds whose limits hold single follow-ups and held some of the ones `offered`
    /// (their rate did not cap them); and how many due follow-ups of each it looks at.
    fn second_look(
        &self,
        claim: &[Candidate],
        offered: &HashMap<TenantId, usize>,
        usage: &HashMap<TenantId, TenantUsage>,
        caps: &HashMap<TenantId, usize>,
        limit: usize,
    ) -> Option<(Vec<TenantId>, usize)> {
        let deep: Vec<TenantId> = self
            .limited
            .iter()
            .filter(|l| usage.contains_key(&l.tenant_id) && l.holds_singly())
            .filter(|l| {
                let taken = claim.iter().filter(|c| c.tenant_id == l.tenant_id).count();
                let cap = caps.get(&l.tenant_id).copied().unwrap_or(usize::MAX);
                taken < offered.get(&l.tenant_id).copied().unwrap_or(0) && taken < cap
            })
            .map(|l| l.tenant_id.clone())
            .collect();
        let each = (DEEP_LOOK / deep.len().max(1)).max(limit);
        (!deep.is_empty()).then_some((deep, each))
    }

    /// The candidates that may go now, in the order given, each admitted against its
    /// tenant's limits and counted before the next of its tenant is looked at. A limited
    /// tenant without `usage` (another drain holds it) gets none.
    pub fn admit(
        &self,
        candidates: Vec<Candidate>,
        usage: &HashMap<TenantId, TenantUsage>,
        recipients: &HashMap<(TenantId, String), RecipientUsage>,
    ) -> Vec<Candidate> {
        let mut admissions: HashMap<TenantId, Option<Admission<'_>>> = HashMap::new();
        candidates
            .into_iter()
            .filter(|candidate| {
                let Some(limited) = self.limited(&candidate.tenant_id) else {
                    return true;
                };
                let admission = admissions
                    .entry(candidate.tenant_id.clone())
                    .or_insert_with(|| {
                        let usage = usage.get(&limited.tenant_id)?.clone();
                        let history = recipients
                            .iter()
                            .filter(|((tenant, _), _)| tenant == &limited.tenant_id)
                            .map(|((_, phone), usage)| (phone.clone(), *usage))
                            .collect();
                        Some(Admission::new(
                            &limited.policy,
                            limited.rate,
                            usage,
                            history,
                            self.now,
                        ))
                    });
                admission.as_mut().is_some_and(|admission| {
                    admission
                        .admit(Admitted {
                            sender: candidate.sender.as_deref(),
                            phone_e164: &candidate.phone_e164,
                        })
                        .is_ok()
                })
            })
            .collect()
    }
}

/// Why due follow-ups wait, from the facts a store read for a sending status.
pub fn held_reasons(
    plan: &DrainPlan,
    facts: &SendingFacts,
    lane_hold: impl Fn(&LaneState) -> Option<HoldReason>,
) -> Vec<(TenantId, Option<HoldReason>)> {
    let mut admissions: HashMap<TenantId, Admission<'_>> = HashMap::new();
    let mut reasons = Vec::with_capacity(facts.due.len());
    for due in &facts.due {
        let tenant_id = &due.candidate.tenant_id;
        let held_by_lane = facts
            .lanes
            .iter()
            .find(|state| state.lane == due.lane)
            .and_then(&lane_hold);
        let reason = match (held_by_lane, plan.limited(tenant_id)) {
            (Some(reason), _) => Some(reason),
            (None, None) => None,
            (None, Some(limited)) => {
                let admission = admissions.entry(tenant_id.clone()).or_insert_with(|| {
                    let history = facts
                        .recipients
                        .iter()
                        .filter(|((tenant, _), _)| tenant == tenant_id)
                        .map(|((_, phone), usage)| (phone.clone(), *usage))
                        .collect();
                    Admission::new(
                        &limited.policy,
                        limited.rate,
                        facts.usage.get(tenant_id).cloned().unwrap_or_default(),
                        history,
                        plan.now,
                    )
                });
                admission
                    .admit(Admitted {
                        sender: due.candidate.sender.as_deref(),
                        phone_e164: &due.candidate.phone_e164,
                    })
                    .err()
            }
        };
        reasons.push((tenant_id.clone(), reason));
    }
    reasons
}

/// What a store reads for the sending status of one tenant (or all): its lanes, its due
/// pending follow-ups in the order a drain takes them (each tenant's oldest first, at
/// most a cap of them per tenant), and the ledger's answers for its limited tenants.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SendingFacts {
    pub lanes: Vec<LaneState>,
    pub due: Vec<DueEntry>,
    /// Whether a tenant had more due follow-ups than the cap.
    pub truncated: Vec<TenantId>,
    pub usage: HashMap<TenantId, TenantUsage>,
    pub recipients: HashMap<(TenantId, String), RecipientUsage>,
    /// When the next recipient counted in a limited tenant's day stops counting.
    pub next_release_at: HashMap<TenantId, Timestamp>,
}

/// One due pending follow-up and its lane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueEntry {
    pub lane: Lane,
    pub candidate: Candidate,
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

/// Plans a drain (or a sending status): which lanes are open, and which tenants must be
/// counted exactly. Called by the store while it holds its locks, so it must be quick
/// and must not block.
pub trait Planner: Send + Sync {
    /// Of the lanes holding pending follow-ups, the ones a drain may take from now, and
    /// the tenants whose limits it must count exactly.
    fn plan(&self, lanes: &[LaneState]) -> DrainPlan;
}

/// Decides the drain: its plan, and the fate of each claimed follow-up.
pub trait Dispatcher: Planner {
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
