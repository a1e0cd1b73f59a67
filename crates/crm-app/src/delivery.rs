//! The sender's side of the outbound queue: leases and acknowledgements.
//!
//! The rules (attempts, backoff, idempotent acks, lease expiry, the table of provider
//! answers, the automatic pause) are the domain's; this module draws the ids, the clock
//! and the jitter they need, looks up the table's action and the tenant policy an action
//! needs, wraps the events in their envelopes (checked against the event contract), and
//! hands the store what to save.

use std::collections::HashMap;
use std::time::Duration;

use crm_domain::campaign::{self, Campaign, PauseCause};
use crm_domain::delivery::{self, AckStatus, Claimed, LeaseId, QueueEntry, Rules};
use crm_domain::event::{DomainEvent, EventEnvelope};
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::TenantId;
use crm_domain::receipt::{self, Receipt, ReceiptAnswer, ReceiptStatus};
use crm_domain::timestamp::Timestamp;
use crm_ports::{
    AckDecision, AckRequest, Acker, LeaseDecision, LeasedItem, Leaser, Pauser, ReceiptApplier,
    ReceiptDecision, ack_decision, receipt_decision,
};
use uuid::Uuid;

use crate::error::AppError;
use crate::metrics as names;
use crate::service::{Crm, now};

/// The most items one claim leases.
pub const MAX_CLAIM_LIMIT: usize = 100;
/// Leases last at least this long and at most `MAX_LEASE`.
pub const MIN_LEASE: Duration = Duration::from_secs(1);
pub const MAX_LEASE: Duration = Duration::from_secs(600);

struct Lease<'a> {
    crm: &'a Crm,
    now: Timestamp,
    expires_at: Timestamp,
}

impl Leaser for Lease<'_> {
    fn lease(&self, entry: &QueueEntry, follow_up: Option<&FollowUp>) -> LeaseDecision {
        let lease_id = LeaseId(Uuid::new_v4());
        match delivery::claim(entry, follow_up, lease_id, self.expires_at, self.now) {
            Claimed::Leased(entry) => LeaseDecision::Lease(Box::new(entry)),
            Claimed::Expired {
                entry,
                follow_up,
                event,
            } => match self.crm.follow_up_envelope(&follow_up, &event, self.now) {
                Ok(envelope) => LeaseDecision::Finish {
                    entry: Box::new(entry),
                    follow_up,
                    events: vec![envelope],
                },
                // Our own event broke its contract: leave the item as it was rather than
                // finish it without its event; a later claim tries again.
                Err(error) => {
                    tracing::error!(queue_item_id = %entry.queue_item_id, %error, "delivery event rejected");
                    LeaseDecision::Lease(Box::new(entry))
                }
            },
        }
    }
}

/// What the sender's acks and the provider's receipts report, decided at `now`.
struct Reports<'a> {
    crm: &'a Crm,
    now: Timestamp,
    /// The pair interval of each tenant whose acks carry a code that needs it.
    recipient_intervals: HashMap<TenantId, Option<u32>>,
}

impl Reports<'_> {
    /// Wraps an event of a follow-up's delivery in its envelope.
    fn wrap(&self, follow_up: &FollowUp, event: &DomainEvent) -> Result<EventEnvelope, AppError> {
        self.crm.follow_up_envelope(follow_up, event, self.now)
    }
}

impl Acker for Reports<'_> {
    fn ack(&self, entry: &QueueEntry, follow_up: &FollowUp, request: &AckRequest) -> AckDecision {
        // ±10 % of the backoff, so that retries of one outage do not come back together.
        let jitter = (Uuid::new_v4().as_u128() % 2_001) as f64 / 1_000.0 - 1.0;
        let rules = Rules {
            action: self
                .crm
                .answers
                .action(request.report.error_code.as_deref()),
            recipient_interval_ms: self
                .recipient_intervals
                .get(&entry.tenant_id)
                .copied()
                .flatten(),
        };
        let acked = delivery::ack(
            entry,
            follow_up,
            request.lease_id,
            &request.report,
            rules,
            self.now,
            jitter,
        );
        ack_decision(acked, self.now, |f, e| self.wrap(f, e)).unwrap_or_else(|error| {
            // Nothing is written without its events; the sender's repeat can land later.
            tracing::error!(queue_item_id = %entry.queue_item_id, %error, "delivery event rejected");
            AckDecision::Unchanged(AckStatus::LeaseLost)
        })
    }

    /// Any failure may: by its code (the table of answers), or by the tenant's
    /// `auto_pause` window, which only the store holding the campaign can read.
    fn may_pause(&self, request: &AckRequest) -> bool {
        !request.report.accepted
    }
}

impl ReceiptApplier for Reports<'_> {
    fn receive(&self, follow_up: &FollowUp, receipt: &Receipt) -> ReceiptDecision {
        let action = self.crm.answers.action(receipt.error_code.as_deref());
        let received = receipt::receive(follow_up, receipt, action, self.now);
        receipt_decision(received, self.now, |f, e| self.wrap(f, e)).unwrap_or_else(|error| {
            // Nothing is written without its events; the receiver's repeat can land later.
            tracing::error!(provider_message_id = %receipt.provider_message_id, %error, "receipt event rejected");
            ReceiptDecision::Unchanged(ReceiptAnswer::NotFound)
        })
    }

    fn may_pause(&self, receipt: &Receipt) -> bool {
        receipt.status == ReceiptStatus::Failed
    }
}

impl Pauser for Reports<'_> {
    fn pause(
        &self,
        campaign: &Campaign,
        follow_up: &FollowUp,
        cause: &PauseCause,
    ) -> Option<(Campaign, EventEnvelope)> {
        self.crm.auto_pause(campaign, follow_up, cause, self.now)
    }
}

impl Crm {
    /// Leases up to `limit` (capped at `MAX_CLAIM_LIMIT`) ready items for `lease`
    /// (clamped to `MIN_LEASE..=MAX_LEASE`).
    #[tracing::instrument(name = "claim", skip_all, fields(limit))]
    pub async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<LeasedItem>, AppError> {
        let now = now();
        let lease = lease.clamp(MIN_LEASE, MAX_LEASE);
        let expires_at = Timestamp::from_unix_millis(
            now.unix_millis()
                .saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)),
        )
        .unwrap_or(Timestamp::MAX);
        let leaser = Lease {
            crm: self,
            now,
            expires_at,
        };
        let leased = self
            .store
            .claim(now, limit.clamp(1, MAX_CLAIM_LIMIT), &leaser)
            .await?;
        metrics::counter!(names::OUTBOUND_LEASED).increment(leased.len() as u64);
        Ok(leased)
    }

    /// Applies acknowledgements, each atomically with its follow-up's delivery and event.
    #[tracing::instrument(name = "ack", skip_all, fields(acks = acks.len()))]
    pub async fn ack(&self, acks: &[AckRequest]) -> Result<Vec<AckStatus>, AppError> {
        let acker = Reports {
            crm: self,
            now: now(),
            recipient_intervals: self.recipient_intervals(acks).await?,
        };
        let statuses = self.store.ack(acks, &acker).await?;
        for status in &statuses {
            metrics::counter!(names::OUTBOUND_ACKS, "status" => status.as_str()).increment(1);
        }
        Ok(statuses)
    }

    /// Applies delivery receipts, each atomically with its follow-up's delivery, event,
    /// and what a failed one's code causes (an opt-out, the pause of the campaign).
    #[tracing::instrument(name = "receipts", skip_all, fields(receipts = receipts.len()))]
    pub async fn apply_receipts(
        &self,
        receipts: &[Receipt],
    ) -> Result<Vec<ReceiptAnswer>, AppError> {
        let applier = Reports {
            crm: self,
            now: now(),
            recipient_intervals: HashMap::new(),
        };
        let answers = self.store.apply_receipts(receipts, &applier).await?;
        for (receipt, answer) in receipts.iter().zip(&answers) {
            metrics::counter!(
                names::RECEIPTS,
                "status" => receipt.status.as_str(),
                "answer" => answer.as_str()
            )
            .increment(1);
        }
        Ok(answers)
    }

    /// `campaign` paused for `cause`, its event in the correlation of the follow-up whose
    /// delivery caused it; `None` when it is not running (or its event is refused).
    fn auto_pause(
        &self,
        campaign: &Campaign,
        follow_up: &FollowUp,
        cause: &PauseCause,
        now: Timestamp,
    ) -> Option<(Campaign, EventEnvelope)> {
        let (paused, event) = campaign::auto_pause(campaign, cause, &self.workflow, now)?;
        match self.follow_up_envelope(follow_up, &event, now) {
            Ok(envelope) => {
                tracing::warn!(
                    campaign_id = %paused.campaign_id,
                    followup_id = %follow_up.followup_id,
                    ?cause,
                    "campaign paused automatically"
                );
                metrics::counter!(names::CAMPAIGNS_AUTO_PAUSED).increment(1);
                Some((paused, envelope))
            }
            Err(error) => {
                tracing::error!(campaign_id = %campaign.campaign_id, %error, "pause event rejected");
                None
            }
        }
    }

    /// The pair interval of the tenants whose acks carry a code whose delay depends on it
    /// (usually none, and then nothing is read).
    async fn recipient_intervals(
        &self,
        acks: &[AckRequest],
    ) -> Result<HashMap<TenantId, Option<u32>>, AppError> {
        let mut intervals = HashMap::new();
        for ack in acks {
            let needs_policy = self
                .answers
                .action(ack.report.error_code.as_deref())
                .is_some_and(|action| action.needs_policy());
            if !needs_policy || ack.report.accepted {
                continue;
            }
            let Some(entry) = self.store.queue_entry(ack.queue_item_id).await? else {
                continue;
            };
            if intervals.contains_key(&entry.tenant_id) {
                continue;
            }
            let policy = self.store.sending_policy(&entry.tenant_id).await?;
            let interval = policy.and_then(|policy| policy.recipient_min_interval_ms);
            intervals.insert(entry.tenant_id, interval);
        }
        Ok(intervals)
    }
}
