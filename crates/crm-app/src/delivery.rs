//! The sender's side of the outbound queue: leases and acknowledgements.
//!
//! The rules (attempts, backoff, idempotent acks, lease expiry) are the domain's; this
//! module draws the ids, the clock and the jitter they need, wraps the events in their
//! envelopes (checked against the event contract), and hands the store what to save.

use std::time::Duration;

use crm_domain::delivery::{self, AckStatus, Acked, Claimed, LeaseId, QueueEntry};
use crm_domain::follow_up::FollowUp;
use crm_domain::opt_out::{OptOut, OptOutSource};
use crm_domain::timestamp::Timestamp;
use crm_ports::{AckDecision, AckRequest, Acker, LeaseDecision, LeasedItem, Leaser, NewOptOut};
use uuid::Uuid;

use crate::error::AppError;
use crate::metrics as names;
use crate::service::{Crm, now};

/// The most items one claim leases.
pub const MAX_CLAIM_LIMIT: usize = 100;
/// Leases last at least this long and at most `MAX_LEASE`.
pub const MIN_LEASE: Duration = Duration::from_secs(1);
pub const MAX_LEASE: Duration = Duration::from_secs(600);
/// The reason recorded with an opt-out a sender reported.
const REPORTED_OPT_OUT: &str = "reported by the sender";

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

struct Ack<'a> {
    crm: &'a Crm,
    now: Timestamp,
}

impl Acker for Ack<'_> {
    fn ack(&self, entry: &QueueEntry, follow_up: &FollowUp, request: &AckRequest) -> AckDecision {
        // ±10 % of the backoff, so that retries of one outage do not come back together.
        let jitter = (Uuid::new_v4().as_u128() % 2_001) as f64 / 1_000.0 - 1.0;
        match delivery::ack(
            entry,
            follow_up,
            request.lease_id,
            &request.report,
            self.now,
            jitter,
        ) {
            Acked::Unchanged(status) => AckDecision::Unchanged(status),
            Acked::Applied {
                entry,
                follow_up,
                event,
                status,
            } => match self.crm.follow_up_envelope(&follow_up, &event, self.now) {
                Ok(envelope) => {
                    let opt_out = match request
                        .report
                        .opt_out
                        .then(|| self.opt_out(&follow_up).map(Box::new))
                        .transpose()
                    {
                        Ok(opt_out) => opt_out,
                        Err(error) => return rejected(&entry, &error),
                    };
                    AckDecision::Apply {
                        entry,
                        follow_up,
                        events: vec![envelope],
                        opt_out,
                        status,
                    }
                }
                Err(error) => rejected(&entry, &error),
            },
        }
    }
}

impl Ack<'_> {
    /// The recipient's opt-out a sender reported, with its event in the follow-up's
    /// correlation and trace.
    fn opt_out(&self, follow_up: &FollowUp) -> Result<NewOptOut, AppError> {
        let opt_out = OptOut {
            tenant_id: follow_up.tenant_id.clone(),
            phone_e164: follow_up.phone_e164.clone(),
            reason: Some(REPORTED_OPT_OUT.to_owned()),
            created_at: self.now,
        };
        let event =
            self.crm
                .follow_up_envelope(follow_up, &opt_out.added(OptOutSource::Ack), self.now)?;
        Ok(NewOptOut { opt_out, event })
    }
}

/// Nothing is written without its events; the sender's repeat can land later.
fn rejected(entry: &QueueEntry, error: &AppError) -> AckDecision {
    tracing::error!(queue_item_id = %entry.queue_item_id, %error, "delivery event rejected");
    AckDecision::Unchanged(AckStatus::LeaseLost)
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
        let acker = Ack {
            crm: self,
            now: now(),
        };
        let statuses = self.store.ack(acks, &acker).await?;
        for status in &statuses {
            metrics::counter!(names::OUTBOUND_ACKS, "status" => status.as_str()).increment(1);
        }
        Ok(statuses)
    }
}
