//! One module per resource; `configure` mounts them all.

mod campaigns;
mod follow_ups;
mod health;
mod trace;
mod worker;

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use crm_domain::ids::{CorrelationId, TenantId};
use crm_domain::page::{Cursor, DEFAULT_LIMIT};
use crm_domain::timestamp::Timestamp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::ApiError;
use crate::extract::param;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(resource("/health", "GET").route(web::get().to(health::health)))
        .service(resource("/ready", "GET").route(web::get().to(health::ready)))
        .service(
            resource("/v1/crm/campaigns", "GET, POST")
                .route(web::post().to(campaigns::create_campaign))
                .route(web::get().to(campaigns::list_campaigns)),
        )
        .service(
            resource("/v1/crm/campaigns/{campaign_id}/state", "PATCH")
                .route(web::patch().to(campaigns::advance_campaign)),
        )
        .service(
            resource("/v1/crm/followups", "GET, POST")
                .route(web::post().to(follow_ups::create_follow_up))
                .route(web::get().to(follow_ups::list_follow_ups)),
        )
        .service(
            resource("/internal/worker/crm-followups/drain", "POST")
                .route(web::post().to(worker::drain_follow_ups)),
        )
        .service(
            resource("/internal/orchestration/trace", "GET").route(web::get().to(trace::trace)),
        );
}

/// A path whose other methods answer `405` with the `Allow` header.
pub(crate) fn resource(path: &str, allowed: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, allowed))
            .json(json!({ "error": "method_not_allowed" }))
    }))
}

/// The reply of a create or update: the stored record under `record_name`.
fn command_reply(
    request_id: Uuid,
    record_name: &str,
    record: Value,
    status: &str,
    correlation_id: CorrelationId,
    event: Option<&str>,
) -> HttpResponse {
    let mut reply = json!({
        "response": {
            "request_id": request_id,
            "status": status,
            "orchestration": {
                "correlation_id": correlation_id,
                "lifecycle_event_name": event,
            },
        }
    });
    reply["response"][record_name] = record;
    HttpResponse::Ok().json(reply)
}

fn tenant(text: String, pointer: &str) -> Result<TenantId, ApiError> {
    TenantId::parse(text).ok_or_else(|| ApiError::violation(pointer, "must not be empty"))
}

fn timestamp(text: &str, pointer: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse(text).map_err(|error| ApiError::violation(pointer, error.to_string()))
}

/// The reply of a list: one page and where the next starts.
fn list_reply(
    tenant_id: &TenantId,
    items: Vec<impl serde::Serialize>,
    next: Option<Cursor>,
) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "tenant_id": tenant_id,
        "count": items.len(),
        "items": items,
        "next_cursor": next.map(|cursor| cursor.encode()),
    }))
}

/// A whole number above zero written in decimal digits, however large (a value past
/// `usize` saturates: every caller caps it anyway).
fn positive_integer(text: &str) -> Option<usize> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = text.trim_start_matches('0');
    match significant.len() {
        0 => None,
        1..=18 => significant.parse().ok(),
        _ => Some(usize::MAX),
    }
}

/// The `tenant_id` every list needs.
fn tenant_param(pairs: &[(String, String)]) -> Result<TenantId, ApiError> {
    param(pairs, "tenant_id")
        .and_then(TenantId::parse)
        .ok_or(ApiError::MissingTenantId)
}

/// `limit` (1.., default 100; the use case caps it) and `cursor` of a list.
fn page_params(pairs: &[(String, String)]) -> Result<(usize, Option<Cursor>), ApiError> {
    let limit = match param(pairs, "limit") {
        None => DEFAULT_LIMIT,
        Some(text) => positive_integer(text)
            .ok_or_else(|| ApiError::invalid_query("limit", "must be a positive integer"))?,
    };
    let cursor = param(pairs, "cursor")
        .map(|text| {
            Cursor::decode(text).ok_or_else(|| {
                ApiError::invalid_query("cursor", "is not a cursor this server issued")
            })
        })
        .transpose()?;
    Ok((limit, cursor))
}

#[cfg(test)]
mod tests {
    use super::positive_integer;

    #[test]
    fn limits_are_decimal_digits_above_zero_of_any_size() {
        assert_eq!(positive_integer("7"), Some(7));
        assert_eq!(positive_integer("007"), Some(7));
        assert_eq!(
            positive_integer("3298813592504923120750529871872"),
            Some(usize::MAX)
        );
        for bad in ["", "0", "000", "-1", "+1", "1.5", "abc", " 1"] {
            assert_eq!(positive_integer(bad), None, "{bad:?}");
        }
    }
}
