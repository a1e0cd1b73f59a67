//! `POST /v1/crm/campaigns`, `PATCH /v1/crm/campaigns/{id}/state`, `GET /v1/crm/campaigns`.

use actix_web::{HttpRequest, HttpResponse, web};
use crm_app::{AdvanceCampaign, Crm, Outcome, StartCampaign};
use crm_contracts::Contract;
use crm_domain::campaign::{Advance, Campaign, CampaignState};
use crm_domain::ids::{CampaignId, CorrelationId, TenantId};
use crm_domain::timestamp::Timestamp;
use crm_ports::CampaignQuery;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{command_reply, list_reply, page_params, tenant, tenant_param, timestamp};
use crate::error::ApiError;
use crate::extract::{RawBody, contract_body, param, query_pairs};

#[derive(Deserialize)]
struct Envelope<T> {
    request: T,
}

#[derive(Deserialize)]
struct CreateRequest {
    request_id: Uuid,
    tenant_id: String,
    correlation_id: Option<Uuid>,
    campaign: CampaignFields,
}

#[derive(Deserialize)]
struct CampaignFields {
    campaign_id: Option<Uuid>,
    external_key: Option<String>,
    name: String,
    channel: String,
    audience_segment: Option<String>,
    state: Option<CampaignState>,
    scheduled_at: Option<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

#[derive(Deserialize)]
struct UpdateRequest {
    request_id: Uuid,
    tenant_id: String,
    correlation_id: Option<Uuid>,
    changes: Changes,
}

#[derive(Deserialize)]
struct Changes {
    to_state: CampaignState,
    trigger: String,
    reason_code: Option<String>,
    metadata: Option<Map<String, Value>>,
}

/// A campaign as the wire shows it.
#[derive(Serialize)]
pub(super) struct CampaignView<'a> {
    campaign_id: CampaignId,
    tenant_id: &'a TenantId,
    external_key: &'a Option<String>,
    name: &'a str,
    channel: &'a str,
    audience_segment: &'a Option<String>,
    state: CampaignState,
    scheduled_at: Option<Timestamp>,
    metadata: &'a Map<String, Value>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

impl<'a> From<&'a Campaign> for CampaignView<'a> {
    fn from(campaign: &'a Campaign) -> Self {
        Self {
            campaign_id: campaign.campaign_id,
            tenant_id: &campaign.tenant_id,
            external_key: &campaign.external_key,
            name: &campaign.name,
            channel: &campaign.channel,
            audience_segment: &campaign.audience_segment,
            state: campaign.state,
            scheduled_at: campaign.scheduled_at,
            metadata: &campaign.metadata,
            created_at: campaign.created_at,
            updated_at: campaign.updated_at,
        }
    }
}

fn campaign_reply(request_id: Uuid, outcome: &Outcome<Campaign>) -> HttpResponse {
    command_reply(
        request_id,
        "campaign",
        json!(CampaignView::from(&outcome.record)),
        outcome.status.as_str(),
        outcome.correlation_id,
        outcome.lifecycle_event_name,
    )
}

pub async fn create_campaign(crm: web::Data<Crm>, body: RawBody) -> Result<HttpResponse, ApiError> {
    let Envelope { request }: Envelope<CreateRequest> =
        contract_body(crm.contracts(), Contract::CampaignCreate, &body.0, None)?;
    let fields = request.campaign;
    let command = StartCampaign {
        correlation_id: request.correlation_id.map(CorrelationId::new),
        campaign_id: fields.campaign_id.map(CampaignId::new),
        tenant_id: tenant(request.tenant_id, "/request/tenant_id")?,
        external_key: fields.external_key,
        name: fields.name,
        channel: fields.channel,
        audience_segment: fields.audience_segment,
        state: fields.state,
        scheduled_at: fields
            .scheduled_at
            .as_deref()
            .map(|text| timestamp(text, "/request/campaign/scheduled_at"))
            .transpose()?,
        metadata: fields.metadata,
    };
    let outcome = crm.create_campaign(command).await?;
    Ok(campaign_reply(request.request_id, &outcome))
}

pub async fn advance_campaign(
    crm: web::Data<Crm>,
    path: web::Path<String>,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let Envelope { request }: Envelope<UpdateRequest> = contract_body(
        crm.contracts(),
        Contract::CampaignStateUpdate,
        &body.0,
        None,
    )?;
    // An id that is not a uuid names no campaign at all.
    let campaign_id = CampaignId::parse(&path.into_inner()).ok_or(ApiError::NotFound)?;
    let changes = request.changes;
    let command = AdvanceCampaign {
        tenant_id: tenant(request.tenant_id, "/request/tenant_id")?,
        campaign_id,
        correlation_id: request.correlation_id.map(CorrelationId::new),
        advance: Advance {
            to_state: changes.to_state,
            trigger: Some(changes.trigger),
            reason_code: changes.reason_code,
            metadata: changes.metadata,
        },
    };
    let outcome = crm.advance_campaign(command).await?;
    Ok(campaign_reply(request.request_id, &outcome))
}

pub async fn list_campaigns(
    crm: web::Data<Crm>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&request)?;
    let tenant_id = tenant_param(&pairs)?;
    let (limit, after) = page_params(&pairs)?;
    let state = param(&pairs, "state")
        .map(|text| {
            text.parse::<CampaignState>()
                .map_err(|error| ApiError::invalid_query("state", error.to_string()))
        })
        .transpose()?;
    let query = CampaignQuery {
        tenant_id,
        state,
        after,
        limit,
    };
    let page = crm.list_campaigns(&query).await?;
    let items: Vec<CampaignView> = page.items.iter().map(CampaignView::from).collect();
    Ok(list_reply(&query.tenant_id, items, page.next_cursor))
}
