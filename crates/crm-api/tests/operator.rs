//! What an operator sees of the real binary: the start-up line, a request id on every
//! line logged while a request is served, and a stop that no waiting feed read holds up.

mod process;

use std::time::{Duration, Instant};

use process::{Server, client, wait_for_exit};
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

fn log_lines(server: &Server) -> Vec<Value> {
    server
        .log_text()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"))
        })
        .collect()
}

fn envelope(tenant: &str, inner: &str, value: Value) -> Value {
    let mut request = json!({
        "request_id": Uuid::new_v4(),
        "tenant_id": tenant,
        "source_module": "mod-02-whatsapp-crm",
    });
    request[inner] = value;
    json!({ "request": request })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_up_line_says_what_runs_and_every_line_of_a_request_carries_its_id() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let server = Server::start(
        data_dir.path(),
        logs.path(),
        &client,
        &["--log-format", "json", "--default-send-rate", "80"],
    )
    .await;

    let created: Value = client
        .post(format!("{}/v1/crm/campaigns", server.address))
        .header("x-request-id", "op-create")
        .json(&envelope(
            "ops",
            "campaign",
            json!({"name": "Spring", "channel": "whatsapp"}),
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let campaign_id = created["response"]["campaign"]["campaign_id"]
        .as_str()
        .expect("a campaign")
        .to_owned();
    let advanced = client
        .patch(format!(
            "{}/v1/crm/campaigns/{campaign_id}/state",
            server.address
        ))
        .header("x-request-id", "op-advance")
        .json(&envelope(
            "ops",
            "changes",
            json!({"to_state": "scheduled", "trigger": "schedule_campaign"}),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(advanced.status(), 200);

    let lines = log_lines(&server);
    let start = lines
        .iter()
        .find(|line| line["message"] == "crm-api listening")
        .expect("a start-up line");
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["backend"], "file");
    assert_eq!(
        start["data_dir"].as_str(),
        Some(data_dir.path().to_str().unwrap())
    );
    assert!(
        start["address"].as_str().is_some_and(|address| server
            .address
            .ends_with(address.rsplit(':').next().unwrap())),
        "{start}"
    );
    assert_eq!(start["default_send_rate"], 80);
    assert_eq!(start["api_token"], false);

    let transitioned = lines
        .iter()
        .find(|line| line["message"] == "campaign transitioned")
        .expect("the transition is logged");
    assert_eq!(transitioned["request_id"], "op-advance", "{transitioned}");
    assert_eq!(transitioned["tenant_id"], "ops", "{transitioned}");
    // Every line of the use cases was logged while serving a request.
    for line in &lines {
        let target = line["target"].as_str().unwrap_or_default();
        if target.starts_with("crm_app") {
            assert!(line["request_id"].is_string(), "no request id: {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answers_a_waiting_feed_read_at_once_instead_of_waiting_for_it() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let mut server = Server::start(
        data_dir.path(),
        logs.path(),
        &client,
        &["--shutdown-timeout-ms", "30000"],
    )
    .await;
    let feed = tokio::spawn({
        let url = format!(
            "{}/internal/orchestration/events?wait_ms=25000",
            server.address
        );
        let client = reqwest::Client::new();
        async move {
            let response = client.get(url).send().await.expect("the feed answers");
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    });
    // Parked: the gauge of waiting feed reads says so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = client
            .get(format!("{}/metrics", server.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("crm_feed_waiting 1") {
            break;
        }
        assert!(Instant::now() < deadline, "the feed read never waited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let stopped_at = Instant::now();
    server.terminate();
    let (status, page) = feed.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(page["items"], json!([]));
    assert!(page["next_cursor"].is_string());
    let exit = wait_for_exit(&mut server.child, Duration::from_secs(30))
        .await
        .expect("the server stops");
    assert!(exit.success(), "{}", server.log_text());
    // The read would have waited 25 s and the stop up to 30 s: it took neither.
    assert!(
        stopped_at.elapsed() < Duration::from_secs(10),
        "the stop took {:?}",
        stopped_at.elapsed()
    );
}
