//! Opt-outs: add (idempotent per tenant and phone), remove and list a tenant's.
//!
//! Opt-outs a delivery report brings in are written with the ack (`outbound.rs`); the
//! drain reads them through its claim. Neither is done here.

use async_trait::async_trait;
use crm_domain::event::EventEnvelope;
use crm_domain::ids::TenantId;
use crm_domain::opt_out::OptOut;
use crm_ports::{Created, NewOptOut, OptOutPage, OptOutQuery, OptOutStore, StoreError};
use tokio_postgres::types::ToSql;

use crate::PgStore;
use crate::read::{fetch_limit, split_page};
use crate::rows;
use crate::sql;
use crate::statement::{all, changed_rows_of, one};
use crate::store::unavailable;
use crate::write::EventColumns;

#[async_trait]
impl OptOutStore for PgStore {
    async fn add_opt_out(&self, added: &NewOptOut) -> Result<Created<OptOut>, StoreError> {
        let opt_out = &added.opt_out;
        let created_at = opt_out.created_at.as_datetime();
        let events = EventColumns::new(std::slice::from_ref(&added.event))?;
        self.call(async |client| {
            let params: [&(dyn ToSql + Sync); 4] = [
                &opt_out.tenant_id.as_str(),
                &opt_out.phone_e164,
                &opt_out.reason,
                &created_at,
            ];
            let transaction = client.transaction().await.map_err(unavailable)?;
            if changed_rows_of(&transaction, sql::ADD_OPT_OUT, &params).await? == 1 {
                changed_rows_of(&transaction, sql::INSERT_EVENTS, &events.params()).await?;
                transaction.commit().await.map_err(unavailable)?;
                return Ok(Created::Created(opt_out.clone()));
            }
            drop(transaction);
            let existing = one(
                &*client,
                sql::SELECT_OPT_OUT,
                &[&opt_out.tenant_id.as_str(), &opt_out.phone_e164],
                rows::opt_out,
            )
            .await?;
            existing
                .map(Created::Existing)
                .ok_or_else(|| unavailable("an opt-out conflicted with a row that is gone"))
        })
        .await
    }

    async fn remove_opt_out(
        &self,
        tenant_id: &TenantId,
        phone_e164: &str,
        event: &EventEnvelope,
    ) -> Result<bool, StoreError> {
        let events = EventColumns::new(std::slice::from_ref(event))?;
        self.call(async |client| {
            let transaction = client.transaction().await.map_err(unavailable)?;
            let removed = changed_rows_of(
                &transaction,
                sql::REMOVE_OPT_OUT,
                &[&tenant_id.as_str(), &phone_e164],
            )
            .await?;
            if removed == 0 {
                return Ok(false);
            }
            changed_rows_of(&transaction, sql::INSERT_EVENTS, &events.params()).await?;
            transaction.commit().await.map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn opt_outs(&self, query: &OptOutQuery) -> Result<OptOutPage, StoreError> {
        let after = query.after.clone().unwrap_or_default();
        let fetch = fetch_limit(query.limit);
        let items = self
            .call(async |client| {
                all(
                    &*client,
                    sql::LIST_OPT_OUTS,
                    &[&query.tenant_id.as_str(), &after, &fetch],
                    rows::opt_out,
                )
                .await
            })
            .await?;
        let (items, next) = split_page(items, query.limit, |last| last.phone_e164.clone());
        Ok(OptOutPage { items, next })
    }
}
