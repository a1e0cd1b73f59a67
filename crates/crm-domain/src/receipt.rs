//! Delivery receipts: what the provider reports after it accepted a message (delivered,
//! read, or failed, through its status webhooks), applied to the follow-up's delivery.
//!
//! A delivery only moves forward: `accepted → delivered → read`, and `failed` from
//! `accepted` or `delivered`. A receipt for a state already passed is stale (a `read`
//! that arrives before its `delivered` sets both, so the late `delivered` is stale), a
//! repeat is a duplicate, and nothing is ever resent after acceptance: a failed receipt
//! is final whatever its code, though its code still pauses or opts out as the table of
//! answers says.

use crate::answers::Action;
use crate::delivery::{self, Consequences, DeliveryFacts, DeliveryStatus};
use crate::event::{DomainEvent, FollowUpFacts};
use crate::follow_up::FollowUp;
use crate::ids::{QueueItemId, TenantId};
use crate::timestamp::Timestamp;

/// How far ahead of the service's clock a receipt's `at` may be (the provider's clock and
/// ours differ a little); further is refused as a date in the future.
pub const MAX_AHEAD_MS: i64 = 300_000;

/// What a receipt reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptStatus {
    Delivered,
    Read,
    Failed,
}

impl ReceiptStatus {
    pub const ALL: [ReceiptStatus; 3] = [Self::Delivered, Self::Read, Self::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// The delivery status it moves a follow-up to.
    fn delivery(self) -> DeliveryStatus {
        match self {
            Self::Delivered => DeliveryStatus::Delivered,
            Self::Read => DeliveryStatus::Read,
            Self::Failed => DeliveryStatus::Failed,
        }
    }
}

/// The answer to one receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReceiptAnswer {
    Applied,
    Duplicate,
    Stale,
    NotFound,
}

impl ReceiptAnswer {
    pub const ALL: [ReceiptAnswer; 4] =
        [Self::Applied, Self::Duplicate, Self::Stale, Self::NotFound];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Duplicate => "duplicate",
            Self::Stale => "stale",
            Self::NotFound => "not_found",
        }
    }
}

/// One receipt, as whoever receives the provider's webhooks reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The id the provider gave the message, as the `accepted` ack recorded it.
    pub provider_message_id: String,
    /// When given, only this tenant's follow-ups match.
    pub tenant_id: Option<TenantId>,
    pub status: ReceiptStatus,
    /// When the provider says it happened.
    pub at: Timestamp,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
}

impl Receipt {
    /// Whether `at` is further ahead of `now` than clocks drift apart.
    pub fn is_from_the_future(&self, now: Timestamp) -> bool {
        self.at.unix_millis() > now.unix_millis().saturating_add(MAX_AHEAD_MS)
    }

    /// Whether this receipt is about `follow_up`: a message the provider accepted with
    /// this id (and of this receipt's tenant, when it names one).
    pub fn matches(&self, follow_up: &FollowUp) -> bool {
        let accepted = follow_up.delivery.as_ref().is_some_and(|delivery| {
            delivery.provider_message_id.as_deref() == Some(self.provider_message_id.as_str())
                && was_accepted(delivery)
        });
        accepted
            && self
                .tenant_id
                .as_ref()
                .is_none_or(|tenant| *tenant == follow_up.tenant_id)
    }
}

/// Whether the provider accepted the message: its delivery is past acceptance, or it
/// failed after acceptance (a receipt said so; a failed ack leaves no `failed_at`).
fn was_accepted(delivery: &delivery::Delivery) -> bool {
    match delivery.status {
        DeliveryStatus::Accepted | DeliveryStatus::Delivered | DeliveryStatus::Read => true,
        DeliveryStatus::Failed => delivery.receipts.failed_at.is_some(),
        DeliveryStatus::Retrying => false,
    }
}

/// What a receipt did.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// The delivery moved: the follow-up and the event to save together, with what else
    /// it causes (a failed receipt's pause or opt-out).
    Applied {
        follow_up: Box<FollowUp>,
        event: Box<DomainEvent>,
        consequences: Consequences,
    },
    /// Nothing to write.
    Unchanged(ReceiptAnswer),
}

/// Applies `receipt` to `follow_up` (one it `matches`), with the table's `action` for a
/// failed receipt's code.
pub fn receive(
    follow_up: &FollowUp,
    receipt: &Receipt,
    action: Option<Action>,
    now: Timestamp,
) -> Received {
    let Some(current) = follow_up
        .delivery
        .as_ref()
        .filter(|_| receipt.matches(follow_up))
    else {
        return Received::Unchanged(ReceiptAnswer::NotFound);
    };
    let Some(queue_item_id) = follow_up
        .provider_message_id
        .as_deref()
        .and_then(QueueItemId::parse)
    else {
        // Accepted messages were handed out through the queue; this one was not.
        return Received::Unchanged(ReceiptAnswer::NotFound);
    };
    let to = receipt.status.delivery();
    if current.status == to {
        return Received::Unchanged(ReceiptAnswer::Duplicate);
    }
    let forward = matches!(
        (current.status, to),
        (DeliveryStatus::Accepted, _)
            | (
                DeliveryStatus::Delivered,
                DeliveryStatus::Read | DeliveryStatus::Failed
            )
    );
    if !forward {
        return Received::Unchanged(ReceiptAnswer::Stale);
    }
    let mut moved = follow_up.clone();
    moved.updated_at = now.max(follow_up.updated_at);
    let mut delivery = current.clone();
    delivery.status = to;
    delivery.updated_at = now;
    let times = &mut delivery.receipts;
    match receipt.status {
        ReceiptStatus::Delivered => times.delivered_at = Some(receipt.at),
        ReceiptStatus::Read => {
            times.read_at = Some(receipt.at);
            times.delivered_at.get_or_insert(receipt.at);
        }
        ReceiptStatus::Failed => {
            times.failed_at = Some(receipt.at);
            delivery.error_code.clone_from(&receipt.error_code);
        }
    }
    moved.delivery = Some(delivery);
    let consequences = if receipt.status == ReceiptStatus::Failed {
        delivery::consequences(follow_up, receipt.error_code.as_deref(), false, action)
    } else {
        Consequences::default()
    };
    let facts = DeliveryFacts {
        follow_up: FollowUpFacts::from(&moved),
        queue_item_id,
        attempt: current.attempts,
        provider_message_id: Some(receipt.provider_message_id.clone()),
        error_code: receipt.error_code.clone(),
        retryable: false,
    };
    let event = DomainEvent::FollowUpDeliveryReported {
        facts,
        status: receipt.status,
        at: receipt.at,
    };
    Received::Applied {
        follow_up: Box::new(moved),
        event: Box::new(event),
        consequences,
    }
}

#[cfg(test)]
mod tests;
