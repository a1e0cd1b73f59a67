//! The operations endpoints: `GET /health` (the process is up), `GET /ready` (the store
//! can serve), `GET /metrics` and `GET /openapi.json`.

use actix_web::http::Method;
use actix_web::{HttpResponse, web};
use crm_app::{AppError, Crm};
use serde_json::json;

use crate::endpoint::{Access, Endpoint, Failure, Reply, Schema, Tag};
use crate::error::{ApiError, Code};
use crate::metrics;

pub(super) static ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        method: Method::GET,
        path: "/health",
        access: Access::Open,
        operation_id: "check_health",
        tag: Tag::Operations,
        summary: "Liveness",
        description: "The process is up; touches no storage.",
        parameters: &[],
        body: None,
        reply: Reply {
            status: 200,
            description: "The process is up.",
            media_type: "application/json",
            schema: Schema::Inline(|| {
                json!({
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["status"],
                    "properties": {"status": {"type": "string", "const": "ok"}}
                })
            }),
        },
        errors: &[],
        uses_store: false,
        handler: |route| route.to(health),
    },
    Endpoint {
        method: Method::GET,
        path: "/ready",
        access: Access::Open,
        operation_id: "check_readiness",
        tag: Tag::Operations,
        summary: "Readiness",
        description: "The store can serve requests (and, for the file store, take writes).",
        parameters: &[],
        body: None,
        reply: Reply {
            status: 200,
            description: "The store answered.",
            media_type: "application/json",
            schema: Schema::Inline(|| {
                json!({
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["status", "backend"],
                    "properties": {
                        "status": {"type": "string", "const": "ready"},
                        "backend": {"type": "string", "enum": ["file", "postgres"]}
                    }
                })
            }),
        },
        errors: &[Failure::new(
            Code::StorageUnavailable,
            "the store cannot serve requests right now (for the file store: cannot take writes)",
        )],
        uses_store: false,
        handler: |route| route.to(ready),
    },
    Endpoint {
        method: Method::GET,
        path: "/metrics",
        access: Access::Open,
        operation_id: "read_metrics",
        tag: Tag::Operations,
        summary: "Prometheus metrics",
        description: "Counters, gauges and histograms in the Prometheus text exposition format \
            (version 0.0.4), each with its help text.",
        parameters: &[],
        body: None,
        reply: Reply {
            status: 200,
            description: "The metrics, in the Prometheus text exposition format.",
            media_type: "text/plain",
            schema: Schema::Inline(|| json!({"type": "string"})),
        },
        errors: &[],
        uses_store: false,
        handler: |route| route.to(metrics::render),
    },
    Endpoint {
        method: Method::GET,
        path: "/openapi.json",
        access: Access::Open,
        operation_id: "read_openapi",
        tag: Tag::Operations,
        summary: "This OpenAPI document",
        description: "The OpenAPI 3.1 description of every endpoint, with the contracts of \
            `contracts/` as component schemas.",
        parameters: &[],
        body: None,
        reply: Reply {
            status: 200,
            description: "An OpenAPI 3.1 document.",
            media_type: "application/json",
            schema: Schema::Inline(|| {
                json!({
                    "type": "object",
                    "required": ["openapi", "info", "paths", "components"],
                    "properties": {"openapi": {"type": "string", "pattern": "^3\\.1\\.\\d+$"}}
                })
            }),
        },
        errors: &[],
        uses_store: false,
        handler: |route| route.to(serve_openapi),
    },
];

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

/// The OpenAPI document, rendered once at start-up.
#[derive(Debug)]
pub struct OpenApiDocument(pub String);

async fn serve_openapi(document: web::Data<OpenApiDocument>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.0.clone())
}
