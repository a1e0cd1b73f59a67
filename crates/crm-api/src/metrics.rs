//! Prometheus metrics: the recorder, the `/metrics` route and per-request measurements.
//! Business counters are recorded by the use cases in `crm-app`.

use std::sync::OnceLock;

use actix_web::{HttpResponse, web};
use crm_app::Crm;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Seconds: from a fast in-memory write to a slow database round trip.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use (one per process, however many
/// servers a test builds).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        use metrics_exporter_prometheus::Matcher;
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("crm_drain_batch_size".into()),
                    BATCH_BUCKETS,
                )
            })
            .expect("bucket lists are non-empty")
            .install_recorder()
            .expect("no other metrics recorder is installed")
    })
}

/// Records one finished HTTP request. Methods outside the standard set count as `OTHER`,
/// so no client can grow the number of series.
pub fn record_request(method: &str, route: &str, status: u16, seconds: f64) {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let method = if STANDARD.contains(&method) {
        method
    } else {
        "OTHER"
    };
    let labels = [("method", method.to_owned()), ("route", route.to_owned())];
    metrics::counter!(
        "crm_http_requests_total",
        &[
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ]
    )
    .increment(1);
    metrics::histogram!("crm_http_request_duration_seconds", &labels).record(seconds);
}

/// `GET /metrics`: the Prometheus text exposition, with the due gauge read fresh.
pub async fn render(crm: web::Data<Crm>) -> HttpResponse {
    match crm.count_due().await {
        Ok(due) => metrics::gauge!("crm_followups_due").set(due as f64),
        Err(error) => tracing::warn!(%error, "cannot count due follow-ups for /metrics"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle().render())
}
