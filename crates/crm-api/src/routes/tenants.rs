//! `/internal/tenants/{tenant_id}/sending-policy`: a tenant's rate and quiet hours.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use crm_app::{Crm, PolicyInForce};
use crm_contracts::Contract;
use crm_domain::ids::TenantId;
use crm_domain::policy::{
    AutoPause, FailureRatio, PolicyError, QuietHours, SendingPolicy, TimeOfDay, TimeZoneName,
};
use serde::Deserialize;
use serde_json::json;

use crate::endpoint::{
    Access, Body, BodySize, Endpoint, Failure, Location, Parameter, Reply, Schema, Tag,
};
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
        description: "Replaces the tenant's whole policy (a limit left out is none); every \
            drain of every replica applies it from its next claim, and held follow-ups stay \
            pending until it allows them. `max_per_second`: follow-ups marked sent in any \
            one-second window. `max_per_second_per_sender`: the same for each sender. \
            `daily_recipient_limit`: distinct recipients in any moving 24 hours (a \
            recipient counted already goes out free). `recipient_min_interval_ms`: the \
            least time between two sends to one recipient. `recipient_daily_cap`: sends to \
            one recipient in any moving 24 hours. `quiet_hours`: a local time window in \
            which due follow-ups stay pending, in each follow-up's own `time_zone` or else \
            the policy's. `auto_pause`: pause a running campaign when more than \
            `max_failure_ratio` of its last `window` finished deliveries failed. null: no \
            limit of that kind.",
        parameters: &[TENANT],
        body: Some(Body {
            size: BodySize::Standard,
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
            "the body breaks its contract (a limit out of its range is named by its pointer), \
             names a time zone the built-in database does not know, or has quiet hours that \
             start when they end",
        )],
        uses_store: true,
        handler: |route| route.to(put_sending_policy),
    },
    Endpoint {
        method: Method::GET,
        path: "/internal/tenants/{tenant_id}/sending-status",
        access: Access::Internal,
        operation_id: "get_sending_status",
        tag: Tag::Tenants,
        summary: "Why a tenant's work waits",
        description: "The tenant's due pending follow-ups counted by the first rule that holds \
            each (`campaign_paused`, `quiet_hours`, `rate`, `sender_rate`, \
            `daily_recipient_limit`, `recipient_interval`, `recipient_daily_cap`), the \
            day's budget of distinct recipients (`used`, `limit`, `next_release_at`) and \
            the policy in force: what a drain would do now, exact at the moment it is read \
            (over the oldest 100000 due follow-ups).",
        parameters: &[TENANT],
        body: None,
        reply: Reply {
            status: 200,
            description: "The tenant's sending status.",
            media_type: "application/json",
            schema: Schema::Contract(Contract::SendingStatusResponse),
        },
        errors: &[],
        uses_store: true,
        handler: |route| route.to(get_sending_status),
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
    max_per_second_per_sender: Option<u32>,
    daily_recipient_limit: Option<u32>,
    recipient_min_interval_ms: Option<u32>,
    recipient_daily_cap: Option<u32>,
    auto_pause: Option<AutoPauseBody>,
}

#[derive(Deserialize)]
struct AutoPauseBody {
    window: u32,
    max_failure_ratio: f64,
}

#[derive(Deserialize)]
struct QuietHoursBody {
    start: String,
    end: String,
    time_zone: String,
}

fn reply(tenant_id: &TenantId, in_force: &PolicyInForce) -> HttpResponse {
    HttpResponse::Ok().json(policy_view(tenant_id, in_force))
}

/// The policy in force as the wire shows it.
fn policy_view(tenant_id: &TenantId, in_force: &PolicyInForce) -> serde_json::Value {
    let policy = &in_force.policy;
    let quiet = policy.quiet_hours.as_ref().map(|quiet| {
        json!({
            "start": quiet.start.to_string(),
            "end": quiet.end.to_string(),
            "time_zone": quiet.time_zone.as_str(),
        })
    });
    json!({
        "tenant_id": tenant_id,
        "max_per_second": policy.max_per_second,
        "quiet_hours": quiet,
        "max_per_second_per_sender": policy.max_per_second_per_sender,
        "daily_recipient_limit": policy.daily_recipient_limit,
        "recipient_min_interval_ms": policy.recipient_min_interval_ms,
        "recipient_daily_cap": policy.recipient_daily_cap,
        "auto_pause": policy.auto_pause.map(|auto_pause| json!({
            "window": auto_pause.window,
            "max_failure_ratio": auto_pause.max_failure_ratio.as_f64(),
        })),
        "source": if in_force.own { "tenant" } else { "default" },
    })
}

async fn get_sending_status(
    crm: web::Data<Crm>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let tenant_id = tenant_of(path_param(&request, "tenant_id")?)?;
    let status = crm.sending_status(&tenant_id).await?;
    let held: serde_json::Map<String, serde_json::Value> = status
        .held
        .iter()
        .map(|(reason, count)| (reason.as_str().to_owned(), json!(count)))
        .collect();
    let mut body = json!({
        "tenant_id": tenant_id,
        "due_pending": status.due_pending,
        "held": held,
        "daily_recipients": {
            "used": status.recipients_used,
            "limit": status.recipient_limit,
            "next_release_at": status.next_release_at,
        },
        "policy": policy_view(&tenant_id, &status.policy),
    });
    if status.truncated {
        body["truncated"] = json!(true);
    }
    Ok(HttpResponse::Ok().json(body))
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
    let auto_pause = body
        .auto_pause
        .map(|auto_pause| {
            let at = |pointer: &'static str| {
                move |error: PolicyError| ApiError::violation(pointer, error.to_string())
            };
            let ratio = FailureRatio::new(auto_pause.max_failure_ratio)
                .map_err(at("/auto_pause/max_failure_ratio"))?;
            AutoPause::new(auto_pause.window, ratio).map_err(at("/auto_pause/window"))
        })
        .transpose()?;
    let policy = SendingPolicy {
        max_per_second: body.max_per_second,
        quiet_hours,
        max_per_second_per_sender: body.max_per_second_per_sender,
        daily_recipient_limit: body.daily_recipient_limit,
        recipient_min_interval_ms: body.recipient_min_interval_ms,
        recipient_daily_cap: body.recipient_daily_cap,
        auto_pause,
    }
    .checked()
    .map_err(|error| ApiError::violation(&format!("/{}", error.field()), error.to_string()))?;
    let in_force = crm.set_sending_policy(&tenant_id, policy).await?;
    Ok(reply(&tenant_id, &in_force))
}
