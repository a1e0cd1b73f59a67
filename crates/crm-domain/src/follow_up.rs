//! Follow-ups: one scheduled WhatsApp message and its lifecycle.
//!
//! `pending` is the only state that moves: to `sent` when the outbound queue took the
//! message, or to `failed`. `sent` and `failed` are final. The message text is never
//! inspected to decide a follow-up's fate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::campaign::CampaignState;
use crate::delivery::Delivery;
use crate::event::{DomainEvent, FollowUpFacts};
use crate::ids::{CampaignId, CorrelationId, FollowUpId, QueueItemId, TenantId};
use crate::timestamp::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowUpStatus {
    Pending,
    Sent,
    Failed,
}

impl FollowUpStatus {
    pub const ALL: [FollowUpStatus; 3] = [Self::Pending, Self::Sent, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for FollowUpStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text names no follow-up status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a follow-up status")]
pub struct UnknownFollowUpStatus(pub String);

impl FromStr for FollowUpStatus {
    type Err = UnknownFollowUpStatus;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
            .ok_or_else(|| UnknownFollowUpStatus(text.to_owned()))
    }
}

/// A stored follow-up.
///
/// Invariant: `correlation_id` and `trace_id` are fixed at creation, so the scheduled,
/// sent and failed events of one follow-up share one trace. How a store writes a
/// follow-up down is the store's business: this type has no serde.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    pub followup_id: FollowUpId,
    pub tenant_id: TenantId,
    pub campaign_id: Option<CampaignId>,
    pub external_key: Option<String>,
    pub lead_id: Option<uuid::Uuid>,
    pub customer_id: Option<uuid::Uuid>,
    pub phone_e164: String,
    pub message: String,
    pub schedule_at: Timestamp,
    pub channel: String,
    pub status: FollowUpStatus,
    /// The outbound queue item id once sent; records adopted from the earlier
    /// implementation may hold any text the provider gave.
    pub provider_message_id: Option<String>,
    pub last_error_code: Option<String>,
    pub last_error_message: Option<String>,
    pub metadata: Map<String, Value>,
    pub correlation_id: CorrelationId,
    pub trace_id: String,
    /// The recipient's IANA time zone, for quiet hours; `None`: the tenant's.
    pub time_zone: Option<String>,
    /// The business phone number that sends it (such as Meta's phone number id); its own
    /// rate applies to it. `None`: the tenant's senders share one rate.
    pub sender: Option<String>,
    /// When a drain handed it to the outbound queue: its entry in the ledger of sends
    /// that WhatsApp's limits count. `None` until then (and for records sent before the
    /// ledger existed).
    pub sent_at: Option<Timestamp>,
    /// What the sender reported, once it has.
    pub delivery: Option<Delivery>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What a client asks for when it schedules a follow-up, already parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFollowUp {
    pub followup_id: FollowUpId,
    pub tenant_id: TenantId,
    pub campaign_id: Option<CampaignId>,
    pub external_key: Option<String>,
    pub lead_id: Option<uuid::Uuid>,
    pub customer_id: Option<uuid::Uuid>,
    pub phone_e164: String,
    pub message: String,
    pub schedule_at: Timestamp,
    pub channel: String,
    pub status: FollowUpStatus,
    pub metadata: Map<String, Value>,
    pub correlation_id: CorrelationId,
    pub trace_id: String,
    pub time_zone: Option<String>,
    pub sender: Option<String>,
}

/// Why a follow-up was marked failed. `code()` is the stable `last_error_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The outbound item broke the outbound-queue contract; retrying cannot help.
    OutboundContractInvalid,
    /// The provider refused the send (or an operator forced that outcome).
    ProviderSendError,
    CampaignCanceled,
    CampaignFailed,
    /// The tenant's opt-out list holds the recipient's number.
    RecipientOptedOut,
    /// A client canceled the follow-up before it went out.
    Canceled,
}

impl FailureReason {
    pub const ALL: [FailureReason; 6] = [
        Self::OutboundContractInvalid,
        Self::ProviderSendError,
        Self::CampaignCanceled,
        Self::CampaignFailed,
        Self::RecipientOptedOut,
        Self::Canceled,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Self::OutboundContractInvalid => "OUTBOUND_CONTRACT_INVALID",
            Self::ProviderSendError => "PROVIDER_SEND_ERROR",
            Self::CampaignCanceled => "CAMPAIGN_CANCELED",
            Self::CampaignFailed => "CAMPAIGN_FAILED",
            Self::RecipientOptedOut => "RECIPIENT_OPTED_OUT",
            Self::Canceled => "CANCELED",
        }
    }

    pub fn retryable(self) -> bool {
        matches!(self, Self::ProviderSendError)
    }

    fn message(self) -> &'static str {
        match self {
            Self::OutboundContractInvalid => {
                "outbound item does not match the outbound queue contract"
            }
            Self::ProviderSendError => "provider send failed",
            Self::CampaignCanceled => "campaign was canceled",
            Self::CampaignFailed => "campaign failed",
            Self::RecipientOptedOut => "the recipient opted out of messages from this tenant",
            Self::Canceled => "canceled before it was sent",
        }
    }
}

/// Only a pending follow-up can move.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("follow-up {followup_id} is {status}, which is final")]
pub struct AlreadyFinal {
    pub followup_id: FollowUpId,
    pub status: FollowUpStatus,
}

/// What the drain does with a due follow-up, given its campaign's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Hand it to the outbound queue.
    Dispatch,
    /// Not due while the campaign is paused; it stays pending.
    Hold,
    /// The campaign is over: fail the follow-up for this reason.
    Fail(FailureReason),
}

/// Gating at the drain: a paused campaign holds its follow-ups, a canceled or failed one
/// fails them, and a recipient on the tenant's opt-out list fails them; otherwise they go.
pub fn gate(campaign_state: Option<CampaignState>, recipient_opted_out: bool) -> Gate {
    match campaign_gate(campaign_state) {
        Gate::Dispatch if recipient_opted_out => Gate::Fail(FailureReason::RecipientOptedOut),
        gate => gate,
    }
}

/// What a campaign's state alone makes of its follow-ups.
fn campaign_gate(campaign_state: Option<CampaignState>) -> Gate {
    match campaign_state {
        Some(CampaignState::Paused) => Gate::Hold,
        Some(CampaignState::Canceled) => Gate::Fail(FailureReason::CampaignCanceled),
        Some(CampaignState::Failed) => Gate::Fail(FailureReason::CampaignFailed),
        Some(
            CampaignState::Draft
            | CampaignState::Scheduled
            | CampaignState::Running
            | CampaignState::Completed,
        )
        | None => Gate::Dispatch,
    }
}

/// The campaign states whose follow-ups are held (not due, not failed: waiting), read off
/// `gate` so the rule lives in one place. Stores use it to pass over held follow-ups
/// without reading them.
pub fn holding_states() -> Vec<CampaignState> {
    CampaignState::ALL
        .into_iter()
        .filter(|state| campaign_gate(Some(*state)) == Gate::Hold)
        .collect()
}

impl FollowUp {
    /// Makes the record for a new follow-up and the event announcing it.
    pub fn schedule(new: NewFollowUp, now: Timestamp) -> (FollowUp, DomainEvent) {
        let follow_up = FollowUp {
            followup_id: new.followup_id,
            tenant_id: new.tenant_id,
            campaign_id: new.campaign_id,
            external_key: new.external_key,
            lead_id: new.lead_id,
            customer_id: new.customer_id,
            phone_e164: new.phone_e164,
            message: new.message,
            schedule_at: new.schedule_at,
            channel: new.channel,
            status: new.status,
            provider_message_id: None,
            last_error_code: None,
            last_error_message: None,
            metadata: new.metadata,
            correlation_id: new.correlation_id,
            trace_id: new.trace_id,
            time_zone: new.time_zone,
            sender: new.sender,
            sent_at: None,
            delivery: None,
            created_at: now,
            updated_at: now,
        };
        let event = DomainEvent::FollowUpScheduled(FollowUpFacts::from(&follow_up));
        (follow_up, event)
    }

    /// Due means pending and scheduled no later than `now`.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.status == FollowUpStatus::Pending && self.schedule_at <= now
    }

    /// The outbound queue accepted the message as `queue_item_id`.
    pub fn mark_sent(
        &self,
        queue_item_id: QueueItemId,
        now: Timestamp,
    ) -> Result<(FollowUp, DomainEvent), AlreadyFinal> {
        let mut sent = self.moved(FollowUpStatus::Sent, now)?;
        sent.provider_message_id = Some(queue_item_id.to_string());
        sent.sent_at = Some(now);
        let event = DomainEvent::FollowUpSent {
            facts: FollowUpFacts::from(&sent),
            provider_message_id: queue_item_id,
        };
        Ok((sent, event))
    }

    pub fn mark_failed(
        &self,
        reason: FailureReason,
        now: Timestamp,
    ) -> Result<(FollowUp, DomainEvent), AlreadyFinal> {
        let mut failed = self.moved(FollowUpStatus::Failed, now)?;
        failed.last_error_code = Some(reason.code().to_owned());
        failed.last_error_message = Some(reason.message().to_owned());
        let event = DomainEvent::FollowUpFailed {
            facts: FollowUpFacts::from(&failed),
            error_code: reason.code().to_owned(),
            retryable: reason.retryable(),
        };
        Ok((failed, event))
    }

    /// Cancels a pending follow-up: it fails with `CANCELED`. `Ok(None)`: it was canceled
    /// already (a repeat changes nothing).
    pub fn cancel(&self, now: Timestamp) -> Result<Option<(FollowUp, DomainEvent)>, AlreadyFinal> {
        if self.status == FollowUpStatus::Failed
            && self.last_error_code.as_deref() == Some(FailureReason::Canceled.code())
        {
            return Ok(None);
        }
        self.mark_failed(FailureReason::Canceled, now).map(Some)
    }

    fn moved(&self, status: FollowUpStatus, now: Timestamp) -> Result<FollowUp, AlreadyFinal> {
        if self.status != FollowUpStatus::Pending {
            return Err(AlreadyFinal {
                followup_id: self.followup_id,
                status: self.status,
            });
        }
        let mut moved = self.clone();
        moved.status = status;
        moved.updated_at = now.max(self.updated_at);
        Ok(moved)
    }
}

#[cfg(test)]
mod tests;
