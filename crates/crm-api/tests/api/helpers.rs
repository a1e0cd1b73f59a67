//! The shared harness: `spawn_app` builds the real `Application` on a free loopback port
//! and returns a `TestApp` with one method per endpoint, plus builders of request bodies.
//!
//! Every reply goes through `TestApp::send`, which checks a success body against the
//! endpoint's contract and an error body against `error.response.schema.json`, so no test
//! can forget to. Only `TestStore::new` knows which backend the tests run on.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use crm_api::config::{FileSettings, PgSettings, Secret, Settings, StoreKind};
use crm_api::startup::Application;
use crm_contracts::{Contract, Contracts};
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{RequestBuilder, Url};
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

pub const CAMPAIGNS: &str = "/v1/crm/campaigns";
pub const FOLLOW_UPS: &str = "/v1/crm/followups";
pub const FOLLOW_UPS_BATCH: &str = "/v1/crm/followups/batch";
pub const DRAIN: &str = "/internal/worker/crm-followups/drain";
pub const TRACE: &str = "/internal/orchestration/trace";
pub const FEED: &str = "/internal/orchestration/events";
pub const CLAIM: &str = "/internal/outbound/claim";
pub const OPT_OUTS: &str = "/v1/crm/opt-outs";
pub const ACK: &str = "/internal/outbound/ack";
pub const RECEIPTS: &str = "/internal/outbound/receipts";

/// A schedule that is always due.
pub const PAST: &str = "2025-01-01T09:00:00.000Z";
/// A schedule that is never due while these tests live.
pub const FUTURE: &str = "2999-01-01T09:00:00.000Z";

/// How many requests the helpers keep in flight when they seed many records.
const SEED_PARALLELISM: usize = 8;
/// A bound on paging, so a server that never ends a list fails the test instead of hanging it.
const MAX_PAGES: usize = 1_000;

static CONTRACTS: LazyLock<Contracts> =
    LazyLock::new(|| Contracts::load().expect("the built-in contracts load"));

/// A running server and a client for it. Clones share the server and its data.
#[derive(Debug, Clone)]
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    pub client: reqwest::Client,
    /// The backend `/ready` must report.
    pub backend: &'static str,
    /// The store's data dir or schema, removed when the last handle to the server goes.
    _store: Arc<TestStore>,
}

/// One reply: its status, its headers and its JSON body, already checked against its
/// contract.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// The value of header `name`, when present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body of a 200 reply.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(self.status, 200, "expected 200, got: {}", self.body);
        self.body
    }

    /// The `details` of an error reply with this status and `error` word (`Null` when absent).
    #[track_caller]
    pub fn error(self, status: u16, code: &str) -> Value {
        assert_eq!(
            (self.status, self.body["error"].as_str()),
            (status, Some(code)),
            "unexpected reply: {}",
            self.body
        );
        self.body.get("details").cloned().unwrap_or(Value::Null)
    }

    /// The JSON pointers of a `400 validation_error`.
    #[track_caller]
    pub fn violation_pointers(self) -> Vec<String> {
        let details = self.error(400, "validation_error");
        let violations = details
            .as_array()
            .unwrap_or_else(|| panic!("validation_error details are not a list: {details}"));
        assert!(
            !violations.is_empty(),
            "validation_error without violations"
        );
        violations
            .iter()
            .map(|violation| {
                assert!(
                    violation["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "violation without a message: {violation}"
                );
                violation["pointer"]
                    .as_str()
                    .unwrap_or_else(|| panic!("violation without a pointer: {violation}"))
                    .to_owned()
            })
            .collect()
    }

    /// The parameters named by a `400 validation_error` about the query string.
    #[track_caller]
    pub fn invalid_parameters(self) -> Vec<String> {
        let details = self.error(400, "validation_error");
        details
            .as_array()
            .unwrap_or_else(|| panic!("validation_error details are not a list: {details}"))
            .iter()
            .map(|violation| {
                violation["parameter"]
                    .as_str()
                    .unwrap_or_else(|| panic!("violation without a parameter: {violation}"))
                    .to_owned()
            })
            .collect()
    }
}

/// Where one test's server keeps its data: a temporary dir, or a PostgreSQL schema of its
/// own that is dropped once the test is done with it.
#[derive(Debug)]
enum TestStore {
    File(TempDir),
    Postgres { url: String, schema: String },
}

impl TestStore {
    /// The one place that picks the backend: PostgreSQL in a fresh schema when
    /// `CRM_TEST_DATABASE_URL` is set, else a file store in a fresh temporary dir. With
    /// `CRM_TEST_ADOPTED` set, the store starts from the Node.js service's data (its data
    /// dir, or its tables), which the server adopts at start-up.
    async fn new() -> Self {
        let adopted = std::env::var_os("CRM_TEST_ADOPTED").is_some();
        match std::env::var("CRM_TEST_DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => {
                let schema = if adopted {
                    crm_adapters_pg::testing::node_schema(&url, "test").await
                } else {
                    format!("test_{}", Uuid::new_v4().simple())
                };
                TestStore::Postgres { url, schema }
            }
            _ => {
                let dir = TempDir::new().expect("a temporary data dir");
                if adopted {
                    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../crm-adapters-file/tests/fixtures/node");
                    for name in ["campaigns.json", "followups.json"] {
                        std::fs::copy(fixture.join(name), dir.path().join(name))
                            .expect("the Node.js service's files");
                    }
                }
                TestStore::File(dir)
            }
        }
    }

    fn kind(&self) -> StoreKind {
        match self {
            TestStore::File(dir) => StoreKind::File(FileSettings::new(dir.path())),
            TestStore::Postgres { url, schema } => {
                StoreKind::Postgres(PgSettings::new(Secret::new(url.as_str()), schema.as_str()))
            }
        }
    }

    /// The backend `/ready` names.
    fn backend(&self) -> &'static str {
        match self {
            TestStore::File(_) => "file",
            TestStore::Postgres { .. } => "postgres",
        }
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let TestStore::Postgres { url, schema } = self else {
            return;
        };
        let (url, schema) = (url.clone(), schema.clone());
        // Drop runs inside the test's runtime, which cannot wait on a future; a thread with
        // a runtime of its own can.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(crm_adapters_pg::testing::drop_schema(&url, &schema));
        })
        .join();
        if dropped.is_err() {
            eprintln!("the test schema could not be dropped; it is left in the database");
        }
    }
}

/// A server with the default settings on a fresh store.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A server on a fresh store, with `configure` applied to its settings first.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    try_spawn_app_with(configure)
        .await
        .unwrap_or_else(|error| panic!("the application does not build: {error:#}"))
}

/// Like `spawn_app_with`, for settings the application may refuse: the error of
/// `Application::build` when it does.
pub async fn try_spawn_app_with(configure: impl FnOnce(&mut Settings)) -> anyhow::Result<TestApp> {
    let store = TestStore::new().await;
    let mut settings = Settings::new(store.kind());
    configure(&mut settings);
    let application = Application::build(settings).await?;
    // Whatever the bind address, the server answers on loopback.
    let address = format!("http://127.0.0.1:{}", application.port());
    tokio::spawn(application.run_until_stopped());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a http client");
    Ok(TestApp {
        address,
        client,
        backend: store.backend(),
        _store: Arc::new(store),
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> Url {
        Url::parse(&format!("{}{path}", self.address)).expect("a valid url")
    }

    pub fn url_with_query(&self, path: &str, query: &[(&str, &str)]) -> Url {
        let mut url = self.url(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Sends `request` and checks the body: against `success` on a 2xx (when given),
    /// against the error contract otherwise.
    pub async fn send(&self, request: RequestBuilder, success: Option<Contract>) -> Reply {
        let request = request.build().expect("a well-formed request");
        let what = format!("{} {}", request.method(), request.url());
        let response = self
            .client
            .execute(request)
            .await
            .unwrap_or_else(|error| panic!("{what} failed: {error}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response
            .text()
            .await
            .unwrap_or_else(|error| panic!("{what}: reading the body failed: {error}"));
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|error| {
            panic!("{what} replied {status} with a body that is not JSON ({error}): {text}")
        });
        let contract = if (200..300).contains(&status) {
            success
        } else {
            Some(Contract::ErrorResponse)
        };
        if let Some(contract) = contract
            && let Err(violations) = CONTRACTS.validate(contract, &body)
        {
            panic!(
                "{what} replied {status} with a body breaking {}: {violations:?}\n{body:#}",
                contract.file_name()
            );
        }
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn post_json(&self, path: &str, body: &Value, success: Contract) -> Reply {
        self.send(self.client.post(self.url(path)).json(body), Some(success))
            .await
    }

    /// Posts `body` verbatim as `application/json`, for bodies that are not JSON at all.
    pub async fn post_raw(&self, path: &str, body: impl Into<String>, success: Contract) -> Reply {
        let request = self
            .client
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.into());
        self.send(request, Some(success)).await
    }

    pub async fn get(&self, path: &str, query: &[(&str, &str)], success: Contract) -> Reply {
        let url = self.url_with_query(path, query);
        self.send(self.client.get(url), Some(success)).await
    }

    // One method per endpoint.

    pub async fn create_campaign(&self, body: &Value) -> Reply {
        self.post_json(CAMPAIGNS, body, Contract::CampaignCommandResponse)
            .await
    }

    /// `campaign_id` goes into the path as given, so tests can send ids that are not uuids.
    pub async fn advance_campaign(&self, campaign_id: &str, body: &Value) -> Reply {
        let path = format!("{CAMPAIGNS}/{campaign_id}/state");
        let request = self.client.patch(self.url(&path)).json(body);
        self.send(request, Some(Contract::CampaignCommandResponse))
            .await
    }

    pub async fn list_campaigns(&self, query: &[(&str, &str)]) -> Reply {
        self.get(CAMPAIGNS, query, Contract::CampaignList).await
    }

    pub async fn create_follow_up(&self, body: &Value) -> Reply {
        self.post_json(FOLLOW_UPS, body, Contract::FollowUpCommandResponse)
            .await
    }

    pub async fn create_follow_ups(&self, body: &Value) -> Reply {
        self.post_json(FOLLOW_UPS_BATCH, body, Contract::FollowUpBatchResponse)
            .await
    }

    pub async fn list_follow_ups(&self, query: &[(&str, &str)]) -> Reply {
        self.get(FOLLOW_UPS, query, Contract::FollowUpList).await
    }

    pub async fn drain(&self, body: &Value) -> Reply {
        let reply = self.post_json(DRAIN, body, Contract::DrainResponse).await;
        check_drain_counts(&reply);
        reply
    }

    /// A drain whose body is sent verbatim (`""` for an empty body).
    pub async fn drain_raw(&self, body: &str) -> Reply {
        let reply = self.post_raw(DRAIN, body, Contract::DrainResponse).await;
        check_drain_counts(&reply);
        reply
    }

    pub async fn trace(&self, correlation_id: &str) -> Reply {
        self.get(
            TRACE,
            &[("correlation_id", correlation_id)],
            Contract::TraceResponse,
        )
        .await
    }

    pub async fn feed(&self, query: &[(&str, &str)]) -> Reply {
        self.get(FEED, query, Contract::EventsFeed).await
    }

    pub async fn claim(&self, body: &Value) -> Reply {
        self.post_json(CLAIM, body, Contract::OutboundClaimResponse)
            .await
    }

    pub async fn ack(&self, body: &Value) -> Reply {
        self.post_json(ACK, body, Contract::OutboundAckResponse)
            .await
    }

    pub async fn receipts(&self, body: &Value) -> Reply {
        self.post_json(RECEIPTS, body, Contract::OutboundReceiptsResponse)
            .await
    }

    pub async fn get_campaign(&self, campaign_id: &str, tenant: &str) -> Reply {
        let path = format!("{CAMPAIGNS}/{campaign_id}");
        self.get(&path, &[("tenant_id", tenant)], Contract::CampaignResponse)
            .await
    }

    pub async fn get_follow_up(&self, followup_id: &str, tenant: &str) -> Reply {
        let path = format!("{FOLLOW_UPS}/{followup_id}");
        self.get(&path, &[("tenant_id", tenant)], Contract::FollowUpResponse)
            .await
    }

    pub async fn cancel(&self, followup_id: &str, tenant: &str) -> Reply {
        let path = format!("{FOLLOW_UPS}/{followup_id}/cancel");
        let body = json!({"request": {
            "request_id": new_id(), "tenant_id": tenant, "source_module": "mod-02-whatsapp-crm"
        }});
        self.post_json(&path, &body, Contract::FollowUpCommandResponse)
            .await
    }

    pub async fn sending_policy(&self, tenant: &str) -> Reply {
        let path = format!("/internal/tenants/{tenant}/sending-policy");
        self.get(&path, &[], Contract::SendingPolicyResponse).await
    }

    pub async fn put_sending_policy(&self, tenant: &str, policy: &Value) -> Reply {
        let path = format!("/internal/tenants/{tenant}/sending-policy");
        let request = self.client.put(self.url(&path)).json(policy);
        self.send(request, Some(Contract::SendingPolicyResponse))
            .await
    }

    pub async fn sending_status(&self, tenant: &str) -> Reply {
        let path = format!("/internal/tenants/{tenant}/sending-status");
        self.get(&path, &[], Contract::SendingStatusResponse).await
    }

    /// `DELETE` of the tenant's policy: `204` with no body.
    pub async fn remove_sending_policy(&self, tenant: &str) -> u16 {
        let path = format!("/internal/tenants/{tenant}/sending-policy");
        let response = self
            .client
            .delete(self.url(&path))
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("a body");
        assert!(body.is_empty(), "a removal answers with no body: {body:?}");
        status
    }

    /// Every event of the feed of `tenant` whose name starts with `prefix`.
    pub async fn feed_events(&self, tenant: &str, prefix: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut query = vec![
                ("tenant_id", tenant),
                ("name_prefix", prefix),
                ("limit", "1000"),
            ];
            if let Some(cursor) = &after {
                query.push(("after", cursor));
            }
            let page = self.feed(&query).await.ok();
            let items = page["items"].as_array().expect("items").clone();
            if items.is_empty() {
                return events;
            }
            events.extend(items);
            after = page["next_cursor"].as_str().map(str::to_owned);
        }
    }

    pub async fn add_opt_out(&self, tenant: &str, phone: &str) -> Reply {
        let body = json!({"request": {
            "request_id": new_id(), "tenant_id": tenant, "source_module": "mod-02-whatsapp-crm",
            "opt_out": {"phone_e164": phone, "reason": "asked by text"}
        }});
        self.post_json(OPT_OUTS, &body, Contract::OptOutCommandResponse)
            .await
    }

    pub async fn opt_outs(&self, query: &[(&str, &str)]) -> Reply {
        self.get(OPT_OUTS, query, Contract::OptOutList).await
    }

    /// `phone` goes into the path as given (`+` is sent as `%2B`).
    pub async fn remove_opt_out(&self, tenant: &str, phone: &str) -> Reply {
        let encoded = phone.replace('+', "%2B");
        let url = self.url_with_query(&format!("{OPT_OUTS}/{encoded}"), &[("tenant_id", tenant)]);
        self.send(self.client.delete(url), Some(Contract::OptOutRemoval))
            .await
    }

    /// `/health` and `/ready` have no contract file; their tests check the body.
    pub async fn health(&self) -> Reply {
        self.send(self.client.get(self.url("/health")), None).await
    }

    pub async fn ready(&self) -> Reply {
        self.send(self.client.get(self.url("/ready")), None).await
    }

    /// `/openapi.json` is checked by `tests/openapi.rs`.
    pub async fn openapi(&self) -> Reply {
        self.send(self.client.get(self.url("/openapi.json")), None)
            .await
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let response = self
            .client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics answers");
        assert_eq!(response.status(), 200, "GET /metrics");
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        assert!(
            content_type.starts_with("text/plain"),
            "GET /metrics is served as {content_type:?}"
        );
        response.text().await.expect("the metrics text")
    }

    // Steps many tests share.

    /// Creates a campaign of `tenant` in `state` and returns the stored record.
    pub async fn seed_campaign(&self, tenant: &str, state: &str) -> Value {
        let body = with(
            campaign_body(tenant),
            "/request/campaign/state",
            json!(state),
        );
        let response = self.create_campaign(&body).await.ok()["response"].take();
        assert_eq!(response["status"], "created", "{response}");
        response["campaign"].clone()
    }

    /// Moves a campaign along one transition and returns the stored record.
    pub async fn move_campaign(&self, campaign: &Value, to_state: &str, trigger: &str) -> Value {
        let tenant = campaign["tenant_id"].as_str().expect("a tenant id");
        let id = campaign["campaign_id"].as_str().expect("a campaign id");
        let response = self
            .advance_campaign(id, &advance_body(tenant, to_state, trigger))
            .await
            .ok()["response"]
            .take();
        assert_eq!(response["status"], "updated", "{response}");
        response["campaign"].clone()
    }

    /// Creates a follow-up and returns the `response` object (record and orchestration).
    pub async fn seed_follow_up(&self, body: &Value) -> Value {
        let response = self.create_follow_up(body).await.ok()["response"].take();
        assert_eq!(response["status"], "created", "{response}");
        response
    }

    /// Creates every body, a few at a time, and returns the stored records in body order.
    pub async fn seed_follow_ups(&self, bodies: Vec<Value>) -> Vec<Value> {
        self.seed_follow_up_responses(bodies)
            .await
            .into_iter()
            .map(|mut response| response["followup"].take())
            .collect()
    }

    /// Creates every body, a few at a time, and returns the `response` objects (record
    /// and orchestration) in body order.
    pub async fn seed_follow_up_responses(&self, bodies: Vec<Value>) -> Vec<Value> {
        let mut responses = Vec::with_capacity(bodies.len());
        for chunk in bodies.chunks(SEED_PARALLELISM) {
            let mut tasks = tokio::task::JoinSet::new();
            for (position, body) in chunk.iter().cloned().enumerate() {
                let app = self.clone();
                tasks.spawn(async move { (position, app.seed_follow_up(&body).await) });
            }
            let mut created = tasks.join_all().await;
            created.sort_by_key(|(position, _)| *position);
            responses.extend(created.into_iter().map(|(_, response)| response));
        }
        responses
    }

    /// Runs `request` `times` times at once, each on its own handle to this server.
    pub async fn at_once<Request, Output>(
        &self,
        times: usize,
        request: impl Fn(TestApp) -> Request,
    ) -> Vec<Output>
    where
        Request: Future<Output = Output> + Send + 'static,
        Output: Send + 'static,
    {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..times {
            tasks.spawn(request(self.clone()));
        }
        tasks.join_all().await
    }

    /// Every page of the campaign list for `query`, following `next_cursor` to the end.
    pub async fn campaign_pages(&self, query: &[(&str, &str)]) -> Vec<Value> {
        self.pages(CAMPAIGNS, Contract::CampaignList, query).await
    }

    /// Every page of the follow-up list for `query`, following `next_cursor` to the end.
    pub async fn follow_up_pages(&self, query: &[(&str, &str)]) -> Vec<Value> {
        self.pages(FOLLOW_UPS, Contract::FollowUpList, query).await
    }

    /// Every campaign of `tenant` matching `filters`, through all pages.
    pub async fn all_campaigns(&self, tenant: &str, filters: &[(&str, &str)]) -> Vec<Value> {
        let pages = self.campaign_pages(&all_of(tenant, filters)).await;
        items_of(&pages)
    }

    /// Every follow-up of `tenant` matching `filters`, through all pages.
    pub async fn all_follow_ups(&self, tenant: &str, filters: &[(&str, &str)]) -> Vec<Value> {
        let pages = self.follow_up_pages(&all_of(tenant, filters)).await;
        items_of(&pages)
    }

    async fn pages(&self, path: &str, contract: Contract, query: &[(&str, &str)]) -> Vec<Value> {
        let tenant = query
            .iter()
            .find(|(name, _)| *name == "tenant_id")
            .map(|(_, value)| *value);
        let mut pages = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut page_query = query.to_vec();
            if let Some(cursor) = &cursor {
                page_query.push(("cursor", cursor));
            }
            let page = self.get(path, &page_query, contract).await.ok();
            assert_eq!(page["tenant_id"].as_str(), tenant, "{page}");
            let size = page["items"].as_array().expect("items").len();
            assert_eq!(page["count"], size, "count is the page size: {page}");
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            pages.push(page);
            if cursor.is_none() {
                return pages;
            }
        }
        panic!("{path}?{query:?} did not end within {MAX_PAGES} pages");
    }

    /// The follow-up `followup_id` of `tenant`, as the list shows it.
    pub async fn follow_up(&self, tenant: &str, followup_id: &str) -> Value {
        self.all_follow_ups(tenant, &[])
            .await
            .into_iter()
            .find(|record| record["followup_id"] == followup_id)
            .unwrap_or_else(|| panic!("follow-up {followup_id} is not listed for {tenant}"))
    }

    /// The events of one correlation id, oldest first.
    pub async fn events(&self, correlation_id: &str) -> Vec<Value> {
        let trace = self.trace(correlation_id).await.ok();
        assert_eq!(trace["correlation_id"], correlation_id, "{trace}");
        assert_eq!(trace["commands"], json!([]), "commands stay empty");
        trace["events"].as_array().expect("events").clone()
    }
}

// Body builders: every call makes fresh ids, so tests never collide.

pub fn new_id() -> String {
    Uuid::new_v4().to_string()
}

pub fn new_tenant() -> String {
    format!("tenant-{}", Uuid::new_v4().simple())
}

/// A valid campaign create request with a fresh request id and external key.
pub fn campaign_body(tenant: &str) -> Value {
    json!({"request": {
        "request_id": new_id(),
        "tenant_id": tenant,
        "source_module": "mod-01-owner-concierge",
        "campaign": {
            "external_key": format!("campaign-{}", Uuid::new_v4().simple()),
            "name": "Spring promotion",
            "channel": "whatsapp",
            "audience_segment": "recent-buyers",
            "metadata": {"owner": "tests"}
        }
    }})
}

/// A valid state update request.
pub fn advance_body(tenant: &str, to_state: &str, trigger: &str) -> Value {
    json!({"request": {
        "request_id": new_id(),
        "tenant_id": tenant,
        "source_module": "mod-02-whatsapp-crm",
        "changes": {"to_state": to_state, "trigger": trigger}
    }})
}

/// A valid follow-up create request, due now, with fresh ids.
pub fn follow_up_body(tenant: &str) -> Value {
    json!({"request": {
        "request_id": new_id(),
        "tenant_id": tenant,
        "source_module": "mod-02-whatsapp-crm",
        "followup": {
            "followup_id": new_id(),
            "external_key": format!("followup-{}", Uuid::new_v4().simple()),
            "lead_id": new_id(),
            "phone_e164": "+5511999990001",
            "message": "Hello! Your order is ready.",
            "schedule_at": PAST,
            "metadata": {"source": "tests"}
        }
    }})
}

/// A follow-up create request tied to `campaign`.
pub fn campaign_follow_up_body(campaign: &Value) -> Value {
    let tenant = campaign["tenant_id"].as_str().expect("a tenant id");
    with(
        follow_up_body(tenant),
        "/request/followup/campaign_id",
        campaign["campaign_id"].clone(),
    )
}

/// `body` with the value at `pointer` set, adding the last key when it is absent.
pub fn with(mut body: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = split_pointer(&body, pointer);
    parent_object(&mut body, parent).insert(key.to_owned(), value);
    body
}

/// `body` without the key at `pointer`.
pub fn without(mut body: Value, pointer: &str) -> Value {
    let (parent, key) = split_pointer(&body, pointer);
    parent_object(&mut body, parent).remove(key);
    body
}

/// Splits `pointer` into the pointer of its parent object in `body` and the last key.
#[track_caller]
fn split_pointer<'p>(body: &Value, pointer: &'p str) -> (&'p str, &'p str) {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer below the root");
    assert!(
        body.pointer(parent).is_some_and(Value::is_object),
        "{parent} is not an object in {body}"
    );
    (parent, key)
}

fn parent_object<'b>(body: &'b mut Value, parent: &str) -> &'b mut serde_json::Map<String, Value> {
    body.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .expect("split_pointer checked the parent")
}

/// `body` with a fresh request id, as a client retrying a command would send it.
pub fn retried(body: &Value) -> Value {
    with(body.clone(), "/request/request_id", json!(new_id()))
}

pub fn str_field<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
}

/// The names of `events`, in order.
pub fn names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event["name"].as_str().expect("an event name"))
        .collect()
}

/// The query of a whole list in as few pages as possible.
fn all_of<'a>(tenant: &'a str, filters: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut query = vec![("tenant_id", tenant), ("limit", "1000")];
    query.extend_from_slice(filters);
    query
}

/// The items of `pages`, in order.
pub fn items_of(pages: &[Value]) -> Vec<Value> {
    pages
        .iter()
        .flat_map(|page| page["items"].as_array().expect("items").iter().cloned())
        .collect()
}

/// The size of each page.
pub fn page_sizes(pages: &[Value]) -> Vec<usize> {
    pages
        .iter()
        .map(|page| page["items"].as_array().expect("items").len())
        .collect()
}

/// How many command replies carry each `response.status` word.
pub fn status_counts(replies: &[Value]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for reply in replies {
        *counts
            .entry(str_field(reply, "/response/status"))
            .or_default() += 1;
    }
    counts
}

/// The ids of `records` under `field`, asserting none repeats.
#[track_caller]
pub fn distinct_ids(records: &[Value], field: &str) -> HashSet<String> {
    let mut ids = HashSet::new();
    for record in records {
        let id = record[field].as_str().expect("an id").to_owned();
        assert!(ids.insert(id.clone()), "{field} {id} is listed twice");
    }
    ids
}

/// Asserts `records` are oldest first: by `created_at`, then by id.
#[track_caller]
pub fn assert_oldest_first(records: &[Value], id_field: &str) {
    let keys: Vec<(&str, &str)> = records
        .iter()
        .map(|record| {
            (
                str_field(record, "/created_at"),
                str_field(record, &format!("/{id_field}")),
            )
        })
        .collect();
    for pair in keys.windows(2) {
        assert!(
            pair[0] <= pair[1],
            "not oldest first: {:?} before {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// Asserts `text` is RFC 3339 UTC with milliseconds, `2025-01-01T09:00:00.000Z`.
#[track_caller]
pub fn assert_millisecond_utc(text: &str) {
    let shape_ok = text.len() == 24
        && text.char_indices().all(|(index, character)| match index {
            4 | 7 => character == '-',
            10 => character == 'T',
            13 | 16 => character == ':',
            19 => character == '.',
            23 => character == 'Z',
            _ => character.is_ascii_digit(),
        });
    assert!(shape_ok, "{text:?} is not RFC 3339 UTC with milliseconds");
}

/// The counts of a drain reply agree with its `processed` list.
#[track_caller]
fn check_drain_counts(reply: &Reply) {
    if reply.status != 200 {
        return;
    }
    let report = &reply.body;
    let processed = report["processed"].as_array().expect("processed");
    let count = |status: &str| {
        processed
            .iter()
            .filter(|entry| entry["status"] == status)
            .count()
    };
    assert_eq!(report["processed_count"], processed.len(), "{report}");
    assert_eq!(report["succeeded_count"], count("sent"), "{report}");
    assert_eq!(report["failed_count"], count("failed"), "{report}");
    assert_eq!(report["skipped_count"], count("skipped"), "{report}");
    distinct_ids(processed, "followup_id");
}

/// The entry of `followup_id` in a drain reply, if the drain took it.
pub fn drained<'a>(report: &'a Value, followup_id: &str) -> Option<&'a Value> {
    report["processed"]
        .as_array()
        .expect("processed")
        .iter()
        .find(|entry| entry["followup_id"] == followup_id)
}

/// An idempotent repeat: the stored record under `record_name`, unchanged, and no event.
#[track_caller]
pub fn assert_idempotent(response: &Value, record_name: &str, original: &Value) {
    assert_eq!(response["status"], "idempotent");
    assert_eq!(
        &response[record_name], original,
        "the stored record, unchanged"
    );
    assert_eq!(
        response["orchestration"]["lifecycle_event_name"],
        Value::Null
    );
}

/// How long `eventually` waits before it fails the test, and how often it looks.
const PATIENCE: Duration = Duration::from_secs(10);
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// Runs `probe` until it gives a value and returns it; fails the test, saying `what` was
/// awaited, when nothing came within `PATIENCE`. For conditions the server reaches on its
/// own clock (a lease running out, a new second, retention), never a fixed sleep.
pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}"
        );
        tokio::time::sleep(LOOK_EVERY).await;
    }
}
