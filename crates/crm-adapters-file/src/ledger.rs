//! The ledger of sends, in memory: each follow-up marked sent within the longest window a
//! limit looks back over, by tenant, sender and recipient.
//!
//! It is derived from the follow-ups' `sent_at`, so it has no file of its own: loading
//! the follow-ups rebuilds it, and every change that marks one sent adds its entry. A
//! tenant's entries older than the window are dropped as its sends move on and as
//! answers are asked, so it holds at most a day of sends. No answer reads the day's sends
//! one by one: the day's distinct recipients are the number of recipients held, a
//! recipient's history is its own entries, and the rate window's counts move with the
//! window. It answers the questions of `crm_ports::drain` and decides nothing: the limits
//! are the domain's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{FollowUpId, TenantId};
use crm_domain::limits::{LEDGER_WINDOW_MILLIS, RecipientUsage, TenantUsage, UsageNeeds, Windows};
use crm_domain::timestamp::Timestamp;

type Millis = i64;

#[derive(Debug, Default)]
pub(crate) struct Ledger {
    tenants: HashMap<TenantId, TenantLedger>,
}

#[derive(Debug, Default)]
struct TenantLedger {
    /// Every send, by when.
    sends: BTreeMap<(Millis, FollowUpId), Entry>,
    /// The sends to each recipient, by when; a recipient is here while it has one in the
    /// window, so the number of keys is the day's distinct recipients.
    recipients: HashMap<Arc<str>, BTreeSet<(Millis, FollowUpId)>>,
    /// Senders, shared by their entries.
    senders: HashMap<Arc<str>, ()>,
    /// The sends from a moment on, counted per sender: the rate window's answer, kept as
    /// the window moves instead of counted again at every claim.
    recent: Recent,
}

/// Counts of the sends at or after `from`.
#[derive(Debug)]
struct Recent {
    from: Millis,
    by_sender: HashMap<Option<Arc<str>>, u64>,
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            from: Millis::MIN,
            by_sender: HashMap::new(),
        }
    }
}

impl Recent {
    fn add(&mut self, at: Millis, entry: &Entry) {
        if at >= self.from {
            *self.by_sender.entry(entry.sender.clone()).or_default() += 1;
        }
    }

    fn remove(&mut self, at: Millis, entry: &Entry) {
        if at < self.from {
            return;
        }
        if let Some(count) = self.by_sender.get_mut(&entry.sender) {
            *count -= 1;
            if *count == 0 {
                self.by_sender.remove(&entry.sender);
            }
        }
    }
}

#[derive(Debug)]
struct Entry {
    sender: Option<Arc<str>>,
    phone: Arc<str>,
}

impl Ledger {
    /// Adds `follow_up`'s send, if it was marked sent (a repeat changes nothing).
    pub fn record(&mut self, follow_up: &FollowUp) {
        let Some(sent_at) = follow_up.sent_at else {
            return;
        };
        let at = sent_at.unix_millis();
        let tenant = self.tenants.entry(follow_up.tenant_id.clone()).or_default();
        let key = (at, follow_up.followup_id);
        if tenant.sends.contains_key(&key) {
            return;
        }
        let phone = match tenant
            .recipients
            .get_key_value(follow_up.phone_e164.as_str())
        {
            Some((phone, _)) => phone.clone(),
            None => Arc::from(follow_up.phone_e164.as_str()),
        };
        let sender =
            follow_up
                .sender
                .as_deref()
                .map(|sender| match tenant.senders.get_key_value(sender) {
                    Some((known, ())) => known.clone(),
                    None => {
                        let known: Arc<str> = Arc::from(sender);
                        tenant.senders.insert(known.clone(), ());
                        known
                    }
                });
        tenant
            .recipients
            .entry(phone.clone())
            .or_default()
            .insert(key);
        let entry = Entry { sender, phone };
        tenant.recent.add(at, &entry);
        tenant.sends.insert(key, entry);
        // A tenant's sends come in time order: what is a window older than this one is
        // out of every window to come.
        tenant.forget_before(at - LEDGER_WINDOW_MILLIS);
    }

    /// The tenant's usage at `windows`: what `needs` asks, the rest left at zero.
    pub fn usage(
        &mut self,
        tenant_id: &TenantId,
        windows: Windows,
        needs: UsageNeeds,
    ) -> TenantUsage {
        let mut usage = TenantUsage::default();
        let Some(tenant) = self.tenants.get_mut(tenant_id) else {
            return usage;
        };
        tenant.forget_before(windows.day_start.unix_millis() + 1);
        if needs.sends {
            let recent = tenant.recent_from(windows.rate_start.unix_millis() + 1);
            usage.sends = recent.by_sender.values().sum();
            usage.sender_sends = recent
                .by_sender
                .iter()
                .map(|(sender, sends)| (sender.as_deref().map(str::to_owned), *sends))
                .collect();
        }
        if needs.recipients {
            usage.recipients = tenant.recipients.len() as u64;
        }
        usage
    }

    /// What the ledger holds of one recipient within the day of `windows`.
    pub fn recipient(
        &mut self,
        tenant_id: &TenantId,
        phone: &str,
        windows: Windows,
    ) -> RecipientUsage {
        let Some(tenant) = self.tenants.get_mut(tenant_id) else {
            return RecipientUsage::default();
        };
        tenant.forget_before(windows.day_start.unix_millis() + 1);
        tenant
            .recipients
            .get(phone)
            .map_or_else(RecipientUsage::default, |sends| RecipientUsage {
                last_sent_at: sends
                    .last()
                    .and_then(|(at, _)| Timestamp::from_unix_millis(*at)),
                sends: sends.len() as u64,
            })
    }

    /// When the first of the tenant's counted recipients stops counting: its last send a
    /// day later.
    pub fn next_release_at(&self, tenant_id: &TenantId) -> Option<Timestamp> {
        let tenant = self.tenants.get(tenant_id)?;
        let earliest = tenant
            .recipients
            .values()
            .filter_map(|sends| sends.last().map(|(at, _)| *at))
            .min()?;
        Timestamp::from_unix_millis(earliest + LEDGER_WINDOW_MILLIS)
    }
}

impl TenantLedger {
    /// The counts of the sends at or after `from`: moved on from the last ones by the
    /// sends in between (the window only moves forward, but a clock set back counts
    /// again from the sends themselves).
    fn recent_from(&mut self, from: Millis) -> &Recent {
        let start = |at: Millis| (at, FollowUpId::new(uuid::Uuid::nil()));
        if from < self.recent.from {
            let mut recent = Recent {
                from,
                by_sender: HashMap::new(),
            };
            for (key, entry) in self.sends.range(start(from)..) {
                recent.add(key.0, entry);
            }
            self.recent = recent;
        } else if from > self.recent.from {
            for (key, entry) in self.sends.range(start(self.recent.from)..start(from)) {
                self.recent.remove(key.0, entry);
            }
            self.recent.from = from;
        }
        &self.recent
    }

    /// Drops every send before `cutoff`.
    fn forget_before(&mut self, cutoff: Millis) {
        while let Some(entry) = self.sends.first_entry() {
            if entry.key().0 >= cutoff {
                break;
            }
            let (key, entry) = entry.remove_entry();
            self.recent.remove(key.0, &entry);
            if let Some(sends) = self.recipients.get_mut(&entry.phone) {
                sends.remove(&key);
                if sends.is_empty() {
                    self.recipients.remove(&entry.phone);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(tenant: &str, phone: &str, sender: Option<&str>, at: i64) -> FollowUp {
        use crm_domain::follow_up::{FollowUpStatus, NewFollowUp};
        use crm_domain::ids::CorrelationId;
        let now = Timestamp::from_unix_millis(at).unwrap();
        let (mut follow_up, _) = FollowUp::schedule(
            NewFollowUp {
                followup_id: FollowUpId::new(uuid::Uuid::new_v4()),
                tenant_id: TenantId::parse(tenant).unwrap(),
                campaign_id: None,
                external_key: None,
                lead_id: None,
                customer_id: None,
                phone_e164: phone.to_owned(),
                message: "hi".to_owned(),
                schedule_at: now,
                channel: "whatsapp".to_owned(),
                status: FollowUpStatus::Pending,
                metadata: serde_json::Map::new(),
                correlation_id: CorrelationId::new(uuid::Uuid::new_v4()),
                trace_id: "trace-0001".to_owned(),
                time_zone: None,
                sender: sender.map(str::to_owned),
            },
            now,
        );
        follow_up.sent_at = Some(now);
        follow_up
    }

    const NOW: i64 = 1_800_000_000_000;

    fn windows() -> Windows {
        Windows::at(Timestamp::from_unix_millis(NOW).unwrap())
    }

    const ALL: UsageNeeds = UsageNeeds {
        sends: true,
        recipients: true,
        recipient_history: true,
    };

    #[test]
    fn answers_count_the_rate_window_and_the_day_and_forget_what_is_older() {
        let mut ledger = Ledger::default();
        let tenant = TenantId::parse("t").unwrap();
        for follow_up in [
            sent("t", "+1", Some("a"), NOW - LEDGER_WINDOW_MILLIS - 1),
            sent("t", "+2", Some("a"), NOW - 60_000),
            sent("t", "+2", Some("a"), NOW - 500),
            sent("t", "+3", None, NOW - 10),
            sent("other", "+3", None, NOW - 10),
        ] {
            ledger.record(&follow_up);
            ledger.record(&follow_up);
        }

        let usage = ledger.usage(&tenant, windows(), ALL);
        assert_eq!(usage.sends, 2);
        assert_eq!(usage.sender_sends[&Some("a".to_owned())], 1);
        assert_eq!(usage.sender_sends[&None], 1);
        assert_eq!(usage.recipients, 2, "+1 is a day old");
        let two = ledger.recipient(&tenant, "+2", windows());
        assert_eq!(two.sends, 2);
        assert_eq!(two.last_sent_at.unwrap().unix_millis(), NOW - 500);
        assert_eq!(
            ledger.recipient(&tenant, "+1", windows()),
            RecipientUsage::default()
        );
        assert_eq!(
            ledger.next_release_at(&tenant).unwrap().unix_millis(),
            NOW - 500 + LEDGER_WINDOW_MILLIS
        );
    }

    #[test]
    fn the_rate_window_s_counts_follow_it_forward_and_back_as_a_recount_would() {
        let mut ledger = Ledger::default();
        let tenant = TenantId::parse("t").unwrap();
        let mut sent_at = Vec::new();
        // Sends every 70 ms from two senders and none; asked every 130 ms, and now and
        // then from a clock set back.
        for step in 0..400i64 {
            let at = NOW + step * 70;
            let sender = ["a", "b", ""][(step % 3) as usize];
            let sender = (!sender.is_empty()).then_some(sender);
            ledger.record(&sent("t", &format!("+{step}"), sender, at));
            sent_at.push((at, sender));
            let asked = if step % 17 == 0 { at - 2_500 } else { at + 130 };
            let windows = Windows::at(Timestamp::from_unix_millis(asked).unwrap());
            let usage = ledger.usage(&tenant, windows, ALL);
            let counted = |of: Option<Option<&str>>| {
                sent_at
                    .iter()
                    .filter(|(at, _)| *at > windows.rate_start.unix_millis())
                    .filter(|(_, sender)| of.is_none_or(|of| of == *sender))
                    .count() as u64
            };
            assert_eq!(usage.sends, counted(None), "step {step}");
            for sender in [Some("a"), Some("b"), None] {
                assert_eq!(
                    usage
                        .sender_sends
                        .get(&sender.map(str::to_owned))
                        .copied()
                        .unwrap_or(0),
                    counted(Some(sender)),
                    "step {step}, sender {sender:?}"
                );
            }
        }
    }

    #[test]
    fn a_tenant_that_is_never_asked_still_keeps_no_more_than_a_day() {
        let mut ledger = Ledger::default();
        for at in (0..10).map(|day| NOW + day * (LEDGER_WINDOW_MILLIS + 1)) {
            ledger.record(&sent("t", &format!("+{at}"), None, at));
        }
        let tenant = &ledger.tenants[&TenantId::parse("t").unwrap()];
        assert_eq!(tenant.sends.len(), 1);
        assert_eq!(tenant.recipients.len(), 1);
    }
}
