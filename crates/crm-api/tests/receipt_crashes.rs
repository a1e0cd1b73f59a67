//! Delivery receipts and `kill -9`, on each store, through the real binary: every
//! receipt that was answered is there after the restart with its one event; every
//! receipt of a call cut short is either wholly applied (delivery, event) or not at all;
//! the same receipts sent again complete the rest, and nothing is applied twice.

mod process;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm_adapters_pg::testing::{database_url, fresh_schema};
use process::{Database, Load, PAST, Server, client, post_while_up};
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

const MESSAGES: usize = 4_000;
const RECEIPTS_PER_CALL: usize = 100;
const REPORTERS: usize = 4;
/// Calls answered before the kill: every reporter has had some go through, and each has
/// one on its way.
const ANSWERED_BEFORE_KILL: usize = 2 * REPORTERS;
const LOAD_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_receipts_cut_by_kill_9_are_whole_or_absent_and_complete_when_sent_again() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    kill_during_receipts_then_resend(data_dir.path(), logs.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_receipts_cut_by_kill_9_are_whole_or_absent_and_complete_when_sent_again() {
    let Some(url) = database_url("receipt_crashes") else {
        return;
    };
    let database = Database::new(url, fresh_schema("receipt_crashes"));
    let logs = TempDir::new().expect("a log dir");
    let flags = database.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    kill_during_receipts_then_resend(logs.path(), logs.path(), &flags).await;
}

/// One call's receipts: its body and the provider ids it names.
#[derive(Clone)]
struct Call {
    body: Value,
    wamids: Vec<String>,
}

#[derive(Default)]
struct Reported {
    /// Calls answered `200`, every receipt `applied`.
    answered: Vec<Call>,
    /// Calls on their way when the server died.
    cut: Vec<Call>,
}

async fn kill_during_receipts_then_resend(data_dir: &Path, logs: &Path, flags: &[&str]) {
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let mut server = Server::start(data_dir, logs, &client, flags).await;
    let by_wamid = accepted_messages(&client, &server.address, &tenant).await;
    let mut wamids: Vec<String> = by_wamid.keys().cloned().collect();
    wamids.sort();
    let calls: Vec<Call> = wamids
        .chunks(RECEIPTS_PER_CALL)
        .map(|chunk| delivered(&tenant, chunk))
        .collect();

    let waiting = Arc::new(Mutex::new(calls.clone()));
    let reported = Arc::new(Mutex::new(Reported::default()));
    let (answered, answers) = tokio::sync::mpsc::unbounded_channel();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..REPORTERS {
        workers.spawn(report_until_gone(
            client.clone(),
            server.address.clone(),
            Arc::clone(&waiting),
            Arc::clone(&reported),
            answered.clone(),
        ));
    }
    let load = Load {
        workers,
        answered: answers,
    };
    load.kill_after(&mut server, ANSWERED_BEFORE_KILL, LOAD_DEADLINE)
        .await;
    let reported = std::mem::take(&mut *reported.lock().unwrap());
    assert!(!reported.cut.is_empty(), "the kill cut no call short");

    let server = Server::start(data_dir, logs, &client, flags).await;
    let stored = Deliveries::read(&client, &server.address, &tenant).await;
    stored.assert_whole();
    let delivered: HashSet<&String> = stored.delivered.iter().collect();
    for call in &reported.answered {
        for wamid in &call.wamids {
            assert!(
                delivered.contains(&by_wamid[wamid]),
                "an answered receipt was lost: {wamid}"
            );
        }
    }
    let reported_ids: HashSet<&String> = reported
        .answered
        .iter()
        .chain(&reported.cut)
        .flat_map(|call| &call.wamids)
        .map(|wamid| &by_wamid[wamid])
        .collect();
    assert!(
        delivered.is_subset(&reported_ids),
        "a delivery no receipt reported"
    );

    // Every call sent again: what was applied is a duplicate, the rest applies now.
    for call in &calls {
        let answers = post_receipts(&client, &server.address, &call.body)
            .await
            .unwrap_or_else(|error| panic!("receipts sent again failed: {error}"));
        for (answer, wamid) in answers.iter().zip(&call.wamids) {
            let expected = if delivered.contains(&by_wamid[wamid]) {
                "duplicate"
            } else {
                "applied"
            };
            assert_eq!(answer, expected, "{wamid}");
        }
    }
    let completed = Deliveries::read(&client, &server.address, &tenant).await;
    completed.assert_whole();
    assert_eq!(
        completed.delivered.len(),
        MESSAGES,
        "every message delivered"
    );
}

/// Creates `MESSAGES` due follow-ups of `tenant`, drains them, and acks each lease as
/// accepted under a provider id of its own: the follow-up id of each provider id.
async fn accepted_messages(
    client: &reqwest::Client,
    address: &str,
    tenant: &str,
) -> HashMap<String, String> {
    for chunk in 0..MESSAGES / 1_000 {
        let items: Vec<Value> = (0..1_000)
            .map(|n| {
                json!({
                    "followup_id": Uuid::new_v4(),
                    "phone_e164": format!("+55119{:04}{:04}", chunk, n),
                    "message": "Your order is on its way.",
                    "schedule_at": PAST,
                })
            })
            .collect();
        let body = json!({"request": {
            "request_id": Uuid::new_v4(),
            "tenant_id": tenant,
            "source_module": "mod-02-whatsapp-crm",
            "followups": items,
        }});
        let reply = post(client, &format!("{address}/v1/crm/followups/batch"), &body).await;
        assert_eq!(reply.0, 200, "{}", reply.1);
    }
    let mut queued = 0;
    while queued < MESSAGES {
        let (status, report) = post(
            client,
            &format!("{address}/internal/worker/crm-followups/drain"),
            &json!({"limit": 1_000}),
        )
        .await;
        assert_eq!(status, 200, "{report}");
        let succeeded = report["succeeded_count"].as_u64().expect("a count") as usize;
        assert!(succeeded > 0, "the drain stopped at {queued}: {report}");
        queued += succeeded;
    }
    let mut by_wamid = HashMap::new();
    while by_wamid.len() < MESSAGES {
        let (status, claimed) = post(
            client,
            &format!("{address}/internal/outbound/claim"),
            &json!({"limit": 100, "lease_ms": 600_000}),
        )
        .await;
        assert_eq!(status, 200, "{claimed}");
        let items = claimed["items"].as_array().expect("items");
        assert!(!items.is_empty(), "the queue ran dry at {}", by_wamid.len());
        let acks: Vec<Value> = items
            .iter()
            .map(|lease| {
                let wamid = format!("wamid.{}", lease["item"]["queue_item_id"].as_str().unwrap());
                let followup_id = lease["item"]["context"]["context_id"]
                    .as_str()
                    .expect("the follow-up id")
                    .to_owned();
                by_wamid.insert(wamid.clone(), followup_id);
                json!({
                    "queue_item_id": lease["item"]["queue_item_id"],
                    "lease_id": lease["lease_id"],
                    "result": "accepted",
                    "provider_message_id": wamid,
                })
            })
            .collect();
        let (status, reply) = post(
            client,
            &format!("{address}/internal/outbound/ack"),
            &json!({ "acks": acks }),
        )
        .await;
        assert_eq!(status, 200, "{reply}");
        assert!(
            reply["results"]
                .as_array()
                .expect("results")
                .iter()
                .all(|result| result["status"] == "acked"),
            "{reply}"
        );
    }
    by_wamid
}

/// A `delivered` receipt for each of `wamids`, naming the tenant.
fn delivered(tenant: &str, wamids: &[String]) -> Call {
    let receipts: Vec<Value> = wamids
        .iter()
        .map(|wamid| {
            json!({"provider_message_id": wamid, "tenant_id": tenant, "status": "delivered",
                   "at": "2025-01-01T09:00:00.000Z"})
        })
        .collect();
    Call {
        body: json!({ "receipts": receipts }),
        wamids: wamids.to_vec(),
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let response = client.post(url).json(body).send().await.expect("an answer");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON reply"))
}

/// The answers of a receipts call answered `200`; `Err` when the server could not be
/// reached or did not answer whole. Any other answer fails the test.
async fn post_receipts(
    client: &reqwest::Client,
    address: &str,
    body: &Value,
) -> Result<Vec<String>, String> {
    let url = format!("{address}/internal/outbound/receipts");
    let reply = post_while_up(client, &url, body).await?;
    Ok(reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| result["status"].as_str().unwrap_or_default().to_owned())
        .collect())
}

/// Sends the waiting calls one after another until the server is gone.
async fn report_until_gone(
    client: reqwest::Client,
    address: String,
    waiting: Arc<Mutex<Vec<Call>>>,
    reported: Arc<Mutex<Reported>>,
    answered: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<(), String> {
    loop {
        let Some(call) = waiting.lock().unwrap().pop() else {
            return Err("every call was answered before the kill: raise MESSAGES".into());
        };
        match post_receipts(&client, &address, &call.body).await {
            Ok(answers) => {
                if let Some(answer) = answers.iter().find(|answer| *answer != "applied") {
                    return Err(format!("a first receipt was not applied: {answer}"));
                }
                reported.lock().unwrap().answered.push(call);
                let _ = answered.send(());
            }
            Err(_) => {
                reported.lock().unwrap().cut.push(call);
                return Ok(());
            }
        }
    }
}

/// What the restarted server holds about the tenant's deliveries.
struct Deliveries {
    /// Follow-ups whose delivery is `delivered`.
    delivered: Vec<String>,
    /// Follow-ups whose delivery is still `accepted`.
    accepted: HashSet<String>,
    /// The follow-up of each `crm.followup.delivery.delivered` event, with how many.
    events: HashMap<String, usize>,
}

impl Deliveries {
    async fn read(client: &reqwest::Client, address: &str, tenant: &str) -> Self {
        let mut delivered = Vec::new();
        let mut accepted = HashSet::new();
        for follow_up in pages(client, address, "/v1/crm/followups", tenant, &[]).await {
            let id = follow_up["followup_id"].as_str().expect("an id").to_owned();
            match follow_up["delivery"]["status"].as_str() {
                Some("delivered") => delivered.push(id),
                Some("accepted") => {
                    accepted.insert(id);
                }
                other => panic!("follow-up {id} has delivery {other:?}"),
            }
        }
        let mut events: HashMap<String, usize> = HashMap::new();
        let prefix = [("name_prefix", "crm.followup.delivery.delivered")];
        for event in pages(
            client,
            address,
            "/internal/orchestration/events",
            tenant,
            &prefix,
        )
        .await
        {
            let id = event["payload"]["followup_id"].as_str().expect("an id");
            *events.entry(id.to_owned()).or_default() += 1;
        }
        Self {
            delivered,
            accepted,
            events,
        }
    }

    /// Each delivered follow-up has its one event, and no event is without its delivery.
    fn assert_whole(&self) {
        let doubled: Vec<_> = self.events.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "events doubled: {doubled:?}");
        let delivered: HashSet<String> = self.delivered.iter().cloned().collect();
        let with_events: HashSet<String> = self.events.keys().cloned().collect();
        assert_eq!(
            delivered, with_events,
            "a delivery without its event or an event without its delivery"
        );
        assert_eq!(delivered.len() + self.accepted.len(), MESSAGES);
    }
}

/// Every item of a listing of `tenant` (follow-ups or events), through all pages (a feed
/// page may be empty while the events it passed over did not match).
async fn pages(
    client: &reqwest::Client,
    address: &str,
    path: &str,
    tenant: &str,
    query: &[(&str, &str)],
) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = reqwest::Url::parse(&format!("{address}{path}")).expect("a valid url");
        url.query_pairs_mut()
            .append_pair("tenant_id", tenant)
            .append_pair("limit", "1000")
            .extend_pairs(query);
        if let Some(cursor) = &cursor {
            let name = if path.contains("events") {
                "after"
            } else {
                "cursor"
            };
            url.query_pairs_mut().append_pair(name, cursor);
        }
        let page: Value = client
            .get(url)
            .send()
            .await
            .expect("a listing")
            .json()
            .await
            .expect("a JSON page");
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        // The feed's cursor stays put once it has caught up; a list's ends.
        match page["next_cursor"].as_str() {
            Some(next) if cursor.as_deref() != Some(next) => cursor = Some(next.to_owned()),
            _ => return items,
        }
    }
}
