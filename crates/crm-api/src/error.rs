//! The error boundary: every failure becomes one status and one stable `error` word here,
//! and nowhere else. 5xx bodies never carry internals; the cause is logged once.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::middleware::Next;
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

/// Declares every `error` word of the wire contract once: its variant, status, word,
/// when it is sent, and an example of its `details`. The error body, the `405` and `404`
/// fallbacks, the OpenAPI document and the tests all read them from here.
macro_rules! error_words {
    ($($variant:ident => $status:ident, $word:literal, $meaning:expr, $example:expr;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($variant,)*
        }

        impl Code {
            /// Every word, in the order of the declarations.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The stable `error` word.
            pub fn word(self) -> &'static str {
                match self {
                    $(Self::$variant => $word,)*
                }
            }

            pub fn status(self) -> StatusCode {
                match self {
                    $(Self::$variant => StatusCode::$status,)*
                }
            }

            /// When the word is sent, for the OpenAPI document (an endpoint may say it
            /// more precisely).
            pub fn meaning(self) -> &'static str {
                match self {
                    $(Self::$variant => $meaning,)*
                }
            }

            /// A `details` value as the word carries it, for examples.
            pub fn example_details(self) -> Option<Value> {
                match self {
                    $(Self::$variant => $example,)*
                }
            }
        }
    };
}

error_words! {
    InvalidJson => BAD_REQUEST, "invalid_json",
        "the body is not JSON, or repeats a key within one object",
        Some(json!({"message": "expected value at line 1 column 1"}));
    ValidationError => BAD_REQUEST, "validation_error",
        "the request breaks its contract (body, query or path); `details` lists each violation",
        Some(json!([{"pointer": "/request/request_id", "message": "\"x\" is not a \"uuid\""}]));
    MissingTenantId => BAD_REQUEST, "missing_tenant_id",
        "the `tenant_id` query parameter is missing or empty",
        None;
    MissingCorrelationId => BAD_REQUEST, "missing_correlation_id",
        "the `correlation_id` query parameter is missing or empty",
        None;
    TransitionError => BAD_REQUEST, "transition_error",
        "the workflow refuses the transition",
        Some(json!({"code": "trigger_mismatch", "expected_trigger": "schedule_campaign"}));
    CampaignNotFound => BAD_REQUEST, "campaign_not_found",
        "the follow-up names a campaign the tenant does not have",
        None;
    Unauthorized => UNAUTHORIZED, "unauthorized",
        "a bearer token is configured for this route and the request's is missing or wrong",
        None;
    NotFound => NOT_FOUND, "not_found",
        "the tenant has no such record, or no route has this path",
        None;
    MethodNotAllowed => METHOD_NOT_ALLOWED, "method_not_allowed",
        "the path does not serve this method; the `Allow` header lists those it serves",
        None;
    IdConflict => CONFLICT, "id_conflict",
        "the id is already used by another tenant",
        None;
    CursorExpired => GONE, "cursor_expired",
        "the events after the cursor were deleted by retention",
        Some(json!({"oldest_cursor": "e1_1200"}));
    RequestTimeout => REQUEST_TIMEOUT, "request_timeout",
        "the request was not received whole within the configured time (`--request-timeout-ms`)",
        Some(json!({"timeout_ms": 10000}));
    PayloadTooLarge => PAYLOAD_TOO_LARGE, "payload_too_large",
        "the body is over the configured limit (`--body-limit`, 64 KiB by default)",
        Some(json!({"limit_bytes": 65536}));
    InternalError => INTERNAL_SERVER_ERROR, "internal_error",
        "an unexpected failure; the body carries no internals and the cause is logged",
        None;
    StorageUnavailable => SERVICE_UNAVAILABLE, "storage_unavailable",
        "the store cannot be reached in time (bounded by `--pg-timeout-ms`); a write's outcome \
         is then unknown, and repeating it with the same ids or external_key is always safe",
        None;
}

impl Code {
    /// The bare error body of this word, for replies that carry no details.
    pub fn response(self) -> HttpResponse {
        HttpResponse::build(self.status()).json(json!({ "error": self.word() }))
    }

    /// The word for an error reply that no handler wrote (one of the HTTP layer's, such
    /// as a path it could not decode): a request the service could not take is one that
    /// breaks its contract; other statuses take the word declared with them.
    pub fn for_status(status: StatusCode) -> Code {
        if status == StatusCode::BAD_REQUEST {
            return Code::ValidationError;
        }
        Self::ALL
            .iter()
            .copied()
            .find(|code| code.status() == status)
            .unwrap_or(if status.is_server_error() {
                Code::InternalError
            } else {
                Code::ValidationError
            })
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

    /// A path parameter the service cannot read; reported like a query parameter.
    pub fn invalid_path(parameter: &str, message: impl Into<String>) -> Self {
        Self::invalid_query(parameter, message)
    }

    /// The same error with each violation's pointer under `from` moved under `to`: an
    /// item of a bulk request judged as if it were the body of a single one.
    pub fn rebased(self, from: &str, to: &str) -> Self {
        match self {
            Self::Validation(violations) => Self::Validation(
                violations
                    .into_iter()
                    .map(|violation| match violation.pointer.strip_prefix(from) {
                        Some(rest) if rest.is_empty() || rest.starts_with('/') => Violation {
                            pointer: format!("{to}{rest}"),
                            message: violation.message,
                        },
                        _ => violation,
                    })
                    .collect(),
            ),
            other => other,
        }
    }

    /// The body of this error's reply: its word, and its details when it has some.
    pub fn body(&self) -> Value {
        let mut body = json!({ "error": self.code().word() });
        if let Some(details) = self.details() {
            body["details"] = details;
        }
        body
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
        HttpResponse::build(code.status()).json(self.body())
    }
}

/// Gives every error reply a JSON body with its `error` word, whichever layer wrote it:
/// one of the HTTP layer's (an extractor's refusal, a handler's `Err` of another type)
/// has a text body or none, and is answered with the word of its status instead.
pub async fn json_error_bodies(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let response = match next.call(request).await {
        Ok(response) => response,
        // An error no layer below turned into a reply: it becomes one here, with its word.
        Err(error) => {
            let response = with_json_body(error.error_response());
            return Err(actix_web::error::InternalError::from_response(
                error.to_string(),
                response,
            )
            .into());
        }
    };
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return Ok(response.map_into_left_body());
    }
    let (request, response) = response.into_parts();
    let response = with_json_body(response.map_into_boxed_body());
    Ok(ServiceResponse::new(request, response).map_into_right_body())
}

/// `response` with the JSON body of its status's word, keeping its other headers.
fn with_json_body(response: HttpResponse) -> HttpResponse {
    if response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"))
    {
        return response;
    }
    let mut replaced = Code::for_status(response.status()).response();
    for (name, value) in response.headers() {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            replaced.headers_mut().append(name.clone(), value.clone());
        }
    }
    replaced
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_and_statuses_are_those_of_the_wire_contract() {
        // SPEC §2's table, plus the words for a slow body, an expired cursor, a method a
        // path does not serve and an unexpected failure: other modules depend on them.
        let table: Vec<(u16, &str)> = Code::ALL
            .iter()
            .map(|code| (code.status().as_u16(), code.word()))
            .collect();
        assert_eq!(
            table,
            [
                (400, "invalid_json"),
                (400, "validation_error"),
                (400, "missing_tenant_id"),
                (400, "missing_correlation_id"),
                (400, "transition_error"),
                (400, "campaign_not_found"),
                (401, "unauthorized"),
                (404, "not_found"),
                (405, "method_not_allowed"),
                (409, "id_conflict"),
                (410, "cursor_expired"),
                (408, "request_timeout"),
                (413, "payload_too_large"),
                (500, "internal_error"),
                (503, "storage_unavailable"),
            ]
        );
    }

    #[test]
    fn a_reply_of_the_http_layer_gets_the_word_of_its_status() {
        assert_eq!(
            Code::for_status(StatusCode::BAD_REQUEST),
            Code::ValidationError
        );
        assert_eq!(Code::for_status(StatusCode::NOT_FOUND), Code::NotFound);
        assert_eq!(
            Code::for_status(StatusCode::METHOD_NOT_ALLOWED),
            Code::MethodNotAllowed
        );
        assert_eq!(
            Code::for_status(StatusCode::PAYLOAD_TOO_LARGE),
            Code::PayloadTooLarge
        );
        assert_eq!(
            Code::for_status(StatusCode::URI_TOO_LONG),
            Code::ValidationError
        );
        assert_eq!(
            Code::for_status(StatusCode::BAD_GATEWAY),
            Code::InternalError
        );
    }
}
