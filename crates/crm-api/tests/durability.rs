//! Durability of the file store, through the real `crm-api` binary on a temporary data dir:
//! acknowledged writes survive `kill -9`, SIGTERM under load stops the process cleanly
//! without losing them, a corrupt snapshot stops start-up without being touched, and a
//! second process cannot open a data dir that is in use.
//!
//! Every wait is bounded and polls a condition; a server left running by a failed
//! assertion is killed when its `Server` is dropped.

use std::collections::HashSet;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

const BINARY: &str = env!("CARGO_BIN_EXE_crm-api");
const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// The graceful shutdown bound: the server's own 30 s for in-flight requests, plus slack.
const GRACEFUL_EXIT_TIMEOUT: Duration = Duration::from_secs(35);
/// Schedules that are never due, and one that always is.
const FUTURE: &str = "2999-01-01T09:00:00.000Z";
const PAST: &str = "2025-01-01T09:00:00.000Z";
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const CLIENTS: usize = 8;
const LOAD_AT_LEAST: Duration = Duration::from_millis(1_500);
/// How long the clients run before the SIGTERM.
const SIGTERM_AFTER: Duration = Duration::from_secs(1);
const KILL_CYCLES: usize = 3;
const MAX_PAGES: usize = 1_000;

/// One `crm-api` process; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    address: String,
    log: PathBuf,
}

impl Server {
    /// Starts the binary on `data_dir` and a free loopback port with `flags` added,
    /// without waiting for it.
    fn spawn(data_dir: &Path, log: PathBuf, flags: &[&str]) -> Server {
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
    async fn start(
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
    async fn wait_until_healthy(&mut self, client: &reqwest::Client) -> Result<(), String> {
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
    fn kill(&mut self) {
        // An error means the process is already gone, which is what we want.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as an orchestrator stops a container; does not wait.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every follow-up id of `tenant`, through all pages, asserting none repeats.
    async fn follow_up_ids(&self, client: &reqwest::Client, tenant: &str) -> HashSet<String> {
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a http client")
}

/// Waits for `child` to exit; `None` when it is still running after `timeout`.
async fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
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

fn follow_up_body(tenant: &str, followup_id: &str, schedule_at: &str) -> Value {
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
async fn create_until_gone(
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

type Acknowledged = Arc<Mutex<Vec<String>>>;

/// `CLIENTS` writers creating follow-ups against `server` until it is gone.
fn start_writers(
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
async fn wait_for_load(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_follow_ups_survive_repeated_kill_9_under_load() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let mut acknowledged_so_far: HashSet<String> = HashSet::new();

    for cycle in 0..KILL_CYCLES {
        let mut server = Server::start(data_dir.path(), logs.path(), &client, &[]).await;
        let listed = server.follow_up_ids(&client, &tenant).await;
        let lost: Vec<&String> = acknowledged_so_far.difference(&listed).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: acknowledged but lost: {lost:?}"
        );

        let (clients, acknowledged) = start_writers(&client, &server, &tenant, FUTURE);
        wait_for_load(
            &acknowledged,
            LOAD_AT_LEAST,
            &server,
            &format!("cycle {cycle}"),
        )
        .await;
        // Killed while the clients still have requests in flight.
        server.kill();
        let finished = tokio::time::timeout(Duration::from_secs(30), clients.join_all())
            .await
            .expect("the clients stop once the server is gone");
        for outcome in finished {
            outcome.unwrap_or_else(|message| panic!("cycle {cycle}: {message}"));
        }
        let acknowledged = acknowledged.lock().expect("the ack list");
        acknowledged_so_far.extend(acknowledged.iter().cloned());
    }

    let server = Server::start(data_dir.path(), logs.path(), &client, &[]).await;
    let listed = server.follow_up_ids(&client, &tenant).await;
    let lost: Vec<&String> = acknowledged_so_far.difference(&listed).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_the_worker_on_exits_0_and_keeps_every_acknowledged_write() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let worker = ["--worker-interval-ms", "50"];
    let mut server = Server::start(data_dir.path(), logs.path(), &client, &worker).await;

    // Due follow-ups, so the worker is draining while the server shuts down.
    let (clients, acknowledged) = start_writers(&client, &server, &tenant, PAST);
    wait_for_load(&acknowledged, SIGTERM_AFTER, &server, "before SIGTERM").await;
    server.terminate();
    let terminated = Instant::now();
    // The clients keep going until the server stops answering.
    let status = wait_for_exit(&mut server.child, GRACEFUL_EXIT_TIMEOUT).await;
    let log = server.log_text();
    let status = status.unwrap_or_else(|| {
        panic!("crm-api still runs {GRACEFUL_EXIT_TIMEOUT:?} after SIGTERM:\n{log}")
    });
    assert!(
        status.success(),
        "crm-api exited with {status} after SIGTERM:\n{log}"
    );
    let stopping = terminated.elapsed();
    let finished = tokio::time::timeout(Duration::from_secs(30), clients.join_all())
        .await
        .expect("the clients stop once the server is gone");
    for outcome in finished {
        outcome.unwrap_or_else(|message| panic!("{message}\n{log}"));
    }

    let acknowledged: HashSet<String> = acknowledged
        .lock()
        .expect("the ack list")
        .iter()
        .cloned()
        .collect();
    let restarted = Server::start(data_dir.path(), logs.path(), &client, &[]).await;
    let listed = restarted.follow_up_ids(&client, &tenant).await;
    let lost: Vec<&String> = acknowledged.difference(&listed).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged follow-ups lost after SIGTERM (stopped in {stopping:?}): {lost:?}",
        lost.len(),
        acknowledged.len()
    );
}

#[tokio::test]
async fn a_corrupt_snapshot_stops_start_up_naming_the_file_and_leaves_it_untouched() {
    let garbage: &[u8] = br#"{"items": [{"followup_id": "#;
    for snapshot in ["followups.json", "campaigns.json"] {
        let data_dir = TempDir::new().expect("a data dir");
        let logs = TempDir::new().expect("a log dir");
        fs::write(
            data_dir.path().join("manifest.json"),
            r#"{"generation":0,"events_bytes":0,"outbound_bytes":0}"#,
        )
        .expect("a manifest");
        let corrupt = data_dir.path().join(snapshot);
        fs::write(&corrupt, garbage).expect("a corrupt snapshot");

        let mut server = Server::spawn(data_dir.path(), logs.path().join("server.log"), &[]);
        let status = wait_for_exit(&mut server.child, EXIT_TIMEOUT).await;

        let log = server.log_text();
        let status = status
            .unwrap_or_else(|| panic!("crm-api kept running on a corrupt {snapshot}:\n{log}"));
        assert!(
            !status.success(),
            "{snapshot}: exited with {status}:\n{log}"
        );
        assert!(
            log.contains(&corrupt.display().to_string()),
            "the message must name {}:\n{log}",
            corrupt.display()
        );
        assert_eq!(
            fs::read(&corrupt).expect("the snapshot is still there"),
            garbage,
            "{snapshot} was changed"
        );
    }
}

#[tokio::test]
async fn a_second_process_on_a_data_dir_in_use_exits_quickly_and_leaves_the_first_serving() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let first = Server::start(data_dir.path(), logs.path(), &client, &[]).await;

    let mut second = Server::spawn(data_dir.path(), logs.path().join("second.log"), &[]);
    let started = Instant::now();
    let status = wait_for_exit(&mut second.child, EXIT_TIMEOUT).await;

    let log = second.log_text();
    let status = status.unwrap_or_else(|| panic!("a second crm-api runs on a used dir:\n{log}"));
    assert!(!status.success(), "exited with {status}:\n{log}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to refuse",
        started.elapsed()
    );
    assert!(
        log.to_lowercase().contains("in use"),
        "the message must say the dir is in use:\n{log}"
    );
    let health = client
        .get(format!("{}/health", first.address))
        .send()
        .await
        .expect("the first server still answers");
    assert_eq!(health.status(), 200);
}
