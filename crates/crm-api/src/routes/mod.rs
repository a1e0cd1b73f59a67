//! One module per resource, each declaring its endpoints next to their handlers;
//! `configure` mounts every declared endpoint.

mod campaigns;
mod feed;
mod follow_ups;
mod operations;
mod opt_outs;
mod outbound;
mod tenants;
mod trace;
mod worker;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError, web};
use crm_domain::ids::{CorrelationId, TenantId};
use crm_domain::page::{CURSOR_PATTERN, Cursor, DEFAULT_LIMIT, MAX_LIMIT};
use crm_domain::timestamp::Timestamp;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth;
use crate::endpoint::{Access, Endpoint, Location, Parameter};
use crate::error::{ApiError, Code};
use crate::extract::{param, path_param, query_pairs};

pub use operations::OpenApiDocument;

/// Every endpoint of the service, in the order the OpenAPI document lists them.
pub fn endpoints() -> impl Iterator<Item = &'static Endpoint> {
    [
        campaigns::ENDPOINTS,
        follow_ups::ENDPOINTS,
        opt_outs::ENDPOINTS,
        tenants::ENDPOINTS,
        worker::ENDPOINTS,
        outbound::ENDPOINTS,
        trace::ENDPOINTS,
        feed::ENDPOINTS,
        operations::ENDPOINTS,
    ]
    .into_iter()
    .flatten()
}

/// The declared paths, each once, in declaration order.
pub fn paths() -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = Vec::new();
    for endpoint in endpoints() {
        if !paths.contains(&endpoint.path) {
            paths.push(endpoint.path);
        }
    }
    paths
}

/// Mounts every declared endpoint: one resource per path, admitted by `admit`,
/// answering its other methods with `405` and the `Allow` header.
pub fn configure(config: &mut web::ServiceConfig) {
    for path in paths() {
        let mut methods: Vec<&str> = endpoints()
            .filter(|e| e.path == path)
            .map(|e| e.method.as_str())
            .collect();
        methods.sort_unstable();
        let allowed = methods.join(", ");
        let mut resource = web::resource(path).default_service(web::to(move || {
            let mut response = Code::MethodNotAllowed.response();
            if let Ok(value) = header::HeaderValue::from_str(&allowed) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            async move { response }
        }));
        for endpoint in endpoints().filter(|e| e.path == path) {
            resource = resource.route((endpoint.handler)(web::method(endpoint.method.clone())));
        }
        config.service(resource.wrap(from_fn(move |request, next| admit(path, request, next))));
    }
}

/// Admits a request to the endpoint of its path and method: the token of the endpoint's
/// access first, then its query string, which may name only the parameters the endpoint
/// declares (`?stauts=sent` must not quietly list everything).
async fn admit(
    path: &'static str,
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let served: Vec<&Endpoint> = endpoints().filter(|e| e.path == path).collect();
    // Every endpoint of a path shares its access (a test checks it).
    let access = served.first().map_or(Access::Open, |e| e.access);
    let endpoint = served.into_iter().find(|e| e.method == *request.method());
    if let Some(body) = endpoint.and_then(|endpoint| endpoint.body.as_ref()) {
        request.extensions_mut().insert(body.size);
    }
    let admitted = auth::check(access, &request).and_then(|()| match endpoint {
        Some(endpoint) => known_parameters(endpoint, &request),
        // A method the path does not serve: `405` says so.
        None => Ok(()),
    });
    if let Err(error) = admitted {
        let (request, _) = request.into_parts();
        return Ok(ServiceResponse::new(request, error.error_response()).map_into_right_body());
    }
    next.call(request)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// Refuses a query string that names a parameter `endpoint` does not declare, or that
/// cannot be decoded.
fn known_parameters(endpoint: &Endpoint, request: &ServiceRequest) -> Result<(), ApiError> {
    for (name, _) in query_pairs(request.request())? {
        let declared = endpoint
            .parameters
            .iter()
            .any(|parameter| parameter.location == Location::Query && parameter.name == name);
        if !declared {
            return Err(ApiError::invalid_query(
                name,
                "is not a parameter of this route",
            ));
        }
    }
    Ok(())
}

/// `tenant_id`, which every list needs.
pub(crate) const TENANT_PARAMETER: Parameter = Parameter {
    name: "tenant_id",
    location: Location::Query,
    required: true,
    description: "The tenant whose records are listed; missing or empty is \
        `400 missing_tenant_id`.",
    schema: |_| json!({"type": "string", "minLength": 1}),
};

/// `tenant_id` of a single record: only its owner sees it.
pub(crate) const OWNER_PARAMETER: Parameter = Parameter {
    name: "tenant_id",
    location: Location::Query,
    required: true,
    description: "The tenant the record belongs to; another tenant's record is \
        `404 not_found`, as an unknown one. Missing or empty is `400 missing_tenant_id`.",
    schema: |_| json!({"type": "string", "minLength": 1}),
};

pub(crate) const LIMIT_PARAMETER: Parameter = Parameter {
    name: "limit",
    location: Location::Query,
    required: false,
    description: "Page size, 1 to 1000, 100 by default; any other value is \
        `400 validation_error`.",
    schema: |_| json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
};

pub(crate) const CURSOR_PARAMETER: Parameter = Parameter {
    name: "cursor",
    location: Location::Query,
    required: false,
    description: "The `next_cursor` of the previous page. Text of another shape is \
        `400 validation_error`.",
    schema: |_| json!({"type": "string", "pattern": CURSOR_PATTERN}),
};

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

/// The record id in path parameter `name`: text that does not decode, or is not an id
/// (`parse`), names no record at all.
fn record_id<T>(
    request: &HttpRequest,
    name: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ApiError> {
    path_param(request, name)
        .ok()
        .and_then(|text| parse(&text))
        .ok_or(ApiError::NotFound)
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

/// `limit`: 1 to `MAX_LIMIT`, `default` when absent.
fn limit_param(pairs: &[(String, String)], default: usize) -> Result<usize, ApiError> {
    match param(pairs, "limit") {
        None => Ok(default),
        Some(text) => positive_integer(text)
            .filter(|limit| *limit <= MAX_LIMIT)
            .ok_or_else(|| {
                ApiError::invalid_query(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_LIMIT}"),
                )
            }),
    }
}

/// `limit` (default 100) and `cursor` of a list.
fn page_params(pairs: &[(String, String)]) -> Result<(usize, Option<Cursor>), ApiError> {
    let limit = limit_param(pairs, DEFAULT_LIMIT)?;
    let cursor = param(pairs, "cursor")
        .map(|text| {
            Cursor::decode(text).ok_or_else(|| {
                ApiError::invalid_query("cursor", "is not a cursor this server issued")
            })
        })
        .transpose()?;
    Ok((limit, cursor))
}

/// A property schema of a contract without its description, so that enums in parameters
/// follow the contracts.
fn contract_property(
    contracts: &crm_contracts::Contracts,
    contract: crm_contracts::Contract,
    property: &str,
) -> Value {
    let mut schema = contracts.schema(contract)["properties"][property].clone();
    if let Some(map) = schema.as_object_mut() {
        map.remove("description");
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_has_one_access_and_its_family_prefix() {
        for path in paths() {
            let served: Vec<&Endpoint> = endpoints().filter(|e| e.path == path).collect();
            assert!(
                served.iter().all(|e| e.access == served[0].access),
                "{path}"
            );
            let family = match served[0].access {
                Access::Api => "/v1/",
                Access::Internal => "/internal/",
                Access::Open => "/",
            };
            assert!(path.starts_with(family), "{path} is not under {family}");
        }
    }

    #[test]
    fn operation_ids_and_method_path_pairs_are_declared_once() {
        let mut ids = std::collections::HashSet::new();
        let mut routes = std::collections::HashSet::new();
        for endpoint in endpoints() {
            assert!(
                ids.insert(endpoint.operation_id),
                "{}",
                endpoint.operation_id
            );
            assert!(
                routes.insert((endpoint.method.clone(), endpoint.path)),
                "{} {}",
                endpoint.method,
                endpoint.path
            );
        }
    }

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
