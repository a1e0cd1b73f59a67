//! WhatsApp's own limits on a tenant's sends, as its sending policy sets them: the rate of
//! the tenant and of each sender, the distinct recipients of a moving 24 hours (the
//! messaging limit), the time between two sends to one recipient (the pair rate) and the
//! sends to one recipient in 24 hours (a frequency cap).
//!
//! Each is decided from *usage*: what the ledger of sends (follow-ups marked sent, per
//! tenant, sender and recipient) says at the claim. A store answers a few questions about
//! that ledger; this module says which to ask and what the answers allow. Admission walks
//! a tenant's due follow-ups in the order a drain takes them and counts each one it admits
//! against every limit, so a batch can never pass a limit that the ledger alone would not
//! yet show. The same walk, done without a batch size, says why each due follow-up waits.

use std::collections::HashMap;

use crate::policy::{RATE_WINDOW_MILLIS, SendingPolicy};
use crate::timestamp::Timestamp;

/// A moving day, the window of the messaging limit and the frequency cap.
pub const DAY_MILLIS: i64 = 24 * 60 * 60 * 1_000;

/// The longest window any rule looks back over: what a ledger must keep, and no more.
pub const LEDGER_WINDOW_MILLIS: i64 = DAY_MILLIS;

/// How long a ledger keeps an entry: the window and an hour, so that a replica whose
/// clock runs a little ahead of another's never removes one a limit still counts.
pub const LEDGER_RETENTION_MILLIS: i64 = LEDGER_WINDOW_MILLIS + 60 * 60 * 1_000;

/// Why a due follow-up stays pending: the first rule that holds it, in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HoldReason {
    CampaignPaused,
    QuietHours,
    Rate,
    SenderRate,
    DailyRecipientLimit,
    RecipientInterval,
    RecipientDailyCap,
}

impl HoldReason {
    pub const ALL: [HoldReason; 7] = [
        Self::CampaignPaused,
        Self::QuietHours,
        Self::Rate,
        Self::SenderRate,
        Self::DailyRecipientLimit,
        Self::RecipientInterval,
        Self::RecipientDailyCap,
    ];

    /// The word the sending status and the metrics give.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CampaignPaused => "campaign_paused",
            Self::QuietHours => "quiet_hours",
            Self::Rate => "rate",
            Self::SenderRate => "sender_rate",
            Self::DailyRecipientLimit => "daily_recipient_limit",
            Self::RecipientInterval => "recipient_interval",
            Self::RecipientDailyCap => "recipient_daily_cap",
        }
    }
}

/// The questions a drain asks the ledger about one tenant, by what its policy limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageNeeds {
    /// Sends in the rate window, in all and per sender.
    pub sends: bool,
    /// Distinct recipients of the last 24 hours.
    pub recipients: bool,
    /// For the recipients of the follow-ups it claims: the last send and the day's sends.
    pub recipient_history: bool,
}

impl UsageNeeds {
    /// Whether the tenant's sends must be counted exactly: then one drain at a time
    /// claims its work, so that no two drains spend the same allowance.
    pub fn any(self) -> bool {
        self.sends || self.recipients || self.recipient_history
    }
}

/// What the ledger says about one tenant at the claim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantUsage {
    /// Sends in the rate window that ends now.
    pub sends: u64,
    /// The same, per sender (`None`: the follow-ups without one).
    pub sender_sends: HashMap<Option<String>, u64>,
    /// Distinct recipients sent to in the day that ends now.
    pub recipients: u64,
}

/// What the ledger says about one recipient of a tenant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecipientUsage {
    /// The last send to it within the day that ends now.
    pub last_sent_at: Option<Timestamp>,
    /// Sends to it in that day.
    pub sends: u64,
}

/// The windows the ledger's answers are about, at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Sends after this count against the rates.
    pub rate_start: Timestamp,
    /// Sends after this count against the day's limits.
    pub day_start: Timestamp,
}

impl Windows {
    pub fn at(now: Timestamp) -> Self {
        let back = |millis| Timestamp::from_unix_millis(now.unix_millis() - millis);
        Self {
            rate_start: back(RATE_WINDOW_MILLIS).unwrap_or(now),
            day_start: back(DAY_MILLIS).unwrap_or(now),
        }
    }
}

impl SendingPolicy {
    /// What must be asked about a tenant under this policy, whose rate is `rate` (its own,
    /// or the service's default).
    pub fn needs(&self, rate: Option<u32>) -> UsageNeeds {
        let day = self.daily_recipient_limit.is_some();
        UsageNeeds {
            sends: rate.is_some() || self.max_per_second_per_sender.is_some(),
            recipients: day,
            recipient_history: day
                || self.recipient_min_interval_ms.is_some()
                || self.recipient_daily_cap.is_some(),
        }
    }
}

/// A due follow-up as the limits see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub sender: Option<&'a str>,
    pub phone_e164: &'a str,
}

/// One tenant's limits at one claim: admits due follow-ups in drain order, each counted
/// against every limit as it is admitted.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    policy: &'a SendingPolicy,
    rate: Option<u32>,
    now: Timestamp,
    windows: Windows,
    usage: TenantUsage,
    recipients: HashMap<String, RecipientUsage>,
}

impl<'a> Admission<'a> {
    /// `recipients` holds the ledger's answer for each recipient the walk will meet
    /// (absent: never sent to in the day).
    pub fn new(
        policy: &'a SendingPolicy,
        rate: Option<u32>,
        usage: TenantUsage,
        recipients: HashMap<String, RecipientUsage>,
        now: Timestamp,
    ) -> Self {
        Self {
            policy,
            rate,
            now,
            windows: Windows::at(now),
            usage,
            recipients,
        }
    }

    /// Admits `candidate`, counting it, or says which limit holds it.
    pub fn admit(&mut self, candidate: Candidate<'_>) -> Result<(), HoldReason> {
        let sender = candidate.sender.map(str::to_owned);
        let sender_sends = self.usage.sender_sends.get(&sender).copied().unwrap_or(0);
        let recipient = self
            .recipients
            .get(candidate.phone_e164)
            .copied()
            .unwrap_or_default();
        let in_day = |at: Timestamp| at > self.windows.day_start;
        let counted = recipient.last_sent_at.is_some_and(in_day);
        if self
            .rate
            .is_some_and(|rate| self.usage.sends >= u64::from(rate))
        {
            return Err(HoldReason::Rate);
        }
        if self
            .policy
            .max_per_second_per_sender
            .is_some_and(|rate| sender_sends >= u64::from(rate))
        {
            return Err(HoldReason::SenderRate);
        }
        if !counted
            && self
                .policy
                .daily_recipient_limit
                .is_some_and(|limit| self.usage.recipients >= u64::from(limit))
        {
            return Err(HoldReason::DailyRecipientLimit);
        }
        let too_soon = |interval: u32| {
            recipient.last_sent_at.is_some_and(|last| {
                self.now.unix_millis() - last.unix_millis() < i64::from(interval)
            })
        };
        if self.policy.recipient_min_interval_ms.is_some_and(too_soon) {
            return Err(HoldReason::RecipientInterval);
        }
        if self
            .policy
            .recipient_daily_cap
            .is_some_and(|cap| recipient.sends >= u64::from(cap))
        {
            return Err(HoldReason::RecipientDailyCap);
        }
        self.usage.sends += 1;
        *self.usage.sender_sends.entry(sender).or_default() += 1;
        if !counted {
            self.usage.recipients += 1;
        }
        let recipient = self
            .recipients
            .entry(candidate.phone_e164.to_owned())
            .or_default();
        recipient.last_sent_at = Some(self.now);
        recipient.sends += 1;
        Ok(())
    }

    /// Distinct recipients of the day once the admitted ones are sent.
    pub fn recipients(&self) -> u64 {
        self.usage.recipients
    }
}

#[cfg(test)]
mod tests;
