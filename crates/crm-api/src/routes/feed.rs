//! `GET /internal/orchestration/events`: the event feed, in commit order, with long-poll.

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};
use crm_app::{Crm, MAX_FEED_WAIT};
use crm_contracts::Contract;
use crm_domain::ids::TenantId;
use crm_domain::page::{DEFAULT_LIMIT, EVENT_CURSOR_PATTERN, EventCursor};
use crm_ports::FeedQuery;
use serde_json::json;

use super::limit_param;
use crate::endpoint::{
    Access, Endpoint, Failure, Location, Parameter, Reply, Schema, Tag, query_violation,
};
use crate::error::{ApiError, Code};
use crate::extract::{param, query_pairs};

pub(super) static ENDPOINTS: &[Endpoint] = &[Endpoint {
    method: Method::GET,
    path: "/internal/orchestration/events",
    access: Access::Internal,
    operation_id: "read_event_feed",
    tag: Tag::Orchestration,
    summary: "Read the event feed",
    description: "Every stored event in commit order, a page at a time. A consumer that keeps \
        following `next_cursor` sees every event once, each after every event that \
        committed before it, however many replicas write at once. `next_cursor` is always \
        there: the same cursor when nothing new matched (with `tenant_id`, it may move past \
        other tenants' events). With `wait_ms` the call returns as \
        soon as an event commits, or empty when the wait ends.",
    parameters: &[
        Parameter {
            name: "after",
            location: Location::Query,
            required: false,
            description: "The `next_cursor` of the previous page; without it the feed starts at \
                the oldest retained event. A cursor past every event is \
                `400 validation_error`; one older than the retention window is \
                `410 cursor_expired`.",
            schema: |_| json!({"type": "string", "pattern": EVENT_CURSOR_PATTERN}),
        },
        super::LIMIT_PARAMETER,
        Parameter {
            name: "wait_ms",
            location: Location::Query,
            required: false,
            description: "How long to wait for an event when none is there yet, 0 to 30000 \
                (0 by default: answer at once).",
            schema: |_| json!({"type": "integer", "minimum": 0, "maximum": max_wait_ms(), "default": 0}),
        },
        Parameter {
            name: "tenant_id",
            location: Location::Query,
            required: false,
            description: "Only this tenant's events.",
            schema: |_| json!({"type": "string", "minLength": 1}),
        },
        Parameter {
            name: "name_prefix",
            location: Location::Query,
            required: false,
            description: "Only events whose name starts with this, such as `crm.followup.`.",
            schema: |_| json!({"type": "string", "minLength": 1}),
        },
    ],
    body: None,
    reply: Reply {
        status: 200,
        description: "Events after the cursor, oldest first, and where to continue.",
        media_type: "application/json",
        schema: Schema::Contract(Contract::EventsFeed),
    },
    errors: &[
        query_violation(
            "a query parameter has a bad value (`limit` not a positive integer, `wait_ms` \
             outside 0..30000, an `after` this server did not issue, an empty filter, a \
             malformed query string)",
        ),
        Failure {
            code: Code::CursorExpired,
            when: "the events after `after` were deleted by retention; `details.oldest_cursor` \
                is where the retained events start",
            details: None,
        },
    ],
    uses_store: true,
    handler: |route| route.to(read_event_feed),
}];

async fn read_event_feed(
    crm: web::Data<Crm>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(&request)?;
    let after = param(&pairs, "after")
        .map(|text| {
            EventCursor::decode(text).ok_or_else(|| {
                ApiError::invalid_query("after", "is not a cursor this server issued")
            })
        })
        .transpose()?;
    let limit = limit_param(&pairs, DEFAULT_LIMIT)?;
    let wait = match param(&pairs, "wait_ms") {
        None => 0,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|millis| *millis <= max_wait_ms())
            .ok_or_else(|| {
                let message = format!("must be a whole number from 0 to {}", max_wait_ms());
                ApiError::invalid_query("wait_ms", message)
            })?,
    };
    let tenant_id = param(&pairs, "tenant_id")
        .map(|text| {
            TenantId::parse(text)
                .ok_or_else(|| ApiError::invalid_query("tenant_id", "must not be empty"))
        })
        .transpose()?;
    let name_prefix = param(&pairs, "name_prefix")
        .map(|text| {
            (!text.is_empty())
                .then(|| text.to_owned())
                .ok_or_else(|| ApiError::invalid_query("name_prefix", "must not be empty"))
        })
        .transpose()?;
    let query = FeedQuery {
        after,
        limit,
        tenant_id,
        name_prefix,
    };
    let page = crm
        .read_feed(&query, std::time::Duration::from_millis(wait))
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "items": page.items,
        "next_cursor": page.next.encode(),
    })))
}

/// The longest `wait_ms` accepted: the use case's bound on a feed read's wait.
fn max_wait_ms() -> u64 {
    u64::try_from(MAX_FEED_WAIT.as_millis()).unwrap_or(u64::MAX)
}
