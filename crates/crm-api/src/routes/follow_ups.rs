//! `POST /v1/crm/followups` and `GET /v1/crm/followups`.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use crm_app::{CommandStatus, Crm, ScheduleFollowUp};
use crm_contracts::Contract;
use crm_domain::delivery::Delivery;
use crm_domain::follow_up::{FollowUp, FollowUpStatus};
use crm_domain::ids::{CampaignId, CorrelationId, FollowUpId, TenantId};
use crm_domain::policy::TimeZoneName;
use crm_domain::timestamp::Timestamp;
use crm_ports::FollowUpQuery;
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
use crate::extract::{RawBody, contract_body, json_body, judge, param, query_pairs, typed};

pub(super) static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::POST,
        path: "/v1/crm/followups",
        access: Access::Api,
        operation_id: "create_follow_up",
        tag: Tag::FollowUps,
        summary: "Schedule a follow-up (idempotent)",
        description: "Schedules one WhatsApp message to a phone number at `schedule_at` and \
            emits `crm.followup.scheduled`. A repeat with the same `(tenant_id, external_key)` \
            or `(tenant_id, followup_id)` returns `idempotent` with the stored record \
            unchanged and emits nothing.",
        parameters: &[],
        body: Some(Body {
            size: BodySize::Standard,
            contract: Contract::FollowUpCreate,
            required: true,
            description: "The follow-up to schedule.",
        }),
        reply: Reply {
            status: 200,
            description: "`created`, or `idempotent` for a repeat.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::FollowUpCommandResponse),
        },
        errors: &[
            Failure::new(
                Code::CampaignNotFound,
                "the follow-up names a `campaign_id` the tenant does not have",
            ),
            Failure::new(
                Code::IdConflict,
                "the `followup_id` is already used by another tenant",
            ),
        ],
        uses_store: true,
        handler: |route| route.to(create_follow_up),
    },
    // Before `/v1/crm/followups/{followup_id}`, whose path would match it.
    Endpoint {
        method: Method::POST,
        path: "/v1/crm/followups/batch",
        access: Access::Api,
        operation_id: "create_follow_ups",
        tag: Tag::FollowUps,
        summary: "Schedule up to 1,000 follow-ups at once",
        description: "Each item is what a single create of it would be: the same checks, \
            record and `crm.followup.scheduled` event (in the request's correlation, or its \
            own), idempotent the same way (an item repeating an earlier one of the batch is \
            `idempotent` too). An item that fails is `rejected` with the error body a \
            single create would answer, and stops none of the others. Results come in \
            request order; every `created` item is durable before the reply. A `503` \
            leaves the outcome of every item unknown: the same batch sent again answers \
            `idempotent` for what went in.",
        parameters: &[],
        body: Some(Body {
            size: BodySize::Batch,
            contract: Contract::FollowUpBatchRequest,
            required: true,
            description: "The follow-ups to schedule, 1 to 1,000, each as the `followup` of \
                a single create.",
        }),
        reply: Reply {
            status: 200,
            description: "One result per item: `created`, `idempotent` or `rejected`.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::FollowUpBatchResponse),
        },
        errors: &[],
        uses_store: true,
        handler: |route| route.to(create_follow_ups),
    },
    Endpoint {
        method: Method::GET,
        path: "/v1/crm/followups",
        access: Access::Api,
        operation_id: "list_follow_ups",
        tag: Tag::FollowUps,
        summary: "List a tenant's follow-ups",
        description: "One page of the tenant's follow-ups, oldest first (`created_at`, then \
            id), optionally filtered by status and campaign.",
        parameters: &[
            TENANT_PARAMETER,
            Parameter {
                name: "status",
                location: Location::Query,
                required: false,
                description: "Only follow-ups with this status; an unknown status is \
                    `400 validation_error`.",
                schema: |contracts| {
                    super::contract_property(contracts, Contract::FollowUpRecord, "status")
                },
            },
            Parameter {
                name: "campaign_id",
                location: Location::Query,
                required: false,
                description: "Only follow-ups of this campaign; a value that is not a uuid is \
                    `400 validation_error`.",
                schema: |_| serde_json::json!({"type": "string", "format": "uuid"}),
            },
            LIMIT_PARAMETER,
            CURSOR_PARAMETER,
        ],
        body: None,
        reply: Reply {
            status: 200,
            description: "One page of follow-ups.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::FollowUpList),
        },
        errors: &[
            Failure::new(
                Code::MissingTenantId,
                "the `tenant_id` query parameter is missing or empty",
            ),
            query_violation(
                "a query parameter has a bad value (unknown `status`, `campaign_id` not a \
                 uuid, `limit` not a positive integer, a `cursor` this server did not issue, \
                 a malformed query string)",
            ),
        ],
        uses_store: true,
        handler: |route| route.to(list_follow_ups),
    },
    Endpoint {
        method: Method::GET,
        path: "/v1/crm/followups/{followup_id}",
        access: Access::Api,
        operation_id: "get_follow_up",
        tag: Tag::FollowUps,
        summary: "Read a follow-up",
        description: "One follow-up of the tenant, with what the sender reported.",
        parameters: &[FOLLOW_UP_ID, OWNER_PARAMETER],
        body: None,
        reply: Reply {
            status: 200,
            description: "The follow-up.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::FollowUpResponse),
        },
        errors: &[
            Failure::new(
                Code::MissingTenantId,
                "the `tenant_id` query parameter is missing or empty",
            ),
            Failure::new(
                Code::NotFound,
                "the tenant has no follow-up with this id (other tenants' ids look the same)",
            ),
        ],
        uses_store: true,
        handler: |route| route.to(get_follow_up),
    },
    Endpoint {
        method: Method::POST,
        path: "/v1/crm/followups/{followup_id}/cancel",
        access: Access::Api,
        operation_id: "cancel_follow_up",
        tag: Tag::FollowUps,
        summary: "Cancel a pending follow-up",
        description: "A pending follow-up fails with `last_error_code` `CANCELED` and emits \
            `crm.followup.failed` (`retryable: false`): `updated`. One canceled already is \
            `idempotent` (nothing written, no event). A drain that claims it at the same \
            time either sends it first (then the cancel is refused) or finds it canceled.",
        parameters: &[FOLLOW_UP_ID],
        body: Some(Body {
            size: BodySize::Standard,
            contract: Contract::FollowUpCancel,
            required: true,
            description: "The request envelope, with no inner object.",
        }),
        reply: Reply {
            status: 200,
            description: "`updated`, or `idempotent` for a follow-up canceled already.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::FollowUpCommandResponse),
        },
        errors: &[
            Failure {
                code: Code::TransitionError,
                when: "the follow-up is not pending (sent, or failed for another reason): \
                    `details.code` is `not_pending`, with its `status`",
                details: None,
            },
            Failure::new(
                Code::NotFound,
                "the tenant has no follow-up with this id (other tenants' ids look the same)",
            ),
        ],
        uses_store: true,
        handler: |route| route.to(cancel_follow_up),
    },
];

const FOLLOW_UP_ID: Parameter = Parameter {
    name: "followup_id",
    location: Location::Path,
    required: true,
    description: "The follow-up's id; one that is not a uuid names no follow-up.",
    schema: |_| serde_json::json!({"type": "string"}),
};

#[derive(Deserialize)]
struct Envelope {
    request: CreateRequest,
}

#[derive(Deserialize)]
struct CreateRequest {
    request_id: Uuid,
    tenant_id: String,
    correlation_id: Option<Uuid>,
    followup: FollowUpFields,
}

#[derive(Deserialize)]
struct BatchEnvelope {
    request: BatchRequest,
}

/// The envelope of a bulk create; its items are judged one by one.
#[derive(Deserialize)]
struct BatchRequest {
    request_id: Uuid,
    tenant_id: String,
    correlation_id: Option<Uuid>,
}

#[derive(Deserialize)]
struct FollowUpFields {
    followup_id: Option<Uuid>,
    campaign_id: Option<Uuid>,
    external_key: Option<String>,
    lead_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    phone_e164: String,
    message: String,
    schedule_at: String,
    channel: Option<String>,
    status: Option<FollowUpStatus>,
    #[serde(default)]
    metadata: Map<String, Value>,
    time_zone: Option<String>,
    sender: Option<String>,
}

#[derive(Deserialize)]
struct CancelEnvelope {
    request: CancelRequest,
}

#[derive(Deserialize)]
struct CancelRequest {
    request_id: Uuid,
    tenant_id: String,
    correlation_id: Option<Uuid>,
}

/// A follow-up as the wire shows it (its correlation and trace stay internal).
#[derive(Serialize)]
struct FollowUpView<'a> {
    followup_id: FollowUpId,
    tenant_id: &'a TenantId,
    campaign_id: Option<CampaignId>,
    external_key: &'a Option<String>,
    lead_id: Option<Uuid>,
    customer_id: Option<Uuid>,
    phone_e164: &'a str,
    message: &'a str,
    schedule_at: Timestamp,
    channel: &'a str,
    status: FollowUpStatus,
    provider_message_id: &'a Option<String>,
    last_error_code: &'a Option<String>,
    last_error_message: &'a Option<String>,
    metadata: &'a Map<String, Value>,
    time_zone: &'a Option<String>,
    sender: &'a Option<String>,
    delivery: Option<DeliveryView<'a>>,
    created_at: Timestamp,
    updated_at: Timestamp,
}

/// What the sender reported, as the wire shows it.
#[derive(Serialize)]
struct DeliveryView<'a> {
    status: &'static str,
    attempts: u32,
    provider_message_id: &'a Option<String>,
    error_code: &'a Option<String>,
    updated_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_at: Option<Timestamp>,
}

impl<'a> From<&'a Delivery> for DeliveryView<'a> {
    fn from(delivery: &'a Delivery) -> Self {
        Self {
            status: delivery.status.as_str(),
            attempts: delivery.attempts,
            provider_message_id: &delivery.provider_message_id,
            error_code: &delivery.error_code,
            updated_at: delivery.updated_at,
            delivered_at: delivery.receipts.delivered_at,
            read_at: delivery.receipts.read_at,
            failed_at: delivery.receipts.failed_at,
        }
    }
}

impl<'a> From<&'a FollowUp> for FollowUpView<'a> {
    fn from(follow_up: &'a FollowUp) -> Self {
        Self {
            followup_id: follow_up.followup_id,
            tenant_id: &follow_up.tenant_id,
            campaign_id: follow_up.campaign_id,
            external_key: &follow_up.external_key,
            lead_id: follow_up.lead_id,
            customer_id: follow_up.customer_id,
            phone_e164: &follow_up.phone_e164,
            message: &follow_up.message,
            schedule_at: follow_up.schedule_at,
            channel: &follow_up.channel,
            status: follow_up.status,
            provider_message_id: &follow_up.provider_message_id,
            last_error_code: &follow_up.last_error_code,
            last_error_message: &follow_up.last_error_message,
            metadata: &follow_up.metadata,
            time_zone: &follow_up.time_zone,
            sender: &follow_up.sender,
            delivery: follow_up.delivery.as_ref().map(DeliveryView::from),
            created_at: follow_up.created_at,
            updated_at: follow_up.updated_at,
        }
    }
}

async fn create_follow_up(crm: web::Data<Crm>, body: RawBody) -> Result<HttpResponse, ApiError> {
    let Envelope { request } =
        contract_body(crm.contracts(), Contract::FollowUpCreate, &body.0, None)?;
    let command = schedule(
        request.followup,
        tenant(request.tenant_id, "/request/tenant_id")?,
        request.correlation_id,
        SINGLE,
    )?;
    let outcome = crm.schedule_follow_up(command).await?;
    Ok(follow_up_reply(request.request_id, &outcome))
}

/// Where the follow-up of a single create sits in its body.
const SINGLE: &str = "/request/followup";

/// A bulk create: the envelope is judged first and, broken, creates nothing; then each
/// item as the follow-up of a single create, where a broken one is that item's
/// rejection, with the error body (and pointers into this body) a single create of it
/// would answer.
async fn create_follow_ups(crm: web::Data<Crm>, body: RawBody) -> Result<HttpResponse, ApiError> {
    let contracts = crm.contracts();
    let mut json = json_body(&body.0, None)?;
    contracts
        .validate(Contract::FollowUpBatchRequest, &json)
        .map_err(ApiError::Validation)?;
    let items = match json["request"]["followups"].take() {
        Value::Array(items) => items,
        _ => Vec::new(),
    };
    let BatchEnvelope { request } = typed(json, "")?;
    let tenant_id = tenant(request.tenant_id, "/request/tenant_id")?;
    let checked: Vec<Result<ScheduleFollowUp, ApiError>> = items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let at = format!("/request/followups/{index}");
            let fields = judge(contracts, Contract::FollowUpFields, item, &at)?;
            schedule(fields, tenant_id.clone(), request.correlation_id, &at)
        })
        .collect();
    // The items that passed go to the use case together; each keeps its place.
    let mut commands = Vec::with_capacity(checked.len());
    let checked: Vec<Result<(), ApiError>> = checked
        .into_iter()
        .map(|item| item.map(|command| commands.push(command)))
        .collect();
    let mut outcomes = crm.schedule_follow_ups(commands).await?.into_iter();
    let outcomes: Vec<Result<crm_app::Outcome<FollowUp>, ApiError>> = checked
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            item.and_then(|()| {
                let outcome = outcomes.next().ok_or_else(|| {
                    ApiError::Internal(crm_app::AppError::Unavailable(
                        crm_ports::StoreError::unavailable("no outcome for an item"),
                    ))
                })?;
                outcome.map_err(|error| {
                    ApiError::from(error).rebased(SINGLE, &format!("/request/followups/{index}"))
                })
            })
        })
        .collect();
    // Written straight from the records: a thousand of them as `Value`s first would cost
    // as much as the rest of the request.
    let results: Vec<BatchResult> = outcomes
        .iter()
        .enumerate()
        .map(|(index, outcome)| match outcome {
            Ok(outcome) => BatchResult {
                index,
                status: outcome.status.as_str(),
                followup: Some(FollowUpView::from(&outcome.record)),
                error: None,
            },
            Err(error) => BatchResult {
                index,
                status: "rejected",
                followup: None,
                error: Some(error.body()),
            },
        })
        .collect();
    let count = |status: &str| results.iter().filter(|r| r.status == status).count();
    let response = BatchResponse {
        request_id: request.request_id,
        created_count: count(CommandStatus::Created.as_str()),
        idempotent_count: count(CommandStatus::Idempotent.as_str()),
        rejected_count: count("rejected"),
        results,
    };
    Ok(HttpResponse::Ok().json(BatchReply { response }))
}

#[derive(Serialize)]
struct BatchReply<'a> {
    response: BatchResponse<'a>,
}

#[derive(Serialize)]
struct BatchResponse<'a> {
    request_id: Uuid,
    results: Vec<BatchResult<'a>>,
    created_count: usize,
    idempotent_count: usize,
    rejected_count: usize,
}

/// One item's result: its record, or the error body a single create of it would answer.
#[derive(Serialize)]
struct BatchResult<'a> {
    index: usize,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    followup: Option<FollowUpView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

/// The command of one follow-up to create, checked beyond its contract: `at` is where
/// the follow-up sits in the body, for the pointers of what is wrong with it.
fn schedule(
    fields: FollowUpFields,
    tenant_id: TenantId,
    correlation_id: Option<Uuid>,
    at: &str,
) -> Result<ScheduleFollowUp, ApiError> {
    Ok(ScheduleFollowUp {
        correlation_id: correlation_id.map(CorrelationId::new),
        followup_id: fields.followup_id.map(FollowUpId::new),
        tenant_id,
        campaign_id: fields.campaign_id.map(CampaignId::new),
        external_key: fields.external_key,
        lead_id: fields.lead_id,
        customer_id: fields.customer_id,
        phone_e164: fields.phone_e164,
        message: fields.message,
        schedule_at: timestamp(&fields.schedule_at, &format!("{at}/schedule_at"))?,
        channel: fields.channel,
        status: fields.status,
        metadata: fields.metadata,
        time_zone: fields
            .time_zone
            .map(|name| {
                TimeZoneName::parse(&name).map(|_| name).map_err(|error| {
                    ApiError::violation(&format!("{at}/time_zone"), error.to_string())
                })
            })
            .transpose()?,
        sender: fields.sender,
    })
}

/// The reply of a follow-up command.
fn follow_up_reply(request_id: Uuid, outcome: &crm_app::Outcome<FollowUp>) -> HttpResponse {
    command_reply(
        request_id,
        "followup",
        json!(FollowUpView::from(&outcome.record)),
        outcome.status.as_str(),
        outcome.correlation_id,
        outcome.lifecycle_event_name,
    )
}

async fn get_follow_up(
    crm: web::Data<Crm>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let tenant_id = tenant_param(&query_pairs(&request)?)?;
    let followup_id = record_id(&request, "followup_id", FollowUpId::parse)?;
    let follow_up = crm.follow_up(&tenant_id, followup_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "followup": FollowUpView::from(&follow_up) })))
}

async fn cancel_follow_up(
    crm: web::Data<Crm>,
    http: HttpRequest,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let CancelEnvelope { request } =
        contract_body(crm.contracts(), Contract::FollowUpCancel, &body.0, None)?;
    let tenant_id = tenant(request.tenant_id, "/request/tenant_id")?;
    let followup_id = record_id(&http, "followup_id", FollowUpId::parse)?;
    let outcome = crm
        .cancel_follow_up(
            &tenant_id,
            followup_id,
            request.correlation_id.map(CorrelationId::new),
        )
        .await?;
    Ok(follow_up_reply(request.request_id, &outcome))
}

async fn list_follow_ups(
    crm: web::Data<Crm>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&request)?;
    let tenant_id = tenant_param(&pairs)?;
    let (limit, after) = page_params(&pairs)?;
    let status = param(&pairs, "status")
        .map(|text| {
            text.parse::<FollowUpStatus>()
                .map_err(|error| ApiError::invalid_query("status", error.to_string()))
        })
        .transpose()?;
    let campaign_id = param(&pairs, "campaign_id")
        .map(|text| {
            CampaignId::parse(text)
                .ok_or_else(|| ApiError::invalid_query("campaign_id", "must be a uuid"))
        })
        .transpose()?;
    let query = FollowUpQuery {
        tenant_id,
        status,
        campaign_id,
        after,
        limit,
    };
    let page = crm.list_follow_ups(&query).await?;
    let items: Vec<FollowUpView> = page.items.iter().map(FollowUpView::from).collect();
    Ok(list_reply(&query.tenant_id, items, page.next_cursor))
}
