//! The business metrics the use cases record, named and described in one place.
//!
//! `describe` gives each its help text and makes the ones with a known set of labels
//! exist from the start (at zero), so a scraper sees every family before its first event.

use crm_domain::campaign::CampaignState;
use crm_domain::delivery::AckStatus;
use crm_domain::follow_up::FailureReason;
use crm_domain::receipt::{ReceiptAnswer, ReceiptStatus};

pub const CAMPAIGNS_CREATED: &str = "crm_campaigns_created_total";
pub const CAMPAIGNS_TRANSITIONED: &str = "crm_campaigns_transitioned_total";
pub const FOLLOW_UPS_SCHEDULED: &str = "crm_followups_scheduled_total";
pub const FOLLOW_UPS_SENT: &str = "crm_followups_sent_total";
pub const FOLLOW_UPS_FAILED: &str = "crm_followups_failed_total";
pub const FOLLOW_UPS_SKIPPED: &str = "crm_followups_skipped_total";
pub const FOLLOW_UPS_DUE: &str = "crm_followups_due";
pub const FOLLOW_UPS_HELD: &str = "crm_followups_held";
pub const FEED_WAITING: &str = "crm_feed_waiting";
pub const DRAIN_DURATION: &str = "crm_drain_duration_seconds";
pub const DRAIN_BATCH: &str = "crm_drain_batch_size";
pub const OUTBOUND_LEASED: &str = "crm_outbound_leased_total";
pub const OUTBOUND_ACKS: &str = "crm_outbound_acks_total";
pub const RECEIPTS: &str = "crm_delivery_receipts_total";
pub const CAMPAIGNS_AUTO_PAUSED: &str = "crm_campaigns_auto_paused_total";
pub const EVENTS_EXPIRED: &str = "crm_events_expired_total";
pub const OUTBOUND_EXPIRED: &str = "crm_outbound_expired_total";

/// Describes every metric of the use cases and starts the countable ones at zero.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        CAMPAIGNS_CREATED,
        "Campaigns created (idempotent repeats not counted)."
    );
    describe_counter!(
        CAMPAIGNS_TRANSITIONED,
        "Campaign transitions saved, by the state moved to."
    );
    describe_counter!(
        FOLLOW_UPS_SCHEDULED,
        "Follow-ups scheduled (idempotent repeats not counted)."
    );
    describe_counter!(
        FOLLOW_UPS_SENT,
        "Follow-ups handed to the outbound queue by a drain."
    );
    describe_counter!(
        FOLLOW_UPS_FAILED,
        "Follow-ups a drain marked failed, by error code."
    );
    describe_counter!(
        FOLLOW_UPS_SKIPPED,
        "Follow-ups a drain claimed and left pending."
    );
    describe_gauge!(
        FOLLOW_UPS_DUE,
        "Follow-ups due and not held back, counted up to 10000 when scraped."
    );
    describe_gauge!(
        FOLLOW_UPS_HELD,
        "Due follow-ups left pending, by the first rule that holds each (the sending \
         status of every tenant), counted up to 10000 per tenant when scraped."
    );
    describe_histogram!(DRAIN_DURATION, Unit::Seconds, "Time one drain call took.");
    describe_counter!(OUTBOUND_LEASED, "Outbound items leased to senders.");
    describe_counter!(
        OUTBOUND_ACKS,
        "Acknowledgements of outbound items, by answer."
    );
    describe_counter!(
        RECEIPTS,
        "Delivery receipts, by what they reported and by answer."
    );
    describe_counter!(
        CAMPAIGNS_AUTO_PAUSED,
        "Running campaigns the service paused on a provider's answer."
    );
    describe_counter!(EVENTS_EXPIRED, "Events deleted by retention.");
    describe_counter!(
        OUTBOUND_EXPIRED,
        "Finished outbound items deleted by retention."
    );
    describe_histogram!(DRAIN_BATCH, "Follow-ups one drain call claimed.");
    describe_gauge!(
        FEED_WAITING,
        "Feed reads waiting for an event to commit (long-polls with nothing new yet)."
    );
    for name in [
        CAMPAIGNS_CREATED,
        FOLLOW_UPS_SCHEDULED,
        FOLLOW_UPS_SENT,
        FOLLOW_UPS_SKIPPED,
        OUTBOUND_LEASED,
        EVENTS_EXPIRED,
        OUTBOUND_EXPIRED,
        CAMPAIGNS_AUTO_PAUSED,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for status in ReceiptStatus::ALL {
        for answer in ReceiptAnswer::ALL {
            metrics::counter!(RECEIPTS, "status" => status.as_str(), "answer" => answer.as_str())
                .absolute(0);
        }
    }
    for status in [
        AckStatus::Acked,
        AckStatus::RetryScheduled,
        AckStatus::LeaseLost,
        AckStatus::NotFound,
    ] {
        metrics::counter!(OUTBOUND_ACKS, "status" => status.as_str()).absolute(0);
    }
    for state in CampaignState::ALL {
        metrics::counter!(CAMPAIGNS_TRANSITIONED, "to_state" => state.as_str()).absolute(0);
    }
    for reason in FailureReason::ALL {
        metrics::counter!(FOLLOW_UPS_FAILED, "error_code" => reason.code()).absolute(0);
    }
    metrics::gauge!(FOLLOW_UPS_DUE).set(0.0);
    for reason in crm_domain::limits::HoldReason::ALL {
        metrics::gauge!(FOLLOW_UPS_HELD, "reason" => reason.as_str()).set(0.0);
    }
    metrics::gauge!(FEED_WAITING).set(0.0);
    // Registering the handle makes the (empty) histogram part of the exposition.
    let _ = metrics::histogram!(DRAIN_DURATION);
    let _ = metrics::histogram!(DRAIN_BATCH);
}

/// Counts one feed read as waiting for as long as it lives (dropped too when its client
/// hangs up).
#[derive(Debug)]
pub struct FeedWaiting(());

impl FeedWaiting {
    pub fn start() -> Self {
        metrics::gauge!(FEED_WAITING).increment(1.0);
        Self(())
    }
}

impl Drop for FeedWaiting {
    fn drop(&mut self) {
        metrics::gauge!(FEED_WAITING).decrement(1.0);
    }
}
