//! The rules a record of the Node.js service must pass to be adopted, whichever store it
//! comes from: it must be a valid record of this service (the record contracts: ids,
//! states, statuses, phone numbers, timestamps), with no field this service would drop.
//! What that service left out is filled in the way it would have been: absent optional
//! fields are null, a missing `correlation_id` or `trace_id` gets a fresh one.

use std::sync::Arc;

use crm_contracts::{Contract, Contracts};
use crm_domain::campaign::{Campaign, CampaignState};
use crm_domain::follow_up::{FollowUp, FollowUpStatus};
use crm_domain::ids::{CampaignId, CorrelationId, FollowUpId, TenantId};
use crm_domain::timestamp::Timestamp;
use crm_ports::adoption::{FieldProblem, RecordRules};
use serde::Deserialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::service::new_trace_id;

/// Campaign fields, in the record's order; all of them are nullable or required by the
/// contract.
const CAMPAIGN_FIELDS: [&str; 11] = [
    "campaign_id",
    "tenant_id",
    "external_key",
    "name",
    "channel",
    "audience_segment",
    "state",
    "scheduled_at",
    "metadata",
    "created_at",
    "updated_at",
];

/// Follow-up fields of the Node.js service's records: the record's, without the three this
/// service added (`time_zone`, `sender`, `delivery`), plus the trace it kept with each.
const FOLLOW_UP_FIELDS: [&str; 19] = [
    "followup_id",
    "tenant_id",
    "campaign_id",
    "external_key",
    "lead_id",
    "customer_id",
    "phone_e164",
    "message",
    "schedule_at",
    "channel",
    "status",
    "provider_message_id",
    "last_error_code",
    "last_error_message",
    "metadata",
    "created_at",
    "updated_at",
    "correlation_id",
    "trace_id",
];

/// Fields that may be absent (the Node.js service wrote no key for an undefined value).
const NULLABLE: [&str; 11] = [
    "external_key",
    "audience_segment",
    "scheduled_at",
    "campaign_id",
    "lead_id",
    "customer_id",
    "provider_message_id",
    "last_error_code",
    "last_error_message",
    "correlation_id",
    "trace_id",
];

/// The shortest trace id a queue item accepts.
const MIN_TRACE_ID: usize = 8;

/// [`RecordRules`] from the record contracts.
#[derive(Debug, Clone)]
pub struct LegacyRules {
    contracts: Arc<Contracts>,
}

impl LegacyRules {
    pub fn new(contracts: Arc<Contracts>) -> Self {
        Self { contracts }
    }
}

/// An object with exactly `fields`: unknown ones are problems, absent nullable ones are
/// null (absent required ones are left for the contract to name).
fn normalized(json: &Value, fields: &[&str]) -> Result<Map<String, Value>, Vec<FieldProblem>> {
    let Some(object) = json.as_object() else {
        return Err(vec![FieldProblem::new("", "is not a JSON object")]);
    };
    let unknown: Vec<FieldProblem> = object
        .keys()
        .filter(|key| !fields.contains(&key.as_str()))
        .map(|key| {
            FieldProblem::new(
                format!("/{}", key.replace('~', "~0").replace('/', "~1")),
                "is not a field of this service's records, so it would be lost",
            )
        })
        .collect();
    if !unknown.is_empty() {
        return Err(unknown);
    }
    let mut record = object.clone();
    for field in fields.iter().filter(|field| NULLABLE.contains(field)) {
        record.entry(*field).or_insert(Value::Null);
    }
    Ok(record)
}

fn check(
    contracts: &Contracts,
    contract: Contract,
    record: &Value,
) -> Result<(), Vec<FieldProblem>> {
    contracts.validate(contract, record).map_err(|violations| {
        violations
            .into_iter()
            .map(|violation| FieldProblem::new(violation.pointer, violation.message))
            .collect()
    })
}

/// Parses each `(field, text)` (`None` stays `None`); every failure is a problem.
fn timestamps<const N: usize>(
    values: [(&str, Option<&str>); N],
) -> Result<[Option<Timestamp>; N], Vec<FieldProblem>> {
    let mut problems = Vec::new();
    let parsed = values.map(|(field, text)| {
        text.and_then(|text| {
            Timestamp::parse(text)
                .map_err(|error| {
                    problems.push(FieldProblem::new(format!("/{field}"), error.to_string()))
                })
                .ok()
        })
    });
    if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(problems)
    }
}

/// The metadata limit every record keeps to.
fn metadata_fits(metadata: &Map<String, Value>) -> Result<(), Vec<FieldProblem>> {
    crm_domain::metadata::check(metadata)
        .map_err(|error| vec![FieldProblem::new("/metadata", error.to_string())])
}

/// A campaign record that passed its contract.
#[derive(Deserialize)]
struct CampaignFields {
    campaign_id: Uuid,
    tenant_id: String,
    external_key: Option<String>,
    name: String,
    channel: String,
    audience_segment: Option<String>,
    state: CampaignState,
    scheduled_at: Option<String>,
    metadata: Map<String, Value>,
    created_at: String,
    updated_at: String,
}

#[derive(Deserialize)]
struct FollowUpFields {
    followup_id: Uuid,
    tenant_id: String,
    campaign_id: Option<Uuid>,
    external_key: Option<String>,
    lead_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    phone_e164: String,
    message: String,
    schedule_at: String,
    channel: String,
    status: FollowUpStatus,
    provider_message_id: Option<String>,
    last_error_code: Option<String>,
    last_error_message: Option<String>,
    metadata: Map<String, Value>,
    created_at: String,
    updated_at: String,
}

/// A record that passed its contract always fits its fields.
fn fields<T: for<'de> Deserialize<'de>>(record: Value) -> Result<T, Vec<FieldProblem>> {
    serde_json::from_value(record).map_err(|error| vec![FieldProblem::new("", error.to_string())])
}

fn tenant(text: &str) -> Result<TenantId, Vec<FieldProblem>> {
    TenantId::parse(text).ok_or_else(|| vec![FieldProblem::new("/tenant_id", "is empty")])
}

impl RecordRules for LegacyRules {
    fn campaign(&self, json: &Value) -> Result<Campaign, Vec<FieldProblem>> {
        let record = Value::Object(normalized(json, &CAMPAIGN_FIELDS)?);
        check(&self.contracts, Contract::CampaignRecord, &record)?;
        let fields: CampaignFields = fields(record)?;
        metadata_fits(&fields.metadata)?;
        let [scheduled_at, Some(created_at), Some(updated_at)] = timestamps([
            ("scheduled_at", fields.scheduled_at.as_deref()),
            ("created_at", Some(&fields.created_at)),
            ("updated_at", Some(&fields.updated_at)),
        ])?
        else {
            unreachable!("timestamps() refuses any text it cannot parse");
        };
        Ok(Campaign {
            campaign_id: CampaignId::new(fields.campaign_id),
            tenant_id: tenant(&fields.tenant_id)?,
            external_key: fields.external_key,
            name: fields.name,
            channel: fields.channel,
            audience_segment: fields.audience_segment,
            state: fields.state,
            scheduled_at,
            metadata: fields.metadata,
            created_at,
            updated_at,
            revision: 1,
        })
    }

    fn follow_up(&self, json: &Value) -> Result<FollowUp, Vec<FieldProblem>> {
        let mut record = normalized(json, &FOLLOW_UP_FIELDS)?;
        // The trace is not part of the record's contract: checked here, then set aside.
        let mut problems = Vec::new();
        let correlation_id = match record.remove("correlation_id") {
            Some(Value::Null) | None => CorrelationId::new(Uuid::new_v4()),
            Some(Value::String(text)) => match Uuid::parse_str(&text) {
                Ok(id) => CorrelationId::new(id),
                Err(_) => {
                    problems.push(FieldProblem::new("/correlation_id", "is not a uuid"));
                    CorrelationId::new(Uuid::nil())
                }
            },
            Some(_) => {
                problems.push(FieldProblem::new("/correlation_id", "is not a string"));
                CorrelationId::new(Uuid::nil())
            }
        };
        let trace_id = match record.remove("trace_id") {
            Some(Value::Null) | None => new_trace_id(),
            Some(Value::String(text)) if text.chars().count() >= MIN_TRACE_ID => text,
            Some(_) => {
                problems.push(FieldProblem::new(
                    "/trace_id",
                    format!("is not a string of {MIN_TRACE_ID} characters or more"),
                ));
                String::new()
            }
        };
        record.insert("time_zone".to_owned(), Value::Null);
        record.insert("delivery".to_owned(), Value::Null);
        record.insert("sender".to_owned(), Value::Null);
        let record = Value::Object(record);
        if let Err(contract) = check(&self.contracts, Contract::FollowUpRecord, &record) {
            problems.extend(contract);
        }
        if !problems.is_empty() {
            problems.sort_by(|a, b| a.field.cmp(&b.field));
            return Err(problems);
        }
        let fields: FollowUpFields = fields(record)?;
        metadata_fits(&fields.metadata)?;
        let [Some(schedule_at), Some(created_at), Some(updated_at)] = timestamps([
            ("schedule_at", Some(&fields.schedule_at)),
            ("created_at", Some(&fields.created_at)),
            ("updated_at", Some(&fields.updated_at)),
        ])?
        else {
            unreachable!("timestamps() refuses any text it cannot parse");
        };
        Ok(FollowUp {
            followup_id: FollowUpId::new(fields.followup_id),
            tenant_id: tenant(&fields.tenant_id)?,
            campaign_id: fields.campaign_id.map(CampaignId::new),
            external_key: fields.external_key,
            lead_id: fields.lead_id,
            customer_id: fields.customer_id,
            phone_e164: fields.phone_e164,
            message: fields.message,
            schedule_at,
            channel: fields.channel,
            status: fields.status,
            provider_message_id: fields.provider_message_id,
            last_error_code: fields.last_error_code,
            last_error_message: fields.last_error_message,
            metadata: fields.metadata,
            correlation_id,
            trace_id,
            time_zone: None,
            sender: None,
            sent_at: None,
            delivery: None,
            created_at,
            updated_at,
        })
    }
}

#[cfg(test)]
mod tests;
