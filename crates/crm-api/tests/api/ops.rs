//! Operations (SPEC §7): bearer tokens per route family, the refusal of a non-loopback
//! bind without tokens, request ids, Prometheus metrics, the in-process worker beside the
//! HTTP drain, and the OpenAPI document being served.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crm_api::config::Secret;
use crm_contracts::Contract;
use reqwest::header::AUTHORIZATION;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use crate::helpers::{
    CAMPAIGNS, DRAIN, FOLLOW_UPS, TRACE, TestApp, campaign_body, follow_up_body, names, new_id,
    new_tenant, spawn_app, spawn_app_with, str_field, try_spawn_app_with,
};

const API_TOKEN: &str = "api-secret";
const INTERNAL_TOKEN: &str = "internal-secret";
const REQUEST_ID: &str = "x-request-id";
/// How long the worker test waits for every follow-up to be sent.
const ALL_SENT_WITHIN: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

async fn spawn_app_with_tokens() -> TestApp {
    spawn_app_with(|settings| {
        settings.api_token = Some(Secret::new(API_TOKEN));
        settings.internal_token = Some(Secret::new(INTERNAL_TOKEN));
    })
    .await
}

/// `request` with an `Authorization` header of exactly `header`, or none.
fn authorized(request: RequestBuilder, header: Option<&str>) -> RequestBuilder {
    match header {
        Some(header) => request.header(AUTHORIZATION, header),
        None => request,
    }
}

/// One call to an endpoint behind a token, and what a success of it looks like.
struct Guarded {
    method: Method,
    path: &'static str,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
    token: &'static str,
    success: Contract,
}

impl Guarded {
    fn what(&self) -> String {
        format!("{} {}", self.method, self.path)
    }

    /// The token of the other route family.
    fn other_token(&self) -> &'static str {
        if self.token == API_TOKEN {
            INTERNAL_TOKEN
        } else {
            API_TOKEN
        }
    }

    /// Calls the endpoint with its own token and returns the body of its 200 reply.
    async fn call(&self, app: &TestApp) -> Value {
        let header = format!("Bearer {}", self.token);
        let reply = app
            .send(self.request(app, Some(&header)), Some(self.success))
            .await;
        assert_eq!(reply.status, 200, "{}: {}", self.what(), reply.body);
        reply.body
    }

    fn request(&self, app: &TestApp, authorization: Option<&str>) -> RequestBuilder {
        let query: Vec<(&str, &str)> = self
            .query
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .collect();
        let request = app
            .client
            .request(self.method.clone(), app.url_with_query(self.path, &query));
        let request = match &self.body {
            Some(body) => request.json(body),
            None => request,
        };
        authorized(request, authorization)
    }
}

/// A call to every route family of SPEC §2 behind a token, on `tenant`.
fn guarded_endpoints(tenant: &str) -> [Guarded; 6] {
    let guarded = |method, path, query: &[(&'static str, &str)], body, token, success| Guarded {
        method,
        path,
        query: query
            .iter()
            .map(|(name, value)| (*name, (*value).to_owned()))
            .collect(),
        body,
        token,
        success,
    };
    let tenant_query = [("tenant_id", tenant)];
    [
        guarded(
            Method::GET,
            CAMPAIGNS,
            &tenant_query,
            None,
            API_TOKEN,
            Contract::CampaignList,
        ),
        guarded(
            Method::POST,
            CAMPAIGNS,
            &[],
            Some(campaign_body(tenant)),
            API_TOKEN,
            Contract::CampaignCommandResponse,
        ),
        guarded(
            Method::GET,
            FOLLOW_UPS,
            &tenant_query,
            None,
            API_TOKEN,
            Contract::FollowUpList,
        ),
        guarded(
            Method::POST,
            FOLLOW_UPS,
            &[],
            Some(follow_up_body(tenant)),
            API_TOKEN,
            Contract::FollowUpCommandResponse,
        ),
        guarded(
            Method::POST,
            DRAIN,
            &[],
            Some(json!({"limit": 100})),
            INTERNAL_TOKEN,
            Contract::DrainResponse,
        ),
        guarded(
            Method::GET,
            TRACE,
            &[("correlation_id", &new_id())],
            None,
            INTERNAL_TOKEN,
            Contract::TraceResponse,
        ),
    ]
}

#[tokio::test]
async fn each_route_family_accepts_only_its_own_bearer_token_and_a_refusal_changes_nothing() {
    let app = spawn_app_with_tokens().await;
    let endpoints = guarded_endpoints(&new_tenant());
    let [list_campaigns, _, list_follow_ups, create_follow_up, ..] = &endpoints;
    // A due follow-up, which a refused drain must leave pending.
    let seeded = create_follow_up.call(&app).await;

    for endpoint in &endpoints {
        let refused = [
            None,
            Some("Bearer wrong-secret".to_owned()),
            Some(format!("Bearer {}", endpoint.other_token())),
            Some(format!("Bearer {}-and-more", endpoint.token)),
            Some(endpoint.token.to_owned()),
            Some(format!("Basic {}", endpoint.token)),
        ];
        for header in refused {
            let request = endpoint.request(&app, header.as_deref());
            let reply = app.send(request, Some(endpoint.success)).await;
            assert_eq!(
                (reply.status, &reply.body),
                (401, &json!({"error": "unauthorized"})),
                "{} with Authorization {header:?}",
                endpoint.what()
            );
        }
    }

    assert_eq!(
        list_campaigns.call(&app).await["items"],
        json!([]),
        "a refused create stored a campaign"
    );
    assert_eq!(
        list_follow_ups.call(&app).await["items"],
        json!([seeded["response"]["followup"]]),
        "a refused drain sent the follow-up"
    );
    for endpoint in &endpoints {
        endpoint.call(&app).await;
    }
}

#[tokio::test]
async fn health_readiness_metrics_and_the_openapi_document_need_no_token() {
    let app = spawn_app_with_tokens().await;

    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        for header in [None, Some("Bearer wrong-secret")] {
            let response = authorized(app.client.get(app.url(path)), header)
                .send()
                .await
                .unwrap_or_else(|error| panic!("GET {path} failed: {error}"));
            assert_eq!(response.status(), 200, "GET {path} with {header:?}");
        }
    }
}

#[tokio::test]
async fn a_non_loopback_bind_without_both_tokens_is_refused_at_build_saying_why() {
    let cases = [
        ("no token", None, None),
        ("only the api token", Some(API_TOKEN), None),
        ("only the internal token", None, Some(INTERNAL_TOKEN)),
    ];

    for (case, api_token, internal_token) in cases {
        let built = try_spawn_app_with(|settings| {
            settings.bind = "0.0.0.0:0".to_owned();
            settings.api_token = api_token.map(Secret::new);
            settings.internal_token = internal_token.map(Secret::new);
        })
        .await;

        let error = match built {
            Ok(_) => panic!("{case}: a server on 0.0.0.0 was built"),
            Err(error) => format!("{error:#}"),
        };
        for flag in ["--api-token", "--internal-token"] {
            assert!(
                error.contains(flag),
                "{case}: {error:?} does not name {flag}"
            );
        }
        for secret in [API_TOKEN, INTERNAL_TOKEN] {
            assert!(!error.contains(secret), "{case}: {error:?} shows a token");
        }
    }
}

#[tokio::test]
async fn a_non_loopback_bind_with_both_tokens_builds_and_serves() {
    let app = try_spawn_app_with(|settings| {
        settings.bind = "0.0.0.0:0".to_owned();
        settings.api_token = Some(Secret::new(API_TOKEN));
        settings.internal_token = Some(Secret::new(INTERNAL_TOKEN));
    })
    .await
    .unwrap_or_else(|error| panic!("a server with both tokens was refused: {error:#}"));

    assert_eq!(app.health().await.ok(), json!({"status": "ok"}));
}

#[tokio::test]
async fn a_given_request_id_is_echoed_and_a_missing_one_is_generated_fresh() {
    let app = spawn_app().await;
    let health = || app.client.get(app.url("/health"));

    for path in ["/health", "/no/such/path"] {
        let given = app
            .send(
                app.client
                    .get(app.url(path))
                    .header(REQUEST_ID, "my-id-123"),
                None,
            )
            .await;
        assert_eq!(given.header(REQUEST_ID), Some("my-id-123"), "GET {path}");
    }
    let first = app.send(health(), None).await;
    let second = app.send(health(), None).await;
    let generated: Vec<&str> = [&first, &second]
        .into_iter()
        .map(|reply| {
            reply
                .header(REQUEST_ID)
                .filter(|id| !id.trim().is_empty())
                .unwrap_or_else(|| panic!("no generated request id: {:?}", reply.headers))
        })
        .collect();
    assert_ne!(generated[0], generated[1], "two requests got one id");
}

/// One sample line of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{label="value",...} value [timestamp]`; `None` when the line is malformed.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches(',');
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once("=\"")?;
            let mut value = String::new();
            let mut characters = after.char_indices();
            let end = loop {
                match characters.next()? {
                    (index, '"') => break index,
                    (_, '\\') => match characters.next()? {
                        (_, 'n') => value.push('\n'),
                        (_, escaped) => value.push(escaped),
                    },
                    (_, character) => value.push(character),
                }
            };
            labels.insert(key.to_owned(), value);
            rest = &after[end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    (!name.is_empty()).then_some(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of the samples of `name` whose labels include every pair of `labels`
/// (0 when there is none).
#[track_caller]
pub(crate) fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| parse_sample(line).unwrap_or_else(|| panic!("malformed metric: {line:?}")))
        .filter(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
        })
        .map(|sample| sample.value)
        .sum()
}

/// The `# TYPE` of metric family `name`.
fn metric_type<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    text.lines().find_map(|line| {
        let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
        (words.next()? == name).then_some(words.next()?)
    })
}

/// Asserts metric `name` (with `labels`) grew by at least `by` between two scrapes.
/// Tests share the process-wide recorder, so only growth is certain, never a value.
#[track_caller]
fn assert_grew(before: &str, after: &str, name: &str, labels: &[(&str, &str)], by: f64) {
    let (was, is) = (
        metric_sum(before, name, labels),
        metric_sum(after, name, labels),
    );
    assert!(
        is >= was + by,
        "{name}{labels:?} went from {was} to {is}, expected a growth of at least {by}"
    );
}

#[test]
fn the_metrics_parser_reads_names_labels_and_values() {
    let text = "# TYPE a_total counter\n\
                a_total{route=\"/x\",status=\"200\"} 3\n\
                a_total{route=\"/x\",status=\"500\"} 2 1700000000\n\
                a_total{route=\"/y\",status=\"200\",note=\"say \\\"hi\\\", ok\"} 4\n\
                b 1.5e0\n";

    assert_eq!(metric_sum(text, "a_total", &[]), 9.0);
    assert_eq!(metric_sum(text, "a_total", &[("route", "/x")]), 5.0);
    assert_eq!(metric_sum(text, "a_total", &[("status", "200")]), 7.0);
    assert_eq!(
        metric_sum(text, "a_total", &[("note", "say \"hi\", ok")]),
        4.0
    );
    assert_eq!(metric_sum(text, "b", &[]), 1.5);
    assert_eq!(metric_sum(text, "missing", &[]), 0.0);
    assert_eq!(metric_type(text, "a_total"), Some("counter"));
    assert!(parse_sample("c{route=\"/x} 1").is_none());
}

#[tokio::test]
async fn drains_move_the_dispatch_counters_the_request_counter_and_the_drain_histograms() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let drain_200 = [("method", "POST"), ("route", DRAIN), ("status", "200")];
    let provider_error = [("error_code", "PROVIDER_SEND_ERROR")];
    let before = app.metrics().await;

    app.seed_follow_up(&follow_up_body(&tenant)).await;
    let sent = app.drain(&json!({"limit": 100})).await.ok();
    assert_eq!(sent["succeeded_count"], 1, "{sent}");
    let after_sent = app.metrics().await;

    assert_grew(&before, &after_sent, "crm_followups_sent_total", &[], 1.0);
    assert_grew(
        &before,
        &after_sent,
        "crm_http_requests_total",
        &drain_200,
        1.0,
    );
    for histogram in ["crm_drain_batch_size", "crm_drain_duration_seconds"] {
        assert_eq!(
            metric_type(&after_sent, histogram),
            Some("histogram"),
            "{histogram}:\n{after_sent}"
        );
        let count = format!("{histogram}_count");
        assert_grew(&before, &after_sent, &count, &[], 1.0);
    }

    app.seed_follow_up(&follow_up_body(&tenant)).await;
    let failed = app
        .drain(&json!({"limit": 100, "force_failure": true}))
        .await
        .ok();
    assert_eq!(failed["failed_count"], 1, "{failed}");
    let after_failed = app.metrics().await;

    assert_grew(
        &after_sent,
        &after_failed,
        "crm_followups_failed_total",
        &provider_error,
        1.0,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_worker_and_concurrent_http_drains_send_each_follow_up_exactly_once() {
    const FOLLOW_UPS_DUE: usize = 150;
    const DRAINERS: usize = 4;
    let app = spawn_app_with(|settings| {
        settings.worker_interval = Some(Duration::from_millis(20));
    })
    .await;
    let tenant = new_tenant();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + ALL_SENT_WITHIN;
    let mut drainers = tokio::task::JoinSet::new();
    for _ in 0..DRAINERS {
        let (app, stop) = (app.clone(), Arc::clone(&stop));
        drainers.spawn(async move {
            let mut reports = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                reports.push(app.drain(&json!({"limit": 10})).await.ok());
            }
            reports
        });
    }

    let bodies = (0..FOLLOW_UPS_DUE)
        .map(|_| follow_up_body(&tenant))
        .collect();
    let created = app.seed_follow_up_responses(bodies).await;
    let pending = loop {
        let pending = app.all_follow_ups(&tenant, &[("status", "pending")]).await;
        if pending.is_empty() || Instant::now() >= deadline {
            break pending;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    stop.store(true, Ordering::Relaxed);
    let reports: Vec<Value> = drainers.join_all().await.into_iter().flatten().collect();

    assert!(
        pending.is_empty(),
        "{} follow-ups still pending after {ALL_SENT_WITHIN:?}",
        pending.len()
    );
    let listed = app.all_follow_ups(&tenant, &[]).await;
    assert_eq!(listed.len(), FOLLOW_UPS_DUE);
    assert!(
        listed.iter().all(|record| record["status"] == "sent"),
        "every follow-up is sent"
    );
    let mut sent_over_http = HashSet::new();
    for entry in reports
        .iter()
        .flat_map(|report| report["processed"].as_array().expect("processed").iter())
    {
        assert_ne!(entry["status"], "failed", "{entry}");
        if entry["status"] == "sent" {
            let id = str_field(entry, "/followup_id");
            assert!(
                sent_over_http.insert(id.to_owned()),
                "{id} was sent twice over HTTP"
            );
        }
    }
    assert!(sent_over_http.len() <= FOLLOW_UPS_DUE);
    for response in &created {
        let correlation_id = str_field(response, "/orchestration/correlation_id");
        let events = app.events(correlation_id).await;
        assert_eq!(
            names(&events),
            ["crm.followup.scheduled", "crm.followup.sent"],
            "follow-up {}",
            str_field(response, "/followup/followup_id")
        );
    }
}

#[tokio::test]
async fn the_openapi_document_is_served_as_openapi_3_1_json() {
    let app = spawn_app().await;

    let reply = app.openapi().await;

    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|value| value.starts_with("application/json")),
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.body["openapi"], "3.1.0");
}

#[tokio::test]
async fn a_percent_encoded_path_is_guarded_like_the_path_it_decodes_to() {
    let app = spawn_app_with_tokens().await;
    // The router decodes `%76` to `v` and `%69` to `i`; the token check must too.
    for (method, path) in [
        (Method::POST, "/%761/crm/campaigns"),
        (Method::GET, "/v1/crm/%63ampaigns?tenant_id=t"),
        (Method::POST, "/%69nternal/worker/crm-followups/drain"),
        (
            Method::GET,
            "/internal/orchestration/%74race?correlation_id=x",
        ),
    ] {
        let request = app
            .client
            .request(method.clone(), format!("{}{path}", app.address))
            .header("content-type", "application/json")
            .body("{}");
        let reply = app.send(request, None).await;
        assert_eq!(
            (reply.status, reply.body["error"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn every_metric_family_has_help_and_type_and_the_business_ones_exist_before_any_event() {
    let app = spawn_app().await;
    let text = app.metrics().await;
    let families: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(parse_sample)
        .map(|sample| {
            let name = sample.name;
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .filter(|family| text.contains(&format!("# TYPE {family} histogram")))
                .map_or(name.clone(), str::to_owned)
        })
        .collect();
    for family in &families {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} has no help text"
        );
        assert!(metric_type(&text, family).is_some(), "{family} has no type");
    }
    for declared in [
        "crm_campaigns_created_total",
        "crm_campaigns_transitioned_total",
        "crm_followups_scheduled_total",
        "crm_followups_sent_total",
        "crm_followups_failed_total",
        "crm_followups_skipped_total",
        "crm_followups_due",
        "crm_drain_duration_seconds",
        "crm_drain_batch_size",
        "crm_http_request_duration_seconds",
    ] {
        assert!(
            families.contains(declared),
            "{declared} is missing:\n{text}"
        );
    }
}
