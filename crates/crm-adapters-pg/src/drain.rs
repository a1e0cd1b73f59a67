//! The drain: claim a batch of due follow-ups, let the dispatcher decide each, and write
//! the decisions, all in one transaction.
//!
//! Rows are claimed with `FOR UPDATE SKIP LOCKED`, so concurrent drains in any number of
//! processes never share a follow-up. It runs on a connection it is given and bounds
//! nothing itself: `FollowUpStore::drain` (in `follow_ups.rs`) runs it inside
//! `PgStore::call`. What to send is the dispatcher's to decide, never this file's.

use std::collections::HashMap;

use crm_domain::campaign::CampaignStats;
use crm_domain::ids::{CampaignId, FollowUpId, TenantId};
use crm_domain::timestamp::Timestamp;
use crm_ports::drain::stats_changes;
use crm_ports::{
    Candidate, DispatchDecision, Dispatcher, DrainOutcome, DrainPlan, DueFollowUp, StoreError,
};
use time::OffsetDateTime;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::ledger;
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
    // Deep enough that a few drains running at once, and the follow-ups the limits hold,
    // still leave each drain a batch to fill.
    let depth = batch.saturating_mul(CLAIM_DEPTH);
    let transaction = client.transaction().await.map_err(unavailable)?;
    let lanes = all(&transaction, sql::LANES, &[], rows::lane_state).await?;
    let plan = dispatcher.plan(&lanes);
    // Limited tenants this drain holds: each is claimed from after the drain before it
    // committed, so the ledger holds every send. One held by another drain gets nothing
    // from this one (waiting would make every drain queue behind the limited tenants).
    let held = try_lock(&transaction, &plan).await?;
    let usage = ledger::tenant_usage(&transaction, &plan, &held).await?;
    let caps = plan.caps(&usage, usize::try_from(batch).unwrap_or(usize::MAX));
    let mut candidates = candidates(&transaction, &plan, &caps, now, depth).await?;
    let mut recipients =
        ledger::recipient_usage(&transaction, &plan, &plan.recipients_to_ask(&candidates)).await?;
    // Somewhat more than the batch: rows another drain holds are skipped at the lock.
    let take_limit = usize::try_from(depth).unwrap_or(usize::MAX);
    let mut take = plan.take(candidates.clone(), &usage, &recipients, &caps, take_limit);
    if let Some((deep, each)) = take.look_deeper {
        candidates.retain(|c| !deep.contains(&c.tenant_id));
        candidates.extend(deep_candidates(&transaction, &plan, &deep, each, now).await?);
        let mut unasked = plan.recipients_to_ask(&candidates);
        unasked.retain(|key| !recipients.contains_key(key));
        recipients.extend(ledger::recipient_usage(&transaction, &plan, &unasked).await?);
        take = plan.take(candidates, &usage, &recipients, &caps, take_limit);
    }
    let admitted: Vec<Uuid> = take
        .claim
        .into_iter()
        .map(|candidate| candidate.followup_id.as_uuid())
        .collect();
    let locked: Vec<Uuid> = if admitted.is_empty() {
        Vec::new()
    } else {
        query_rows(&transaction, sql::LOCK_CLAIMED, &[&admitted, &batch])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(unavailable)?
    };
    let claimed = if locked.is_empty() {
        Vec::new()
    } else {
        query_rows(&transaction, sql::CLAIMED, &[&locked]).await?
    };
    let mut outcomes = Vec::with_capacity(claimed.len());
    let mut decided = Decided::default();
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
        outcomes.push(decided.add(&due, decision)?);
    }
    // The whole batch is a few statements, committed with the claim or not at all,
    // sent together (one round trip) and run by the server in the order written:
    // prepared beforehand, each goes out when first polled, and a biased
    // `try_join!` polls them in order. Every writer takes the event lock before it
    // moves a campaign's counts or a budget, so none waits on the other in turn.
    if !decided.ids.is_empty() {
        for query in [
            sql::RECORD_OUTCOMES,
            sql::ENQUEUE_OUTBOUND,
            sql::INSERT_EVENTS,
            sql::ADD_STATS,
            sql::SETTLE_BUDGETS,
            sql::RECORD_SENDS,
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
            ledger::record(&transaction, &plan, &held, &decided.sends),
        )?;
    }
    transaction.commit().await.map_err(unavailable)?;
    Ok(outcomes)
}

/// Takes the lock of each limited tenant no other drain holds; returns those.
async fn try_lock(
    transaction: &deadpool_postgres::Transaction<'_>,
    plan: &DrainPlan,
) -> Result<Vec<TenantId>, StoreError> {
    if plan.limited.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = plan.limited.iter().map(|l| l.tenant_id.as_str()).collect();
    query_rows(transaction, sql::TRY_LOCK_TENANTS, &[&tenants])
        .await?
        .iter()
        .map(|row| {
            let tenant: String = row.try_get(0).map_err(unavailable)?;
            TenantId::parse(tenant).ok_or_else(|| unavailable("an empty tenant"))
        })
        .collect()
}

/// The candidates of the `deep` tenants at `now`: the oldest `each` of every one.
async fn deep_candidates(
    transaction: &deadpool_postgres::Transaction<'_>,
    plan: &DrainPlan,
    deep: &[TenantId],
    each: usize,
    now: Timestamp,
) -> Result<Vec<Candidate>, StoreError> {
    let lanes = plan.lanes_of(deep);
    if lanes.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = lanes.iter().map(|l| l.tenant_id.as_str()).collect();
    let campaigns: Vec<Uuid> = lanes
        .iter()
        .map(|l| l.campaign_id.map_or(Uuid::nil(), |id| id.as_uuid()))
        .collect();
    let zones: Vec<&str> = lanes
        .iter()
        .map(|l| l.time_zone.as_deref().unwrap_or(""))
        .collect();
    let per_lane = i64::try_from(each).unwrap_or(i64::MAX);
    let params: [&(dyn ToSql + Sync); 5] =
        [&tenants, &campaigns, &zones, &now.as_datetime(), &per_lane];
    let mut found: Vec<Candidate> = query_rows(transaction, sql::DEEP_CANDIDATES, &params)
        .await?
        .iter()
        .map(candidate)
        .collect::<Result<_, _>>()?;
    // Each tenant's oldest `each`, over all its lanes.
    found.sort_by(|a, b| {
        (&a.tenant_id, a.schedule_at, a.followup_id).cmp(&(
            &b.tenant_id,
            b.schedule_at,
            b.followup_id,
        ))
    });
    let mut kept: HashMap<TenantId, usize> = HashMap::new();
    found.retain(|c| {
        let seen = kept.entry(c.tenant_id.clone()).or_default();
        *seen += 1;
        *seen <= each
    });
    Ok(found)
}

/// A candidate from its row.
fn candidate(row: &tokio_postgres::Row) -> Result<Candidate, StoreError> {
    let tenant: String = row.try_get("tenant_id").map_err(unavailable)?;
    let schedule_at: OffsetDateTime = row.try_get("schedule_at").map_err(unavailable)?;
    Ok(Candidate {
        followup_id: FollowUpId::new(row.try_get("followup_id").map_err(unavailable)?),
        tenant_id: TenantId::parse(tenant).ok_or_else(|| unavailable("an empty tenant"))?,
        schedule_at: Timestamp::from_datetime(schedule_at),
        sender: row.try_get("sender").map_err(unavailable)?,
        phone_e164: row.try_get("phone_e164").map_err(unavailable)?,
    })
}

/// The plan's candidates at `now`, tenants in turn within `caps`, at most `depth`.
async fn candidates(
    transaction: &deadpool_postgres::Transaction<'_>,
    plan: &DrainPlan,
    caps: &HashMap<TenantId, usize>,
    now: Timestamp,
    depth: i64,
) -> Result<Vec<Candidate>, StoreError> {
    if plan.open.is_empty() {
        return Ok(Vec::new());
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
    let params: [&(dyn ToSql + Sync); 7] = [
        &lane_tenants,
        &lane_campaigns,
        &lane_zones,
        &cap_tenants,
        &cap_counts,
        &now.as_datetime(),
        &depth,
    ];
    query_rows(transaction, sql::CANDIDATES, &params)
        .await?
        .iter()
        .map(candidate)
        .collect()
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
    item_senders: Vec<Option<String>>,
    sent_at: Vec<Option<OffsetDateTime>>,
    /// How the decided follow-ups move their campaigns' counts.
    stats: Vec<(CampaignId, CampaignStats)>,
    /// The ledger's entries of the follow-ups marked sent.
    sends: Vec<ledger::Send>,
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
        self.sent_at
            .push(follow_up.sent_at.map(|at| at.as_datetime()));
        if let Some(sent_at) = follow_up.sent_at {
            self.sends.push(ledger::Send {
                tenant_id: follow_up.tenant_id.as_str().to_owned(),
                sender: follow_up.sender.clone(),
                phone_e164: follow_up.phone_e164.clone(),
                sent_at: sent_at.as_datetime(),
                followup_id: followup_id.as_uuid(),
            });
        }
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
            self.item_senders.push(follow_up.sender.clone());
        }
        Ok(outcome)
    }

    fn outcome_params(&self) -> [&(dyn ToSql + Sync); 7] {
        [
            &self.ids,
            &self.statuses,
            &self.provider_message_ids,
            &self.error_codes,
            &self.error_messages,
            &self.updated_at,
            &self.sent_at,
        ]
    }

    fn outbound_params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.item_ids,
            &self.item_tenants,
            &self.item_keys,
            &self.items,
            &self.item_created_at,
            &self.item_follow_ups,
            &self.item_max_attempts,
            &self.item_backoffs,
            &self.item_senders,
        ]
    }
}
