//! Rows to domain records. A row that does not map is reported, never guessed at.

use crm_domain::campaign::{Campaign, CampaignStats};
use crm_domain::delivery::{
    AckStatus, Delivery, DeliveryStatus, LastAck, Lease, LeaseId, QueueEntry, QueueStatus,
    ReceiptTimes,
};
use crm_domain::failure_window::FinishedDelivery;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, CorrelationId, FollowUpId, QueueItemId, TenantId};
use crm_domain::opt_out::OptOut;
use crm_domain::outbound::OutboundItem;
use crm_domain::outbound::RetryPolicy;
use crm_domain::policy::{
    AutoPause, FailureRatio, PolicyError, QuietHours, SendingPolicy, TimeOfDay, TimeZoneName,
};
use crm_domain::timestamp::Timestamp;
use crm_ports::{Lane, LaneState};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::Json;
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
        time_zone: row.try_get("time_zone").map_err(get_err)?,
        sender: row.try_get("sender").map_err(get_err)?,
        sent_at: row
            .try_get::<_, Option<OffsetDateTime>>("sent_at")
            .map_err(get_err)?
            .map(Timestamp::from_datetime),
        delivery: row
            .try_get::<_, Option<Value>>("delivery")
            .map_err(get_err)?
            .map(|value| delivery_from_json(&value).map_err(|e| bad(TABLE, e)))
            .transpose()?,
        created_at: timestamp(row, "created_at", TABLE)?,
        updated_at: timestamp(row, "updated_at", TABLE)?,
    })
}

/// A follow-up's delivery as the `delivery` column holds it (the wire's shape).
pub fn delivery_json(delivery: &Delivery) -> Value {
    serde_json::json!({
        "status": delivery.status.as_str(),
        "attempts": delivery.attempts,
        "provider_message_id": delivery.provider_message_id,
        "error_code": delivery.error_code,
        "updated_at": delivery.updated_at,
        "delivered_at": delivery.receipts.delivered_at,
        "read_at": delivery.receipts.read_at,
        "failed_at": delivery.receipts.failed_at,
    })
}

fn delivery_from_json(value: &Value) -> Result<Delivery, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Stored {
        status: String,
        attempts: u32,
        provider_message_id: Option<String>,
        error_code: Option<String>,
        updated_at: Timestamp,
        // Absent from deliveries recorded before receipts existed.
        #[serde(default)]
        delivered_at: Option<Timestamp>,
        #[serde(default)]
        read_at: Option<Timestamp>,
        #[serde(default)]
        failed_at: Option<Timestamp>,
    }
    let stored: Stored =
        serde_json::from_value(value.clone()).map_err(|e| format!("delivery: {e}"))?;
    Ok(Delivery {
        status: DeliveryStatus::parse(&stored.status)
            .ok_or_else(|| format!("delivery status {:?} is unknown", stored.status))?,
        attempts: stored.attempts,
        provider_message_id: stored.provider_message_id,
        error_code: stored.error_code,
        updated_at: stored.updated_at,
        receipts: ReceiptTimes {
            delivered_at: stored.delivered_at,
            read_at: stored.read_at,
            failed_at: stored.failed_at,
        },
    })
}

/// A queue row: its number, its entry and the item as handed out.
/// The state of an outbound item (the columns of `queue_columns!`).
pub fn queue_entry(row: &Row) -> Result<QueueEntry, RowError> {
    const TABLE: &str = "crm_outbound_queue";
    let get_err = |e: tokio_postgres::Error| bad(TABLE, e);
    let status: String = row.try_get("status").map_err(get_err)?;
    let lease_id: Option<Uuid> = row.try_get("lease_id").map_err(get_err)?;
    let lease_expires_at: Option<OffsetDateTime> =
        row.try_get("lease_expires_at").map_err(get_err)?;
    let last_ack_lease: Option<Uuid> = row.try_get("last_ack_lease").map_err(get_err)?;
    let last_ack_status: Option<String> = row.try_get("last_ack_status").map_err(get_err)?;
    let available_at: Option<OffsetDateTime> = row.try_get("available_at").map_err(get_err)?;
    let finished_at: Option<OffsetDateTime> = row.try_get("finished_at").map_err(get_err)?;
    let count = |column: &str| -> Result<u32, RowError> {
        let value: i32 = row.try_get(column).map_err(get_err)?;
        u32::try_from(value).map_err(|e| bad(TABLE, e))
    };
    let entry = QueueEntry {
        queue_item_id: QueueItemId::new(row.try_get("queue_item_id").map_err(get_err)?),
        followup_id: FollowUpId::new(row.try_get("followup_id").map_err(get_err)?),
        tenant_id: tenant(row, TABLE)?,
        sender: row.try_get("sender").map_err(get_err)?,
        retry_policy: RetryPolicy {
            max_attempts: count("max_attempts")?,
            backoff_ms: count("backoff_ms")?,
        },
        status: QueueStatus::parse(&status)
            .ok_or_else(|| bad(TABLE, format!("status {status:?} is unknown")))?,
        attempt: count("attempt")?,
        available_at: available_at.map(Timestamp::from_datetime),
        lease: match (lease_id, lease_expires_at) {
            (Some(id), Some(expires_at)) => Some(Lease {
                lease_id: LeaseId(id),
                expires_at: Timestamp::from_datetime(expires_at),
            }),
            _ => None,
        },
        last_ack: match (last_ack_lease, last_ack_status) {
            (Some(id), Some(status)) => Some(LastAck {
                lease_id: LeaseId(id),
                status: AckStatus::parse(&status)
                    .ok_or_else(|| bad(TABLE, format!("ack status {status:?} is unknown")))?,
            }),
            _ => None,
        },
        enqueued_at: timestamp(row, "created_at", TABLE)?,
        finished_at: finished_at.map(Timestamp::from_datetime),
    };
    Ok(entry)
}

/// The item of an outbound row, read straight into its type.
pub fn queued_item(row: &Row) -> Result<OutboundItem, RowError> {
    let item: Json<OutboundItem> = row
        .try_get("item")
        .map_err(|e| bad("crm_outbound_queue", e))?;
    Ok(item.0)
}

pub fn opt_out(row: &Row) -> Result<OptOut, RowError> {
    const TABLE: &str = "crm_opt_outs";
    let get_err = |e: tokio_postgres::Error| bad(TABLE, e);
    Ok(OptOut {
        tenant_id: tenant(row, TABLE)?,
        phone_e164: row.try_get("phone_e164").map_err(get_err)?,
        reason: row.try_get("reason").map_err(get_err)?,
        created_at: timestamp(row, "created_at", TABLE)?,
    })
}

/// A sending policy from its columns (`sql::POLICY_COLUMNS`).
pub fn policy(row: &Row) -> Result<SendingPolicy, RowError> {
    const TABLE: &str = "crm_sending_policies";
    let get_err = |e: tokio_postgres::Error| bad(TABLE, e);
    let limit = |column: &str| -> Result<Option<u32>, RowError> {
        let value: Option<i32> = row.try_get(column).map_err(get_err)?;
        value
            .map(|value| u32::try_from(value).map_err(|e| bad(TABLE, e)))
            .transpose()
    };
    let start: Option<String> = row.try_get("quiet_start").map_err(get_err)?;
    let end: Option<String> = row.try_get("quiet_end").map_err(get_err)?;
    let zone: Option<String> = row.try_get("quiet_time_zone").map_err(get_err)?;
    let invalid = |e: PolicyError| bad(TABLE, e);
    let quiet_hours = match (start, end, zone) {
        (Some(start), Some(end), Some(zone)) => Some(
            QuietHours::new(
                TimeOfDay::parse(&start).map_err(invalid)?,
                TimeOfDay::parse(&end).map_err(invalid)?,
                TimeZoneName::parse(&zone).map_err(invalid)?,
            )
            .map_err(invalid)?,
        ),
        _ => None,
    };
    SendingPolicy {
        max_per_second: limit("max_per_second")?,
        quiet_hours,
        max_per_second_per_sender: limit("max_per_second_per_sender")?,
        daily_recipient_limit: limit("daily_recipient_limit")?,
        recipient_min_interval_ms: limit("recipient_min_interval_ms")?,
        recipient_daily_cap: limit("recipient_daily_cap")?,
        auto_pause: match (
            limit("auto_pause_window")?,
            limit("auto_pause_max_failure_ratio")?,
        ) {
            (Some(window), Some(ratio)) => Some(
                AutoPause::new(
                    window,
                    FailureRatio::from_millionths(ratio).map_err(invalid)?,
                )
                .map_err(invalid)?,
            ),
            _ => None,
        },
    }
    .checked()
    .map_err(invalid)
}

/// A lane of `sql::LANES`, with its campaign's state and its tenant's policy.
pub fn lane_state(row: &Row) -> Result<LaneState, RowError> {
    const TABLE: &str = "crm_followups";
    let get_err = |e: tokio_postgres::Error| bad(TABLE, e);
    let campaign: Uuid = row.try_get("campaign").map_err(get_err)?;
    let zone: String = row.try_get("zone").map_err(get_err)?;
    let campaign_state: Option<String> = row.try_get("campaign_state").map_err(get_err)?;
    let has_policy: bool = row.try_get("has_policy").map_err(get_err)?;
    Ok(LaneState {
        lane: Lane {
            tenant_id: tenant(row, TABLE)?,
            campaign_id: (!campaign.is_nil()).then(|| CampaignId::new(campaign)),
            time_zone: (!zone.is_empty()).then_some(zone),
        },
        campaign_state: campaign_state
            .map(|state| state.parse().map_err(|e| bad("crm_campaigns", e)))
            .transpose()?,
        policy: has_policy.then(|| policy(row)).transpose()?,
    })
}

/// A campaign's counts (the columns of `sql::CAMPAIGN_STATS`).
pub fn campaign_stats(row: &Row) -> Result<CampaignStats, RowError> {
    let get = |column: &str| -> Result<i64, RowError> {
        row.try_get(column)
            .map_err(|e: tokio_postgres::Error| bad("crm_campaign_stats", e))
    };
    Ok(CampaignStats {
        pending: get("pending")?,
        sent: get("sent")?,
        failed: get("failed")?,
        delivery_accepted: get("delivery_accepted")?,
        delivery_retrying: get("delivery_retrying")?,
        delivery_failed: get("delivery_failed")?,
        delivery_delivered: get("delivery_delivered")?,
        delivery_read: get("delivery_read")?,
    })
}

/// A row of `FINISHED_DELIVERIES`.
pub fn finished_delivery(row: &Row) -> Result<FinishedDelivery, RowError> {
    let get_err = |e: tokio_postgres::Error| bad("crm_followups", e);
    Ok(FinishedDelivery {
        followup_id: FollowUpId::new(row.try_get(0).map_err(get_err)?),
        failed: row.try_get(1).map_err(get_err)?,
    })
}
