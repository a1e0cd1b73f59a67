//! The outbound-queue port: items the drain handed to the WhatsApp sender, leased to
//! consumers and acknowledged with their delivery result.
//!
//! Items are enqueued by the store in the same unit as the follow-up's status change
//! (`FollowUpStore::drain`), which is what makes the hand-off exactly-once. A claim
//! leases items to one consumer at a time; an ack records the result on the follow-up
//! with its event, atomically, and with what it causes: an opt-out, or the pause of the
//! follow-up's campaign. The rules (attempts, backoff, idempotent acks, the table of
//! provider answers) are the domain's, asked through `Leaser` and `Acker` while the store
//! holds the items (and the campaigns an ack may pause).

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use async_trait::async_trait;
use crm_domain::campaign::{Campaign, PauseCause};
use crm_domain::delivery::{AckStatus, Acked, LeaseId, OptOutRequest, QueueEntry, Report};
use crm_domain::event::{DomainEvent, EventEnvelope};
use crm_domain::failure_window::FailureWindow;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, FollowUpId, QueueItemId};
use crm_domain::opt_out::OptOut;
use crm_domain::outbound::OutboundItem;
use crm_domain::policy::{AutoPause, SendingPolicy};
use crm_domain::receipt::{Receipt, ReceiptAnswer, Received};
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
    /// own event when the number is new to the list) together; pause the follow-up's
    /// campaign for `pause`, if it is running, in the same commit.
    Apply {
        entry: Box<QueueEntry>,
        follow_up: Box<FollowUp>,
        events: Vec<EventEnvelope>,
        opt_out: Option<Box<NewOptOut>>,
        pause: Option<PauseCause>,
        status: AckStatus,
    },
    /// Write nothing and answer this.
    Unchanged(AckStatus),
}

/// Pauses the campaign of a follow-up whose delivery asked for it (an ack or a receipt
/// with a code the table of answers says pauses); called while the store holds it.
pub trait Pauser: Send + Sync {
    /// The campaign paused for `cause`, with its event; `None` when there is nothing to
    /// do (the campaign is not running).
    fn pause(
        &self,
        campaign: &Campaign,
        follow_up: &FollowUp,
        cause: &PauseCause,
    ) -> Option<(Campaign, EventEnvelope)>;
}

/// Decides each ack; called while the store holds the item, its follow-up and, for an
/// ack that `may_pause`, the follow-up's campaign.
pub trait Acker: Pauser {
    fn ack(&self, entry: &QueueEntry, follow_up: &FollowUp, request: &AckRequest) -> AckDecision;

    /// Whether this ack's report could pause its follow-up's campaign (by its code, or by
    /// the tenant's `auto_pause` window), so the store must hold that campaign while
    /// deciding (an accepted message cannot, and costs no campaign read).
    fn may_pause(&self, request: &AckRequest) -> bool;
}

/// What a receipt does.
#[derive(Debug, Clone, PartialEq)]
pub enum ReceiptDecision {
    /// Save the follow-up and the events (and the opt-out, if any) together; pause its
    /// campaign for `pause`, if it is running, in the same commit.
    Apply {
        follow_up: Box<FollowUp>,
        events: Vec<EventEnvelope>,
        opt_out: Option<Box<NewOptOut>>,
        pause: Option<PauseCause>,
    },
    /// Write nothing and answer this.
    Unchanged(ReceiptAnswer),
}

/// Decides each receipt about a follow-up it matches; called while the store holds the
/// follow-ups of the receipts' provider message ids and, for a receipt that
/// `may_pause`, their campaigns.
pub trait ReceiptApplier: Pauser {
    fn receive(&self, follow_up: &FollowUp, receipt: &Receipt) -> ReceiptDecision;

    /// Whether this receipt could pause its follow-up's campaign.
    fn may_pause(&self, receipt: &Receipt) -> bool;
}

/// Turns the domain's answer to an ack into what a store saves: the event wrapped by
/// `wrap`, the opt-out asked for with its `crm.optout.added` event (both in the
/// follow-up's correlation), the pause passed on. Every `Acker` builds its decision here.
///
/// # Errors
/// What `wrap` returns (an event its caller refuses); then nothing is to be written.
pub fn ack_decision<E>(
    acked: Acked,
    now: Timestamp,
    wrap: impl Fn(&FollowUp, &DomainEvent) -> Result<EventEnvelope, E>,
) -> Result<AckDecision, E> {
    let (entry, follow_up, event, status, consequences) = match acked {
        Acked::Unchanged(status) => return Ok(AckDecision::Unchanged(status)),
        Acked::Applied {
            entry,
            follow_up,
            event,
            status,
            consequences,
        } => (entry, follow_up, event, status, consequences),
    };
    let events = vec![wrap(&follow_up, &event)?];
    let opt_out = new_opt_out(&follow_up, consequences.opt_out, now, &wrap)?;
    Ok(AckDecision::Apply {
        entry,
        follow_up,
        events,
        opt_out,
        pause: consequences.pause,
        status,
    })
}

/// Turns the domain's answer to a receipt into what a store saves, as `ack_decision` does
/// for an ack. Every `ReceiptApplier` builds its decision here.
///
/// # Errors
/// What `wrap` returns; then nothing is to be written.
pub fn receipt_decision<E>(
    received: Received,
    now: Timestamp,
    wrap: impl Fn(&FollowUp, &DomainEvent) -> Result<EventEnvelope, E>,
) -> Result<ReceiptDecision, E> {
    let (follow_up, event, consequences) = match received {
        Received::Unchanged(answer) => return Ok(ReceiptDecision::Unchanged(answer)),
        Received::Applied {
            follow_up,
            event,
            consequences,
        } => (follow_up, event, consequences),
    };
    let events = vec![wrap(&follow_up, &event)?];
    let opt_out = new_opt_out(&follow_up, consequences.opt_out, now, &wrap)?;
    Ok(ReceiptDecision::Apply {
        follow_up,
        events,
        opt_out,
        pause: consequences.pause,
    })
}

/// The opt-out of `follow_up`'s recipient that `request` asks for, with its event.
fn new_opt_out<E>(
    follow_up: &FollowUp,
    request: Option<OptOutRequest>,
    now: Timestamp,
    wrap: &impl Fn(&FollowUp, &DomainEvent) -> Result<EventEnvelope, E>,
) -> Result<Option<Box<NewOptOut>>, E> {
    let Some(request) = request else {
        return Ok(None);
    };
    let opt_out = OptOut {
        tenant_id: follow_up.tenant_id.clone(),
        phone_e164: follow_up.phone_e164.clone(),
        reason: Some(request.reason),
        created_at: now,
    };
    let event = wrap(follow_up, &opt_out.added(request.source))?;
    Ok(Some(Box::new(NewOptOut { opt_out, event })))
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

    /// Applies each receipt in order, each atomically with its follow-up, events,
    /// opt-out and campaign pause, to the follow-up it `matches` (`Receipt::matches`: an
    /// accepted message with its provider id, of its tenant when it names one); a receipt
    /// that matches no follow-up, or more than one, is `NotFound`. Returns one answer per
    /// receipt. Concurrent calls about one follow-up, here or in another process, are
    /// applied one after the other.
    ///
    /// # Errors
    /// `Unavailable`; then the outcome is unknown, and repeating the receipts is safe.
    async fn apply_receipts(
        &self,
        receipts: &[Receipt],
        applier: &dyn ReceiptApplier,
    ) -> Result<Vec<ReceiptAnswer>, StoreError>;

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
    /// The follow-ups, campaigns, events and opt-outs to write.
    pub effects: Effects,
}

/// What a batch of acks or receipts writes besides queue entries.
#[derive(Debug, Default)]
pub struct Effects {
    /// The follow-ups that changed, each once, in their latest state.
    pub follow_ups: Vec<FollowUp>,
    /// The campaigns paused, each once; a store saves each only if its stored revision
    /// is still the one before.
    pub campaigns: Vec<Campaign>,
    pub events: Vec<EventEnvelope>,
    /// Opt-outs to add, each number once; a store writes one (and its event) only if the
    /// number is not on the list yet.
    pub opt_outs: Vec<NewOptOut>,
}

/// `Effects` as a batch builds them, each decision seeing the ones before it.
#[derive(Default)]
struct Decided {
    follow_ups: HashMap<FollowUpId, FollowUp>,
    /// The held campaigns read so far, and their windows, as this batch left them.
    campaigns: HashMap<CampaignId, HeldCampaign>,
    /// The campaigns this batch paused, in the order it did.
    paused: Vec<CampaignId>,
    events: Vec<EventEnvelope>,
    opt_outs: Vec<NewOptOut>,
}

/// A campaign a store holds while it decides a batch of acks or receipts, with its
/// failure window when `window_needed` asked for one.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldCampaign {
    pub campaign: Campaign,
    pub window: Option<FailureWindow>,
}

/// Whether a held campaign needs its failure window read, and for which policy: when it
/// is running and its tenant's `policy` has `auto_pause`. The store then reads the
/// campaign's last `window` finished deliveries, newest first, into `FailureWindow::new`.
pub fn window_needed(campaign: &Campaign, policy: Option<&SendingPolicy>) -> Option<AutoPause> {
    if campaign.state != crm_domain::campaign::CampaignState::Running {
        return None;
    }
    policy?.auto_pause
}

impl Decided {
    /// The follow-up as this batch left it, else as `stored` has it.
    fn follow_up(
        &self,
        id: FollowUpId,
        stored: impl Fn(FollowUpId) -> Option<FollowUp>,
    ) -> Option<FollowUp> {
        self.follow_ups.get(&id).cloned().or_else(|| stored(id))
    }

    /// Records one applied decision: the follow-up, its events, its opt-out (each number
    /// once), its place in its campaign's failure window, and the pause of its campaign
    /// (read through `held`, paused once) that its code or the window asks for.
    fn record(
        &mut self,
        pauser: &dyn Pauser,
        follow_up: FollowUp,
        events: Vec<EventEnvelope>,
        opt_out: Option<Box<NewOptOut>>,
        pause: Option<PauseCause>,
        held: &impl Fn(CampaignId) -> Option<HeldCampaign>,
    ) {
        self.events.extend(events);
        if let Some(opt_out) = opt_out {
            let seen = self.opt_outs.iter().any(|known| {
                known.opt_out.tenant_id == opt_out.opt_out.tenant_id
                    && known.opt_out.phone_e164 == opt_out.opt_out.phone_e164
            });
            if !seen {
                self.opt_outs.push(*opt_out);
            }
        }
        let campaign = follow_up
            .campaign_id
            .and_then(|id| match self.campaigns.entry(id) {
                Entry::Occupied(known) => Some(known.into_mut()),
                Entry::Vacant(unread) => held(id).map(|held| unread.insert(held)),
            });
        if let Some(held) = campaign {
            let by_window = held.window.as_mut().and_then(|w| w.record(&follow_up));
            // A paused campaign is not running, so the pauser pauses it once.
            if let Some((paused, event)) = pause
                .or(by_window)
                .and_then(|cause| pauser.pause(&held.campaign, &follow_up, &cause))
            {
                self.events.push(event);
                self.paused.push(paused.campaign_id);
                held.campaign = paused;
            }
        }
        self.follow_ups.insert(follow_up.followup_id, follow_up);
    }

    fn effects(mut self) -> Effects {
        let campaigns = self
            .paused
            .iter()
            .filter_map(|id| self.campaigns.remove(id))
            .map(|held| held.campaign)
            .collect();
        Effects {
            follow_ups: self.follow_ups.into_values().collect(),
            campaigns,
            events: self.events,
            opt_outs: self.opt_outs,
        }
    }
}

/// The campaigns a store must hold (lock, or keep from changing) while it decides these
/// acks: those of the items (`campaign_of`) whose acks `may_pause`, in id order (the
/// order every store locks them in). Usually none.
pub fn ack_holds(
    acks: &[AckRequest],
    acker: &dyn Acker,
    campaign_of: impl Fn(QueueItemId) -> Option<CampaignId>,
) -> Vec<CampaignId> {
    in_lock_order(
        acks.iter()
            .filter(|ack| acker.may_pause(ack))
            .filter_map(|ack| campaign_of(ack.queue_item_id)),
    )
}

/// The campaigns a store must hold while it decides these receipts: those of the
/// follow-ups (`candidates`) of receipts that `may_pause`, in id order.
pub fn receipt_holds(
    receipts: &[Receipt],
    applier: &dyn ReceiptApplier,
    candidates: impl Fn(&str) -> Vec<FollowUp>,
) -> Vec<CampaignId> {
    in_lock_order(
        receipts
            .iter()
            .filter(|receipt| applier.may_pause(receipt))
            .flat_map(|receipt| candidates(&receipt.provider_message_id))
            .filter_map(|follow_up| follow_up.campaign_id),
    )
}

fn in_lock_order(campaigns: impl Iterator<Item = CampaignId>) -> Vec<CampaignId> {
    let mut held: Vec<CampaignId> = campaigns.collect();
    held.sort_by_key(CampaignId::as_uuid);
    held.dedup();
    held
}

/// Decides a batch of acks in order, each seeing the ones before it (an item acked twice
/// in one batch answers the same twice; a campaign paused by one ack is not paused again
/// by the next), from the entries, follow-ups and campaigns the store holds (`entry`,
/// `follow_up` and `held` look them up; `held` answers for the campaigns the store holds,
/// those `ack_holds` named, and `None` for any other). Every store applies acks through
/// this, so the sequencing rule lives here once.
pub fn decide_acks(
    acks: &[AckRequest],
    acker: &dyn Acker,
    entry: impl Fn(QueueItemId) -> Option<QueueEntry>,
    follow_up: impl Fn(FollowUpId) -> Option<FollowUp>,
    held: impl Fn(CampaignId) -> Option<HeldCampaign>,
) -> AckBatch {
    let mut statuses = Vec::with_capacity(acks.len());
    let mut entries: HashMap<QueueItemId, QueueEntry> = HashMap::new();
    let mut decided = Decided::default();
    let mut order = Vec::new();
    for ack in acks {
        let Some(current) = entries
            .get(&ack.queue_item_id)
            .cloned()
            .or_else(|| entry(ack.queue_item_id))
        else {
            statuses.push(AckStatus::NotFound);
            continue;
        };
        let Some(owner) = decided.follow_up(current.followup_id, &follow_up) else {
            statuses.push(AckStatus::NotFound);
            continue;
        };
        match acker.ack(&current, &owner, ack) {
            AckDecision::Unchanged(status) => statuses.push(status),
            AckDecision::Apply {
                entry,
                follow_up,
                events,
                opt_out,
                pause,
                status,
            } => {
                statuses.push(status);
                decided.record(acker, *follow_up, events, opt_out, pause, &held);
                if !entries.contains_key(&entry.queue_item_id) {
                    order.push(entry.queue_item_id);
                }
                entries.insert(entry.queue_item_id, *entry);
            }
        }
    }
    AckBatch {
        statuses,
        entries: order
            .into_iter()
            .filter_map(|id| entries.remove(&id))
            .collect(),
        effects: decided.effects(),
    }
}

/// The writes of a batch of receipts, decided in order.
#[derive(Debug, Default)]
pub struct ReceiptBatch {
    /// One answer per receipt, in order.
    pub answers: Vec<ReceiptAnswer>,
    pub effects: Effects,
}

/// Decides a batch of receipts in order, each seeing the ones before it (a receipt
/// repeated in one batch is a duplicate the second time), from the follow-ups the store
/// holds for each provider message id (`candidates`) and the campaigns it holds, those
/// `receipt_holds` named (`held`, `None` for any other). A receipt that matches no follow-up, or more than one (a
/// provider id recorded twice, and no tenant named to tell them apart), is `NotFound`.
pub fn decide_receipts(
    receipts: &[Receipt],
    applier: &dyn ReceiptApplier,
    candidates: impl Fn(&str) -> Vec<FollowUp>,
    held: impl Fn(CampaignId) -> Option<HeldCampaign>,
) -> ReceiptBatch {
    let mut answers = Vec::with_capacity(receipts.len());
    let mut decided = Decided::default();
    for receipt in receipts {
        let matching: Vec<FollowUp> = candidates(&receipt.provider_message_id)
            .into_iter()
            .map(|stored| {
                decided
                    .follow_ups
                    .get(&stored.followup_id)
                    .cloned()
                    .unwrap_or(stored)
            })
            .filter(|follow_up| receipt.matches(follow_up))
            .collect();
        let [current] = matching.as_slice() else {
            answers.push(ReceiptAnswer::NotFound);
            continue;
        };
        match applier.receive(current, receipt) {
            ReceiptDecision::Unchanged(answer) => answers.push(answer),
            ReceiptDecision::Apply {
                follow_up,
                events,
                opt_out,
                pause,
            } => {
                answers.push(ReceiptAnswer::Applied);
                decided.record(applier, *follow_up, events, opt_out, pause, &held);
            }
        }
    }
    ReceiptBatch {
        answers,
        effects: decided.effects(),
    }
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
    follow_up_of: impl Fn(FollowUpId) -> Option<F>,
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
