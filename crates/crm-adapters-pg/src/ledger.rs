//! The ledger of sends in PostgreSQL: what a drain appends (`crm_send_ledger`, one row per
//! follow-up marked sent), the running counts of each tenant's distinct recipients of the
//! day (`crm_send_budgets`) and of its sends in the rate window per sender
//! (`crm_send_windows`, `crm_send_rates`), and the answers `crm_ports::drain` asks of them.
//!
//! Every question is an index range bounded by a window or by the recipients asked
//! about: no answer reads the day's sends one by one. Budgets are written only after the
//! event lock (see `sql::RECORD_SENDS`, `sql::SETTLE_BUDGETS`), like campaign counts, so
//! writers never wait on each other in turn; rates likewise (`sql::SETTLE_RATES`). What the answers allow is the domain's.

use std::collections::HashMap;

use crm_domain::ids::TenantId;
use crm_domain::limits::LEDGER_RETENTION_MILLIS;
use crm_domain::timestamp::Timestamp;
use crm_ports::{DrainPlan, RecipientUsage, StoreError, TenantUsage};
use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::sql;
use crate::statement::{changed_rows_of, query_rows};
use crate::store::unavailable;

/// The ledger's answers for the limited tenants of `plan` among `held` (the ones this
/// transaction holds).
pub(crate) async fn tenant_usage(
    client: &impl GenericClient,
    plan: &DrainPlan,
    held: &[TenantId],
) -> Result<HashMap<TenantId, TenantUsage>, StoreError> {
    let mut usage: HashMap<TenantId, TenantUsage> = held
        .iter()
        .map(|tenant| (tenant.clone(), TenantUsage::default()))
        .collect();
    let asking = |need: fn(&crm_ports::Limited) -> bool| -> Vec<&str> {
        plan.limited
            .iter()
            .filter(|l| held.contains(&l.tenant_id) && need(l))
            .map(|l| l.tenant_id.as_str())
            .collect()
    };
    let (_, horizon) = budget_bounds(plan);
    let sends = asking(|l| l.needs.sends);
    if !sends.is_empty() {
        let since = plan.windows.rate_start.as_datetime();
        for row in query_rows(client, sql::TENANT_SENDS, &[&sends, &since, &horizon]).await? {
            let tenant = tenant_of(row.try_get(0).map_err(unavailable)?)?;
            let sender: Option<String> = row.try_get(1).map_err(unavailable)?;
            let count = count_of(row.try_get(2).map_err(unavailable)?);
            let answer = usage.entry(tenant).or_default();
            answer.sends += count;
            *answer.sender_sends.entry(sender).or_default() += count;
        }
    }
    let budgets = asking(|l| l.needs.recipients);
    if !budgets.is_empty() {
        let day_start = plan.windows.day_start.as_datetime();
        for row in query_rows(client, sql::BUDGETS, &[&budgets, &day_start, &horizon]).await? {
            let tenant = tenant_of(row.try_get(0).map_err(unavailable)?)?;
            usage.entry(tenant).or_default().recipients =
                count_of(row.try_get(1).map_err(unavailable)?);
        }
    }
    Ok(usage)
}

/// The ledger's history of each of `asked` within the day of `plan`.
pub(crate) async fn recipient_usage(
    client: &impl GenericClient,
    plan: &DrainPlan,
    asked: &[(TenantId, String)],
) -> Result<HashMap<(TenantId, String), RecipientUsage>, StoreError> {
    if asked.is_empty() {
        return Ok(HashMap::new());
    }
    let tenants: Vec<&str> = asked.iter().map(|(tenant, _)| tenant.as_str()).collect();
    let phones: Vec<&str> = asked.iter().map(|(_, phone)| phone.as_str()).collect();
    let since = plan.windows.day_start.as_datetime();
    let mut usage = HashMap::new();
    for row in query_rows(client, sql::RECIPIENT_SENDS, &[&tenants, &phones, &since]).await? {
        let tenant = tenant_of(row.try_get(0).map_err(unavailable)?)?;
        let phone: String = row.try_get(1).map_err(unavailable)?;
        let last: OffsetDateTime = row.try_get(2).map_err(unavailable)?;
        let count = count_of(row.try_get(3).map_err(unavailable)?);
        usage.insert(
            (tenant, phone),
            RecipientUsage {
                last_sent_at: Some(Timestamp::from_datetime(last)),
                sends: count,
            },
        );
    }
    Ok(usage)
}

/// When the first recipient counted in `tenant_id`'s day stops counting.
pub(crate) async fn next_release(
    client: &impl GenericClient,
    plan: &DrainPlan,
    tenant_id: &TenantId,
) -> Result<Option<Timestamp>, StoreError> {
    let since = plan.windows.day_start.as_datetime();
    let rows = query_rows(client, sql::NEXT_RELEASE, &[&tenant_id.as_str(), &since]).await?;
    let earliest: Option<OffsetDateTime> = match rows.first() {
        Some(row) => row.try_get(0).map_err(unavailable)?,
        None => None,
    };
    Ok(earliest.map(|at| {
        Timestamp::from_datetime(at + time::Duration::milliseconds(crm_domain::limits::DAY_MILLIS))
    }))
}

/// One send, as the ledger records it.
pub(crate) struct Send {
    pub tenant_id: String,
    pub sender: Option<String>,
    pub phone_e164: String,
    pub sent_at: OffsetDateTime,
    pub followup_id: Uuid,
}

/// Records `sends` and settles the budgets of the plan's tenants that need one, inside
/// `transaction`, after its event lock.
pub(crate) async fn record(
    transaction: &deadpool_postgres::Transaction<'_>,
    plan: &DrainPlan,
    held: &[TenantId],
    sends: &[Send],
) -> Result<(), StoreError> {
    let held_needing = |need: fn(&crm_ports::Limited) -> bool| -> Vec<&str> {
        plan.limited
            .iter()
            .filter(|l| need(l) && held.contains(&l.tenant_id))
            .map(|l| l.tenant_id.as_str())
            .collect()
    };
    // Settled first, so that the sends below count against today's cutoff and this
    // second's window.
    let (day_start, horizon) = budget_bounds(plan);
    let budgets = held_needing(|l| l.needs.recipients);
    if !budgets.is_empty() {
        changed_rows_of(
            transaction,
            sql::SETTLE_BUDGETS,
            &[&budgets, &day_start, &horizon],
        )
        .await?;
    }
    let rates = held_needing(|l| l.needs.sends);
    if !rates.is_empty() {
        let since = plan.windows.rate_start.as_datetime();
        changed_rows_of(transaction, sql::SETTLE_RATES, &[&rates, &since, &horizon]).await?;
    }
    if sends.is_empty() {
        return Ok(());
    }
    let tenants: Vec<&str> = sends.iter().map(|s| s.tenant_id.as_str()).collect();
    let senders: Vec<Option<&str>> = sends.iter().map(|s| s.sender.as_deref()).collect();
    let phones: Vec<&str> = sends.iter().map(|s| s.phone_e164.as_str()).collect();
    let at: Vec<OffsetDateTime> = sends.iter().map(|s| s.sent_at).collect();
    let ids: Vec<Uuid> = sends.iter().map(|s| s.followup_id).collect();
    changed_rows_of(
        transaction,
        sql::RECORD_SENDS,
        &[&tenants, &senders, &phones, &at, &ids],
    )
    .await?;
    Ok(())
}

/// A day ago, and how far back the ledger still surely holds every send.
fn budget_bounds(plan: &DrainPlan) -> (OffsetDateTime, OffsetDateTime) {
    let now = plan.now.as_datetime();
    (
        plan.windows.day_start.as_datetime(),
        now - time::Duration::milliseconds(LEDGER_RETENTION_MILLIS),
    )
}

fn tenant_of(text: String) -> Result<TenantId, StoreError> {
    TenantId::parse(text).ok_or_else(|| unavailable("an empty tenant in the ledger"))
}

fn count_of(count: i64) -> u64 {
    u64::try_from(count).unwrap_or(0)
}
