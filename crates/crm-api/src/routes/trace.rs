//! `GET /internal/orchestration/trace?correlation_id=…`.

use actix_web::{HttpRequest, HttpResponse, web};
use crm_app::Crm;
use crm_domain::ids::{CorrelationId, TenantId};
use serde_json::json;

use crate::error::ApiError;
use crate::extract::{param, query_pairs};

pub async fn trace(crm: web::Data<Crm>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
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
