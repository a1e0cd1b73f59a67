//! What several writers share: events as the columns of a write statement, and moving
//! campaigns' counts in the order every writer locks them.
//!
//! Every writer inserts its events (which takes the event lock) before it moves a
//! campaign's counts, so no two writers wait on each other in turn; the callers keep that
//! order, these helpers only write what they are given.

use crm_domain::campaign::CampaignStats;
use crm_domain::event::EventEnvelope;
use crm_domain::ids::CampaignId;
use crm_ports::StoreError;
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::sql;
use crate::statement::changed_rows_of;
use crate::store::unavailable;

/// Events as the parallel arrays the write statements take.
#[derive(Default)]
pub(crate) struct EventColumns {
    ids: Vec<Uuid>,
    tenants: Vec<String>,
    names: Vec<String>,
    correlations: Vec<Uuid>,
    emitted: Vec<OffsetDateTime>,
    envelopes: Vec<serde_json::Value>,
}

impl EventColumns {
    pub(crate) fn new(events: &[EventEnvelope]) -> Result<Self, StoreError> {
        let mut columns = Self {
            ids: Vec::with_capacity(events.len()),
            tenants: Vec::with_capacity(events.len()),
            names: Vec::with_capacity(events.len()),
            correlations: Vec::with_capacity(events.len()),
            emitted: Vec::with_capacity(events.len()),
            envelopes: Vec::with_capacity(events.len()),
        };
        columns.extend(events)?;
        Ok(columns)
    }

    pub(crate) fn extend(&mut self, events: &[EventEnvelope]) -> Result<(), StoreError> {
        for event in events {
            self.ids.push(event.event_id.as_uuid());
            self.tenants.push(event.tenant_id.as_str().to_owned());
            self.names.push(event.name.clone());
            self.correlations.push(event.correlation_id.as_uuid());
            self.emitted.push(event.emitted_at.as_datetime());
            self.envelopes
                .push(serde_json::to_value(event).map_err(unavailable)?);
        }
        Ok(())
    }

    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.ids,
            &self.tenants,
            &self.names,
            &self.correlations,
            &self.emitted,
            &self.envelopes,
        ]
    }
}

/// Adds `changes` to the campaigns' counts (in campaign order, the order every writer
/// locks them in).
pub(crate) async fn add_stats(
    transaction: &deadpool_postgres::Transaction<'_>,
    changes: &[(CampaignId, CampaignStats)],
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    // One row per campaign: a statement may not move a row twice.
    let mut merged: std::collections::BTreeMap<CampaignId, CampaignStats> = Default::default();
    for (id, change) in changes {
        merged.entry(*id).or_default().add(change);
    }
    let changes: Vec<_> = merged.into_iter().collect();
    let ids: Vec<Uuid> = changes.iter().map(|(id, _)| id.as_uuid()).collect();
    let column = |index: usize| -> Vec<i64> {
        changes
            .iter()
            .map(|(_, change)| change.counts()[index])
            .collect()
    };
    let columns: [Vec<i64>; 8] = std::array::from_fn(column);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids];
    params.extend(columns.iter().map(|c| c as &(dyn ToSql + Sync)));
    changed_rows_of(transaction, sql::ADD_STATS, &params).await?;
    Ok(())
}
