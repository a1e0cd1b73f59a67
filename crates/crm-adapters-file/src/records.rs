//! The on-disk record format (version 2), owned by this store and independent of the
//! domain types: renaming a domain field cannot silently change what a data dir holds.
//!
//! Each record type borrows from the domain value when it is written and owns its data
//! when it is read; `TryFrom` back into the domain checks every field (an unknown state or
//! status is a damaged record, not a guess). A change to anything here is a new format
//! version, and the fixtures under `tests/fixtures` must still open.

use std::borrow::Cow;

use crm_domain::campaign::Campaign;
use crm_domain::delivery::{
    AckStatus, Delivery, DeliveryStatus, LastAck, Lease, LeaseId, QueueEntry, QueueStatus,
    ReceiptTimes,
};
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, CorrelationId, FollowUpId, QueueItemId, TenantId};
use crm_domain::opt_out::OptOut;
use crm_domain::outbound::RetryPolicy;
use crm_domain::policy::{
    AutoPause, FailureRatio, PolicyError, QuietHours, SendingPolicy, TimeOfDay, TimeZoneName,
};
use crm_domain::timestamp::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use uuid::Uuid;

/// The format version this code writes; the manifest and every journal name it.
pub(crate) const FORMAT: u32 = 2;

/// Why a record could not become a domain value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RecordError(pub String);

fn tenant(text: &str) -> Result<TenantId, RecordError> {
    TenantId::parse(text).ok_or_else(|| RecordError("tenant_id is empty".into()))
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CampaignRecord<'a> {
    pub campaign_id: Uuid,
    pub tenant_id: Cow<'a, str>,
    pub external_key: Option<Cow<'a, str>>,
    pub name: Cow<'a, str>,
    pub channel: Cow<'a, str>,
    pub audience_segment: Option<Cow<'a, str>>,
    pub state: Cow<'a, str>,
    pub scheduled_at: Option<Timestamp>,
    pub metadata: Cow<'a, Map<String, Value>>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub revision: u64,
}

impl<'a> From<&'a Campaign> for CampaignRecord<'a> {
    fn from(campaign: &'a Campaign) -> Self {
        Self {
            campaign_id: campaign.campaign_id.as_uuid(),
            tenant_id: Cow::Borrowed(campaign.tenant_id.as_str()),
            external_key: campaign.external_key.as_deref().map(Cow::Borrowed),
            name: Cow::Borrowed(&campaign.name),
            channel: Cow::Borrowed(&campaign.channel),
            audience_segment: campaign.audience_segment.as_deref().map(Cow::Borrowed),
            state: Cow::Borrowed(campaign.state.as_str()),
            scheduled_at: campaign.scheduled_at,
            metadata: Cow::Borrowed(&campaign.metadata),
            created_at: campaign.created_at,
            updated_at: campaign.updated_at,
            revision: campaign.revision,
        }
    }
}

impl TryFrom<CampaignRecord<'_>> for Campaign {
    type Error = RecordError;

    fn try_from(record: CampaignRecord<'_>) -> Result<Self, RecordError> {
        Ok(Campaign {
            campaign_id: CampaignId::new(record.campaign_id),
            tenant_id: tenant(&record.tenant_id)?,
            external_key: record.external_key.map(Cow::into_owned),
            name: record.name.into_owned(),
            channel: record.channel.into_owned(),
            audience_segment: record.audience_segment.map(Cow::into_owned),
            state: record
                .state
                .parse()
                .map_err(|e| RecordError(format!("state: {e}")))?,
            scheduled_at: record.scheduled_at,
            metadata: record.metadata.into_owned(),
            created_at: record.created_at,
            updated_at: record.updated_at,
            revision: record.revision,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FollowUpRecord<'a> {
    pub followup_id: Uuid,
    pub tenant_id: Cow<'a, str>,
    pub campaign_id: Option<Uuid>,
    pub external_key: Option<Cow<'a, str>>,
    pub lead_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub phone_e164: Cow<'a, str>,
    pub message: Cow<'a, str>,
    pub schedule_at: Timestamp,
    pub channel: Cow<'a, str>,
    pub status: Cow<'a, str>,
    pub provider_message_id: Option<Cow<'a, str>>,
    pub last_error_code: Option<Cow<'a, str>>,
    pub last_error_message: Option<Cow<'a, str>>,
    pub metadata: Cow<'a, Map<String, Value>>,
    pub correlation_id: Uuid,
    pub trace_id: Cow<'a, str>,
    pub time_zone: Option<Cow<'a, str>>,
    /// Absent in records written before follow-ups had senders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Cow<'a, str>>,
    /// When a drain handed it over; absent before the ledger of sends existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<Timestamp>,
    pub delivery: Option<DeliveryRecord<'a>>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What the sender reported about a follow-up.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeliveryRecord<'a> {
    pub status: Cow<'a, str>,
    pub attempts: u32,
    pub provider_message_id: Option<Cow<'a, str>>,
    pub error_code: Option<Cow<'a, str>>,
    pub updated_at: Timestamp,
    /// The times the provider's receipts reported; absent until one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<Timestamp>,
}

impl<'a> From<&'a Delivery> for DeliveryRecord<'a> {
    fn from(delivery: &'a Delivery) -> Self {
        Self {
            status: Cow::Borrowed(delivery.status.as_str()),
            attempts: delivery.attempts,
            provider_message_id: delivery.provider_message_id.as_deref().map(Cow::Borrowed),
            error_code: delivery.error_code.as_deref().map(Cow::Borrowed),
            updated_at: delivery.updated_at,
            delivered_at: delivery.receipts.delivered_at,
            read_at: delivery.receipts.read_at,
            failed_at: delivery.receipts.failed_at,
        }
    }
}

impl TryFrom<DeliveryRecord<'_>> for Delivery {
    type Error = RecordError;

    fn try_from(record: DeliveryRecord<'_>) -> Result<Self, RecordError> {
        Ok(Delivery {
            status: DeliveryStatus::parse(&record.status).ok_or_else(|| {
                RecordError(format!("delivery status {:?} is unknown", record.status))
            })?,
            attempts: record.attempts,
            provider_message_id: record.provider_message_id.map(Cow::into_owned),
            error_code: record.error_code.map(Cow::into_owned),
            updated_at: record.updated_at,
            receipts: ReceiptTimes {
                delivered_at: record.delivered_at,
                read_at: record.read_at,
                failed_at: record.failed_at,
            },
        })
    }
}

impl<'a> From<&'a FollowUp> for FollowUpRecord<'a> {
    fn from(follow_up: &'a FollowUp) -> Self {
        Self {
            followup_id: follow_up.followup_id.as_uuid(),
            tenant_id: Cow::Borrowed(follow_up.tenant_id.as_str()),
            campaign_id: follow_up.campaign_id.map(|id| id.as_uuid()),
            external_key: follow_up.external_key.as_deref().map(Cow::Borrowed),
            lead_id: follow_up.lead_id,
            customer_id: follow_up.customer_id,
            phone_e164: Cow::Borrowed(&follow_up.phone_e164),
            message: Cow::Borrowed(&follow_up.message),
            schedule_at: follow_up.schedule_at,
            channel: Cow::Borrowed(&follow_up.channel),
            status: Cow::Borrowed(follow_up.status.as_str()),
            provider_message_id: follow_up.provider_message_id.as_deref().map(Cow::Borrowed),
            last_error_code: follow_up.last_error_code.as_deref().map(Cow::Borrowed),
            last_error_message: follow_up.last_error_message.as_deref().map(Cow::Borrowed),
            metadata: Cow::Borrowed(&follow_up.metadata),
            correlation_id: follow_up.correlation_id.as_uuid(),
            trace_id: Cow::Borrowed(&follow_up.trace_id),
            time_zone: follow_up.time_zone.as_deref().map(Cow::Borrowed),
            sender: follow_up.sender.as_deref().map(Cow::Borrowed),
            sent_at: follow_up.sent_at,
            delivery: follow_up.delivery.as_ref().map(DeliveryRecord::from),
            created_at: follow_up.created_at,
            updated_at: follow_up.updated_at,
        }
    }
}

impl TryFrom<FollowUpRecord<'_>> for FollowUp {
    type Error = RecordError;

    fn try_from(record: FollowUpRecord<'_>) -> Result<Self, RecordError> {
        Ok(FollowUp {
            followup_id: FollowUpId::new(record.followup_id),
            tenant_id: tenant(&record.tenant_id)?,
            campaign_id: record.campaign_id.map(CampaignId::new),
            external_key: record.external_key.map(Cow::into_owned),
            lead_id: record.lead_id,
            customer_id: record.customer_id,
            phone_e164: record.phone_e164.into_owned(),
            message: record.message.into_owned(),
            schedule_at: record.schedule_at,
            channel: record.channel.into_owned(),
            status: record
                .status
                .parse()
                .map_err(|e| RecordError(format!("status: {e}")))?,
            provider_message_id: record.provider_message_id.map(Cow::into_owned),
            last_error_code: record.last_error_code.map(Cow::into_owned),
            last_error_message: record.last_error_message.map(Cow::into_owned),
            metadata: record.metadata.into_owned(),
            correlation_id: CorrelationId::new(record.correlation_id),
            trace_id: record.trace_id.into_owned(),
            time_zone: record.time_zone.map(Cow::into_owned),
            sender: record.sender.map(Cow::into_owned),
            sent_at: record.sent_at,
            delivery: record.delivery.map(Delivery::try_from).transpose()?,
            created_at: record.created_at,
            updated_at: record.updated_at,
        })
    }
}

/// An event as validated and stored, with its place in commit order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventRecord<'a> {
    pub seq: u64,
    pub envelope: Cow<'a, RawValue>,
}

/// An outbound queue item as handed to the sender, with its place in enqueue order and
/// where it is in its delivery.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutboundRecord<'a> {
    pub seq: u64,
    pub queue_item_id: Uuid,
    pub followup_id: Uuid,
    pub tenant_id: Cow<'a, str>,
    /// The follow-up's sender; absent in records written before follow-ups had senders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender: Option<Cow<'a, str>>,
    pub max_attempts: u32,
    pub backoff_ms: u32,
    pub status: Cow<'a, str>,
    pub attempt: u32,
    pub available_at: Option<Timestamp>,
    pub lease_id: Option<Uuid>,
    pub lease_expires_at: Option<Timestamp>,
    pub last_ack_lease: Option<Uuid>,
    pub last_ack_status: Option<Cow<'a, str>>,
    pub enqueued_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub item: Cow<'a, RawValue>,
}

impl<'a> OutboundRecord<'a> {
    pub fn new(seq: u64, entry: &'a QueueEntry, item: &'a RawValue) -> Self {
        Self {
            seq,
            queue_item_id: entry.queue_item_id.as_uuid(),
            followup_id: entry.followup_id.as_uuid(),
            tenant_id: Cow::Borrowed(entry.tenant_id.as_str()),
            sender: entry.sender.as_deref().map(Cow::Borrowed),
            max_attempts: entry.retry_policy.max_attempts,
            backoff_ms: entry.retry_policy.backoff_ms,
            status: Cow::Borrowed(entry.status.as_str()),
            attempt: entry.attempt,
            available_at: entry.available_at,
            lease_id: entry.lease.map(|lease| lease.lease_id.0),
            lease_expires_at: entry.lease.map(|lease| lease.expires_at),
            last_ack_lease: entry.last_ack.map(|ack| ack.lease_id.0),
            last_ack_status: entry.last_ack.map(|ack| Cow::Borrowed(ack.status.as_str())),
            enqueued_at: entry.enqueued_at,
            finished_at: entry.finished_at,
            item: Cow::Borrowed(item),
        }
    }

    pub fn entry(&self) -> Result<QueueEntry, RecordError> {
        let status = QueueStatus::parse(&self.status)
            .ok_or_else(|| RecordError(format!("queue status {:?} is unknown", self.status)))?;
        let lease = match (self.lease_id, self.lease_expires_at) {
            (Some(id), Some(expires_at)) => Some(Lease {
                lease_id: LeaseId(id),
                expires_at,
            }),
            (None, None) => None,
            _ => return Err(RecordError("a lease needs its id and its expiry".into())),
        };
        let last_ack = match (self.last_ack_lease, &self.last_ack_status) {
            (Some(id), Some(status)) => Some(LastAck {
                lease_id: LeaseId(id),
                status: AckStatus::parse(status)
                    .ok_or_else(|| RecordError(format!("ack status {status:?} is unknown")))?,
            }),
            (None, None) => None,
            _ => {
                return Err(RecordError(
                    "a last ack needs its lease and its status".into(),
                ));
            }
        };
        Ok(QueueEntry {
            queue_item_id: QueueItemId::new(self.queue_item_id),
            followup_id: FollowUpId::new(self.followup_id),
            tenant_id: tenant(&self.tenant_id)?,
            sender: self.sender.as_deref().map(str::to_owned),
            retry_policy: RetryPolicy {
                max_attempts: self.max_attempts,
                backoff_ms: self.backoff_ms,
            },
            status,
            attempt: self.attempt,
            available_at: self.available_at,
            lease,
            last_ack,
            enqueued_at: self.enqueued_at,
            finished_at: self.finished_at,
        })
    }
}

/// A tenant's recipient who asked to receive nothing more.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OptOutRecord<'a> {
    pub tenant_id: Cow<'a, str>,
    pub phone_e164: Cow<'a, str>,
    pub reason: Option<Cow<'a, str>>,
    pub created_at: Timestamp,
}

impl<'a> From<&'a OptOut> for OptOutRecord<'a> {
    fn from(opt_out: &'a OptOut) -> Self {
        Self {
            tenant_id: Cow::Borrowed(opt_out.tenant_id.as_str()),
            phone_e164: Cow::Borrowed(&opt_out.phone_e164),
            reason: opt_out.reason.as_deref().map(Cow::Borrowed),
            created_at: opt_out.created_at,
        }
    }
}

impl TryFrom<OptOutRecord<'_>> for OptOut {
    type Error = RecordError;

    fn try_from(record: OptOutRecord<'_>) -> Result<Self, RecordError> {
        Ok(OptOut {
            tenant_id: tenant(&record.tenant_id)?,
            phone_e164: record.phone_e164.into_owned(),
            reason: record.reason.map(Cow::into_owned),
            created_at: record.created_at,
        })
    }
}

/// A tenant's sending policy.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyRecord<'a> {
    pub tenant_id: Cow<'a, str>,
    pub max_per_second: Option<u32>,
    pub quiet_hours: Option<QuietHoursRecord<'a>>,
    // WhatsApp's own limits; absent in records written before they existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_second_per_sender: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_recipient_limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_min_interval_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient_daily_cap: Option<u32>,
    /// Absent in records written before the automatic pause by failure ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_pause: Option<AutoPauseRecord>,
}

/// `auto_pause`, its ratio in millionths (exactly as it was put).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AutoPauseRecord {
    pub window: u32,
    pub max_failure_ratio_millionths: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuietHoursRecord<'a> {
    pub start: String,
    pub end: String,
    pub time_zone: Cow<'a, str>,
}

impl<'a> PolicyRecord<'a> {
    pub fn new(tenant_id: &'a TenantId, policy: &'a SendingPolicy) -> Self {
        Self {
            tenant_id: Cow::Borrowed(tenant_id.as_str()),
            max_per_second: policy.max_per_second,
            quiet_hours: policy.quiet_hours.as_ref().map(|quiet| QuietHoursRecord {
                start: quiet.start.to_string(),
                end: quiet.end.to_string(),
                time_zone: Cow::Borrowed(quiet.time_zone.as_str()),
            }),
            max_per_second_per_sender: policy.max_per_second_per_sender,
            daily_recipient_limit: policy.daily_recipient_limit,
            recipient_min_interval_ms: policy.recipient_min_interval_ms,
            recipient_daily_cap: policy.recipient_daily_cap,
            auto_pause: policy.auto_pause.map(|auto_pause| AutoPauseRecord {
                window: auto_pause.window,
                max_failure_ratio_millionths: auto_pause.max_failure_ratio.millionths(),
            }),
        }
    }

    pub fn policy(self) -> Result<(TenantId, SendingPolicy), RecordError> {
        let invalid = |e: PolicyError| RecordError(format!("sending policy: {e}"));
        let quiet_hours = match self.quiet_hours {
            None => None,
            Some(quiet) => Some(
                QuietHours::new(
                    TimeOfDay::parse(&quiet.start).map_err(invalid)?,
                    TimeOfDay::parse(&quiet.end).map_err(invalid)?,
                    TimeZoneName::parse(&quiet.time_zone).map_err(invalid)?,
                )
                .map_err(invalid)?,
            ),
        };
        let policy = SendingPolicy {
            max_per_second: self.max_per_second,
            quiet_hours,
            max_per_second_per_sender: self.max_per_second_per_sender,
            daily_recipient_limit: self.daily_recipient_limit,
            recipient_min_interval_ms: self.recipient_min_interval_ms,
            recipient_daily_cap: self.recipient_daily_cap,
            auto_pause: self
                .auto_pause
                .map(|record| {
                    AutoPause::new(
                        record.window,
                        FailureRatio::from_millionths(record.max_failure_ratio_millionths)?,
                    )
                })
                .transpose()
                .map_err(invalid)?,
        }
        .checked()
        .map_err(invalid)?;
        Ok((tenant(&self.tenant_id)?, policy))
    }
}

/// An opt-out taken back.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OptOutKeyRecord<'a> {
    pub tenant_id: Cow<'a, str>,
    pub phone_e164: Cow<'a, str>,
}

/// One journal record: a committed change, with its place in the journal's sequence.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EntryRecord<'a> {
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub campaigns: Vec<CampaignRecord<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow_ups: Vec<FollowUpRecord<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventRecord<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbound: Vec<OutboundRecord<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opt_outs: Vec<OptOutRecord<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opt_outs_removed: Vec<OptOutKeyRecord<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyRecord<'a>>,
    /// Tenants whose policy was removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies_removed: Vec<Cow<'a, str>>,
}

/// The first line of every journal file: which format and generation it is.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JournalHeader {
    pub format: u32,
    pub generation: u64,
}

/// A journal line is either the header or a record; the header comes first.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeaderLine {
    pub journal: JournalHeader,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crm_domain::campaign::CampaignState;
    use crm_domain::follow_up::FollowUpStatus;
    use serde_json::json;

    fn at(text: &str) -> Timestamp {
        Timestamp::parse(text).unwrap()
    }

    fn campaign() -> Campaign {
        Campaign {
            campaign_id: CampaignId::new(Uuid::from_u128(1)),
            tenant_id: TenantId::parse("acme").unwrap(),
            external_key: Some("spring".into()),
            name: "Spring".into(),
            channel: "whatsapp".into(),
            audience_segment: None,
            state: CampaignState::Paused,
            scheduled_at: Some(at("2025-01-01T09:00:00.000Z")),
            metadata: json!({"n": 123456789012345678u64})
                .as_object()
                .unwrap()
                .clone(),
            created_at: at("2025-01-01T08:00:00.000Z"),
            updated_at: at("2025-01-01T08:30:00.000Z"),
            revision: 4,
        }
    }

    #[test]
    fn a_campaign_reads_back_as_it_was_written() {
        let original = campaign();
        let text = serde_json::to_string(&CampaignRecord::from(&original)).unwrap();
        let record: CampaignRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(Campaign::try_from(record).unwrap(), original);
    }

    #[test]
    fn a_follow_up_reads_back_as_it_was_written() {
        let original = FollowUp {
            followup_id: FollowUpId::new(Uuid::from_u128(2)),
            tenant_id: TenantId::parse("acme").unwrap(),
            campaign_id: Some(CampaignId::new(Uuid::from_u128(1))),
            external_key: None,
            lead_id: Some(Uuid::from_u128(3)),
            customer_id: None,
            phone_e164: "+5511999998888".into(),
            message: "hi".into(),
            schedule_at: at("2025-01-01T09:00:00.000Z"),
            channel: "whatsapp".into(),
            status: FollowUpStatus::Sent,
            provider_message_id: Some("wamid.X".into()),
            last_error_code: None,
            last_error_message: None,
            metadata: Map::new(),
            correlation_id: CorrelationId::new(Uuid::from_u128(4)),
            trace_id: "abcdef0123456789".into(),
            time_zone: Some("America/Sao_Paulo".into()),
            sender: Some("pn-0001".into()),
            sent_at: Some(at("2025-01-01T09:00:01.000Z")),
            delivery: Some(Delivery {
                status: DeliveryStatus::Read,
                attempts: 2,
                provider_message_id: Some("wamid.HBgM".into()),
                error_code: None,
                updated_at: at("2025-01-01T09:00:01.000Z"),
                receipts: ReceiptTimes {
                    delivered_at: Some(at("2025-01-01T09:00:02.000Z")),
                    read_at: Some(at("2025-01-01T09:00:03.000Z")),
                    failed_at: None,
                },
            }),
            created_at: at("2025-01-01T08:00:00.000Z"),
            updated_at: at("2025-01-01T09:00:00.001Z"),
        };
        let text = serde_json::to_string(&FollowUpRecord::from(&original)).unwrap();
        let record: FollowUpRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(FollowUp::try_from(record).unwrap(), original);
    }

    #[test]
    fn an_unknown_state_or_field_is_refused_not_guessed() {
        let mut value = serde_json::to_value(CampaignRecord::from(&campaign())).unwrap();
        value["state"] = json!("archived");
        let record: CampaignRecord = serde_json::from_value(value.clone()).unwrap();
        assert!(Campaign::try_from(record).is_err());
        value["state"] = json!("draft");
        value["color"] = json!("red");
        assert!(serde_json::from_value::<CampaignRecord>(value).is_err());
    }
}
