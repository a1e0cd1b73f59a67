//! The outbound queue item: what the WhatsApp sender receives for one follow-up.

use serde::{Deserialize, Serialize};

use crate::event::SOURCE_MODULE;
use crate::follow_up::FollowUp;
use crate::ids::{CorrelationId, QueueItemId, TenantId};
use crate::timestamp::Timestamp;

pub const MAX_ATTEMPTS: u32 = 3;
pub const BACKOFF_MS: u32 = 500;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundItem {
    pub queue_item_id: QueueItemId,
    pub tenant_id: TenantId,
    pub trace_id: String,
    pub correlation_id: CorrelationId,
    /// `followup:<followup_id>`: the sender drops a second item with the same key.
    pub idempotency_key: String,
    pub context: OutboundContext,
    pub recipient: Recipient,
    pub message: OutboundMessage,
    pub retry_policy: RetryPolicy,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundContext {
    #[serde(rename = "type")]
    pub kind: String,
    pub context_id: uuid::Uuid,
    pub task_id: uuid::Uuid,
    pub module_source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub phone_e164: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_id: Option<uuid::Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<uuid::Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboundMessage {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_ms: u32,
}

/// The idempotency key of a follow-up's outbound item.
pub fn idempotency_key(follow_up: &FollowUp) -> String {
    format!("followup:{}", follow_up.followup_id)
}

impl OutboundItem {
    /// Builds the item for a follow-up; the task is its campaign, or the follow-up itself.
    pub fn for_follow_up(follow_up: &FollowUp, queue_item_id: QueueItemId, now: Timestamp) -> Self {
        let followup_id = follow_up.followup_id.as_uuid();
        Self {
            queue_item_id,
            tenant_id: follow_up.tenant_id.clone(),
            trace_id: follow_up.trace_id.clone(),
            correlation_id: follow_up.correlation_id,
            idempotency_key: idempotency_key(follow_up),
            context: OutboundContext {
                kind: "followup".to_owned(),
                context_id: followup_id,
                task_id: follow_up.campaign_id.map_or(followup_id, |id| id.as_uuid()),
                module_source: SOURCE_MODULE.to_owned(),
            },
            recipient: Recipient {
                phone_e164: follow_up.phone_e164.clone(),
                lead_id: follow_up.lead_id,
                customer_id: follow_up.customer_id,
            },
            message: OutboundMessage {
                kind: "text".to_owned(),
                text: follow_up.message.clone(),
            },
            retry_policy: RetryPolicy {
                max_attempts: MAX_ATTEMPTS,
                backoff_ms: BACKOFF_MS,
            },
            created_at: now,
        }
    }
}
