//! Campaigns: create (idempotent by id and tenant key), read, update on the revision it
//! was decided on, list and count.
//!
//! A campaign's counts are moved by the writers of its follow-ups (`batch.rs`,
//! `follow_ups.rs`, `drain.rs`, `outbound.rs`), never here.

use async_trait::async_trait;
use crm_domain::campaign::{Campaign, CampaignStats};
use crm_domain::event::EventEnvelope;
use crm_domain::ids::{CampaignId, TenantId};
use crm_domain::page::{Cursor, Page};
use crm_ports::{CampaignQuery, CampaignStore, Created, StoreError};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::PgStore;
use crate::read::{Lookup, fetch_limit, keyset, page};
use crate::rows;
use crate::sql;
use crate::statement::{all, changed_rows, one};
use crate::store::unavailable;
use crate::write::EventColumns;

#[async_trait]
impl CampaignStore for PgStore {
    async fn create_campaign(
        &self,
        campaign: &Campaign,
        events: &[EventEnvelope],
    ) -> Result<Created<Campaign>, StoreError> {
        let params = campaign_params(campaign)?;
        let events = EventColumns::new(events)?;
        let scheduled_at = campaign.scheduled_at.map(|t| t.as_datetime());
        let created_at = campaign.created_at.as_datetime();
        let updated_at = campaign.updated_at.as_datetime();
        let record: [&(dyn ToSql + Sync); 12] = [
            &params.id,
            &campaign.tenant_id.as_str(),
            &campaign.external_key,
            &campaign.name,
            &campaign.channel,
            &campaign.audience_segment,
            &campaign.state.as_str(),
            &scheduled_at,
            &params.metadata,
            &params.revision,
            &created_at,
            &updated_at,
        ];
        let all: Vec<_> = record.into_iter().chain(events.params()).collect();
        self.call(async |client| {
            if changed_rows(&*client, sql::CREATE_CAMPAIGN, &all).await? == 1 {
                return Ok(Created::Created(campaign.clone()));
            }
            let lookup = Lookup {
                by_id: sql::SELECT_CAMPAIGN_BY_ID,
                by_key: sql::SELECT_CAMPAIGN_BY_KEY,
                map: rows::campaign,
                tenant_of: |found: &Campaign| &found.tenant_id,
            };
            lookup
                .repeated(
                    &*client,
                    params.id,
                    &campaign.tenant_id,
                    &campaign.external_key,
                )
                .await
        })
        .await
    }

    async fn campaign(
        &self,
        tenant_id: &TenantId,
        campaign_id: CampaignId,
    ) -> Result<Option<Campaign>, StoreError> {
        self.tenants(
            tenant_id,
            sql::SELECT_CAMPAIGN_BY_ID,
            campaign_id.as_uuid(),
            rows::campaign,
            |campaign| &campaign.tenant_id,
        )
        .await
    }

    async fn update_campaign(
        &self,
        changed: &Campaign,
        events: &[EventEnvelope],
    ) -> Result<(), StoreError> {
        let id = changed.campaign_id.as_uuid();
        self.call(async |client| {
            if save_campaign(&*client, changed, events).await? {
                return Ok(());
            }
            // Nothing changed: another writer moved the revision, or the tenant has no
            // such campaign.
            let current = one(&*client, sql::SELECT_CAMPAIGN_BY_ID, &[&id], rows::campaign).await?;
            Err(match current {
                Some(current) if current.tenant_id == changed.tenant_id => StoreError::Stale {
                    campaign_id: changed.campaign_id,
                },
                _ => StoreError::NotFound {
                    campaign_id: changed.campaign_id,
                },
            })
        })
        .await
    }

    async fn list_campaigns(&self, query: &CampaignQuery) -> Result<Page<Campaign>, StoreError> {
        let (after_at, after_id) = keyset(query.after);
        let state = query.state.map(|s| s.as_str());
        let limit = fetch_limit(query.limit);
        let tenant = query.tenant_id.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tenant, &after_at, &after_id, &limit];
        let sql = match &state {
            None => sql::LIST_CAMPAIGNS,
            Some(state) => {
                params.push(state);
                sql::LIST_CAMPAIGNS_BY_STATE
            }
        };
        let items = self
            .read_call(async |client| all(&*client, sql, &params, rows::campaign).await)
            .await?;
        Ok(page(items, query.limit, |c| Cursor {
            created_at: c.created_at,
            id: c.campaign_id.as_uuid(),
        }))
    }

    async fn campaign_stats(&self, campaign_id: CampaignId) -> Result<CampaignStats, StoreError> {
        let found = self
            .read_call(async |client| {
                all(
                    &*client,
                    sql::CAMPAIGN_STATS,
                    &[&campaign_id.as_uuid()],
                    rows::campaign_stats,
                )
                .await
            })
            .await?;
        Ok(found.into_iter().next().unwrap_or_default())
    }
}

/// Saves `changed` with its events on `client` if the tenant's stored campaign still has
/// the revision before `changed.revision`; whether it did.
pub(crate) async fn save_campaign(
    client: &impl GenericClient,
    changed: &Campaign,
    events: &[EventEnvelope],
) -> Result<bool, StoreError> {
    let params = campaign_params(changed)?;
    let events = EventColumns::new(events)?;
    let scheduled_at = changed.scheduled_at.map(|t| t.as_datetime());
    let updated_at = changed.updated_at.as_datetime();
    let record: [&(dyn ToSql + Sync); 11] = [
        &params.id,
        &changed.tenant_id.as_str(),
        &changed.external_key,
        &changed.name,
        &changed.channel,
        &changed.audience_segment,
        &changed.state.as_str(),
        &scheduled_at,
        &params.metadata,
        &params.revision,
        &updated_at,
    ];
    let all: Vec<_> = record.into_iter().chain(events.params()).collect();
    Ok(changed_rows(client, sql::UPDATE_CAMPAIGN, &all).await? == 1)
}

fn campaign_params(campaign: &Campaign) -> Result<CampaignParams, StoreError> {
    Ok(CampaignParams {
        id: campaign.campaign_id.as_uuid(),
        metadata: serde_json::Value::Object(campaign.metadata.clone()),
        revision: i64::try_from(campaign.revision).map_err(unavailable)?,
    })
}

/// Owned values of a campaign's parameters that are not plain field borrows.
struct CampaignParams {
    id: Uuid,
    metadata: serde_json::Value,
    revision: i64,
}
