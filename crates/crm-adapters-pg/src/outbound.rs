//! The outbound queue: claim items under a lease, take acks, and write what they change
//! (items, deliveries, opt-outs, events, campaign counts) in one transaction.
//!
//! Which item is leased and what an ack means are decided by `decide_claims` and
//! `decide_acks` in the ports; this file only locks, reads and writes. Items are enqueued
//! by the drain (`drain.rs`), not here.

use std::collections::HashMap;

use async_trait::async_trait;
use crm_domain::delivery::{AckStatus, QueueEntry};
use crm_domain::event::EventEnvelope;
use crm_domain::failure_window::FailureWindow;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, FollowUpId, QueueItemId};
use crm_domain::outbound::OutboundItem;
use crm_domain::policy::SendingPolicy;
use crm_domain::receipt::{Receipt, ReceiptAnswer};
use crm_domain::timestamp::Timestamp;
use crm_ports::drain::stats_changes;
use crm_ports::{
    AckRequest, Acker, Effects, HeldCampaign, LeasedItem, Leaser, NewOptOut, OutboundQueue,
    ReceiptApplier, StoreError, ack_holds, decide_acks, decide_claims, decide_receipts,
    receipt_holds, window_needed,
};
use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::PgStore;
use crate::campaigns::save_campaign;
use crate::read::fetch_limit;
use crate::rows;
use crate::sql;
use crate::statement::{all, changed_rows_of, one, query_rows, query_value};
use crate::store::unavailable;
use crate::write::{EventColumns, add_stats};

#[async_trait]
impl OutboundQueue for PgStore {
    async fn claim(
        &self,
        now: Timestamp,
        limit: usize,
        leaser: &dyn Leaser,
    ) -> Result<Vec<LeasedItem>, StoreError> {
        let limit = fetch_limit(limit).saturating_sub(1);
        self.call(async |client| {
            let transaction = client.transaction().await.map_err(unavailable)?;
            let rows = query_rows(
                &transaction,
                sql::CLAIM_ITEMS,
                &[&now.as_datetime(), &limit],
            )
            .await?;
            let claimed = rows
                .iter()
                .map(|row| Ok((rows::queue_entry(row)?, row)))
                .collect::<Result<Vec<_>, rows::RowError>>()
                .map_err(unavailable)?;
            if claimed.is_empty() {
                transaction.commit().await.map_err(unavailable)?;
                return Ok(Vec::new());
            }
            // Only an item whose last lease ran out needs its follow-up, to record the
            // failure; usually none does.
            let running_out: Vec<FollowUpId> = claimed
                .iter()
                .filter(|(entry, _)| entry.runs_out_on_claim())
                .map(|(entry, _)| entry.followup_id)
                .collect();
            let follow_ups = if running_out.is_empty() {
                HashMap::new()
            } else {
                follow_ups_by_id(&transaction, sql::SELECT_FOLLOW_UPS_BY_ID, &running_out).await?
            };
            let batch = decide_claims(
                claimed.iter().map(|(entry, _)| entry),
                |id| follow_ups.get(&id),
                leaser,
            );
            write_deliveries(
                &transaction,
                &batch.entries,
                &batch.follow_ups,
                &follow_ups,
                &[],
                &batch.events,
            )
            .await?;
            transaction.commit().await.map_err(unavailable)?;
            batch
                .entries
                .into_iter()
                .filter(|entry| batch.leased.contains(&entry.queue_item_id))
                .map(|entry| {
                    let row = claimed
                        .iter()
                        .find(|(claimed, _)| claimed.queue_item_id == entry.queue_item_id)
                        .map(|(_, row)| *row)
                        .expect("a leased entry was claimed");
                    Ok(LeasedItem {
                        entry,
                        item: rows::queued_item(row).map_err(unavailable)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn ack(
        &self,
        acks: &[AckRequest],
        acker: &dyn Acker,
    ) -> Result<Vec<AckStatus>, StoreError> {
        let ids: Vec<Uuid> = acks.iter().map(|ack| ack.queue_item_id.as_uuid()).collect();
        self.call(async |client| {
            let transaction = client.transaction().await.map_err(unavailable)?;
            let mut rows = query_rows(&transaction, sql::LOCK_ITEMS, &[&ids]).await?;
            if rows.len() < ids.len() {
                // Finished items (or unknown ids). Read after the lock, so that an item
                // another ack finished while this one waited is found where it went.
                rows.extend(query_rows(&transaction, sql::FINISHED_ITEMS, &[&ids]).await?);
            }
            let entries: HashMap<QueueItemId, QueueEntry> = rows
                .iter()
                .map(|row| rows::queue_entry(row).map(|entry| (entry.queue_item_id, entry)))
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            let owners: Vec<FollowUpId> = entries.values().map(|e| e.followup_id).collect();
            let follow_ups =
                follow_ups_by_id(&transaction, sql::LOCK_FOLLOW_UPS_BY_ID, &owners).await?;
            // The campaigns these acks may pause (those of failures) stay locked until the
            // commit, so a pause is decided once across replicas; accepted messages lock
            // none.
            let held = ack_holds(acks, acker, |id| {
                follow_ups.get(&entries.get(&id)?.followup_id)?.campaign_id
            });
            let campaigns = lock_campaigns(&transaction, &held).await?;
            let batch = decide_acks(
                acks,
                acker,
                |id| entries.get(&id).cloned(),
                |id| follow_ups.get(&id).cloned(),
                |id| campaigns.get(&id).cloned(),
            );
            write_effects(&transaction, &batch.entries, &batch.effects, &follow_ups).await?;
            transaction.commit().await.map_err(unavailable)?;
            Ok(batch.statuses)
        })
        .await
    }

    async fn apply_receipts(
        &self,
        receipts: &[Receipt],
        applier: &dyn ReceiptApplier,
    ) -> Result<Vec<ReceiptAnswer>, StoreError> {
        let mut ids: Vec<&str> = receipts
            .iter()
            .map(|receipt| receipt.provider_message_id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        self.call(async |client| {
            let transaction = client.transaction().await.map_err(unavailable)?;
            // Every follow-up a receipt names, locked in id order: receipts about one
            // message apply one after the other, here or in another replica.
            let found = all(
                &transaction,
                sql::LOCK_FOLLOW_UPS_BY_PROVIDER_MESSAGE,
                &[&ids],
                rows::follow_up,
            )
            .await?;
            let mut by_message: HashMap<&str, Vec<FollowUp>> = HashMap::new();
            for follow_up in &found {
                if let Some(id) = follow_up
                    .delivery
                    .as_ref()
                    .and_then(|d| d.provider_message_id.as_deref())
                {
                    by_message.entry(id).or_default().push(follow_up.clone());
                }
            }
            let candidates = |id: &str| by_message.get(id).cloned().unwrap_or_default();
            let held = receipt_holds(receipts, applier, candidates);
            let campaigns = lock_campaigns(&transaction, &held).await?;
            let batch = decide_receipts(receipts, applier, candidates, |id| {
                campaigns.get(&id).cloned()
            });
            let before: HashMap<FollowUpId, FollowUp> = found
                .iter()
                .map(|follow_up| (follow_up.followup_id, follow_up.clone()))
                .collect();
            write_effects(&transaction, &[], &batch.effects, &before).await?;
            transaction.commit().await.map_err(unavailable)?;
            Ok(batch.answers)
        })
        .await
    }

    async fn queue_entry(&self, id: QueueItemId) -> Result<Option<QueueEntry>, StoreError> {
        self.call(async |client| {
            one(
                &*client,
                sql::SELECT_ITEM,
                &[&id.as_uuid()],
                rows::queue_entry,
            )
            .await
        })
        .await
    }

    async fn outbound_items(
        &self,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<OutboundItem>, StoreError> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .call(async |client| {
                query_rows(&*client, sql::OUTBOUND_ITEMS, &[&offset, &limit]).await
            })
            .await?;
        rows.iter()
            .map(|row| {
                let item: serde_json::Value = row.try_get(0).map_err(unavailable)?;
                serde_json::from_value(item).map_err(unavailable)
            })
            .collect()
    }
}

/// Queue entries as the parallel arrays of `UPDATE_ITEMS`.
#[derive(Default)]
struct ItemColumns {
    ids: Vec<Uuid>,
    statuses: Vec<&'static str>,
    attempts: Vec<i32>,
    available_at: Vec<Option<OffsetDateTime>>,
    lease_ids: Vec<Option<Uuid>>,
    lease_expires_at: Vec<Option<OffsetDateTime>>,
    last_ack_leases: Vec<Option<Uuid>>,
    last_ack_statuses: Vec<Option<&'static str>>,
    finished_at: Vec<Option<OffsetDateTime>>,
}

impl ItemColumns {
    fn new(entries: &[QueueEntry]) -> Result<Self, StoreError> {
        let mut columns = Self::default();
        for entry in entries {
            columns.ids.push(entry.queue_item_id.as_uuid());
            columns.statuses.push(entry.status.as_str());
            columns
                .attempts
                .push(i32::try_from(entry.attempt).map_err(unavailable)?);
            columns
                .available_at
                .push(entry.available_at.map(|at| at.as_datetime()));
            columns
                .lease_ids
                .push(entry.lease.map(|lease| lease.lease_id.0));
            columns
                .lease_expires_at
                .push(entry.lease.map(|lease| lease.expires_at.as_datetime()));
            columns
                .last_ack_leases
                .push(entry.last_ack.map(|ack| ack.lease_id.0));
            columns
                .last_ack_statuses
                .push(entry.last_ack.map(|ack| ack.status.as_str()));
            columns
                .finished_at
                .push(entry.finished_at.map(|at| at.as_datetime()));
        }
        Ok(columns)
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.ids,
            &self.statuses,
            &self.attempts,
            &self.available_at,
            &self.lease_ids,
            &self.lease_expires_at,
            &self.last_ack_leases,
            &self.last_ack_statuses,
            &self.finished_at,
        ]
    }
}

/// Writes the items' new states, the follow-ups' deliveries, the opt-outs, then the
/// events and last the campaigns' counts, inside `transaction`.
async fn write_deliveries(
    transaction: &deadpool_postgres::Transaction<'_>,
    entries: &[QueueEntry],
    follow_ups: &[FollowUp],
    before: &HashMap<FollowUpId, FollowUp>,
    opt_outs: &[NewOptOut],
    events: &[EventEnvelope],
) -> Result<(), StoreError> {
    let mut events = events.to_vec();
    if !entries.is_empty() {
        let columns = ItemColumns::new(entries)?;
        query_value::<i64>(transaction, sql::UPDATE_ITEMS, &columns.params()).await?;
    }
    if !follow_ups.is_empty() {
        let ids: Vec<Uuid> = follow_ups.iter().map(|f| f.followup_id.as_uuid()).collect();
        let deliveries: Vec<Option<serde_json::Value>> = follow_ups
            .iter()
            .map(|f| f.delivery.as_ref().map(rows::delivery_json))
            .collect();
        let updated_at: Vec<OffsetDateTime> = follow_ups
            .iter()
            .map(|f| f.updated_at.as_datetime())
            .collect();
        changed_rows_of(
            transaction,
            sql::RECORD_DELIVERIES,
            &[&ids, &deliveries, &updated_at],
        )
        .await?;
    }
    if !opt_outs.is_empty() {
        let tenants: Vec<&str> = opt_outs
            .iter()
            .map(|o| o.opt_out.tenant_id.as_str())
            .collect();
        let phones: Vec<&str> = opt_outs
            .iter()
            .map(|o| o.opt_out.phone_e164.as_str())
            .collect();
        let reasons: Vec<Option<&str>> = opt_outs
            .iter()
            .map(|o| o.opt_out.reason.as_deref())
            .collect();
        let created: Vec<OffsetDateTime> = opt_outs
            .iter()
            .map(|o| o.opt_out.created_at.as_datetime())
            .collect();
        let added = query_rows(
            transaction,
            sql::ADD_OPT_OUTS,
            &[&tenants, &phones, &reasons, &created],
        )
        .await?;
        // A number on the list already keeps its record, and its event is not stored.
        for row in added {
            let (tenant, phone): (&str, &str) = (row.get(0), row.get(1));
            events.extend(
                opt_outs
                    .iter()
                    .filter(|o| {
                        o.opt_out.tenant_id.as_str() == tenant && o.opt_out.phone_e164 == phone
                    })
                    .map(|o| o.event.clone()),
            );
        }
    }
    if !events.is_empty() {
        let events = EventColumns::new(&events)?;
        changed_rows_of(transaction, sql::INSERT_EVENTS, &events.params()).await?;
    }
    // After the event lock, as every writer does (see `drain.rs`).
    let changes = stats_changes(
        follow_ups
            .iter()
            .map(|after| (before.get(&after.followup_id), after)),
    );
    add_stats(transaction, &changes).await
}

/// Locks the campaigns a batch may pause (in id order, as `ack_holds` and
/// `receipt_holds` give them) until the transaction ends, and reads them with the failure
/// windows their tenants' policies ask for.
async fn lock_campaigns(
    transaction: &deadpool_postgres::Transaction<'_>,
    held: &[CampaignId],
) -> Result<HashMap<CampaignId, HeldCampaign>, StoreError> {
    if held.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<Uuid> = held.iter().map(CampaignId::as_uuid).collect();
    let campaigns = all(transaction, sql::LOCK_CAMPAIGNS, &[&ids], rows::campaign).await?;
    let mut tenants: Vec<&str> = campaigns.iter().map(|c| c.tenant_id.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    let policies: HashMap<String, SendingPolicy> =
        query_rows(transaction, sql::SELECT_POLICIES, &[&tenants])
            .await?
            .iter()
            .map(|row| Ok((row.try_get(0)?, rows::policy(row)?)))
            .collect::<Result<_, Box<dyn std::error::Error + Send + Sync>>>()
            .map_err(unavailable)?;
    let mut found = HashMap::with_capacity(campaigns.len());
    for campaign in campaigns {
        let window = match window_needed(&campaign, policies.get(campaign.tenant_id.as_str())) {
            Some(policy) => {
                let id = campaign.campaign_id.as_uuid();
                let size = i64::from(policy.window);
                let recent = all(
                    transaction,
                    sql::FINISHED_DELIVERIES,
                    &[&id, &size],
                    rows::finished_delivery,
                )
                .await?;
                Some(FailureWindow::new(policy, recent))
            }
            None => None,
        };
        found.insert(campaign.campaign_id, HeldCampaign { campaign, window });
    }
    Ok(found)
}

/// Writes what a batch of acks or receipts decided: the paused campaigns (held since
/// they were read, so their revision cannot have moved), then the entries, deliveries,
/// opt-outs, events and counts.
async fn write_effects(
    transaction: &deadpool_postgres::Transaction<'_>,
    entries: &[QueueEntry],
    effects: &Effects,
    before: &HashMap<FollowUpId, FollowUp>,
) -> Result<(), StoreError> {
    for paused in &effects.campaigns {
        if !save_campaign(transaction, paused, &[]).await? {
            return Err(unavailable("a locked campaign changed under its lock"));
        }
    }
    write_deliveries(
        transaction,
        entries,
        &effects.follow_ups,
        before,
        &effects.opt_outs,
        &effects.events,
    )
    .await
}

/// The follow-ups with these ids, read by `query` (`SELECT_FOLLOW_UPS_BY_ID`, or
/// `LOCK_FOLLOW_UPS_BY_ID` to hold them until the transaction ends).
async fn follow_ups_by_id(
    client: &impl GenericClient,
    query: &str,
    ids: &[FollowUpId],
) -> Result<HashMap<FollowUpId, FollowUp>, StoreError> {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    let found = all(client, query, &[&ids], rows::follow_up).await?;
    Ok(found.into_iter().map(|f| (f.followup_id, f)).collect())
}
