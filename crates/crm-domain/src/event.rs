//! Orchestration events: what happened (`DomainEvent`) and the envelope it travels in.
//!
//! The domain decides *which* event a change causes; the caller supplies the envelope's
//! identity (event id, correlation, trace, clock), because the domain makes no ids and
//! reads no clock.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::campaign::CampaignState;
use crate::delivery::DeliveryFacts;
use crate::follow_up::FollowUp;
use crate::ids::{CampaignId, CorrelationId, EventId, FollowUpId, QueueItemId, TenantId};
use crate::opt_out::OptOutFacts;
use crate::receipt::ReceiptStatus;
use crate::timestamp::Timestamp;

pub const SCHEMA_VERSION: &str = "1.0.0";
pub const SOURCE_MODULE: &str = "mod-02-whatsapp-crm";
pub const TARGET_MODULE: &str = "mod-01-owner-concierge";

/// A lifecycle change, named in the past tense.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainEvent {
    CampaignCreated {
        campaign_id: CampaignId,
        channel: String,
        state: CampaignState,
        scheduled_at: Option<Timestamp>,
    },
    CampaignStateChanged {
        campaign_id: CampaignId,
        from_state: CampaignState,
        to_state: CampaignState,
        /// The PATCH's reason code, or `auto_pause` when the service paused it.
        reason_code: Option<String>,
    },
    FollowUpScheduled(FollowUpFacts),
    FollowUpSent {
        facts: FollowUpFacts,
        provider_message_id: QueueItemId,
    },
    FollowUpFailed {
        facts: FollowUpFacts,
        error_code: String,
        retryable: bool,
    },
    /// The sender reported the message delivered to the provider.
    FollowUpDeliveryAccepted(DeliveryFacts),
    /// The delivery failed for good (stored once per outbound item).
    FollowUpDeliveryFailed(DeliveryFacts),
    /// The sender reported a failed attempt that will be tried again at `retry_at`.
    FollowUpDeliveryRetrying {
        facts: DeliveryFacts,
        retry_at: Timestamp,
    },
    /// The provider's receipt moved an accepted delivery: delivered, read, or failed
    /// (for good), `at` the provider's time.
    FollowUpDeliveryReported {
        facts: DeliveryFacts,
        status: ReceiptStatus,
        at: Timestamp,
    },
    /// A number joined the tenant's opt-out list.
    OptOutAdded(OptOutFacts),
    /// A number left the tenant's opt-out list.
    OptOutRemoved(OptOutFacts),
}

/// The follow-up fields every follow-up event carries.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUpFacts {
    pub followup_id: FollowUpId,
    pub campaign_id: Option<CampaignId>,
    pub channel: String,
    pub schedule_at: Timestamp,
    pub phone_e164: String,
}

impl From<&FollowUp> for FollowUpFacts {
    fn from(follow_up: &FollowUp) -> Self {
        Self {
            followup_id: follow_up.followup_id,
            campaign_id: follow_up.campaign_id,
            channel: follow_up.channel.clone(),
            schedule_at: follow_up.schedule_at,
            phone_e164: follow_up.phone_e164.clone(),
        }
    }
}

/// Envelope status words of the event contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    Info,
    Accepted,
    Completed,
    Failed,
}

impl DomainEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::CampaignCreated { .. } => "crm.campaign.created",
            Self::CampaignStateChanged { .. } => "crm.campaign.state.changed",
            Self::FollowUpScheduled(_) => "crm.followup.scheduled",
            Self::FollowUpSent { .. } => "crm.followup.sent",
            Self::FollowUpFailed { .. } => "crm.followup.failed",
            Self::FollowUpDeliveryAccepted(_) => "crm.followup.delivery.accepted",
            Self::FollowUpDeliveryFailed(_) => "crm.followup.delivery.failed",
            Self::FollowUpDeliveryRetrying { .. } => "crm.followup.delivery.retrying",
            Self::FollowUpDeliveryReported { status, .. } => match status {
                ReceiptStatus::Delivered => "crm.followup.delivery.delivered",
                ReceiptStatus::Read => "crm.followup.delivery.read",
                ReceiptStatus::Failed => "crm.followup.delivery.failed",
            },
            Self::OptOutAdded(_) => "crm.optout.added",
            Self::OptOutRemoved(_) => "crm.optout.removed",
        }
    }

    pub fn status(&self) -> EventStatus {
        match self {
            Self::CampaignCreated { .. }
            | Self::CampaignStateChanged { .. }
            | Self::FollowUpScheduled(_)
            | Self::FollowUpDeliveryRetrying { .. }
            | Self::OptOutAdded(_)
            | Self::OptOutRemoved(_) => EventStatus::Info,
            Self::FollowUpSent { .. } | Self::FollowUpDeliveryAccepted(_) => EventStatus::Completed,
            Self::FollowUpFailed { .. } | Self::FollowUpDeliveryFailed(_) => EventStatus::Failed,
            Self::FollowUpDeliveryReported { status, .. } => match status {
                ReceiptStatus::Delivered | ReceiptStatus::Read => EventStatus::Completed,
                ReceiptStatus::Failed => EventStatus::Failed,
            },
        }
    }

    pub fn payload(&self) -> Value {
        match self {
            Self::CampaignCreated {
                campaign_id,
                channel,
                state,
                scheduled_at,
            } => json!({
                "campaign_id": campaign_id,
                "channel": channel,
                "state": state,
                "scheduled_at": scheduled_at,
            }),
            Self::CampaignStateChanged {
                campaign_id,
                from_state,
                to_state,
                reason_code,
            } => json!({
                "campaign_id": campaign_id,
                "from_state": from_state,
                "to_state": to_state,
                "reason_code": reason_code,
            }),
            Self::FollowUpScheduled(facts) => facts.payload(),
            Self::FollowUpSent {
                facts,
                provider_message_id,
            } => {
                let mut payload = facts.payload();
                payload["provider_message_id"] = json!(provider_message_id);
                payload
            }
            Self::FollowUpFailed {
                facts,
                error_code,
                retryable,
            } => {
                let mut payload = facts.payload();
                payload["error_code"] = json!(error_code);
                payload["retryable"] = json!(retryable);
                payload
            }
            Self::FollowUpDeliveryAccepted(facts) | Self::FollowUpDeliveryFailed(facts) => {
                facts.payload()
            }
            Self::FollowUpDeliveryRetrying { facts, retry_at } => {
                let mut payload = facts.payload();
                payload["retry_at"] = json!(retry_at);
                payload
            }
            Self::FollowUpDeliveryReported { facts, at, .. } => {
                let mut payload = facts.payload();
                payload["at"] = json!(at);
                payload
            }
            Self::OptOutAdded(facts) | Self::OptOutRemoved(facts) => json!({
                "phone_e164": facts.phone_e164,
                "reason": facts.reason,
                "source": facts.source.as_str(),
            }),
        }
    }
}

impl FollowUpFacts {
    fn payload(&self) -> Value {
        json!({
            "followup_id": self.followup_id,
            "campaign_id": self.campaign_id,
            "channel": self.channel,
            "schedule_at": self.schedule_at,
            "phone_e164": self.phone_e164,
        })
    }
}

/// The identity and routing of one emitted event, chosen by the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct EventContext {
    pub event_id: EventId,
    pub tenant_id: TenantId,
    pub correlation_id: CorrelationId,
    pub causation_id: Option<EventId>,
    pub trace_id: String,
    pub emitted_at: Timestamp,
}

/// An event as it is validated, stored and read back through the trace endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub schema_version: String,
    pub kind: String,
    pub event_id: EventId,
    pub name: String,
    pub tenant_id: TenantId,
    pub source_module: String,
    pub target_module: String,
    pub emitted_at: Timestamp,
    pub correlation_id: CorrelationId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<EventId>,
    pub trace_id: String,
    pub status: EventStatus,
    pub payload: Value,
}

impl EventEnvelope {
    pub fn new(event: &DomainEvent, context: EventContext) -> Self {
        Self {
            schema_version: SCHEMA_VERSION.to_owned(),
            kind: "event".to_owned(),
            event_id: context.event_id,
            name: event.name().to_owned(),
            tenant_id: context.tenant_id,
            source_module: SOURCE_MODULE.to_owned(),
            target_module: TARGET_MODULE.to_owned(),
            emitted_at: context.emitted_at,
            correlation_id: context.correlation_id,
            causation_id: context.causation_id,
            trace_id: context.trace_id,
            status: event.status(),
            payload: event.payload(),
        }
    }
}
