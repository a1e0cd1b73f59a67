//! The failure window of `auto_pause`: a running campaign's last finished deliveries,
//! newest first, and whether too many of them failed.
//!
//! A delivery is finished once the provider gave its verdict: `accepted`, `delivered` and
//! `read` went well, `failed` did not (`retrying` is not finished). The window orders
//! deliveries by when they last changed, so a message accepted and later failed by a
//! receipt counts once, as a failure, at the newest place. Stores read the window from
//! what they hold (`FinishedDelivery`, newest first; deliveries that changed at the same
//! moment, as one batch's do, newest follow-up id first); a batch of acks or receipts
//! records each change here as it is decided, so the pause it causes is decided with it.
//! The window is exact among the writes that hold the campaign (failures); successes
//! committing at the same moment may be missed by it, which can only pause a little early.

use std::collections::VecDeque;

use crate::campaign::PauseCause;
use crate::delivery::{Delivery, DeliveryStatus};
use crate::follow_up::FollowUp;
use crate::ids::FollowUpId;
use crate::policy::AutoPause;

/// One finished delivery of a campaign, as a store reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishedDelivery {
    pub followup_id: FollowUpId,
    pub failed: bool,
}

impl FinishedDelivery {
    /// `follow_up`'s delivery, if it is finished.
    pub fn of(follow_up: &FollowUp) -> Option<Self> {
        let failed = failed(follow_up.delivery.as_ref()?)?;
        Some(Self {
            followup_id: follow_up.followup_id,
            failed,
        })
    }
}

/// Whether a delivery failed, or `None` while it is not finished.
fn failed(delivery: &Delivery) -> Option<bool> {
    match delivery.status {
        DeliveryStatus::Accepted | DeliveryStatus::Delivered | DeliveryStatus::Read => Some(false),
        DeliveryStatus::Failed => Some(true),
        DeliveryStatus::Retrying => None,
    }
}

/// A campaign's last `policy.window` finished deliveries, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureWindow {
    policy: AutoPause,
    recent: VecDeque<FinishedDelivery>,
    failures: u32,
}

impl FailureWindow {
    /// The window of `policy` over `recent` (newest first; only the first
    /// `policy.window` count).
    pub fn new(policy: AutoPause, recent: impl IntoIterator<Item = FinishedDelivery>) -> Self {
        let recent: VecDeque<FinishedDelivery> =
            recent.into_iter().take(policy.window as usize).collect();
        let failures = recent.iter().filter(|d| d.failed).count() as u32;
        Self {
            policy,
            recent,
            failures,
        }
    }

    /// How many deliveries in the window failed.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Records `follow_up`'s delivery as it is now (it moves to the newest place once
    /// finished) and answers whether the campaign is to be paused: a failure that leaves
    /// more than the policy's ratio of the window failed.
    pub fn record(&mut self, follow_up: &FollowUp) -> Option<PauseCause> {
        let finished = FinishedDelivery::of(follow_up)?;
        if let Some(place) = self
            .recent
            .iter()
            .position(|d| d.followup_id == finished.followup_id)
            && let Some(earlier) = self.recent.remove(place)
        {
            self.failures -= u32::from(earlier.failed);
        }
        self.recent.push_front(finished);
        self.failures += u32::from(finished.failed);
        if self.recent.len() > self.policy.window as usize
            && let Some(oldest) = self.recent.pop_back()
        {
            self.failures -= u32::from(oldest.failed);
        }
        (finished.failed && self.policy.exceeded_by(self.failures)).then_some(
            PauseCause::FailureRatio {
                failures: self.failures,
                window: self.policy.window,
                max_failure_ratio: self.policy.max_failure_ratio,
                followup_id: follow_up.followup_id,
            },
        )
    }
}

#[cfg(test)]
mod tests;
