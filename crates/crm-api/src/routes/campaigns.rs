//! `POST /v1/crm/campaigns`, `PATCH /v1/crm/campaigns/{id}/state`, `GET /v1/crm/campaigns`.

use actix_web::http::Method;
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

use super::{
    CURSOR_PARAMETER, LIMIT_PARAMETER, OWNER_PARAMETER, TENANT_PARAMETER, command_reply,
    list_reply, page_params, record_id, tenant, tenant_param, timestamp,
};
use crate::endpoint::{
    Access, Body, BodySize, Endpoint, Failure, Location, Parameter, Reply, Schema, Tag,
    query_violation,
};
use crate::error::{ApiError, Code};
use crate::extract::{RawBody, contract_body, param, query_pairs};

pub(super) static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::POST,
        path: "/v1/crm/campaigns",
        access: Access::Api,
        operation_id: "create_campaign",
        tag: Tag::Campaigns,
        summary: "Create a campaign (idempotent)",
        description: "Creates a WhatsApp campaign and emits `crm.campaign.created`. A repeat \
            with the same `(tenant_id, external_key)` or `(tenant_id, campaign_id)` returns \
            `idempotent` with the stored record unchanged and emits nothing.",
        parameters: &[],
        body: Some(Body {
            size: BodySize::Standard,
            contract: Contract::CampaignCreate,
            required: true,
            description: "The campaign to create.",
        }),
        reply: Reply {
            status: 200,
            description: "`created`, or `idempotent` for a repeat.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::CampaignCommandResponse),
        },
        errors: &[Failure::new(
            Code::IdConflict,
            "the `campaign_id` is already used by another tenant",
        )],
        uses_store: true,
        handler: |route| route.to(create_campaign),
    },
    Endpoint {
        method: Method::GET,
        path: "/v1/crm/campaigns",
        access: Access::Api,
        operation_id: "list_campaigns",
        tag: Tag::Campaigns,
        summary: "List a tenant's campaigns",
        description: "One page of the tenant's campaigns, oldest first (`created_at`, then id).",
        parameters: &[
            TENANT_PARAMETER,
            Parameter {
                name: "state",
                location: Location::Query,
                required: false,
                description: "Only campaigns in this state; an unknown state is \
                    `400 validation_error`.",
                schema: |contracts| {
                    super::contract_property(contracts, Contract::CampaignRecord, "state")
                },
            },
            LIMIT_PARAMETER,
            CURSOR_PARAMETER,
        ],
        body: None,
        reply: Reply {
            status: 200,
            description: "One page of campaigns.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::CampaignList),
        },
        errors: &[
            Failure::new(
                Code::MissingTenantId,
                "the `tenant_id` query parameter is missing or empty",
            ),
            query_violation(
                "a query parameter has a bad value (unknown `state`, `limit` not a positive \
                 integer, a `cursor` this server did not issue, a malformed query string)",
            ),
        ],
        uses_store: true,
        handler: |route| route.to(list_campaigns),
    },
    Endpoint {
        method: Method::PATCH,
        path: "/v1/crm/campaigns/{campaign_id}/state",
        access: Access::Api,
        operation_id: "advance_campaign",
        tag: Tag::Campaigns,
        summary: "Transition a campaign",
        description: "Moves the campaign along the campaign workflow and emits \
            `crm.campaign.state.changed` (`updated`); a `to_state` equal to the current state \
            is an `idempotent` no-op that writes nothing and emits nothing.",
        parameters: &[Parameter {
            name: "campaign_id",
            location: Location::Path,
            required: true,
            description: "The campaign's id. Any text is accepted: one that is not a uuid \
                names no campaign and is `404 not_found`.",
            schema: |_| serde_json::json!({"type": "string"}),
        }],
        body: Some(Body {
            size: BodySize::Standard,
            contract: Contract::CampaignStateUpdate,
            required: true,
            description: "The state to move to and its trigger.",
        }),
        reply: Reply {
            status: 200,
            description: "`updated`, or `idempotent` when `to_state` is the current state.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::CampaignCommandResponse),
        },
        errors: &[
            Failure {
                code: Code::TransitionError,
                when: "the workflow refuses the transition; `details.code` is one of \
                    `unknown_current_state`, `unknown_next_state`, `transition_not_allowed`, \
                    `missing_trigger`, `trigger_mismatch` (with `expected_trigger`)",
                details: None,
            },
            Failure::new(
                Code::NotFound,
                "the tenant has no campaign with this id (other tenants' ids look the same, \
                 and so does an id that is not a uuid)",
            ),
        ],
        uses_store: true,
        handler: |route| route.to(advance_campaign),
    },
    Endpoint {
        method: Method::GET,
        path: "/v1/crm/campaigns/{campaign_id}",
        access: Access::Api,
        operation_id: "get_campaign",
        tag: Tag::Campaigns,
        summary: "Read a campaign with its counts",
        description: "The campaign and exact counts of its follow-ups, by status and by what \
            the sender reported. The counts move with every change of a follow-up, in the \
            same commit; they are never counted by reading the follow-ups.",
        parameters: &[
            Parameter {
                name: "campaign_id",
                location: Location::Path,
                required: true,
                description: "The campaign's id; one that is not a uuid names no campaign.",
                schema: |_| serde_json::json!({"type": "string"}),
            },
            OWNER_PARAMETER,
        ],
        body: None,
        reply: Reply {
            status: 200,
            description: "The campaign and its counts.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::CampaignResponse),
        },
        errors: &[
            Failure::new(
                Code::MissingTenantId,
                "the `tenant_id` query parameter is missing or empty",
            ),
            Failure::new(
                Code::NotFound,
                "the tenant has no campaign with this id (other tenants' ids look the same)",
            ),
        ],
        uses_store: true,
        handler: |route| route.to(get_campaign),
    },
];

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

async fn create_campaign(crm: web::Data<Crm>, body: RawBody) -> Result<HttpResponse, ApiError> {
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

async fn advance_campaign(
    crm: web::Data<Crm>,
    http: HttpRequest,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let Envelope { request }: Envelope<UpdateRequest> = contract_body(
        crm.contracts(),
        Contract::CampaignStateUpdate,
        &body.0,
        None,
    )?;
    // An id that is not a uuid names no campaign at all.
    let campaign_id = record_id(&http, "campaign_id", CampaignId::parse)?;
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

async fn get_campaign(crm: web::Data<Crm>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let tenant_id = tenant_param(&query_pairs(&request)?)?;
    let campaign_id = record_id(&request, "campaign_id", CampaignId::parse)?;
    let (campaign, stats) = crm.campaign_with_stats(&tenant_id, campaign_id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "campaign": CampaignView::from(&campaign),
        "stats": {
            "followups": {"pending": stats.pending, "sent": stats.sent, "failed": stats.failed},
            "delivery": {
                "accepted": stats.delivery_accepted,
                "retrying": stats.delivery_retrying,
                "failed": stats.delivery_failed,
                "delivered": stats.delivery_delivered,
                "read": stats.delivery_read,
            },
        },
    })))
}

async fn list_campaigns(
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
