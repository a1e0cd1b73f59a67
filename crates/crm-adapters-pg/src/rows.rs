//! Rows to domain records. A row that does not map is reported, never guessed at.

use crm_domain::campaign::Campaign;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, CorrelationId, FollowUpId, TenantId};
use crm_domain::timestamp::Timestamp;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

/// A stored row the domain cannot represent: a bug or a hand edit, not a client error.
#[derive(Debug, thiserror::Error)]
#[error("row of {table} does not map to a record: {detail}")]
pub struct RowError {
    table: &'static str,
    detail: String,
}

fn bad(table: &'static str, detail: impl ToString) -> RowError {
    RowError {
        table,
        detail: detail.to_string(),
    }
}

fn timestamp(row: &Row, column: &str, table: &'static str) -> Result<Timestamp, RowError> {
    let instant: OffsetDateTime = row.try_get(column).map_err(|e| bad(table, e))?;
    Ok(Timestamp::from_datetime(instant))
}

fn metadata(row: &Row, table: &'static str) -> Result<Map<String, Value>, RowError> {
    match row
        .try_get::<_, Value>("metadata_json")
        .map_err(|e| bad(table, e))?
    {
        Value::Object(map) => Ok(map),
        other => Err(bad(
            table,
            format!("metadata_json is {other}, not an object"),
        )),
    }
}

fn tenant(row: &Row, table: &'static str) -> Result<TenantId, RowError> {
    let text: String = row.try_get("tenant_id").map_err(|e| bad(table, e))?;
    TenantId::parse(text).ok_or_else(|| bad(table, "empty tenant_id"))
}

pub fn campaign(row: &Row) -> Result<Campaign, RowError> {
    const TABLE: &str = "crm_campaigns";
    let get_err = |e: tokio_postgres::Error| bad(TABLE, e);
    let state: String = row.try_get("state").map_err(get_err)?;
    let scheduled_at: Option<OffsetDateTime> = row.try_get("scheduled_at").map_err(get_err)?;
    let revision: i64 = row.try_get("revision").map_err(get_err)?;
    Ok(Campaign {
        campaign_id: CampaignId::new(row.try_get("campaign_id").map_err(get_err)?),
        tenant_id: tenant(row, TABLE)?,
        external_key: row.try_get("external_key").map_err(get_err)?,
        name: row.try_get("name").map_err(get_err)?,
        channel: row.try_get("channel").map_err(get_err)?,
        audience_segment: row.try_get("audience_segment").map_err(get_err)?,
        state: state.parse().map_err(|e| bad(TABLE, e))?,
        scheduled_at: scheduled_at.map(Timestamp::from_datetime),
        metadata: metadata(row, TABLE)?,
        created_at: timestamp(row, "created_at", TABLE)?,
        updated_at: timestamp(row, "updated_at", TABLE)?,
        revision: u64::try_from(revision).map_err(|e| bad(TABLE, e))?,
    })
}

pub fn follow_up(row: &Row) -> Result<FollowUp, RowError> {
    const TABLE: &str = "crm_followups";
    let get_err = |e: tokio_postgres::Error| bad(TABLE, e);
    let status: String = row.try_get("status").map_err(get_err)?;
    let campaign_id: Option<Uuid> = row.try_get("campaign_id").map_err(get_err)?;
    Ok(FollowUp {
        followup_id: FollowUpId::new(row.try_get("followup_id").map_err(get_err)?),
        tenant_id: tenant(row, TABLE)?,
        campaign_id: campaign_id.map(CampaignId::new),
        external_key: row.try_get("external_key").map_err(get_err)?,
        lead_id: row.try_get("lead_id").map_err(get_err)?,
        customer_id: row.try_get("customer_id").map_err(get_err)?,
        phone_e164: row.try_get("phone_e164").map_err(get_err)?,
        message: row.try_get("message").map_err(get_err)?,
        schedule_at: timestamp(row, "schedule_at", TABLE)?,
        channel: row.try_get("channel").map_err(get_err)?,
        status: status.parse().map_err(|e| bad(TABLE, e))?,
        provider_message_id: row.try_get("provider_message_id").map_err(get_err)?,
        last_error_code: row.try_get("last_error_code").map_err(get_err)?,
        last_error_message: row.try_get("last_error_message").map_err(get_err)?,
        metadata: metadata(row, TABLE)?,
        correlation_id: CorrelationId::new(row.try_get("correlation_id").map_err(get_err)?),
        trace_id: row.try_get("trace_id").map_err(get_err)?,
        created_at: timestamp(row, "created_at", TABLE)?,
        updated_at: timestamp(row, "updated_at", TABLE)?,
    })
}
