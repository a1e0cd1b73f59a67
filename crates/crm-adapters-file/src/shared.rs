//! What the store's lock protects: the durable image, and the changes sent to the
//! journal but not yet on disk.
//!
//! Readers only ever see durable records: a change joins the image once the writer says
//! its line is synced (`catch_up`), in sequence order. Until then it waits in the overlay,
//! where writers see it as a conflict: a write that touches the same record or key waits
//! for it to be decided and then decides again. When a journal write fails, every change
//! in the overlay is dropped (their callers are told the write failed), the numbering
//! rolls back to the last durable record, and the writer is told to take lines again.

use std::collections::{HashMap, HashSet, VecDeque};

use crm_domain::campaign::Campaign;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, FollowUpId, QueueItemId, TenantId};

use crate::journal::Journal;
use crate::manifest::Manifest;
use crate::state::{Change, Image, State};

/// A record or unique key a pending change touches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Touch {
    Campaign(CampaignId),
    CampaignKey(TenantId, String),
    FollowUp(FollowUpId),
    FollowUpKey(TenantId, String),
    QueueItem(QueueItemId),
    OptOut(TenantId, String),
    Policy(TenantId),
}

impl Touch {
    pub fn of_campaign(campaign: &Campaign) -> Vec<Touch> {
        let mut keys = vec![Touch::Campaign(campaign.campaign_id)];
        if let Some(key) = &campaign.external_key {
            keys.push(Touch::CampaignKey(campaign.tenant_id.clone(), key.clone()));
        }
        keys
    }

    pub fn of_follow_up(follow_up: &FollowUp) -> Vec<Touch> {
        let mut keys = vec![Touch::FollowUp(follow_up.followup_id)];
        if let Some(key) = &follow_up.external_key {
            keys.push(Touch::FollowUpKey(follow_up.tenant_id.clone(), key.clone()));
        }
        keys
    }
}

/// What a drain holds until its change is decided: follow-ups no other drain may take,
/// and limited tenants no other drain may claim from (their ledger entries join the
/// image with the change).
#[derive(Debug, Default)]
pub(crate) struct Claims {
    pub follow_ups: Vec<FollowUpId>,
    pub tenants: Vec<TenantId>,
}

/// A change on its way to the disk.
#[derive(Debug)]
struct Pending {
    seq: u64,
    change: Change,
    keys: Vec<Touch>,
    /// Free again once it is decided.
    claims: Claims,
}

/// Where a commit's line went: wait on it with `Journal::wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub seq: u64,
    pub epoch: u64,
}

/// A compaction's request for the image as of one sequence number, and the image once
/// taken.
#[derive(Debug, Default)]
pub(crate) struct SnapshotSlot {
    pub active: bool,
    pub at: Option<u64>,
    pub image: Option<Image>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub state: State,
    overlay: VecDeque<Pending>,
    /// The last pending sequence number touching each key.
    pending: HashMap<Touch, u64>,
    pub next_seq: u64,
    next_event_seq: u64,
    next_outbound_seq: u64,
    pub epoch: u64,
    /// Follow-ups claimed by drains in progress; no other drain may take them.
    pub claimed: HashSet<FollowUpId>,
    /// Limited tenants a drain in progress claims from: no other drain takes their work
    /// until its change is decided, so that each reads a ledger that holds every send.
    pub limiting: HashSet<TenantId>,
    /// The journal generation new lines go to.
    pub generation: u64,
    /// Bytes sent to the journal since the last rotation.
    pub generation_bytes: u64,
    pub manifest: Manifest,
    pub snapshot: SnapshotSlot,
    /// Retention asked for by `Store::expire`: the next compaction leaves out what is
    /// older.
    pub retention_cutoff: Option<crm_domain::timestamp::Timestamp>,
    /// What compactions have left out under retention since the store opened: `expire`
    /// reports the growth across its own request, whichever round did the work.
    pub retained_total: crate::compaction::Retained,
}

impl Shared {
    pub fn new(state: State, manifest: Manifest, generation: u64, journal_bytes: u64) -> Self {
        let image = state.image();
        Self {
            next_seq: image.last_seq + 1,
            next_event_seq: image.last_event_seq + 1,
            next_outbound_seq: image.last_outbound_seq + 1,
            state,
            overlay: VecDeque::new(),
            pending: HashMap::new(),
            epoch: 0,
            claimed: HashSet::new(),
            limiting: HashSet::new(),
            generation,
            generation_bytes: journal_bytes,
            manifest,
            snapshot: SnapshotSlot::default(),
            retention_cutoff: None,
            retained_total: crate::compaction::Retained::default(),
        }
    }

    /// Moves every change the journal has made durable into the image, in order; after a
    /// failed write, drops the rest and rolls the numbering back.
    pub fn catch_up(&mut self, journal: &Journal) {
        let progress = journal.progress();
        while let Some(front) = self.overlay.front() {
            if front.seq > progress.durable {
                break;
            }
            let pending = self.overlay.pop_front().expect("a front exists");
            self.apply(pending);
        }
        if progress.epoch == self.epoch && progress.broken {
            let dropped: Vec<Pending> = self.overlay.drain(..).collect();
            for pending in dropped {
                self.release(pending.claims);
            }
            self.pending.clear();
            let image = self.state.image();
            self.next_seq = image.last_seq + 1;
            self.next_event_seq = image.last_event_seq + 1;
            self.next_outbound_seq = image.last_outbound_seq + 1;
            self.epoch += 1;
            if journal.reset(self.epoch).is_err() {
                tracing::error!("the journal writer has stopped");
            }
        }
    }

    fn apply(&mut self, pending: Pending) {
        let Pending {
            seq,
            change,
            keys,
            claims,
        } = pending;
        self.state.apply(seq, change);
        for key in keys {
            if self.pending.get(&key) == Some(&seq) {
                self.pending.remove(&key);
            }
        }
        self.release(claims);
        if self.snapshot.at == Some(seq) {
            self.snapshot.image = Some(self.state.image().clone());
        }
    }

    /// Frees what a drain held.
    pub fn release(&mut self, claims: Claims) {
        for id in claims.follow_ups {
            self.claimed.remove(&id);
        }
        for tenant_id in claims.tenants {
            self.limiting.remove(&tenant_id);
        }
    }

    /// The pending change a write touching `keys` must wait for, if any.
    pub fn conflict(&self, keys: &[Touch]) -> Option<Ticket> {
        keys.iter()
            .filter_map(|key| self.pending.get(key))
            .max()
            .map(|&seq| Ticket {
                seq,
                epoch: self.epoch,
            })
    }

    pub fn is_pending(&self, key: &Touch) -> bool {
        self.pending.contains_key(key)
    }

    /// Numbers the change's events and outbound items, hands its line to the journal and
    /// queues it until it is durable. `line` makes the journal line from the sequence
    /// number and the numbered change.
    pub fn commit(
        &mut self,
        journal: &Journal,
        mut change: Change,
        keys: Vec<Touch>,
        claims: Claims,
        line: impl FnOnce(u64, &Change) -> Vec<u8>,
    ) -> Result<(Ticket, usize), crate::journal::JournalStopped> {
        for event in &mut change.events {
            event.seq = self.next_event_seq;
            self.next_event_seq += 1;
        }
        // New items are numbered here; moves of existing ones keep their number.
        for item in change.outbound.iter_mut().filter(|item| item.seq == 0) {
            item.seq = self.next_outbound_seq;
            self.next_outbound_seq += 1;
        }
        let seq = self.next_seq;
        let line = line(seq, &change);
        let bytes = line.len();
        journal.append(seq, line)?;
        self.next_seq += 1;
        self.generation_bytes += bytes as u64;
        for key in &keys {
            self.pending.insert(key.clone(), seq);
        }
        self.overlay.push_back(Pending {
            seq,
            change,
            keys,
            claims,
        });
        Ok((
            Ticket {
                seq,
                epoch: self.epoch,
            },
            bytes,
        ))
    }
}
