//! `GET /internal/orchestration/trace?correlation_id=…`.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use crm_app::Crm;
use crm_contracts::Contract;
use crm_domain::ids::{CorrelationId, TenantId};
use serde_json::json;

use crate::endpoint::{
    Access, Endpoint, Failure, Location, Parameter, Reply, Schema, query_violation,
};
use crate::error::{ApiError, Code};
use crate::extract::{param, query_pairs};

pub(super) static ENDPOINTS: &[Endpoint] = &[Endpoint {
    method: Method::GET,
    path: "/internal/orchestration/trace",
    access: Access::Internal,
    operation_id: "read_trace",
    tag: "orchestration",
    summary: "Read the events of one correlation id",
    description: "The orchestration events of one correlation id, oldest first. `commands` \
        stays empty; it is kept for clients of the existing implementation.",
    parameters: &[
        Parameter {
            name: "correlation_id",
            location: Location::Query,
            required: true,
            description: "The correlation id; missing or empty is \
                `400 missing_correlation_id`, and text that is not a uuid simply has no \
                events.",
            schema: |_| serde_json::json!({"type": "string", "minLength": 1}),
        },
        Parameter {
            name: "tenant_id",
            location: Location::Query,
            required: false,
            description: "Only this tenant's events. Correlation ids come from clients, so a \
                caller acting for one tenant should always say which.",
            schema: |_| serde_json::json!({"type": "string", "minLength": 1}),
        },
    ],
    body: None,
    reply: Reply {
        description: "The events, oldest first.",
        media_type: "application/json",
        schema: Schema::Contract(Contract::TraceResponse),
    },
    errors: &[
        Failure::new(
            Code::MissingCorrelationId,
            "the `correlation_id` query parameter is missing or empty",
        ),
        query_violation("the query string is malformed"),
    ],
    uses_store: true,
    handler: |route| route.to(trace),
}];

async fn trace(crm: web::Data<Crm>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&request)?;
    let correlation = param(&pairs, "correlation_id")
        .filter(|text| !text.is_empty())
        .ok_or(ApiError::MissingCorrelationId)?;
    // Every correlation id we issue is a uuid; any other text simply has no events.
    let tenant_id = param(&pairs, "tenant_id")
        .map(|text| {
            TenantId::parse(text)
                .ok_or_else(|| ApiError::invalid_query("tenant_id", "must not be empty"))
        })
        .transpose()?;
    let events = match CorrelationId::parse(correlation) {
        Some(correlation_id) => crm.trace(correlation_id, tenant_id.as_ref()).await?,
        None => Vec::new(),
    };
    Ok(HttpResponse::Ok().json(json!({
        "correlation_id": correlation,
        "commands": [],
        "events": events,
    })))
}
