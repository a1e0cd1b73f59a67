//! Campaigns: the record, its states, creation and the workflow-driven transition.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::DomainEvent;
use crate::ids::{CampaignId, TenantId};
use crate::metadata::{self, MetadataTooLarge};
use crate::timestamp::Timestamp;
use crate::workflow::{Guard, TransitionRefusal, Workflow};

/// The name of the campaign workflow in a workflow file.
pub const CAMPAIGN_WORKFLOW: &str = "campaign";

/// The campaign states the wire contract knows. Which moves are allowed between them is
/// not hard-coded: it comes from the `campaign` workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CampaignState {
    Draft,
    Scheduled,
    Running,
    Paused,
    Completed,
    Canceled,
    Failed,
}

impl CampaignState {
    pub const ALL: [CampaignState; 7] = [
        Self::Draft,
        Self::Scheduled,
        Self::Running,
        Self::Paused,
        Self::Completed,
        Self::Canceled,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Completed => "completed",
            Self::Canceled => "canceled",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for CampaignState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text names no campaign state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a campaign state")]
pub struct UnknownCampaignState(pub String);

impl FromStr for CampaignState {
    type Err = UnknownCampaignState;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| UnknownCampaignState(text.to_owned()))
    }
}

/// Checks that a workflow can drive campaigns: each of its states must be a campaign
/// state, or campaigns could never reach it (or leave it). Returns the first that is not.
pub fn check_workflow(workflow: &Workflow) -> Result<(), UnknownCampaignState> {
    workflow
        .states()
        .iter()
        .try_for_each(|state| state.parse::<CampaignState>().map(drop))
}

/// A stored campaign.
///
/// Invariant: `revision` grows by one with every saved change, so a store can refuse a
/// change decided on a stale copy. It is storage bookkeeping; the wire view leaves it out.
/// How a store writes a campaign down is the store's business: this type has no serde.
#[derive(Debug, Clone, PartialEq)]
pub struct Campaign {
    pub campaign_id: CampaignId,
    pub tenant_id: TenantId,
    pub external_key: Option<String>,
    pub name: String,
    pub channel: String,
    pub audience_segment: Option<String>,
    pub state: CampaignState,
    pub scheduled_at: Option<Timestamp>,
    pub metadata: Map<String, Value>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub revision: u64,
}

/// What a client asks for when it creates a campaign, already parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCampaign {
    pub campaign_id: CampaignId,
    pub tenant_id: TenantId,
    pub external_key: Option<String>,
    pub name: String,
    pub channel: String,
    pub audience_segment: Option<String>,
    pub state: CampaignState,
    pub scheduled_at: Option<Timestamp>,
    pub metadata: Map<String, Value>,
}

impl Campaign {
    /// Makes the record for a new campaign and the event announcing it.
    pub fn create(new: NewCampaign, now: Timestamp) -> (Campaign, DomainEvent) {
        let campaign = Campaign {
            campaign_id: new.campaign_id,
            tenant_id: new.tenant_id,
            external_key: new.external_key,
            name: new.name,
            channel: new.channel,
            audience_segment: new.audience_segment,
            state: new.state,
            scheduled_at: new.scheduled_at,
            metadata: new.metadata,
            created_at: now,
            updated_at: now,
            revision: 1,
        };
        let event = DomainEvent::CampaignCreated {
            campaign_id: campaign.campaign_id,
            channel: campaign.channel.clone(),
            state: campaign.state,
            scheduled_at: campaign.scheduled_at,
        };
        (campaign, event)
    }
}

/// A request to move a campaign to another state.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    pub to_state: CampaignState,
    pub trigger: Option<String>,
    pub reason_code: Option<String>,
    pub metadata: Option<Map<String, Value>>,
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvanceError {
    /// The workflow's guard refused it.
    #[error(transparent)]
    Refused(#[from] TransitionRefusal),
    /// The metadata it merges in would make the campaign's too large.
    #[error(transparent)]
    MetadataTooLarge(#[from] MetadataTooLarge),
}

/// The outcome of an allowed transition request.
#[derive(Debug, Clone, PartialEq)]
pub enum Advanced {
    /// The campaign already is in the requested state: nothing to write, nothing to emit.
    Unchanged,
    /// The campaign moved; save it together with the event.
    Moved(Box<Campaign>, Box<DomainEvent>),
}

/// Decides a transition with the `campaign` workflow.
///
/// Metadata sent with the change is merged into the campaign's metadata (keys in the
/// change win), so a transition can record why it happened without losing earlier notes;
/// a merge that would pass `metadata::MAX_METADATA_BYTES` is refused.
pub fn advance(
    campaign: &Campaign,
    command: Advance,
    workflow: &Workflow,
    now: Timestamp,
) -> Result<Advanced, AdvanceError> {
    let from = campaign.state;
    let to = command.to_state;
    match workflow.guard(from.as_str(), to.as_str(), command.trigger.as_deref())? {
        Guard::Unchanged => Ok(Advanced::Unchanged),
        Guard::Allowed => {
            let mut moved = campaign.clone();
            moved.state = to;
            moved.updated_at = now.max(campaign.updated_at);
            moved.revision = campaign.revision + 1;
            if let Some(metadata) = command.metadata {
                moved.metadata.extend(metadata);
                metadata::check(&moved.metadata)?;
            }
            let event = DomainEvent::CampaignStateChanged {
                campaign_id: campaign.campaign_id,
                from_state: from,
                to_state: to,
                reason_code: command.reason_code,
            };
            Ok(Advanced::Moved(Box::new(moved), Box::new(event)))
        }
    }
}

/// The reason code of a pause the service decided itself.
pub const AUTO_PAUSE: &str = "auto_pause";

/// Why the service pauses a running campaign.
#[derive(Debug, Clone, PartialEq)]
pub enum PauseCause {
    /// A sender reported a code that the table of answers says pauses the campaign.
    ErrorCode {
        error_code: String,
        followup_id: crate::ids::FollowUpId,
    },
    /// More than the tenant's `auto_pause` ratio of the campaign's last finished
    /// deliveries failed; `followup_id` is the failure that tipped it.
    FailureRatio {
        failures: u32,
        window: u32,
        max_failure_ratio: crate::policy::FailureRatio,
        followup_id: crate::ids::FollowUpId,
    },
}

impl PauseCause {
    /// What `metadata.auto_pause` records.
    fn note(&self, now: Timestamp) -> Value {
        match self {
            Self::ErrorCode {
                error_code,
                followup_id,
            } => serde_json::json!({
                "cause": "error_code",
                "error_code": error_code,
                "followup_id": followup_id,
                "at": now,
            }),
            Self::FailureRatio {
                failures,
                window,
                max_failure_ratio,
                followup_id,
            } => serde_json::json!({
                "cause": "failure_ratio",
                "failures": failures,
                "window": window,
                "max_failure_ratio": max_failure_ratio.as_f64(),
                "followup_id": followup_id,
                "at": now,
            }),
        }
    }
}

/// Pauses a running campaign through the workflow, exactly as a PATCH to `paused` with
/// reason code `auto_pause` would, noting the cause in `metadata.auto_pause`. `None` when
/// there is nothing to do: the campaign is not running (already paused, or finished), or
/// the workflow has no way from `running` to `paused`. A note that would make the
/// metadata too large is left out; the pause itself is never refused for it.
pub fn auto_pause(
    campaign: &Campaign,
    cause: &PauseCause,
    workflow: &Workflow,
    now: Timestamp,
) -> Option<(Campaign, DomainEvent)> {
    let (from, to) = (CampaignState::Running, CampaignState::Paused);
    if campaign.state != from {
        return None;
    }
    let trigger = workflow.trigger_for(from.as_str(), to.as_str())?.to_owned();
    let command = |metadata| Advance {
        to_state: to,
        trigger: Some(trigger.clone()),
        reason_code: Some(AUTO_PAUSE.to_owned()),
        metadata,
    };
    let note = Map::from_iter([("auto_pause".to_owned(), cause.note(now))]);
    let decided = match advance(campaign, command(Some(note)), workflow, now) {
        Err(AdvanceError::MetadataTooLarge(_)) => advance(campaign, command(None), workflow, now),
        other => other,
    };
    match decided {
        Ok(Advanced::Moved(moved, event)) => Some((*moved, *event)),
        Ok(Advanced::Unchanged) | Err(_) => None,
    }
}

#[cfg(test)]
mod tests;

/// Counts of a campaign's follow-ups, by status and by what the sender reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CampaignStats {
    pub pending: i64,
    pub sent: i64,
    pub failed: i64,
    pub delivery_accepted: i64,
    pub delivery_retrying: i64,
    pub delivery_failed: i64,
    pub delivery_delivered: i64,
    pub delivery_read: i64,
}

impl CampaignStats {
    /// What one follow-up counts for.
    pub fn of(follow_up: &crate::follow_up::FollowUp) -> Self {
        use crate::delivery::DeliveryStatus;
        use crate::follow_up::FollowUpStatus;
        let mut stats = Self::default();
        match follow_up.status {
            FollowUpStatus::Pending => stats.pending = 1,
            FollowUpStatus::Sent => stats.sent = 1,
            FollowUpStatus::Failed => stats.failed = 1,
        }
        match follow_up.delivery.as_ref().map(|delivery| delivery.status) {
            Some(DeliveryStatus::Accepted) => stats.delivery_accepted = 1,
            Some(DeliveryStatus::Retrying) => stats.delivery_retrying = 1,
            Some(DeliveryStatus::Failed) => stats.delivery_failed = 1,
            Some(DeliveryStatus::Delivered) => stats.delivery_delivered = 1,
            Some(DeliveryStatus::Read) => stats.delivery_read = 1,
            None => {}
        }
        stats
    }

    /// How the counts move when `before` (none: a new follow-up) becomes `after`.
    pub fn change(
        before: Option<&crate::follow_up::FollowUp>,
        after: &crate::follow_up::FollowUp,
    ) -> Self {
        let mut change = Self::of(after);
        if let Some(before) = before {
            change.subtract(&Self::of(before));
        }
        change
    }

    pub fn add(&mut self, other: &Self) {
        for (mine, theirs) in self.counts_mut().into_iter().zip(other.counts()) {
            *mine += theirs;
        }
    }

    fn subtract(&mut self, other: &Self) {
        for (mine, theirs) in self.counts_mut().into_iter().zip(other.counts()) {
            *mine -= theirs;
        }
    }

    pub fn is_zero(&self) -> bool {
        self.counts().iter().all(|count| *count == 0)
    }

    /// The counts, in field order.
    pub fn counts(&self) -> [i64; 8] {
        [
            self.pending,
            self.sent,
            self.failed,
            self.delivery_accepted,
            self.delivery_retrying,
            self.delivery_failed,
            self.delivery_delivered,
            self.delivery_read,
        ]
    }

    fn counts_mut(&mut self) -> [&mut i64; 8] {
        [
            &mut self.pending,
            &mut self.sent,
            &mut self.failed,
            &mut self.delivery_accepted,
            &mut self.delivery_retrying,
            &mut self.delivery_failed,
            &mut self.delivery_delivered,
            &mut self.delivery_read,
        ]
    }
}
