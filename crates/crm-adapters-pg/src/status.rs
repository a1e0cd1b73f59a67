//! What a sending status is computed from, read in PostgreSQL: the lanes of a tenant (or
//! of all), their due follow-ups in drain order, and the ledger's answers for the tenants
//! the plan limits. Reads only; why each follow-up waits is the domain's to say.

use std::collections::BTreeMap;

use crm_domain::ids::{CampaignId, FollowUpId, TenantId};
use crm_domain::timestamp::Timestamp;
use crm_ports::{
    Candidate, DrainPlan, DueEntry, Lane, LaneState, Planner, SendingFacts, StoreError,
};
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::ledger;
use crate::rows;
use crate::sql;
use crate::statement::{all, query_rows};
use crate::store::unavailable;

pub(crate) async fn sending_facts(
    client: &deadpool_postgres::Object,
    tenant_id: Option<&TenantId>,
    now: Timestamp,
    cap: usize,
    planner: &dyn Planner,
) -> Result<(DrainPlan, SendingFacts), StoreError> {
    let lanes: Vec<LaneState> = all(client, sql::LANES, &[], rows::lane_state)
        .await?
        .into_iter()
        .filter(|state| tenant_id.is_none_or(|tenant| &state.lane.tenant_id == tenant))
        .collect();
    let plan = planner.plan(&lanes);
    let (due, truncated) = due_in(client, &lanes, now, cap).await?;
    let limited: Vec<TenantId> = plan.limited.iter().map(|l| l.tenant_id.clone()).collect();
    let usage = ledger::tenant_usage(client, &plan, &limited).await?;
    let candidates: Vec<Candidate> = due.iter().map(|d| d.candidate.clone()).collect();
    let recipients =
        ledger::recipient_usage(client, &plan, &plan.recipients_to_ask(&candidates)).await?;
    let mut next_release_at = std::collections::HashMap::new();
    for limited in plan.limited.iter().filter(|l| l.needs.recipients) {
        if let Some(at) = ledger::next_release(client, &plan, &limited.tenant_id).await? {
            next_release_at.insert(limited.tenant_id.clone(), at);
        }
    }
    let facts = SendingFacts {
        lanes,
        due,
        truncated,
        usage,
        recipients,
        next_release_at,
    };
    Ok((plan, facts))
}

/// The due follow-ups of `lanes`, each tenant's oldest first and at most `cap` of them,
/// with the tenants that had more.
async fn due_in(
    client: &deadpool_postgres::Object,
    lanes: &[LaneState],
    now: Timestamp,
    cap: usize,
) -> Result<(Vec<DueEntry>, Vec<TenantId>), StoreError> {
    if lanes.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let tenants: Vec<&str> = lanes.iter().map(|l| l.lane.tenant_id.as_str()).collect();
    let campaigns: Vec<Uuid> = lanes
        .iter()
        .map(|l| l.lane.campaign_id.map_or(Uuid::nil(), |id| id.as_uuid()))
        .collect();
    let zones: Vec<&str> = lanes
        .iter()
        .map(|l| l.lane.time_zone.as_deref().unwrap_or(""))
        .collect();
    // One more than the cap of each lane tells a tenant that had more.
    let per_lane = i64::try_from(cap.saturating_add(1)).unwrap_or(i64::MAX);
    let params: [&(dyn ToSql + Sync); 5] =
        [&tenants, &campaigns, &zones, &now.as_datetime(), &per_lane];
    let mut by_tenant: BTreeMap<TenantId, Vec<(OffsetDateTime, DueEntry)>> = BTreeMap::new();
    for row in query_rows(client, sql::DUE_IN_LANES, &params).await? {
        let tenant: String = row.try_get("tenant_id").map_err(unavailable)?;
        let tenant_id = TenantId::parse(tenant).ok_or_else(|| unavailable("an empty tenant"))?;
        let campaign: Uuid = row.try_get("campaign").map_err(unavailable)?;
        let zone: String = row.try_get("zone").map_err(unavailable)?;
        let schedule_at: OffsetDateTime = row.try_get("schedule_at").map_err(unavailable)?;
        let entry = DueEntry {
            lane: Lane {
                tenant_id: tenant_id.clone(),
                campaign_id: (!campaign.is_nil()).then(|| CampaignId::new(campaign)),
                time_zone: (!zone.is_empty()).then_some(zone),
            },
            candidate: Candidate {
                followup_id: FollowUpId::new(row.try_get("followup_id").map_err(unavailable)?),
                tenant_id: tenant_id.clone(),
                schedule_at: Timestamp::from_datetime(schedule_at),
                sender: row.try_get("sender").map_err(unavailable)?,
                phone_e164: row.try_get("phone_e164").map_err(unavailable)?,
            },
        };
        by_tenant
            .entry(tenant_id)
            .or_default()
            .push((schedule_at, entry));
    }
    let mut entries = Vec::new();
    let mut truncated = Vec::new();
    for (tenant_id, mut due) in by_tenant {
        due.sort_by_key(|(at, entry)| (*at, entry.candidate.followup_id));
        if due.len() > cap {
            due.truncate(cap);
            truncated.push(tenant_id);
        }
        entries.extend(due.into_iter().map(|(_, entry)| entry));
    }
    Ok((entries, truncated))
}
