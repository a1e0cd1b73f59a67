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

const HTTP_REQUESTS: &str = "crm_http_requests_total";
const HTTP_DURATION: &str = "crm_http_request_duration_seconds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process-wide recorder, installed on first use (one per process, however many
/// servers a test builds), with every metric described and the ones with a known set of
/// labels present from the start.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        use metrics_exporter_prometheus::Matcher;
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full(crm_app::metrics::DRAIN_BATCH.into()),
                    BATCH_BUCKETS,
                )
            })
            .expect("bucket lists are non-empty")
            .install_recorder()
            .expect("no other metrics recorder is installed");
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, route pattern and status."
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by method and route pattern."
    );
    for endpoint in crate::routes::endpoints() {
        let labels = [
            ("method", endpoint.method.as_str().to_owned()),
            ("route", endpoint.path.to_owned()),
        ];
        let _ = metrics::histogram!(HTTP_DURATION, &labels);
    }
    crm_app::metrics::describe();
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
        HTTP_REQUESTS,
        &[
            ("method", method.to_owned()),
            ("route", route.to_owned()),
            ("status", status.to_string()),
        ]
    )
    .increment(1);
    metrics::histogram!(HTTP_DURATION, &labels).record(seconds);
}

/// `GET /metrics`: the Prometheus text exposition, with the due and held gauges read
/// fresh.
pub async fn render(crm: web::Data<Crm>) -> HttpResponse {
    match crm.count_due().await {
        Ok(due) => metrics::gauge!(crm_app::metrics::FOLLOW_UPS_DUE).set(due as f64),
        Err(error) => tracing::warn!(%error, "cannot count due follow-ups for /metrics"),
    }
    match crm.held_counts().await {
        Ok(held) => {
            for (reason, count) in held {
                metrics::gauge!(crm_app::metrics::FOLLOW_UPS_HELD, "reason" => reason.as_str())
                    .set(count as f64);
            }
        }
        Err(error) => tracing::warn!(%error, "cannot count held follow-ups for /metrics"),
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(handle().render())
}
