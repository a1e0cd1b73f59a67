//! Logging: the subscriber set-up and one log line per request.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Installs the global subscriber: `RUST_LOG` filtering (default `info`), text or JSON.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for people at a terminal, plain text for files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second initialisation (tests build many servers in one process) is harmless.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Keeps or makes the request id, echoes it, and logs one line per request with the
/// method, the route pattern (for grouping) and the path, status and latency.
pub async fn log_request(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let started = Instant::now();
    let request_id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty() && value.len() <= 200)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    request.headers_mut().insert(
        REQUEST_ID,
        HeaderValue::from_str(&request_id).expect("a visible-ASCII request id"),
    );
    let method = request.method().clone();
    let path = request.path().to_owned();
    let mut response = next.call(request).await?;
    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    let seconds = started.elapsed().as_secs_f64();
    crate::metrics::record_request(method.as_str(), &route, status, seconds);
    // Hundredths of a millisecond are plenty, and keep log lines short.
    let latency_ms = (seconds * 100_000.0).round() / 100.0;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    tracing::info!(
        target: "crm_api::request",
        %method,
        route,
        path,
        status,
        latency_ms,
        request_id,
        "request"
    );
    Ok(response)
}
