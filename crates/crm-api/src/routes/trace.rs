//! `GET /internal/orchestration/trace?correlation_id=…`.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use crm_app::Crm;
use crm_contracts::Contract;
use crm_domain::ids::{CorrelationId, TenantId};
use crm_domain::page::{EVENT_CURSOR_PATTERN, EventCursor, MAX_LIMIT};
use crm_ports::{EventPage, TraceQuery};
use serde_json::json;

use super::limit_param;
use crate::endpoint::{
    Access, Endpoint, Failure, Location, Parameter, Reply, Schema, Tag, query_violation,
};
use crate::error::{ApiError, Code};
use crate::extract::{param, query_pairs};

/// A trace answers whole, up to this many events, unless asked for fewer.
const TRACE_LIMIT: usize = MAX_LIMIT;

pub(super) static ENDPOINTS: &[Endpoint] = &[Endpoint {
    method: Method::GET,
    path: "/internal/orchestration/trace",
    access: Access::Internal,
    operation_id: "read_trace",
    tag: Tag::Orchestration,
    summary: "Read the events of one correlation id",
    description: "The orchestration events of one correlation id, oldest first, a page at a \
        time (`next_cursor` is null on the last page). `commands` stays empty; it is kept for \
        clients of the existing implementation.",
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
            description: "Only this tenant's events. Without it the trace holds every \
                tenant's events of the correlation id: the caller holds the internal token, \
                which reads every tenant's events through the event feed too. Correlation \
                ids come from clients, so a caller acting for one tenant should always say \
                which.",
            schema: |_| serde_json::json!({"type": "string", "minLength": 1}),
        },
        Parameter {
            name: "limit",
            location: Location::Query,
            required: false,
            description: "Page size, 1 to 1000, 1000 by default; any other value is \
                `400 validation_error`.",
            schema: |_| serde_json::json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": TRACE_LIMIT}),
        },
        Parameter {
            name: "cursor",
            location: Location::Query,
            required: false,
            description: "The `next_cursor` of the previous page. Text of another shape is \
                `400 validation_error`.",
            schema: |_| serde_json::json!({"type": "string", "pattern": EVENT_CURSOR_PATTERN}),
        },
    ],
    body: None,
    reply: Reply {
        status: 200,
        description: "The events, oldest first.",
        media_type: "application/json",
        schema: Schema::Contract(Contract::TraceResponse),
    },
    errors: &[
        Failure::new(
            Code::MissingCorrelationId,
            "the `correlation_id` query parameter is missing or empty",
        ),
        query_violation(
            "a query parameter has a bad value (`limit` not a positive integer, a `cursor` \
             this server did not issue, an empty `tenant_id`, a malformed query string)",
        ),
    ],
    uses_store: true,
    handler: |route| route.to(trace),
}];

async fn trace(crm: web::Data<Crm>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&request)?;
    let correlation = param(&pairs, "correlation_id")
        .filter(|text| !text.is_empty())
        .ok_or(ApiError::MissingCorrelationId)?;
    let tenant_id = param(&pairs, "tenant_id")
        .map(|text| {
            TenantId::parse(text)
                .ok_or_else(|| ApiError::invalid_query("tenant_id", "must not be empty"))
        })
        .transpose()?;
    let limit = limit_param(&pairs, TRACE_LIMIT)?;
    let after = param(&pairs, "cursor")
        .map(|text| {
            EventCursor::decode(text).ok_or_else(|| {
                ApiError::invalid_query("cursor", "is not a cursor this server issued")
            })
        })
        .transpose()?;
    // Every correlation id we issue is a uuid; any other text simply has no events.
    let page = match CorrelationId::parse(correlation) {
        Some(correlation_id) => {
            let query = TraceQuery {
                correlation_id,
                tenant_id,
                after,
                limit,
            };
            crm.trace(&query).await?
        }
        None => EventPage {
            items: Vec::new(),
            next: None,
        },
    };
    Ok(HttpResponse::Ok().json(json!({
        "correlation_id": correlation,
        "commands": [],
        "events": page.items,
        "next_cursor": page.next.map(|cursor| cursor.encode()),
    })))
}
