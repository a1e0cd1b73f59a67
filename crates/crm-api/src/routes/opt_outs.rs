//! `/v1/crm/opt-outs`: the numbers of a tenant that get nothing more.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use crm_app::Crm;
use crm_contracts::Contract;
use crm_domain::ids::CorrelationId;
use crm_domain::opt_out::OptOut;
use crm_ports::{Created, OptOutQuery};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{LIMIT_PARAMETER, TENANT_PARAMETER, limit_param, tenant, tenant_param};
use crate::endpoint::{
    Access, Body, BodySize, Endpoint, Failure, Location, Parameter, Reply, Schema, Tag,
    query_violation,
};
use crate::error::{ApiError, Code};
use crate::extract::{RawBody, contract_body, param, path_param, query_pairs};

/// A phone number in E.164, as the contracts spell it.
const PHONE_PATTERN: &str = "^\\+[1-9][0-9]{7,14}$";

pub(super) static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::POST,
        path: "/v1/crm/opt-outs",
        access: Access::Api,
        operation_id: "add_opt_out",
        tag: Tag::OptOuts,
        summary: "Opt a number out (idempotent)",
        description: "Adds the number to the tenant's opt-out list: from then on a due \
            follow-up to it fails with `RECIPIENT_OPTED_OUT` and never reaches the outbound \
            queue. A number on the list already is `idempotent` (the stored opt-out, \
            unchanged).",
        parameters: &[],
        body: Some(Body {
            size: BodySize::Standard,
            contract: Contract::OptOutCreate,
            required: true,
            description: "The number, and why.",
        }),
        reply: Reply {
            status: 200,
            description: "`created`, or `idempotent` for a number on the list already.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::OptOutCommandResponse),
        },
        errors: &[],
        uses_store: true,
        handler: |route| route.to(add_opt_out),
    },
    Endpoint {
        method: Method::GET,
        path: "/v1/crm/opt-outs",
        access: Access::Api,
        operation_id: "list_opt_outs",
        tag: Tag::OptOuts,
        summary: "List a tenant's opt-outs",
        description: "One page of the tenant's opt-out list, in phone number order.",
        parameters: &[
            TENANT_PARAMETER,
            LIMIT_PARAMETER,
            Parameter {
                name: "cursor",
                location: Location::Query,
                required: false,
                description: "The `next_cursor` of the previous page (a phone number).",
                schema: |_| json!({"type": "string", "pattern": PHONE_PATTERN}),
            },
        ],
        body: None,
        reply: Reply {
            status: 200,
            description: "One page of opt-outs.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::OptOutList),
        },
        errors: &[
            Failure::new(
                Code::MissingTenantId,
                "the `tenant_id` query parameter is missing or empty",
            ),
            query_violation(
                "a query parameter has a bad value (`limit` not a positive integer, a \
                 `cursor` that is not a phone number, a malformed query string)",
            ),
        ],
        uses_store: true,
        handler: |route| route.to(list_opt_outs),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/v1/crm/opt-outs/{phone_e164}",
        access: Access::Api,
        operation_id: "remove_opt_out",
        tag: Tag::OptOuts,
        summary: "Take a number off the opt-out list",
        description: "Follow-ups to the number go out again from the next drain. \
            `removed` is false when it was not on the list (nothing changed).",
        parameters: &[
            Parameter {
                name: "phone_e164",
                location: Location::Path,
                required: true,
                description: "The number in E.164 (`+` written `%2B`); any other text is \
                    `400 validation_error`.",
                schema: |_| json!({"type": "string", "pattern": PHONE_PATTERN}),
            },
            TENANT_PARAMETER,
        ],
        body: None,
        reply: Reply {
            status: 200,
            description: "Whether the number was on the list.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::OptOutRemoval),
        },
        errors: &[
            Failure::new(
                Code::MissingTenantId,
                "the `tenant_id` query parameter is missing or empty",
            ),
            query_violation("the number is not in E.164 form"),
        ],
        uses_store: true,
        handler: |route| route.to(remove_opt_out),
    },
];

#[derive(Deserialize)]
struct Envelope {
    request: CreateRequest,
}

#[derive(Deserialize)]
struct CreateRequest {
    request_id: Uuid,
    tenant_id: String,
    correlation_id: Option<Uuid>,
    opt_out: OptOutFields,
}

#[derive(Deserialize)]
struct OptOutFields {
    phone_e164: String,
    reason: Option<String>,
}

fn view(opt_out: &OptOut) -> serde_json::Value {
    json!({
        "tenant_id": opt_out.tenant_id,
        "phone_e164": opt_out.phone_e164,
        "reason": opt_out.reason,
        "created_at": opt_out.created_at,
    })
}

/// Whether `text` is a phone number in E.164, as the contracts require.
fn is_phone(text: &str) -> bool {
    let digits = text.strip_prefix('+').unwrap_or_default();
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

async fn add_opt_out(crm: web::Data<Crm>, body: RawBody) -> Result<HttpResponse, ApiError> {
    let Envelope { request } =
        contract_body(crm.contracts(), Contract::OptOutCreate, &body.0, None)?;
    let tenant_id = tenant(request.tenant_id, "/request/tenant_id")?;
    let created = crm
        .add_opt_out(
            tenant_id,
            request.opt_out.phone_e164,
            request.opt_out.reason,
            request.correlation_id.map(CorrelationId::new),
        )
        .await?;
    let status = match created {
        Created::Created(_) => "created",
        Created::Existing(_) => "idempotent",
    };
    Ok(HttpResponse::Ok().json(json!({"response": {
        "request_id": request.request_id,
        "status": status,
        "opt_out": view(created.record()),
    }})))
}

async fn list_opt_outs(
    crm: web::Data<Crm>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&request)?;
    let tenant_id = tenant_param(&pairs)?;
    let limit = limit_param(&pairs, crm_domain::page::DEFAULT_LIMIT)?;
    let after = param(&pairs, "cursor")
        .map(|text| {
            is_phone(text).then(|| text.to_owned()).ok_or_else(|| {
                ApiError::invalid_query("cursor", "is not a cursor this server issued")
            })
        })
        .transpose()?;
    let page = crm
        .opt_outs(&OptOutQuery {
            tenant_id: tenant_id.clone(),
            after,
            limit,
        })
        .await?;
    let items: Vec<_> = page.items.iter().map(view).collect();
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant_id,
        "count": items.len(),
        "items": items,
        "next_cursor": page.next,
    })))
}

async fn remove_opt_out(
    crm: web::Data<Crm>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let tenant_id = tenant_param(&query_pairs(&request)?)?;
    let phone = path_param(&request, "phone_e164")?;
    if !is_phone(&phone) {
        return Err(ApiError::invalid_query(
            "phone_e164",
            "must be a phone number in E.164 form, such as +5511999998888",
        ));
    }
    let removed = crm.remove_opt_out(&tenant_id, &phone).await?;
    Ok(HttpResponse::Ok().json(json!({
        "tenant_id": tenant_id,
        "phone_e164": phone,
        "removed": removed,
    })))
}
