//! Delivery: outbound items leased to a sender, and what the sender reports back.
//!
//! An item in the outbound queue is `ready` (from `available_at` on), `leased` to one
//! consumer until its lease expires, or `done`. A claim leases a ready item, or one whose
//! lease ran out: that lease counts as a failed attempt, so an item whose sender keeps
//! dying is not handed out forever. An acknowledgement under the current lease records
//! the outcome on the follow-up (`delivery`) with its event; a retryable failure with
//! attempts left makes the item ready again after an exponential backoff. Acks are
//! idempotent: repeating one changes nothing and answers the same. A failed attempt whose
//! code the table of answers lists does what the table says (`crate::answers`): pause the
//! campaign, opt the recipient out, finish, or retry no sooner than a given delay.

use std::fmt;

use serde_json::Value;

use crate::answers::Action;
use crate::campaign::PauseCause;
use crate::event::{DomainEvent, FollowUpFacts};
use crate::follow_up::FollowUp;
use crate::ids::{FollowUpId, QueueItemId, TenantId};
use crate::opt_out::OptOutSource;
use crate::outbound::{OutboundItem, RetryPolicy};
use crate::timestamp::Timestamp;

/// The error code of a delivery whose last lease ran out with no attempts left.
pub const LEASE_EXPIRED: &str = "LEASE_EXPIRED";
/// The reason recorded with an opt-out a sender reported (`opt_out: true`).
pub const REPORTED_OPT_OUT: &str = "reported by the sender";

/// Identifies one lease of one outbound item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub uuid::Uuid);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueStatus {
    Ready,
    Leased,
    Done,
}

impl QueueStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Leased => "leased",
            Self::Done => "done",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Ready, Self::Leased, Self::Done]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// The answer to one acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckStatus {
    Acked,
    RetryScheduled,
    LeaseLost,
    NotFound,
}

impl AckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Acked => "acked",
            Self::RetryScheduled => "retry_scheduled",
            Self::LeaseLost => "lease_lost",
            Self::NotFound => "not_found",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Acked,
            Self::RetryScheduled,
            Self::LeaseLost,
            Self::NotFound,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

/// The lease an item is under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub lease_id: LeaseId,
    pub expires_at: Timestamp,
}

/// The last acknowledgement applied, so that a repeat answers the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LastAck {
    pub lease_id: LeaseId,
    pub status: AckStatus,
}

/// Where one outbound item is in its delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueEntry {
    pub queue_item_id: QueueItemId,
    pub followup_id: FollowUpId,
    pub tenant_id: TenantId,
    /// The follow-up's sender, handed to the consumer with each lease.
    pub sender: Option<String>,
    pub retry_policy: RetryPolicy,
    pub status: QueueStatus,
    /// How many times it was leased.
    pub attempt: u32,
    /// When it can be claimed: `ready_at`, or the end of its lease; `None` once done.
    pub available_at: Option<Timestamp>,
    pub lease: Option<Lease>,
    pub last_ack: Option<LastAck>,
    pub enqueued_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

impl QueueEntry {
    /// A new item, ready at once.
    pub fn new(item: &OutboundItem, followup_id: FollowUpId, sender: Option<String>) -> Self {
        Self {
            queue_item_id: item.queue_item_id,
            followup_id,
            tenant_id: item.tenant_id.clone(),
            sender,
            retry_policy: item.retry_policy,
            status: QueueStatus::Ready,
            attempt: 0,
            available_at: Some(item.created_at),
            lease: None,
            last_ack: None,
            enqueued_at: item.created_at,
            finished_at: None,
        }
    }

    /// Whether a claim at `now` may take it.
    pub fn claimable(&self, now: Timestamp) -> bool {
        self.status != QueueStatus::Done && self.available_at.is_some_and(|at| at <= now)
    }

    /// Whether a claim finishes this entry instead of leasing it: its last lease ran out
    /// with no attempts left. Only then does the claim need the entry's follow-up.
    pub fn runs_out_on_claim(&self) -> bool {
        self.status == QueueStatus::Leased && !self.attempts_left()
    }

    fn attempts_left(&self) -> bool {
        self.attempt < self.retry_policy.max_attempts
    }

    /// The backoff after this attempt: `backoff_ms × 2^(attempt-1)`, spread by `jitter`
    /// (in `[-1, 1]`) over ±10 %.
    fn backoff_ms(&self, jitter: f64) -> u64 {
        let exponent = self.attempt.saturating_sub(1).min(30);
        let backoff = f64::from(self.retry_policy.backoff_ms) * f64::from(1u32 << exponent);
        (backoff * (1.0 + 0.1 * jitter.clamp(-1.0, 1.0))).max(0.0) as u64
    }
}

/// Where a follow-up's delivery is: what the sender's acks said (`accepted`, `retrying`,
/// `failed`), then what the provider's receipts said after acceptance (`delivered`,
/// `read`, or `failed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    Accepted,
    Retrying,
    Failed,
    Delivered,
    Read,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 5] = [
        Self::Accepted,
        Self::Retrying,
        Self::Failed,
        Self::Delivered,
        Self::Read,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// The delivery outcome recorded on a follow-up (`null` until the first ack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub provider_message_id: Option<String>,
    pub error_code: Option<String>,
    pub updated_at: Timestamp,
    /// When the provider's receipts said it was delivered, read, or failed after
    /// acceptance (the receipts' own times); `None` until one did.
    pub receipts: ReceiptTimes,
}

/// The times the provider's receipts reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiptTimes {
    pub delivered_at: Option<Timestamp>,
    pub read_at: Option<Timestamp>,
    pub failed_at: Option<Timestamp>,
}

/// The fields every delivery event carries.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryFacts {
    pub follow_up: FollowUpFacts,
    pub queue_item_id: QueueItemId,
    pub attempt: u32,
    pub provider_message_id: Option<String>,
    pub error_code: Option<String>,
    /// Whether the service will try again.
    pub retryable: bool,
}

impl DeliveryFacts {
    pub(crate) fn payload(&self) -> Value {
        serde_json::json!({
            "followup_id": self.follow_up.followup_id,
            "campaign_id": self.follow_up.campaign_id,
            "queue_item_id": self.queue_item_id,
            "attempt": self.attempt,
            "provider_message_id": self.provider_message_id,
            "error_code": self.error_code,
            "retryable": self.retryable,
        })
    }
}

/// What a claim did with one claimable entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Claimed {
    /// Leased to the claimer.
    Leased(QueueEntry),
    /// Its lease ran out with no attempts left: finished as failed.
    Expired {
        entry: QueueEntry,
        follow_up: Box<FollowUp>,
        event: Box<DomainEvent>,
    },
}

/// Leases a claimable entry to `lease_id` until `expires_at`, or finishes it as failed
/// when it `runs_out_on_claim`: that takes its `follow_up`, which callers read only for
/// such entries (without it, the entry is leased).
pub fn claim(
    entry: &QueueEntry,
    follow_up: Option<&FollowUp>,
    lease_id: LeaseId,
    expires_at: Timestamp,
    now: Timestamp,
) -> Claimed {
    if entry.runs_out_on_claim()
        && let Some(follow_up) = follow_up
    {
        let mut finished = entry.clone();
        finished.status = QueueStatus::Done;
        finished.available_at = None;
        finished.finished_at = Some(now);
        let report = Report::failed(LEASE_EXPIRED, false);
        let (follow_up, event) = record(follow_up, &finished, &report, DeliveryStatus::Failed, now);
        return Claimed::Expired {
            entry: finished,
            follow_up: Box::new(follow_up),
            event: Box::new(event),
        };
    }
    let mut leased = entry.clone();
    leased.status = QueueStatus::Leased;
    leased.attempt += 1;
    leased.lease = Some(Lease {
        lease_id,
        expires_at,
    });
    leased.available_at = Some(expires_at);
    Claimed::Leased(leased)
}

/// What the sender says about one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub accepted: bool,
    pub provider_message_id: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub retryable: bool,
    pub opt_out: bool,
}

impl Report {
    fn failed(error_code: &str, retryable: bool) -> Self {
        Self {
            accepted: false,
            provider_message_id: None,
            error_code: Some(error_code.to_owned()),
            error_message: None,
            retryable,
            opt_out: false,
        }
    }
}

/// What the caller looked up for a report: the table's action for its error code, and
/// the tenant's pair interval (needed only when that action's delay depends on it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rules {
    pub action: Option<Action>,
    pub recipient_interval_ms: Option<u32>,
}

/// A recipient to add to the tenant's opt-out list, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutRequest {
    pub reason: String,
    pub source: OptOutSource,
}

/// What an applied acknowledgement asks beyond its own records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Consequences {
    /// Pause the follow-up's campaign (if it is running) in the same commit.
    pub pause: Option<PauseCause>,
    /// Add the recipient to the tenant's opt-out list in the same commit.
    pub opt_out: Option<OptOutRequest>,
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq)]
pub enum Acked {
    /// The report was recorded: the entry, its follow-up and the event to save together,
    /// with what else it causes.
    Applied {
        entry: Box<QueueEntry>,
        follow_up: Box<FollowUp>,
        event: Box<DomainEvent>,
        status: AckStatus,
        consequences: Consequences,
    },
    /// Nothing to write: a repeat of an applied ack, or a lease that is not the item's.
    Unchanged(AckStatus),
}

/// Applies a report made under `lease_id`. `jitter` in `[-1, 1]` spreads retries by up to
/// ±10 % of their backoff (the caller draws it; the domain has no randomness).
///
/// A failure whose code `rules.action` covers does what the table says: pause, opt-out
/// and finish end the item whatever `retryable` says; a retry happens while attempts
/// remain, no sooner than both the backoff and the table's delay. Other failures retry
/// when `retryable` and attempts remain.
pub fn ack(
    entry: &QueueEntry,
    follow_up: &FollowUp,
    lease_id: LeaseId,
    report: &Report,
    rules: Rules,
    now: Timestamp,
    jitter: f64,
) -> Acked {
    if let Some(last) = entry.last_ack
        && last.lease_id == lease_id
    {
        return Acked::Unchanged(last.status);
    }
    let current = entry.status == QueueStatus::Leased
        && entry.lease.is_some_and(|lease| lease.lease_id == lease_id);
    if !current {
        return Acked::Unchanged(AckStatus::LeaseLost);
    }
    let action = if report.accepted { None } else { rules.action };
    let retry_in_ms = match action {
        _ if !entry.attempts_left() => None,
        None => (!report.accepted && report.retryable).then(|| entry.backoff_ms(jitter)),
        Some(Action::Retry(not_before)) => Some(
            entry
                .backoff_ms(jitter)
                .max(not_before.delay_ms(entry.attempt, rules.recipient_interval_ms)),
        ),
        Some(Action::PauseCampaign | Action::OptOut | Action::Finish) => None,
    };
    let mut next = entry.clone();
    next.lease = None;
    let (status, delivery) = if let Some(delay) = retry_in_ms {
        let ready_at = Timestamp::from_unix_millis(
            now.unix_millis()
                .saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)),
        )
        .unwrap_or(Timestamp::MAX)
        .min(Timestamp::MAX);
        next.status = QueueStatus::Ready;
        next.available_at = Some(ready_at);
        (AckStatus::RetryScheduled, DeliveryStatus::Retrying)
    } else {
        next.status = QueueStatus::Done;
        next.available_at = None;
        next.finished_at = Some(now);
        let delivery = if report.accepted {
            DeliveryStatus::Accepted
        } else {
            DeliveryStatus::Failed
        };
        (AckStatus::Acked, delivery)
    };
    next.last_ack = Some(LastAck { lease_id, status });
    let consequences = consequences(
        follow_up,
        report.error_code.as_deref(),
        report.opt_out,
        action,
    );
    let (follow_up, event) = record(follow_up, &next, report, delivery, now);
    Acked::Applied {
        entry: Box::new(next),
        follow_up: Box::new(follow_up),
        event: Box::new(event),
        status,
        consequences,
    }
}

/// The pause and the opt-out a failure with `error_code` causes: the table's `action`, or
/// the sender's own `opt_out`.
pub(crate) fn consequences(
    follow_up: &FollowUp,
    error_code: Option<&str>,
    reported_opt_out: bool,
    action: Option<Action>,
) -> Consequences {
    let code = error_code.unwrap_or_default().to_owned();
    let pause =
        (action == Some(Action::PauseCampaign) && follow_up.campaign_id.is_some()).then(|| {
            PauseCause::ErrorCode {
                error_code: code.clone(),
                followup_id: follow_up.followup_id,
            }
        });
    let opt_out = if action == Some(Action::OptOut) {
        Some(OptOutRequest {
            reason: format!("provider:{code}"),
            source: OptOutSource::Provider,
        })
    } else {
        reported_opt_out.then(|| OptOutRequest {
            reason: REPORTED_OPT_OUT.to_owned(),
            source: OptOutSource::Ack,
        })
    };
    Consequences { pause, opt_out }
}

/// The follow-up with its delivery recorded, and the event that says so.
fn record(
    follow_up: &FollowUp,
    entry: &QueueEntry,
    report: &Report,
    status: DeliveryStatus,
    now: Timestamp,
) -> (FollowUp, DomainEvent) {
    let mut recorded = follow_up.clone();
    recorded.updated_at = now.max(follow_up.updated_at);
    recorded.delivery = Some(Delivery {
        status,
        attempts: entry.attempt,
        provider_message_id: report.provider_message_id.clone(),
        error_code: report.error_code.clone(),
        updated_at: now,
        receipts: ReceiptTimes::default(),
    });
    let facts = DeliveryFacts {
        follow_up: FollowUpFacts::from(&recorded),
        queue_item_id: entry.queue_item_id,
        attempt: entry.attempt,
        provider_message_id: report.provider_message_id.clone(),
        error_code: report.error_code.clone(),
        retryable: status == DeliveryStatus::Retrying,
    };
    let event = match status {
        // A retried entry is ready again at `available_at`.
        DeliveryStatus::Retrying => DomainEvent::FollowUpDeliveryRetrying {
            facts,
            retry_at: entry.available_at.unwrap_or(now),
        },
        DeliveryStatus::Failed => DomainEvent::FollowUpDeliveryFailed(facts),
        // Only receipts move a delivery past acceptance; an ack records acceptance.
        DeliveryStatus::Accepted | DeliveryStatus::Delivered | DeliveryStatus::Read => {
            DomainEvent::FollowUpDeliveryAccepted(facts)
        }
    };
    (recorded, event)
}

#[cfg(test)]
pub(crate) mod tests;
