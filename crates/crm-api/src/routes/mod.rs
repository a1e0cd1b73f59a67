//! One module per resource; `configure` mounts them all.

mod campaigns;
mod follow_ups;
mod health;
mod trace;
mod worker;

use actix_web::web;
use crm_domain::ids::TenantId;
use crm_domain::page::{Cursor, DEFAULT_LIMIT, MAX_LIMIT};

use crate::error::ApiError;
use crate::extract::param;

pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/health", web::get().to(health::health))
        .route("/ready", web::get().to(health::ready))
        .service(
            web::scope("/v1/crm")
                .route("/campaigns", web::post().to(campaigns::create_campaign))
                .route("/campaigns", web::get().to(campaigns::list_campaigns))
                .route(
                    "/campaigns/{campaign_id}/state",
                    web::patch().to(campaigns::advance_campaign),
                )
                .route("/followups", web::post().to(follow_ups::create_follow_up))
                .route("/followups", web::get().to(follow_ups::list_follow_ups)),
        )
        .service(
            web::scope("/internal")
                .route(
                    "/worker/crm-followups/drain",
                    web::post().to(worker::drain_follow_ups),
                )
                .route("/orchestration/trace", web::get().to(trace::trace)),
        );
}

/// The `tenant_id` every list needs.
fn tenant_param(pairs: &[(String, String)]) -> Result<TenantId, ApiError> {
    param(pairs, "tenant_id")
        .and_then(TenantId::parse)
        .ok_or(ApiError::MissingTenantId)
}

/// `limit` (1.., default 100, above 1000 served as 1000) and `cursor` of a list.
fn page_params(pairs: &[(String, String)]) -> Result<(usize, Option<Cursor>), ApiError> {
    let limit = match param(pairs, "limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<u64>() {
            Ok(0) | Err(_) => {
                return Err(ApiError::invalid_query(
                    "limit",
                    "must be a positive integer",
                ));
            }
            Ok(limit) => usize::try_from(limit).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
        },
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
