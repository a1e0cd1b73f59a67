//! The error boundary: every failure becomes one status and one stable `error` word here,
//! and nowhere else. 5xx bodies never carry internals; the cause is logged once.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use crm_app::AppError;
use crm_contracts::Violation;
use crm_domain::workflow::TransitionRefusal;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("body is not JSON: {0}")]
    InvalidJson(String),
    #[error("body breaks the contract")]
    Validation(Vec<Violation>),
    #[error("query parameter {parameter} {message}")]
    InvalidQuery { parameter: String, message: String },
    #[error("tenant_id query parameter is missing")]
    MissingTenantId,
    #[error("correlation_id query parameter is missing")]
    MissingCorrelationId,
    #[error("transition refused: {0}")]
    Transition(TransitionRefusal),
    #[error("the follow-up names a campaign the tenant does not have")]
    CampaignNotFound,
    #[error("not found")]
    NotFound,
    #[error("id already used by another tenant")]
    IdConflict,
    #[error("body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request was not received within {} ms", timeout.as_millis())]
    RequestTimeout { timeout: std::time::Duration },
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("storage unavailable")]
    StorageUnavailable(#[source] AppError),
    #[error("internal error")]
    Internal(#[source] AppError),
}

impl ApiError {
    /// The wire word of SPEC §2's error table.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::Validation(_) | Self::InvalidQuery { .. } => "validation_error",
            Self::MissingTenantId => "missing_tenant_id",
            Self::MissingCorrelationId => "missing_correlation_id",
            Self::Transition(_) => "transition_error",
            Self::CampaignNotFound => "campaign_not_found",
            Self::NotFound => "not_found",
            Self::IdConflict => "id_conflict",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::Unauthorized => "unauthorized",
            Self::StorageUnavailable(_) => "storage_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            Self::InvalidJson(message) => Some(json!({ "message": message })),
            Self::Validation(violations) => Some(json!(violations)),
            Self::InvalidQuery { parameter, message } => {
                Some(json!([{ "parameter": parameter, "message": message }]))
            }
            Self::Transition(refusal) => Some(match refusal.expected_trigger() {
                Some(expected) => json!({ "code": refusal.code(), "expected_trigger": expected }),
                None => json!({ "code": refusal.code() }),
            }),
            Self::PayloadTooLarge { limit } => Some(json!({ "limit_bytes": limit })),
            Self::RequestTimeout { timeout } => {
                Some(json!({ "timeout_ms": timeout.as_millis() as u64 }))
            }
            Self::MissingTenantId
            | Self::MissingCorrelationId
            | Self::CampaignNotFound
            | Self::NotFound
            | Self::IdConflict
            | Self::Unauthorized
            | Self::StorageUnavailable(_)
            | Self::Internal(_) => None,
        }
    }

    pub fn invalid_query(parameter: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidQuery {
            parameter: parameter.into(),
            message: message.into(),
        }
    }

    /// One violation of the body contract found after schema validation (a value the
    /// schema accepts but the service cannot represent).
    pub fn violation(pointer: &str, message: impl Into<String>) -> Self {
        Self::Validation(vec![Violation {
            pointer: pointer.to_owned(),
            message: message.into(),
        }])
    }
}

impl From<AppError> for ApiError {
    fn from(error: AppError) -> Self {
        match error {
            AppError::Transition(refusal) => Self::Transition(refusal),
            AppError::NotFound => Self::NotFound,
            AppError::CampaignNotFound => Self::CampaignNotFound,
            AppError::IdConflict => Self::IdConflict,
            AppError::Unavailable(_) => Self::StorageUnavailable(error),
            AppError::Internal { .. } => Self::Internal(error),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_)
            | Self::Validation(_)
            | Self::InvalidQuery { .. }
            | Self::MissingTenantId
            | Self::MissingCorrelationId
            | Self::Transition(_)
            | Self::CampaignNotFound => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::IdConflict => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::StorageUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::StorageUnavailable(source) | Self::Internal(source) = self {
            tracing::error!(error = %ErrorChain(source), code = self.code(), "request failed");
        }
        let mut body = json!({ "error": self.code() });
        if let Some(details) = self.details() {
            body["details"] = details;
        }
        HttpResponse::build(self.status_code()).json(body)
    }
}

/// Displays an error with all its sources, `a: b: c`.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
