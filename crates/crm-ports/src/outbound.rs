//! The outbound-queue port: items the drain handed to the WhatsApp sender, leased to
//! consumers and acknowledged with their delivery result.
//!
//! Items are enqueued by the store in the same unit as the follow-up's status change
//! (`FollowUpStore::drain`), which is what makes the hand-off exactly-once. A claim
//! leases items to one consumer at a time; an ack records the result on the follow-up
//! with its event, atomically. The rules (attempts, backoff, idempotent acks) are the
//! domain's, asked through `Leaser` and `Acker` while the store holds the items.

use async_trait::async_trait;
use crm_domain::delivery::{AckStatus, LeaseId, QueueEntry, Report};
use crm_domain::event::EventEnvelope;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::QueueItemId;
use crm_domain::outbound::OutboundItem;
use crm_domain::timestamp::Timestamp;

use crate::store::{NewOptOut, StoreError};

/// What a claim does with one claimable item.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseDecision {
    /// Lease it: save this entry and hand the item out.
    Lease(Box<QueueEntry>),
    /// Its last lease ran out with no attempts left: save the finished entry and the
    /// follow-up's failed delivery with its events; the item is not handed out.
    Finish {
        entry: Box<QueueEntry>,
        follow_up: Box<FollowUp>,
        events: Vec<EventEnvelope>,
    },
}

/// Decides what a claim does with each claimable item; called while the store holds it.
/// `follow_up` is the item's follow-up when the entry `runs_out_on_claim`, else `None`.
pub trait Leaser: Send + Sync {
    fn lease(&self, entry: &QueueEntry, follow_up: Option<&FollowUp>) -> LeaseDecision;
}

/// An item leased to the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedItem {
    pub entry: QueueEntry,
    pub item: OutboundItem,
}

/// One acknowledgement: the result of the attempt made under `lease_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct AckRequest {
    pub queue_item_id: QueueItemId,
    pub lease_id: LeaseId,
    pub report: Report,
}

/// What an ack does.
#[derive(Debug, Clone, PartialEq)]
pub enum AckDecision {
    /// Save the entry, the follow-up and the events (and the opt-out, if any, with its
    /// own event when the number is new to the list) together.
    Apply {
        entry: Box<QueueEntry>,
        follow_up: Box<FollowUp>,
        events: Vec<EventEnvelope>,
        opt_out: Option<Box<NewOptOut>>,
        status: AckStatus,
    },
    /// Write nothing and answer this.
    Unchanged(AckStatus),
}

/// Decides each ack; called while the store holds the item and its follow-up.
pub trait Acker: Send + Sync {
    fn ack(&self, entry: &QueueEntry, follow_up: &FollowUp, request: &AckRequest) -> AckDecision;
}

#[async_trait]
pub trait OutboundQueue: Send + Sync {
    /// Leases up to `limit` claimable items (ready from `available_at` on, or with an
    /// expired lease), earliest available first, asking `leaser` about each and saving
    /// its decision with the claim. Exactly one concurrent claim, in this process or any
    /// other, gets each item; an item is not claimable again until its lease expires.
    ///
    /// # Errors
    /// `Unavailable`; then no item was leased.
    async fn claim(
        &self,
        now: Timestamp,
        limit: usize,
        leaser: &dyn Leaser,
    ) -> Result<Vec<LeasedItem>, StoreError>;

    /// Applies each ack in order, each atomically with its follow-up, events and opt-out;
    /// an unknown item is `NotFound`. Returns one status per ack.
    ///
    /// # Errors
    /// `Unavailable`; then the outcome of the acks is unknown, and repeating them is safe.
    async fn ack(
        &self,
        acks: &[AckRequest],
        acker: &dyn Acker,
    ) -> Result<Vec<AckStatus>, StoreError>;

    /// The queue entry of an item, if it exists.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn queue_entry(&self, id: QueueItemId) -> Result<Option<QueueEntry>, StoreError>;

    /// Items in enqueue order, skipping the first `offset`, at most `limit`.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn outbound_items(
        &self,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<OutboundItem>, StoreError>;
}

/// The writes of a batch of acks, decided in order.
#[derive(Debug, Default)]
pub struct AckBatch {
    /// One answer per ack, in order.
    pub statuses: Vec<AckStatus>,
    /// The entries that changed, each once, in its latest state.
    pub entries: Vec<QueueEntry>,
    /// The follow-ups that changed, each once, in their latest state.
    pub follow_ups: Vec<FollowUp>,
    pub events: Vec<EventEnvelope>,
    /// Opt-outs to add, each number once; a store writes one (and its event) only if the
    /// number is not on the list yet.
    pub opt_outs: Vec<NewOptOut>,
}

/// Decides a batch of acks in order, each seeing the ones before it (an item acked twice
/// in one batch answers the same twice), from the entries and follow-ups the store holds
/// (`entry` and `follow_up` look them up). Every store applies acks through this, so the
/// sequencing rule lives here once.
pub fn decide_acks(
    acks: &[AckRequest],
    acker: &dyn Acker,
    entry: impl Fn(QueueItemId) -> Option<QueueEntry>,
    follow_up: impl Fn(crm_domain::ids::FollowUpId) -> Option<FollowUp>,
) -> AckBatch {
    use std::collections::HashMap;
    let mut batch = AckBatch::default();
    let mut entries: HashMap<QueueItemId, QueueEntry> = HashMap::new();
    let mut follow_ups: HashMap<crm_domain::ids::FollowUpId, FollowUp> = HashMap::new();
    let mut order = Vec::new();
    for ack in acks {
        let Some(current) = entries
            .get(&ack.queue_item_id)
            .cloned()
            .or_else(|| entry(ack.queue_item_id))
        else {
            batch.statuses.push(AckStatus::NotFound);
            continue;
        };
        let Some(owner) = follow_ups
            .get(&current.followup_id)
            .cloned()
            .or_else(|| follow_up(current.followup_id))
        else {
            batch.statuses.push(AckStatus::NotFound);
            continue;
        };
        match acker.ack(&current, &owner, ack) {
            AckDecision::Unchanged(status) => batch.statuses.push(status),
            AckDecision::Apply {
                entry,
                follow_up,
                events,
                opt_out,
                status,
            } => {
                batch.statuses.push(status);
                batch.events.extend(events);
                if let Some(opt_out) = opt_out {
                    let seen = batch.opt_outs.iter().any(|known| {
                        known.opt_out.tenant_id == opt_out.opt_out.tenant_id
                            && known.opt_out.phone_e164 == opt_out.opt_out.phone_e164
                    });
                    if !seen {
                        batch.opt_outs.push(*opt_out);
                    }
                }
                if !entries.contains_key(&entry.queue_item_id) {
                    order.push(entry.queue_item_id);
                }
                follow_ups.insert(follow_up.followup_id, *follow_up);
                entries.insert(entry.queue_item_id, *entry);
            }
        }
    }
    batch.entries = order
        .into_iter()
        .filter_map(|id| entries.remove(&id))
        .collect();
    batch.follow_ups = follow_ups.into_values().collect();
    batch
}

/// The writes of a claim, decided.
#[derive(Debug, Default)]
pub struct ClaimBatch {
    /// Every claimed entry in its new state (leased or finished), in claim order.
    pub entries: Vec<QueueEntry>,
    /// The queue item ids handed out, in claim order.
    pub leased: Vec<QueueItemId>,
    /// Follow-ups whose delivery finished because their last lease ran out.
    pub follow_ups: Vec<FollowUp>,
    pub events: Vec<EventEnvelope>,
}

/// Asks `leaser` about each claimable entry (with its follow-up), in order.
pub fn decide_claims<'a, F: std::ops::Deref<Target = FollowUp>>(
    claimable: impl IntoIterator<Item = &'a QueueEntry>,
    follow_up_of: impl Fn(crm_domain::ids::FollowUpId) -> Option<F>,
    leaser: &dyn Leaser,
) -> ClaimBatch {
    let mut batch = ClaimBatch::default();
    for entry in claimable {
        let follow_up = if entry.runs_out_on_claim() {
            // A follow-up that cannot be read leaves its item as it is.
            let Some(follow_up) = follow_up_of(entry.followup_id) else {
                continue;
            };
            Some(follow_up)
        } else {
            None
        };
        match leaser.lease(entry, follow_up.as_deref()) {
            LeaseDecision::Lease(entry) => {
                batch.leased.push(entry.queue_item_id);
                batch.entries.push(*entry);
            }
            LeaseDecision::Finish {
                entry,
                follow_up,
                events,
            } => {
                batch.entries.push(*entry);
                batch.follow_ups.push(*follow_up);
                batch.events.extend(events);
            }
        }
    }
    batch
}
