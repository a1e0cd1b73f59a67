//! Sending policies: read, replace and remove a tenant's limits and quiet hours.
//!
//! Applying a policy (pacing, quiet hours) is the drain's (`drain.rs`) with the
//! dispatcher's plan; this file only stores it.

use async_trait::async_trait;
use crm_domain::ids::TenantId;
use crm_domain::policy::SendingPolicy;
use crm_ports::{PolicyStore, StoreError};
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;

use crate::PgStore;
use crate::rows;
use crate::sql;
use crate::statement::{all, changed_rows_of};
use crate::store::unavailable;

#[async_trait]
impl PolicyStore for PgStore {
    async fn sending_policy(
        &self,
        tenant_id: &TenantId,
    ) -> Result<Option<SendingPolicy>, StoreError> {
        let found = self
            .call(async |client| {
                all(
                    &*client,
                    sql::SELECT_POLICY,
                    &[&tenant_id.as_str()],
                    rows::policy,
                )
                .await
            })
            .await?;
        Ok(found.into_iter().next())
    }

    async fn put_sending_policy(
        &self,
        tenant_id: &TenantId,
        policy: &SendingPolicy,
    ) -> Result<(), StoreError> {
        let limit = |value: Option<u32>| -> Result<Option<i32>, StoreError> {
            value
                .map(|value| i32::try_from(value).map_err(unavailable))
                .transpose()
        };
        let rate = limit(policy.max_per_second)?;
        let per_sender = limit(policy.max_per_second_per_sender)?;
        let daily = limit(policy.daily_recipient_limit)?;
        let interval = limit(policy.recipient_min_interval_ms)?;
        let cap = limit(policy.recipient_daily_cap)?;
        let window = limit(policy.auto_pause.map(|a| a.window))?;
        let ratio = limit(policy.auto_pause.map(|a| a.max_failure_ratio.millionths()))?;
        let quiet = policy.quiet_hours.as_ref();
        let start = quiet.map(|q| q.start.to_string());
        let end = quiet.map(|q| q.end.to_string());
        let zone = quiet.map(|q| q.time_zone.as_str());
        let now = crm_domain::timestamp::Timestamp::from_datetime(OffsetDateTime::now_utc());
        let params: [&(dyn ToSql + Sync); 12] = [
            &tenant_id.as_str(),
            &rate,
            &start,
            &end,
            &zone,
            &now.as_datetime(),
            &per_sender,
            &daily,
            &interval,
            &cap,
            &window,
            &ratio,
        ];
        self.call(async |client| {
            changed_rows_of(&*client, sql::PUT_POLICY, &params).await?;
            Ok(())
        })
        .await
    }

    async fn remove_sending_policy(&self, tenant_id: &TenantId) -> Result<bool, StoreError> {
        self.call(async |client| {
            let removed =
                changed_rows_of(&*client, sql::REMOVE_POLICY, &[&tenant_id.as_str()]).await?;
            Ok(removed > 0)
        })
        .await
    }
}
