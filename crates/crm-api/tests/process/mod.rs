//! The real `crm-api` binary as the process-level tests drive it: start it on a data dir
//! (or a database), kill it, stop it, and write to it from several clients at once.
//!
//! Every wait is bounded and polls a condition; a server left running by a failed
//! assertion is killed when its `Server` is dropped.

#![allow(dead_code)]

pub mod clusters;
pub mod data_dirs;

use std::collections::HashSet;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

pub const BINARY: &str = env!("CARGO_BIN_EXE_crm-api");
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Schedules that are never due, and one that always is.
pub const FUTURE: &str = "2999-01-01T09:00:00.000Z";
pub const PAST: &str = "2025-01-01T09:00:00.000Z";
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
pub const CLIENTS: usize = 8;
const MAX_PAGES: usize = 1_000;

/// One `crm-api` process; killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub address: String,
    pub log: PathBuf,
}

impl Server {
    /// Starts the binary on `data_dir` and a free loopback port with `flags` added,
    /// without waiting for it.
    pub fn spawn(data_dir: &Path, log: PathBuf, flags: &[&str]) -> Server {
        let port = free_port();
        let output = File::create(&log).expect("a log file");
        let mut command = Command::new(BINARY);
        // The server must see only the flags below, whatever the environment of the test run.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CRM_") || name == "DATABASE_URL" {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::from(output.try_clone().expect("a log handle")))
            .stderr(Stdio::from(output))
            .spawn()
            .expect("the crm-api binary starts");
        Server {
            child,
            address: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    /// Starts the binary and waits until `/health` answers; retries on another port when
    /// the chosen one was taken between picking it and binding it.
    pub async fn start(
        data_dir: &Path,
        logs: &Path,
        client: &reqwest::Client,
        flags: &[&str],
    ) -> Server {
        for _ in 0..3 {
            let log = logs.join(format!("server-{}.log", Uuid::new_v4().simple()));
            let mut server = Server::spawn(data_dir, log, flags);
            match server.wait_until_healthy(client).await {
                Ok(()) => return server,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("crm-api did not become healthy:\n{log}"),
            }
        }
        panic!("crm-api found no free port in 3 tries");
    }

    /// Polls `/health`; on failure returns the server's log.
    pub async fn wait_until_healthy(&mut self, client: &reqwest::Client) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let url = format!("{}/health", self.address);
        loop {
            if let Some(status) = self.child.try_wait().expect("the child's status") {
                return Err(format!("exited with {status}:\n{}", self.log_text()));
            }
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no /health within {START_TIMEOUT:?}:\n{}",
                    self.log_text()
                ));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `kill -9`: SIGKILL on unix, then reap the process.
    pub fn kill(&mut self) {
        // An error means the process is already gone, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as an orchestrator stops a container; does not wait.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log holds `text` at least `times` times.
    pub async fn wait_for_log(&self, text: &str, times: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        while self.log_text().matches(text).count() < times {
            assert!(
                Instant::now() < deadline,
                "the log never said {text:?} {times} times:\n{}",
                self.log_text()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Every follow-up id of `tenant`, through all pages, asserting none repeats.
    pub async fn follow_up_ids(&self, client: &reqwest::Client, tenant: &str) -> HashSet<String> {
        let mut ids = HashSet::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut url = reqwest::Url::parse(&format!("{}/v1/crm/followups", self.address))
                .expect("a valid url");
            url.query_pairs_mut()
                .append_pair("tenant_id", tenant)
                .append_pair("limit", "1000");
            if let Some(cursor) = &cursor {
                url.query_pairs_mut().append_pair("cursor", cursor);
            }
            let response = client.get(url).send().await.expect("the list answers");
            assert_eq!(response.status(), 200, "listing follow-ups failed");
            let page: Value = response.json().await.expect("a JSON list");
            for item in page["items"].as_array().expect("items") {
                let id = item["followup_id"].as_str().expect("an id").to_owned();
                assert!(ids.insert(id.clone()), "follow-up {id} is listed twice");
            }
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return ids,
            }
        }
        panic!("the follow-up list did not end within {MAX_PAGES} pages");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A PostgreSQL schema the test owns, dropped with everything in it when the test ends.
pub struct Database {
    pub url: String,
    pub schema: String,
}

impl Database {
    pub fn new(url: String, schema: String) -> Self {
        Self { url, schema }
    }

    /// The flags that put a server on this schema.
    pub fn flags(&self) -> Vec<String> {
        [
            "--backend",
            "postgres",
            "--database-url",
            &self.url,
            "--pg-schema",
            &self.schema,
        ]
        .map(str::to_owned)
        .to_vec()
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop may run inside the test's runtime, which cannot wait on a future.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(crm_adapters_pg::testing::drop_schema(&url, &schema));
        })
        .join();
    }
}

/// Follows the feed of `tenant` on `address` with long-polls of `limit` events until
/// `done` is true and a page comes back empty; every event, in the order read. `fetch`
/// gets one page, or `None` when the service refused it (the same page is asked again).
pub async fn follow_feed<Page: Future<Output = Option<Value>>>(
    address: &str,
    tenant: &str,
    limit: usize,
    done: tokio::sync::watch::Receiver<bool>,
    patience: Duration,
    mut fetch: impl FnMut(reqwest::Url) -> Page,
) -> Vec<Value> {
    let mut cursor: Option<String> = None;
    let mut events = Vec::new();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < patience,
            "the consumer did not catch up"
        );
        // Read `done` before the page: an empty page read after it means caught up.
        let finished = *done.borrow();
        let mut url = reqwest::Url::parse(&format!("{address}/internal/orchestration/events"))
            .expect("a feed url");
        url.query_pairs_mut()
            .append_pair("tenant_id", tenant)
            .append_pair("limit", &limit.to_string())
            .append_pair("wait_ms", "200");
        if let Some(cursor) = &cursor {
            url.query_pairs_mut().append_pair("after", cursor);
        }
        let Some(page) = fetch(url).await else {
            tokio::time::sleep(POLL_INTERVAL).await;
            continue;
        };
        let items = page["items"].as_array().expect("items").clone();
        cursor = Some(page["next_cursor"].as_str().expect("a cursor").to_owned());
        if items.is_empty() && finished {
            return events;
        }
        events.extend(items);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a http client")
}

/// Waits for `child` to exit; `None` when it is still running after `timeout`.
pub async fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

pub fn follow_up_body(tenant: &str, followup_id: &str, schedule_at: &str) -> Value {
    json!({"request": {
        "request_id": Uuid::new_v4(),
        "tenant_id": tenant,
        "source_module": "mod-02-whatsapp-crm",
        "followup": {
            "followup_id": followup_id,
            "phone_e164": "+5511999990001",
            "message": "Your order is ready.",
            "schedule_at": schedule_at
        }
    }})
}

/// Creates follow-ups scheduled at `schedule_at` one after another until a request fails
/// (the server is gone), recording every id acknowledged with a 200.
pub async fn create_until_gone(
    client: reqwest::Client,
    url: String,
    tenant: String,
    schedule_at: &'static str,
    acknowledged: Acknowledged,
) -> Result<(), String> {
    loop {
        let id = Uuid::new_v4().to_string();
        let response = match client
            .post(&url)
            .json(&follow_up_body(&tenant, &id, schedule_at))
            .send()
            .await
        {
            Ok(response) => response,
            // The server is gone: this client is done.
            Err(_) => return Ok(()),
        };
        if response.status() != 200 {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            return Err(format!("a create failed with {status}: {body}"));
        }
        // The status line is the acknowledgement, even if the body never arrives.
        acknowledged.lock().expect("the ack list").push(id);
        let _ = response.bytes().await;
    }
}

pub type Acknowledged = Arc<Mutex<Vec<String>>>;

/// `CLIENTS` writers creating follow-ups against `server` until it is gone.
pub fn start_writers(
    client: &reqwest::Client,
    server: &Server,
    tenant: &str,
    schedule_at: &'static str,
) -> (tokio::task::JoinSet<Result<(), String>>, Acknowledged) {
    let acknowledged: Acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        clients.spawn(create_until_gone(
            client.clone(),
            format!("{}/v1/crm/followups", server.address),
            tenant.to_owned(),
            schedule_at,
            Arc::clone(&acknowledged),
        ));
    }
    (clients, acknowledged)
}

/// Waits until the writers have run for `at_least` and one create was acknowledged.
pub async fn wait_for_load(
    acknowledged: &Acknowledged,
    at_least: Duration,
    server: &Server,
    stage: &str,
) {
    let started = Instant::now();
    loop {
        let count = acknowledged.lock().expect("the ack list").len();
        if started.elapsed() >= at_least && count > 0 {
            return;
        }
        assert!(
            started.elapsed() < START_TIMEOUT,
            "{stage}: no create acknowledged within {START_TIMEOUT:?}:\n{}",
            server.log_text()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Asserts that every id in `acknowledged` is listed for `tenant`.
pub async fn assert_all_there(server: &Server, tenant: &str, acknowledged: &HashSet<String>) {
    let listed = server.follow_up_ids(&client(), tenant).await;
    let lost: Vec<&String> = acknowledged.difference(&listed).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged follow-ups lost: {:?}",
        lost.len(),
        acknowledged.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Workers sending calls to a server until it is gone (each `Ok` when it stopped because
/// the server did, `Err` naming what went wrong otherwise), and the channel each answered
/// call is told on.
pub struct Load {
    pub workers: tokio::task::JoinSet<Result<(), String>>,
    pub answered: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Load {
    /// Waits for `calls` answers (a bound of `deadline`, not a wait), kills the server with
    /// SIGKILL, and waits for every worker to notice.
    pub async fn kill_after(mut self, server: &mut Server, calls: usize, deadline: Duration) {
        let loaded = tokio::time::timeout(deadline, async {
            for _ in 0..calls {
                self.answered.recv().await;
            }
        })
        .await;
        assert!(
            loaded.is_ok(),
            "{calls} calls not answered within {deadline:?}:\n{}",
            server.log_text()
        );
        server.kill();
        for outcome in tokio::time::timeout(Duration::from_secs(30), self.workers.join_all())
            .await
            .expect("the workers stop once the server is gone")
        {
            outcome.unwrap_or_else(|message| panic!("{message}"));
        }
    }
}

/// The reply to a POST of `body` to `url` answered `200`; `Err` when the server could not
/// be reached or did not answer whole (it died on the way). Any other answer fails the
/// test.
pub async fn post_while_up(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<Value, String> {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .map_err(|error| format!("unreachable: {error}"))?;
    let status = response.status();
    let reply: Value = response
        .json()
        .await
        .map_err(|error| format!("no whole reply: {error}"))?;
    assert_eq!(status, 200, "{url} was answered {status}: {reply}");
    Ok(reply)
}
