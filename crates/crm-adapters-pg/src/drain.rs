//! The drain: claim a batch of due follow-ups, let the dispatcher decide each, and write
//! the decisions, all in one transaction.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so concurrent drains in any number of
//! processes never share a follow-up. It runs on a connection it is given and bounds
//! nothing itself: `FollowUpStore::drain` (in `follow_ups.rs`) runs it inside
//! `PgStore::call`. What to send is the dispatcher's to decide, never this file's.

use std::collections::HashMap;

use crm_domain::campaign::CampaignStats;
use crm_domain::ids::{CampaignId, TenantId};
use crm_domain::timestamp::Timestamp;
use crm_ports::drain::stats_changes;
use crm_ports::{DispatchDecision, Dispatcher, DrainOutcome, DueFollowUp, StoreError};
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::read::fetch_limit;
use crate::rows;
use crate::sql;
use crate::statement::{all, changed_rows_of, prepared, query_rows};
use crate::store::unavailable;
use crate::write::{EventColumns, add_stats};

/// How many times a batch a claim looks at, so that concurrent drains skipping each
/// other's locked rows still fill their batches.
const CLAIM_DEPTH: i64 = 4;

/// Claims up to `limit` follow-ups due at `now` on `client`, has `dispatcher` decide each,
/// and writes the decisions, committed with the claim or not at all.
pub(crate) async fn drain_due(
    client: &mut deadpool_postgres::Object,
    now: Timestamp,
    limit: usize,
    dispatcher: &dyn Dispatcher,
) -> Result<Vec<DrainOutcome>, StoreError> {
    let batch = fetch_limit(limit).saturating_sub(1);
    // Deep enough that a few drains running at once each fill their batch.
    let depth = batch.saturating_mul(CLAIM_DEPTH);
    let transaction = client.transaction().await.map_err(unavailable)?;
    let lanes = all(&transaction, sql::LANES, &[], rows::lane_state).await?;
    let plan = dispatcher.plan(&lanes);
    // Paced tenants this drain holds: each takes from a tenant's window after the
    // one before it committed. One held by another drain gets nothing from this
    // one (waiting would make every drain queue behind the paced tenants).
    let mut paced: Vec<&str> = Vec::new();
    if !plan.paced.is_empty() {
        let tenants: Vec<&str> = plan.paced.iter().map(|(t, _)| t.as_str()).collect();
        let held = transaction
            .query(sql::TRY_LOCK_TENANTS, &[&tenants])
            .await
            .map_err(unavailable)?
            .iter()
            .map(|row| row.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unavailable)?;
        paced = tenants
            .into_iter()
            .filter(|t| held.iter().any(|h| h == t))
            .collect();
    }
    let mut used = HashMap::new();
    if !paced.is_empty() {
        let window_start = plan.window_start.map(|at| at.as_datetime());
        for row in transaction
            .query(sql::SENT_SINCE, &[&paced, &window_start])
            .await
            .map_err(unavailable)?
        {
            let tenant: String = row.try_get(0).map_err(unavailable)?;
            let sent: i64 = row.try_get(1).map_err(unavailable)?;
            used.insert(
                TenantId::parse(tenant).ok_or_else(|| unavailable("an empty tenant"))?,
                u64::try_from(sent).unwrap_or(0),
            );
        }
    }
    let mut caps = plan.caps(&used);
    for (tenant, cap) in caps.iter_mut() {
        if !paced.contains(&tenant.as_str()) {
            *cap = 0;
        }
    }
    let lane_tenants: Vec<&str> = plan.open.iter().map(|l| l.tenant_id.as_str()).collect();
    let lane_campaigns: Vec<Uuid> = plan
        .open
        .iter()
        .map(|l| l.campaign_id.map_or(Uuid::nil(), |id| id.as_uuid()))
        .collect();
    let lane_zones: Vec<&str> = plan
        .open
        .iter()
        .map(|l| l.time_zone.as_deref().unwrap_or(""))
        .collect();
    let cap_tenants: Vec<&str> = caps.keys().map(TenantId::as_str).collect();
    let cap_counts: Vec<i64> = caps
        .values()
        .map(|cap| i64::try_from(*cap).unwrap_or(i64::MAX))
        .collect();
    let claim: [&(dyn ToSql + Sync); 8] = [
        &lane_tenants,
        &lane_campaigns,
        &lane_zones,
        &cap_tenants,
        &cap_counts,
        &now.as_datetime(),
        &depth,
        &batch,
    ];
    let locked: Vec<Uuid> = query_rows(&transaction, sql::CLAIM_DUE, &claim)
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()
        .map_err(unavailable)?;
    let claimed = if locked.is_empty() {
        Vec::new()
    } else {
        query_rows(&transaction, sql::CLAIMED, &[&locked]).await?
    };
    let mut outcomes = Vec::with_capacity(claimed.len());
    let mut decided = Decided::default();
    let mut claims: HashMap<&str, i32> = HashMap::new();
    for row in &claimed {
        let campaign_state: Option<String> = row.try_get("campaign_state").map_err(unavailable)?;
        let due = DueFollowUp {
            follow_up: rows::follow_up(row).map_err(unavailable)?,
            campaign_state: campaign_state
                .map(|state| state.parse())
                .transpose()
                .map_err(unavailable)?,
            recipient_opted_out: row.try_get("recipient_opted_out").map_err(unavailable)?,
        };
        let decision = dispatcher.decide(&due);
        // A paced tenant's window counts what is sent.
        if let DispatchDecision::Send { .. } = decision
            && let Some(tenant) = paced
                .iter()
                .find(|t| **t == due.follow_up.tenant_id.as_str())
        {
            *claims.entry(tenant).or_default() += 1;
        }
        outcomes.push(decided.add(&due, decision)?);
    }
    // The whole batch is a few statements, committed with the claim or not at all,
    // sent together (one round trip) and run by the server in the order written:
    // prepared beforehand, each goes out when first polled, and a biased
    // `try_join!` polls them in order. Every writer takes the event lock before it
    // moves a campaign's counts, so none waits on the other in turn.
    if !decided.ids.is_empty() {
        for query in [
            sql::RECORD_OUTCOMES,
            sql::ENQUEUE_OUTBOUND,
            sql::INSERT_EVENTS,
            sql::ADD_STATS,
        ] {
            prepared(&transaction, query).await?;
        }
        let outcome_params = decided.outcome_params();
        let outbound_params = decided.outbound_params();
        let event_params = decided.events.params();
        tokio::try_join!(
            biased;
            changed_rows_of(&transaction, sql::RECORD_OUTCOMES, &outcome_params),
            changed_rows_of(&transaction, sql::ENQUEUE_OUTBOUND, &outbound_params),
            changed_rows_of(&transaction, sql::INSERT_EVENTS, &event_params),
            add_stats(&transaction, &decided.stats),
        )?;
    }
    if !claims.is_empty() {
        let tenants: Vec<&str> = claims.keys().copied().collect();
        let counts: Vec<i32> = claims.values().copied().collect();
        let at = vec![now.as_datetime(); tenants.len()];
        let forget_before = plan.window_start.unwrap_or(now).as_datetime();
        changed_rows_of(
            &transaction,
            sql::RECORD_SENDS,
            &[&tenants, &at, &counts, &forget_before],
        )
        .await?;
    }
    transaction.commit().await.map_err(unavailable)?;
    Ok(outcomes)
}

/// A drain batch's decisions as the parallel arrays of its three write statements.
#[derive(Default)]
struct Decided {
    ids: Vec<Uuid>,
    statuses: Vec<&'static str>,
    provider_message_ids: Vec<Option<String>>,
    error_codes: Vec<Option<String>>,
    error_messages: Vec<Option<String>>,
    updated_at: Vec<OffsetDateTime>,
    events: EventColumns,
    item_ids: Vec<Uuid>,
    item_tenants: Vec<String>,
    item_keys: Vec<String>,
    items: Vec<serde_json::Value>,
    item_created_at: Vec<OffsetDateTime>,
    item_follow_ups: Vec<Uuid>,
    item_max_attempts: Vec<i32>,
    item_backoffs: Vec<i32>,
    /// How the decided follow-ups move their campaigns' counts.
    stats: Vec<(CampaignId, CampaignStats)>,
}

impl Decided {
    /// Adds a decision about `due`; returns what the drain reports for it.
    fn add(
        &mut self,
        due: &DueFollowUp,
        decision: DispatchDecision,
    ) -> Result<DrainOutcome, StoreError> {
        let followup_id = due.follow_up.followup_id;
        let outcome = decision.outcome(followup_id);
        let (follow_up, item, events) = match decision {
            DispatchDecision::Send {
                follow_up,
                item,
                events,
            } => (follow_up, Some(item), events),
            DispatchDecision::Fail { follow_up, events } => (follow_up, None, events),
            DispatchDecision::Skip { .. } => return Ok(outcome),
        };
        self.stats
            .extend(stats_changes([(Some(&due.follow_up), &*follow_up)]));
        self.ids.push(followup_id.as_uuid());
        self.statuses.push(follow_up.status.as_str());
        self.provider_message_ids
            .push(follow_up.provider_message_id.clone());
        self.error_codes.push(follow_up.last_error_code.clone());
        self.error_messages
            .push(follow_up.last_error_message.clone());
        self.updated_at.push(follow_up.updated_at.as_datetime());
        self.events.extend(&events)?;
        if let Some(item) = item {
            self.item_ids.push(item.queue_item_id.as_uuid());
            self.item_tenants.push(item.tenant_id.as_str().to_owned());
            self.item_keys.push(item.idempotency_key.clone());
            self.items
                .push(serde_json::to_value(&*item).map_err(unavailable)?);
            self.item_created_at.push(item.created_at.as_datetime());
            self.item_follow_ups.push(followup_id.as_uuid());
            let policy = item.retry_policy;
            self.item_max_attempts
                .push(i32::try_from(policy.max_attempts).map_err(unavailable)?);
            self.item_backoffs
                .push(i32::try_from(policy.backoff_ms).map_err(unavailable)?);
        }
        Ok(outcome)
    }

    fn outcome_params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.ids,
            &self.statuses,
            &self.provider_message_ids,
            &self.error_codes,
            &self.error_messages,
            &self.updated_at,
        ]
    }

    fn outbound_params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.item_ids,
            &self.item_tenants,
            &self.item_keys,
            &self.items,
            &self.item_created_at,
            &self.item_follow_ups,
            &self.item_max_attempts,
            &self.item_backoffs,
        ]
    }
}
