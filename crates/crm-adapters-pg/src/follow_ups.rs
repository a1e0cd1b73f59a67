//! Follow-ups: create (through the group-commit batcher), list, read, save from the
//! status it was decided on, and count those due.
//!
//! The drain, which claims due follow-ups and decides them, is `drain.rs`; this file only
//! hands it a bounded connection.

use async_trait::async_trait;
use crm_domain::campaign::{CampaignState, CampaignStats};
use crm_domain::event::EventEnvelope;
use crm_domain::follow_up::{FollowUp, FollowUpStatus};
use crm_domain::ids::{FollowUpId, TenantId};
use crm_domain::page::{Cursor, Page};
use crm_domain::timestamp::Timestamp;
use crm_ports::{
    CreateResult, Created, Dispatcher, DrainOutcome, DrainPlan, FollowUpQuery, FollowUpStore,
    Planner, Scheduled, SendingFacts, StoreError,
};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use crate::PgStore;
use crate::batch::{self, CreateJob};
use crate::drain;
use crate::read::{Lookup, fetch_limit, keyset, page};
use crate::rows;
use crate::sql;
use crate::statement::{all, changed_rows, query_value};
use crate::status;
use crate::store::unavailable;
use crate::write::EventColumns;

#[async_trait]
impl FollowUpStore for PgStore {
    async fn create_follow_ups(
        &self,
        items: &[Scheduled],
    ) -> Result<Vec<CreateResult>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let stopped = || unavailable("the create batcher stopped");
        // Room for every item at once, or none: a create is never half queued.
        let permits =
            self.creates()
                .try_reserve_many(items.len())
                .map_err(|error| match error {
                    mpsc::error::TrySendError::Full(()) => unavailable(format!(
                        "{} creates are already waiting for the database",
                        batch::MAX_WAITING
                    )),
                    mpsc::error::TrySendError::Closed(()) => stopped(),
                })?;
        let answers: Vec<_> = permits
            .zip(items)
            .map(|(permit, item)| {
                let (reply, answer) = oneshot::channel();
                permit.send(CreateJob {
                    follow_up: item.follow_up.clone(),
                    events: item.events.clone(),
                    reply,
                });
                answer
            })
            .collect();
        // The batch before these may still be committing, and these may take more than
        // one statement: a bound for each, and one more.
        let statements = items.len().div_ceil(batch::MAX_BATCH) + 1;
        let bound = self.timeout() * u32::try_from(statements).unwrap_or(u32::MAX);
        let deadline = tokio::time::Instant::now() + bound;
        let mut inserted = Vec::with_capacity(items.len());
        for answer in answers {
            let went_in = tokio::time::timeout_at(deadline, answer)
                .await
                .map_err(|_| self.timed_out())?
                .map_err(|_| stopped())??;
            inserted.push(went_in);
        }
        if inserted.iter().all(|&went_in| went_in) {
            return Ok(items
                .iter()
                .map(|item| Ok(Created::Created(item.follow_up.clone())))
                .collect());
        }
        // What holds the id or key of each row that did not go in: an earlier create,
        // perhaps an item before it in `items`.
        let lookup = Lookup {
            by_id: sql::SELECT_FOLLOW_UP_BY_ID,
            by_key: sql::SELECT_FOLLOW_UP_BY_KEY,
            map: rows::follow_up,
            tenant_of: |found: &FollowUp| &found.tenant_id,
        };
        self.call(async |client| {
            let mut results = Vec::with_capacity(items.len());
            for (item, went_in) in items.iter().zip(&inserted) {
                let follow_up = &item.follow_up;
                if *went_in {
                    results.push(Ok(Created::Created(follow_up.clone())));
                    continue;
                }
                let id = follow_up.followup_id.as_uuid();
                match lookup
                    .repeated(&*client, id, &follow_up.tenant_id, &follow_up.external_key)
                    .await
                {
                    Err(StoreError::Unavailable(error)) => {
                        return Err(StoreError::Unavailable(error));
                    }
                    other => results.push(other),
                }
            }
            Ok(results)
        })
        .await
    }

    async fn list_follow_ups(&self, query: &FollowUpQuery) -> Result<Page<FollowUp>, StoreError> {
        let (after_at, after_id) = keyset(query.after);
        let status = query.status.map(|s| s.as_str());
        let campaign = query.campaign_id.map(|c| c.as_uuid());
        let limit = fetch_limit(query.limit);
        let tenant = query.tenant_id.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tenant, &after_at, &after_id, &limit];
        let sql = match (&campaign, &status) {
            (None, None) => sql::LIST_FOLLOW_UPS,
            (None, Some(status)) => {
                params.push(status);
                sql::LIST_FOLLOW_UPS_BY_STATUS
            }
            (Some(campaign), None) => {
                params.push(campaign);
                sql::LIST_FOLLOW_UPS_BY_CAMPAIGN
            }
            (Some(campaign), Some(status)) => {
                params.push(campaign);
                params.push(status);
                sql::LIST_FOLLOW_UPS_BY_CAMPAIGN_AND_STATUS
            }
        };
        let items = self
            .read_call(async |client| all(&*client, sql, &params, rows::follow_up).await)
            .await?;
        Ok(page(items, query.limit, |f| Cursor {
            created_at: f.created_at,
            id: f.followup_id.as_uuid(),
        }))
    }

    async fn drain(
        &self,
        now: Timestamp,
        limit: usize,
        dispatcher: &dyn Dispatcher,
    ) -> Result<Vec<DrainOutcome>, StoreError> {
        self.call(async |client| drain::drain_due(client, now, limit, dispatcher).await)
            .await
    }

    async fn follow_up(
        &self,
        tenant_id: &TenantId,
        followup_id: FollowUpId,
    ) -> Result<Option<FollowUp>, StoreError> {
        self.tenants(
            tenant_id,
            sql::SELECT_FOLLOW_UP_BY_ID,
            followup_id.as_uuid(),
            rows::follow_up,
            |follow_up| &follow_up.tenant_id,
        )
        .await
    }

    async fn save_follow_up(
        &self,
        follow_up: &FollowUp,
        expected: FollowUpStatus,
        events: &[EventEnvelope],
    ) -> Result<bool, StoreError> {
        let events = EventColumns::new(events)?;
        let id = follow_up.followup_id.as_uuid();
        let delivery = follow_up.delivery.as_ref().map(rows::delivery_json);
        let updated_at = follow_up.updated_at.as_datetime();
        // The change from the status it is saved from, delivery as it stands: a save
        // never changes what the sender reported.
        let mut before = follow_up.clone();
        before.status = expected;
        let change = CampaignStats::change(Some(&before), follow_up)
            .counts()
            .to_vec();
        let tenant = follow_up.tenant_id.as_str();
        let record: [&(dyn ToSql + Sync); 9] = [
            &id,
            &expected.as_str(),
            &follow_up.status.as_str(),
            &follow_up.provider_message_id,
            &follow_up.last_error_code,
            &follow_up.last_error_message,
            &delivery,
            &updated_at,
            &change,
        ];
        let all: Vec<_> = record
            .into_iter()
            .chain(events.params())
            .chain([&tenant as &(dyn ToSql + Sync)])
            .collect();
        self.call(async |client| Ok(changed_rows(&*client, sql::SAVE_FOLLOW_UP, &all).await? == 1))
            .await
    }

    async fn sending_facts(
        &self,
        tenant_id: Option<&TenantId>,
        now: Timestamp,
        cap: usize,
        planner: &dyn Planner,
    ) -> Result<(DrainPlan, SendingFacts), StoreError> {
        self.call(async |client| status::sending_facts(client, tenant_id, now, cap, planner).await)
            .await
    }

    async fn count_due(&self, now: Timestamp, held: &[CampaignState]) -> Result<u64, StoreError> {
        let held: Vec<&str> = held.iter().map(|state| state.as_str()).collect();
        let cap = i64::try_from(COUNT_DUE_CAP).unwrap_or(i64::MAX);
        let params: [&(dyn ToSql + Sync); 3] = [&held, &now.as_datetime(), &cap];
        let count: i64 = self
            .call(async |client| query_value(&*client, sql::COUNT_DUE, &params).await)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

/// `count_due` stops counting here: the gauge says "at least this many".
pub const COUNT_DUE_CAP: usize = 10_000;
