//! The error boundary: every failure becomes one status and one stable `error` word here,
//! and nowhere else. 5xx bodies never carry internals; the cause is logged once.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use crm_app::{AppError, MetadataOf};
use crm_contracts::Violation;
use crm_domain::page::EventCursor;
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
    /// The follow-up is not pending, so the command cannot apply.
    #[error("the follow-up is {0}, not pending")]
    NotPending(crm_domain::follow_up::FollowUpStatus),
    #[error("the follow-up names a campaign the tenant does not have")]
    CampaignNotFound,
    #[error("not found")]
    NotFound,
    #[error("id already used by another tenant")]
    IdConflict,
    #[error("the events after this cursor were removed by retention")]
    CursorExpired { oldest: EventCursor },
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

/// Every `error` word of the wire contract with its status: the one table of them. The
/// HTTP error body, the OpenAPI document and the tests all read it from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    InvalidJson,
    ValidationError,
    MissingTenantId,
    MissingCorrelationId,
    TransitionError,
    CampaignNotFound,
    Unauthorized,
    NotFound,
    IdConflict,
    CursorExpired,
    RequestTimeout,
    PayloadTooLarge,
    InternalError,
    StorageUnavailable,
}

impl Code {
    pub const ALL: [Code; 14] = [
        Code::InvalidJson,
        Code::ValidationError,
        Code::MissingTenantId,
        Code::MissingCorrelationId,
        Code::TransitionError,
        Code::CampaignNotFound,
        Code::Unauthorized,
        Code::NotFound,
        Code::IdConflict,
        Code::CursorExpired,
        Code::RequestTimeout,
        Code::PayloadTooLarge,
        Code::InternalError,
        Code::StorageUnavailable,
    ];

    /// The stable `error` word.
    pub fn word(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::ValidationError => "validation_error",
            Self::MissingTenantId => "missing_tenant_id",
            Self::MissingCorrelationId => "missing_correlation_id",
            Self::TransitionError => "transition_error",
            Self::CampaignNotFound => "campaign_not_found",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::IdConflict => "id_conflict",
            Self::CursorExpired => "cursor_expired",
            Self::RequestTimeout => "request_timeout",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InternalError => "internal_error",
            Self::StorageUnavailable => "storage_unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson
            | Self::ValidationError
            | Self::MissingTenantId
            | Self::MissingCorrelationId
            | Self::TransitionError
            | Self::CampaignNotFound => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::IdConflict => StatusCode::CONFLICT,
            Self::CursorExpired => StatusCode::GONE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            Self::StorageUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// When the word is sent, for the OpenAPI document (an endpoint may say it more
    /// precisely).
    pub fn meaning(self) -> &'static str {
        match self {
            Self::InvalidJson => "the body is not JSON, or repeats a key within one object",
            Self::ValidationError => {
                "the request breaks its contract; `details` lists each violation"
            }
            Self::MissingTenantId => "the `tenant_id` query parameter is missing or empty",
            Self::MissingCorrelationId => {
                "the `correlation_id` query parameter is missing or empty"
            }
            Self::TransitionError => "the workflow refuses the transition",
            Self::CampaignNotFound => "the follow-up names a campaign the tenant does not have",
            Self::Unauthorized => {
                "a bearer token is configured for this route and the request's is missing or wrong"
            }
            Self::NotFound => "the tenant has no such record",
            Self::IdConflict => "the id is already used by another tenant",
            Self::CursorExpired => "the events after the cursor were deleted by retention",
            Self::RequestTimeout => {
                "the request was not received whole within the configured time \
                 (`--request-timeout-ms`)"
            }
            Self::PayloadTooLarge => {
                "the body is over the configured limit (`--body-limit`, 64 KiB by default)"
            }
            Self::InternalError => {
                "an unexpected failure; the body carries no internals and the cause is logged"
            }
            Self::StorageUnavailable => {
                "the store cannot be reached in time (bounded by `--pg-timeout-ms`); a write's \
                 outcome is then unknown, and repeating it with the same ids or external_key \
                 is always safe"
            }
        }
    }

    /// A `details` value as the word carries it, for examples.
    pub fn example_details(self) -> Option<Value> {
        match self {
            Self::InvalidJson => Some(json!({"message": "expected value at line 1 column 1"})),
            Self::ValidationError => Some(json!([
                {"pointer": "/request/request_id", "message": "\"x\" is not a \"uuid\""}
            ])),
            Self::TransitionError => {
                Some(json!({"code": "trigger_mismatch", "expected_trigger": "schedule_campaign"}))
            }
            Self::RequestTimeout => Some(json!({"timeout_ms": 10000})),
            Self::CursorExpired => Some(json!({"oldest_cursor": "e1_1200"})),
            Self::PayloadTooLarge => Some(json!({"limit_bytes": 65536})),
            Self::MissingTenantId
            | Self::MissingCorrelationId
            | Self::CampaignNotFound
            | Self::Unauthorized
            | Self::NotFound
            | Self::IdConflict
            | Self::InternalError
            | Self::StorageUnavailable => None,
        }
    }
}

impl ApiError {
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidJson(_) => Code::InvalidJson,
            Self::Validation(_) | Self::InvalidQuery { .. } => Code::ValidationError,
            Self::MissingTenantId => Code::MissingTenantId,
            Self::MissingCorrelationId => Code::MissingCorrelationId,
            Self::Transition(_) | Self::NotPending(_) => Code::TransitionError,
            Self::CampaignNotFound => Code::CampaignNotFound,
            Self::NotFound => Code::NotFound,
            Self::IdConflict => Code::IdConflict,
            Self::CursorExpired { .. } => Code::CursorExpired,
            Self::PayloadTooLarge { .. } => Code::PayloadTooLarge,
            Self::RequestTimeout { .. } => Code::RequestTimeout,
            Self::Unauthorized => Code::Unauthorized,
            Self::StorageUnavailable(_) => Code::StorageUnavailable,
            Self::Internal(_) => Code::InternalError,
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
            Self::NotPending(status) => Some(json!({ "code": "not_pending", "status": status })),
            Self::PayloadTooLarge { limit } => Some(json!({ "limit_bytes": limit })),
            Self::RequestTimeout { timeout } => {
                Some(json!({ "timeout_ms": timeout.as_millis() as u64 }))
            }
            Self::CursorExpired { oldest } => Some(json!({ "oldest_cursor": oldest.encode() })),
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
            AppError::MetadataTooLarge { of, error } => {
                let pointer = match of {
                    MetadataOf::Campaign => "/request/campaign/metadata",
                    MetadataOf::FollowUp => "/request/followup/metadata",
                    MetadataOf::Changes => "/request/changes/metadata",
                };
                Self::violation(pointer, error.to_string())
            }
            AppError::NotFound => Self::NotFound,
            AppError::NotPending(status) => Self::NotPending(status),
            AppError::CampaignNotFound => Self::CampaignNotFound,
            AppError::IdConflict => Self::IdConflict,
            AppError::CursorExpired { oldest } => Self::CursorExpired { oldest },
            AppError::CursorNotIssued => {
                Self::invalid_query("after", "is not a cursor this server issued")
            }
            AppError::Unavailable(_) => Self::StorageUnavailable(error),
            AppError::Internal { .. } => Self::Internal(error),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code().status()
    }

    fn error_response(&self) -> HttpResponse {
        let code = self.code();
        if let Self::StorageUnavailable(source) | Self::Internal(source) = self {
            tracing::error!(error = %ErrorChain(source), code = code.word(), "request failed");
        }
        let mut body = json!({ "error": code.word() });
        if let Some(details) = self.details() {
            body["details"] = details;
        }
        HttpResponse::build(code.status()).json(body)
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
