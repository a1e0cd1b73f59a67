//! `/internal/tenants/{tenant_id}/sending-policy`: a tenant's rate and quiet hours.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use crm_app::{Crm, PolicyInForce};
use crm_contracts::Contract;
use crm_domain::ids::TenantId;
use crm_domain::policy::{PolicyError, QuietHours, SendingPolicy, TimeOfDay, TimeZoneName};
use serde::Deserialize;
use serde_json::json;

use crate::endpoint::{Access, Body, Endpoint, Failure, Location, Parameter, Reply, Schema, Tag};
use crate::error::{ApiError, Code};
use crate::extract::{RawBody, contract_body, path_param};

const TENANT: Parameter = Parameter {
    name: "tenant_id",
    location: Location::Path,
    required: true,
    description: "The tenant.",
    schema: |_| json!({"type": "string", "minLength": 1}),
};

pub(super) static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::GET,
        path: "/internal/tenants/{tenant_id}/sending-policy",
        access: Access::Internal,
        operation_id: "get_sending_policy",
        tag: Tag::Tenants,
        summary: "Read a tenant's sending policy",
        description: "The policy the drain applies: the tenant's own, or (`source: \
            default`) the service's default rate and no quiet hours.",
        parameters: &[TENANT],
        body: None,
        reply: Reply {
            status: 200,
            description: "The policy in force.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::SendingPolicyResponse),
        },
        errors: &[],
        uses_store: true,
        handler: |route| route.to(get_sending_policy),
    },
    Endpoint {
        method: Method::PUT,
        path: "/internal/tenants/{tenant_id}/sending-policy",
        access: Access::Internal,
        operation_id: "put_sending_policy",
        tag: Tag::Tenants,
        summary: "Set a tenant's sending policy",
        description: "Replaces the tenant's policy; every drain of every replica applies it \
            from its next claim. `max_per_second`: no more follow-ups marked sent in any \
            one-second window (null: no limit). `quiet_hours`: a local time window in which \
            due follow-ups stay pending, in each follow-up's own `time_zone` or else the \
            policy's (null: none).",
        parameters: &[TENANT],
        body: Some(Body {
            contract: Contract::SendingPolicyRequest,
            required: true,
            description: "The whole policy.",
        }),
        reply: Reply {
            status: 200,
            description: "The policy now in force.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::SendingPolicyResponse),
        },
        errors: &[Failure::new(
            Code::ValidationError,
            "the body breaks its contract, names a time zone the built-in database does not \
             know, or has quiet hours that start when they end",
        )],
        uses_store: true,
        handler: |route| route.to(put_sending_policy),
    },
    Endpoint {
        method: Method::DELETE,
        path: "/internal/tenants/{tenant_id}/sending-policy",
        access: Access::Internal,
        operation_id: "delete_sending_policy",
        tag: Tag::Tenants,
        summary: "Return a tenant to the default sending policy",
        description: "Removes the tenant's own policy, so that the service's default (the \
            `--default-send-rate`, no quiet hours) applies again from every drain's next \
            claim. A tenant without a policy of its own answers the same.",
        parameters: &[TENANT],
        body: None,
        reply: Reply {
            status: 204,
            description: "The tenant is on the default policy.",
            media_type: "application/json",
            schema: Schema::NoBody,
        },
        errors: &[],
        uses_store: true,
        handler: |route| route.to(delete_sending_policy),
    },
];

#[derive(Deserialize)]
struct PolicyBody {
    max_per_second: Option<u32>,
    quiet_hours: Option<QuietHoursBody>,
}

#[derive(Deserialize)]
struct QuietHoursBody {
    start: String,
    end: String,
    time_zone: String,
}

fn reply(tenant_id: &TenantId, in_force: &PolicyInForce) -> HttpResponse {
    let quiet = in_force.policy.quiet_hours.as_ref().map(|quiet| {
        json!({
            "start": quiet.start.to_string(),
            "end": quiet.end.to_string(),
            "time_zone": quiet.time_zone.as_str(),
        })
    });
    HttpResponse::Ok().json(json!({
        "tenant_id": tenant_id,
        "max_per_second": in_force.policy.max_per_second,
        "quiet_hours": quiet,
        "source": if in_force.own { "tenant" } else { "default" },
    }))
}

fn tenant_of(path: String) -> Result<TenantId, ApiError> {
    // The route matches only a non-empty segment.
    TenantId::parse(path).ok_or(ApiError::NotFound)
}

async fn delete_sending_policy(
    crm: web::Data<Crm>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let tenant_id = tenant_of(path_param(&request, "tenant_id")?)?;
    crm.remove_sending_policy(&tenant_id).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn get_sending_policy(
    crm: web::Data<Crm>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let tenant_id = tenant_of(path_param(&request, "tenant_id")?)?;
    let in_force = crm.sending_policy(&tenant_id).await?;
    Ok(reply(&tenant_id, &in_force))
}

async fn put_sending_policy(
    crm: web::Data<Crm>,
    request: HttpRequest,
    body: RawBody,
) -> Result<HttpResponse, ApiError> {
    let body: PolicyBody = contract_body(
        crm.contracts(),
        Contract::SendingPolicyRequest,
        &body.0,
        None,
    )?;
    let tenant_id = tenant_of(path_param(&request, "tenant_id")?)?;
    let quiet_hours = body
        .quiet_hours
        .map(|quiet| {
            let at = |pointer: &'static str| {
                move |error: PolicyError| ApiError::violation(pointer, error.to_string())
            };
            QuietHours::new(
                TimeOfDay::parse(&quiet.start).map_err(at("/quiet_hours/start"))?,
                TimeOfDay::parse(&quiet.end).map_err(at("/quiet_hours/end"))?,
                TimeZoneName::parse(&quiet.time_zone).map_err(at("/quiet_hours/time_zone"))?,
            )
            .map_err(at("/quiet_hours"))
        })
        .transpose()?;
    let policy = SendingPolicy::new(body.max_per_second, quiet_hours)
        .map_err(|error: PolicyError| ApiError::violation("/max_per_second", error.to_string()))?;
    let in_force = crm.set_sending_policy(&tenant_id, policy).await?;
    Ok(reply(&tenant_id, &in_force))
}
