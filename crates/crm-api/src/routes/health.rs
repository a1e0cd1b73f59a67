//! `GET /health` (the process is up) and `GET /ready` (the store can serve).

use actix_web::{HttpResponse, web};
use crm_app::{AppError, Crm};
use serde_json::json;

use crate::error::ApiError;

pub async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn ready(crm: web::Data<Crm>) -> Result<HttpResponse, ApiError> {
    let backend = crm.store().backend();
    crm.store()
        .ping()
        .await
        .map_err(|error| ApiError::StorageUnavailable(AppError::Unavailable(error)))?;
    Ok(HttpResponse::Ok().json(json!({ "status": "ready", "backend": backend })))
}
