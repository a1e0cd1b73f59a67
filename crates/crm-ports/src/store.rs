//! Store ports: campaigns, follow-ups and the drain's claim-and-dispatch unit of work.

use async_trait::async_trait;
use crm_domain::campaign::{Campaign, CampaignState, CampaignStats};
use crm_domain::event::EventEnvelope;
use crm_domain::follow_up::{FollowUp, FollowUpStatus};
use crm_domain::ids::{CampaignId, FollowUpId, TenantId};
use crm_domain::opt_out::OptOut;
use crm_domain::page::{Cursor, EventCursor, Page};
use crm_domain::policy::SendingPolicy;
use crm_domain::timestamp::Timestamp;

use crate::drain::{Dispatcher, DrainOutcome, DrainPlan, Planner, SendingFacts};
use crate::events::EventEmitter;
use crate::outbound::OutboundQueue;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a store reports. Each trait method says which variants it may return.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The id is already used by a record of another tenant. Nothing was written.
    #[error("id {id} already belongs to another tenant")]
    IdConflict { id: uuid::Uuid },
    /// The record changed since it was read (its revision moved). Nothing was written;
    /// the caller reloads and decides again.
    #[error("campaign {campaign_id} changed while this change was decided")]
    Stale { campaign_id: CampaignId },
    /// The record to update does not exist for this tenant. Nothing was written.
    #[error("campaign {campaign_id} not found")]
    NotFound { campaign_id: CampaignId },
    /// A feed cursor older than the retention window: events after it were removed.
    /// Nothing was read; `oldest` is where the retained events start.
    #[error("the events after this cursor were removed by retention")]
    CursorExpired { oldest: EventCursor },
    /// A feed cursor past every event the store numbered: not one it issued.
    #[error("the cursor is past every event")]
    CursorNotIssued,
    /// The storage cannot be reached in time or failed. A read returned nothing; a write's
    /// outcome is unknown (it may have committed), and repeating it is safe: every write
    /// is idempotent by its ids.
    #[error("storage unavailable")]
    Unavailable(#[source] BoxError),
}

impl StoreError {
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}

/// The outcome of an idempotent create.
#[derive(Debug, Clone, PartialEq)]
pub enum Created<T> {
    /// The record was new; it and its events were stored.
    Created(T),
    /// The tenant already had it (same id or same external key): the stored record,
    /// unchanged, and nothing was written.
    Existing(T),
}

impl<T> Created<T> {
    pub fn record(&self) -> &T {
        match self {
            Self::Created(record) | Self::Existing(record) => record,
        }
    }
}

/// A page request over one tenant's campaigns, oldest first by `(created_at, id)`.
#[derive(Debug, Clone, PartialEq)]
pub struct CampaignQuery {
    pub tenant_id: TenantId,
    pub state: Option<CampaignState>,
    pub after: Option<Cursor>,
    /// At least 1; the use case caps it at `crm_domain::page::MAX_LIMIT`.
    pub limit: usize,
}

/// A page request over one tenant's follow-ups, oldest first by `(created_at, id)`.
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUpQuery {
    pub tenant_id: TenantId,
    pub status: Option<FollowUpStatus>,
    pub campaign_id: Option<CampaignId>,
    pub after: Option<Cursor>,
    pub limit: usize,
}

#[async_trait]
pub trait CampaignStore: Send + Sync {
    /// Stores a new campaign with its events, unless the tenant already has a campaign
    /// with the same id or the same `external_key`: then returns that one as `Existing`
    /// and writes nothing. Holds under concurrent identical requests: exactly one caller
    /// gets `Created`.
    ///
    /// # Errors
    /// `IdConflict` when the id belongs to another tenant; `Unavailable`.
    async fn create_campaign(
        &self,
        campaign: &Campaign,
        events: &[EventEnvelope],
    ) -> Result<Created<Campaign>, StoreError>;

    /// The tenant's campaign with this id; another tenant's campaign is `None`.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn campaign(
        &self,
        tenant_id: &TenantId,
        campaign_id: CampaignId,
    ) -> Result<Option<Campaign>, StoreError>;

    /// Saves `changed` with its events if the stored campaign still has revision
    /// `changed.revision - 1` (it was decided on a fresh copy).
    ///
    /// # Errors
    /// `Stale` when the revision moved; `NotFound` when the tenant has no such
    /// campaign; `Unavailable`.
    async fn update_campaign(
        &self,
        changed: &Campaign,
        events: &[EventEnvelope],
    ) -> Result<(), StoreError>;

    /// One page of the tenant's campaigns.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_campaigns(&self, query: &CampaignQuery) -> Result<Page<Campaign>, StoreError>;

    /// The counts of a campaign's follow-ups, kept as they change (never counted by
    /// reading them); zero for a campaign without follow-ups.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn campaign_stats(&self, campaign_id: CampaignId) -> Result<CampaignStats, StoreError>;
}

/// A new follow-up and the events of its creation, as a create hands them to the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    pub follow_up: FollowUp,
    pub events: Vec<EventEnvelope>,
}

/// What a create answers for one follow-up: `Created` or `Existing`, or `IdConflict`
/// when its id belongs to another tenant.
pub type CreateResult = Result<Created<FollowUp>, StoreError>;

#[async_trait]
pub trait FollowUpStore: Send + Sync {
    /// Stores new follow-ups with their events, each as if created alone, one after the
    /// other in order: one whose tenant already has a follow-up with the same id or
    /// `external_key` (stored before, or an earlier item of these) is `Existing` and
    /// writes nothing. Answers one result per item, in order; each `Created` item (record,
    /// events, campaign counts) is durable when this returns, and an item is never half
    /// written. The caller has checked that the campaigns they name belong to the tenant.
    ///
    /// # Errors
    /// `Unavailable`: the outcome of every item is unknown (some may be stored), and
    /// creating the same items again is safe. An item's own error is `IdConflict`, when
    /// its id belongs to another tenant.
    async fn create_follow_ups(&self, items: &[Scheduled])
    -> Result<Vec<CreateResult>, StoreError>;

    /// One follow-up: `create_follow_ups` of one item.
    ///
    /// # Errors
    /// `IdConflict` when the id belongs to another tenant; `Unavailable`.
    async fn create_follow_up(
        &self,
        follow_up: &FollowUp,
        events: &[EventEnvelope],
    ) -> CreateResult {
        let item = Scheduled {
            follow_up: follow_up.clone(),
            events: events.to_vec(),
        };
        self.create_follow_ups(std::slice::from_ref(&item))
            .await?
            .pop()
            .unwrap_or_else(|| Err(StoreError::unavailable("the store answered no item")))
    }

    /// One page of the tenant's follow-ups.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn list_follow_ups(&self, query: &FollowUpQuery) -> Result<Page<FollowUp>, StoreError>;

    /// The tenant's follow-up with this id (another tenant's is `None`).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn follow_up(
        &self,
        tenant_id: &TenantId,
        followup_id: FollowUpId,
    ) -> Result<Option<FollowUp>, StoreError>;

    /// Saves a changed follow-up with its events, if its stored status is still
    /// `expected` (it may have moved since it was read: then `false`, nothing written).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn save_follow_up(
        &self,
        follow_up: &FollowUp,
        expected: FollowUpStatus,
        events: &[EventEnvelope],
    ) -> Result<bool, StoreError>;

    /// Claims up to `limit` due follow-ups (pending, `schedule_at <= now`) from the lanes
    /// `dispatcher` opens, tenants in turn, within each limited tenant's caps and
    /// admissions (see `crate::drain`), asks `dispatcher` about each, and commits every
    /// decision (record, events, outbound item, the campaign's counts, the ledger entry
    /// of each follow-up marked sent) atomically with its claim.
    ///
    /// Exactly once: a follow-up is offered to at most one concurrent drain, in this
    /// process or any other sharing the store, and once committed it is no longer due.
    /// Follow-ups of a closed lane never take the place of due ones behind them. A
    /// limited tenant is claimed from by one drain at a time (another drain holding it
    /// takes nothing of it), and its ledger answers are exact at that claim, so its
    /// limits hold across every concurrent drain.
    ///
    /// # Errors
    /// `Unavailable`; then nothing of this batch was committed and every claimed
    /// follow-up is still pending.
    async fn drain(
        &self,
        now: Timestamp,
        limit: usize,
        dispatcher: &dyn Dispatcher,
    ) -> Result<Vec<DrainOutcome>, StoreError>;

    /// How many follow-ups are due at `now` in lanes whose campaign does not hold them.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn count_due(&self, now: Timestamp, held: &[CampaignState]) -> Result<u64, StoreError>;

    /// What the sending status of `tenant_id` (or of every tenant) is computed from, at
    /// `now`: the lanes holding its pending follow-ups, its due ones in drain order (at
    /// most `cap` per tenant), and, for the tenants `dispatcher`'s plan limits, the
    /// ledger's answers (tenant usage, the history of each due recipient, the next
    /// release of the day's budget). Reads only; returns `planner`'s plan too.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn sending_facts(
        &self,
        tenant_id: Option<&TenantId>,
        now: Timestamp,
        cap: usize,
        planner: &dyn Planner,
    ) -> Result<(DrainPlan, SendingFacts), StoreError>;
}

#[async_trait]
pub trait PolicyStore: Send + Sync {
    /// The tenant's sending policy; `None` when it never set one.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn sending_policy(
        &self,
        tenant_id: &TenantId,
    ) -> Result<Option<SendingPolicy>, StoreError>;

    /// Sets (replaces) the tenant's sending policy.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn put_sending_policy(
        &self,
        tenant_id: &TenantId,
        policy: &SendingPolicy,
    ) -> Result<(), StoreError>;

    /// Removes the tenant's sending policy (the default applies again); `false` when it
    /// had none.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn remove_sending_policy(&self, tenant_id: &TenantId) -> Result<bool, StoreError>;
}

/// An opt-out and the event that is stored with it when the number was not on the list
/// (a number added twice stores one event).
#[derive(Debug, Clone, PartialEq)]
pub struct NewOptOut {
    pub opt_out: OptOut,
    pub event: EventEnvelope,
}

/// A page request over one tenant's opt-outs, in phone number order.
#[derive(Debug, Clone, PartialEq)]
pub struct OptOutQuery {
    pub tenant_id: TenantId,
    /// Resume after this phone number.
    pub after: Option<String>,
    pub limit: usize,
}

/// One page of opt-outs and the phone number the next starts after.
#[derive(Debug, Clone, PartialEq)]
pub struct OptOutPage {
    pub items: Vec<OptOut>,
    pub next: Option<String>,
}

#[async_trait]
pub trait OptOutStore: Send + Sync {
    /// Adds a tenant's opt-out with its event, unless the number is opted out already:
    /// then returns the stored one as `Existing` and writes nothing, event included.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn add_opt_out(&self, added: &NewOptOut) -> Result<Created<OptOut>, StoreError>;

    /// Removes a tenant's opt-out and stores `event` with the removal; `false` when there
    /// was none, and then nothing is written.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn remove_opt_out(
        &self,
        tenant_id: &TenantId,
        phone_e164: &str,
        event: &EventEnvelope,
    ) -> Result<bool, StoreError>;

    /// One page of a tenant's opt-outs.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn opt_outs(&self, query: &OptOutQuery) -> Result<OptOutPage, StoreError>;
}

/// What one retention pass removes: events and finished outbound items by the service's
/// retention, and the ledger's entries by the longest window a limit looks back over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub records_before: Timestamp,
    pub ledger_before: Timestamp,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    pub events: u64,
    pub outbound_items: u64,
    pub ledger_entries: u64,
}

/// Everything a backend provides, as one object for the composition root.
#[async_trait]
pub trait Store:
    CampaignStore + FollowUpStore + EventEmitter + OutboundQueue + OptOutStore + PolicyStore
{
    /// A short name for logs and `/ready` (`file`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Succeeds when the storage can serve requests right now.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Deletes events emitted before `retention.records_before`, outbound items finished
    /// before it, and ledger entries sent before `retention.ledger_before`, at most about
    /// `batch` of each per call (no long locks), or whole days of them at once where they
    /// are kept in day partitions (PostgreSQL, which keeps a day until all of it is older);
    /// returns how many went. Campaigns, follow-ups and opt-outs are business records and
    /// are kept. A store may do this work elsewhere (the file store does it when it
    /// compacts) and report 0.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn expire(&self, retention: Retention, batch: usize) -> Result<Expired, StoreError>;

    /// Called once at graceful shutdown, after the last request: leave the storage in
    /// its tidiest form (the file store folds its journal into the snapshots). Every
    /// acknowledged write is already durable, so skipping this loses nothing.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
