//! Bulk creates and `kill -9`, on each store, through the real binary: every batch that
//! was answered is wholly there; every item of a batch cut short is either wholly in
//! (record, event, campaign count) or wholly absent; the same batches sent again after
//! the restart complete them with nothing doubled.

mod process;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crm_adapters_pg::testing::{database_url, fresh_schema};
use process::{Database, FUTURE, Load, Server, client, post_while_up};
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

const WRITERS: usize = 4;
const ITEMS_PER_BATCH: usize = 250;
/// Batches answered before the kill: every writer has had some go through, and each
/// has one on its way.
const ANSWERED_BEFORE_KILL: usize = 2 * WRITERS;
/// The most the writers may take to get there; a bound, not a wait.
const LOAD_DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_batches_cut_by_kill_9_are_whole_or_absent_and_complete_when_sent_again() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    kill_during_batches_then_resend(data_dir.path(), logs.path(), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batches_cut_by_kill_9_are_whole_or_absent_and_complete_when_sent_again() {
    let Some(url) = database_url("bulk_crashes") else {
        return;
    };
    let database = Database::new(url, fresh_schema("bulk_crashes"));
    let logs = TempDir::new().expect("a log dir");
    let flags = database.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    kill_during_batches_then_resend(logs.path(), logs.path(), &flags).await;
}

/// A batch as sent: its body and the ids of its items.
#[derive(Clone)]
struct Batch {
    body: Value,
    ids: Vec<String>,
}

#[derive(Default)]
struct Sent {
    /// Batches answered `200`, every item `created`.
    answered: Vec<Batch>,
    /// Batches on their way when the server died.
    cut: Vec<Batch>,
}

async fn kill_during_batches_then_resend(data_dir: &Path, logs: &Path, flags: &[&str]) {
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let mut server = Server::start(data_dir, logs, &client, flags).await;
    let campaign_id = create_campaign(&client, &server, &tenant).await;

    let sent = Arc::new(Mutex::new(Sent::default()));
    let (answered, answers) = tokio::sync::mpsc::unbounded_channel();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        workers.spawn(send_until_gone(
            client.clone(),
            server.address.clone(),
            tenant.clone(),
            campaign_id.clone(),
            Arc::clone(&sent),
            answered.clone(),
        ));
    }
    let load = Load {
        workers,
        answered: answers,
    };
    load.kill_after(&mut server, ANSWERED_BEFORE_KILL, LOAD_DEADLINE)
        .await;
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    assert!(!sent.cut.is_empty(), "the kill cut no batch short");

    let server = Server::start(data_dir, logs, &client, flags).await;
    let stored = Stored::read(&client, &server, &tenant, &campaign_id).await;
    stored.assert_whole();
    for batch in &sent.answered {
        let missing: Vec<&String> = batch
            .ids
            .iter()
            .filter(|id| !stored.records.contains(*id))
            .collect();
        assert!(missing.is_empty(), "an answered batch lost {missing:?}");
    }
    let all: HashSet<String> = sent
        .answered
        .iter()
        .chain(&sent.cut)
        .flat_map(|batch| batch.ids.iter().cloned())
        .collect();
    assert!(
        stored.records.is_subset(&all),
        "a record that was never sent"
    );

    // Sent again, in any order: the answered ones are all idempotent, the cut ones
    // complete, and nothing is doubled.
    for batch in sent.cut.iter().chain(&sent.answered) {
        let reply = post_batch(&client, &server.address, &batch.body)
            .await
            .unwrap_or_else(|error| panic!("a batch sent again failed: {error}"));
        for (result, id) in reply.iter().zip(&batch.ids) {
            let status = result["status"].as_str().unwrap_or_default();
            let expected = if stored.records.contains(id) {
                "idempotent"
            } else {
                "created"
            };
            assert_eq!(status, expected, "item {id}: {result}");
        }
    }
    let completed = Stored::read(&client, &server, &tenant, &campaign_id).await;
    completed.assert_whole();
    assert_eq!(completed.records, all, "every item sent is there once");
}

/// What the restarted server holds for the tenant.
struct Stored {
    records: HashSet<String>,
    /// The follow-up of each `crm.followup.scheduled` event, with how many it has.
    events: HashMap<String, usize>,
    pending_count: u64,
}

impl Stored {
    async fn read(client: &reqwest::Client, server: &Server, tenant: &str, campaign: &str) -> Self {
        let records = server.follow_up_ids(client, tenant).await;
        let mut events: HashMap<String, usize> = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut url =
                reqwest::Url::parse(&format!("{}/internal/orchestration/events", server.address))
                    .unwrap();
            url.query_pairs_mut()
                .append_pair("tenant_id", tenant)
                .append_pair("name_prefix", "crm.followup.scheduled")
                .append_pair("limit", "1000");
            if let Some(after) = &after {
                url.query_pairs_mut().append_pair("after", after);
            }
            let page = json_of(client.get(url)).await;
            let items = page["items"].as_array().expect("items");
            if items.is_empty() {
                break;
            }
            for event in items {
                let id = event["payload"]["followup_id"].as_str().expect("an id");
                *events.entry(id.to_owned()).or_default() += 1;
            }
            after = page["next_cursor"].as_str().map(str::to_owned);
        }
        let campaign = json_of(client.get(format!(
            "{}/v1/crm/campaigns/{campaign}?tenant_id={tenant}",
            server.address
        )))
        .await;
        let pending_count = campaign["stats"]["followups"]["pending"]
            .as_u64()
            .unwrap_or_else(|| panic!("campaign stats: {campaign}"));
        Self {
            records,
            events,
            pending_count,
        }
    }

    /// Each record has its one event and its count, and no event is without its record.
    fn assert_whole(&self) {
        let doubled: Vec<(&String, &usize)> = self.events.iter().filter(|(_, n)| **n > 1).collect();
        assert!(doubled.is_empty(), "events doubled: {doubled:?}");
        let with_events: HashSet<String> = self.events.keys().cloned().collect();
        assert_eq!(
            with_events.symmetric_difference(&self.records).count(),
            0,
            "a record without its event or an event without its record"
        );
        assert_eq!(
            self.pending_count,
            self.records.len() as u64,
            "the campaign counts every record once"
        );
    }
}

async fn create_campaign(client: &reqwest::Client, server: &Server, tenant: &str) -> String {
    let body = json!({"request": {
        "request_id": Uuid::new_v4(),
        "tenant_id": tenant,
        "source_module": "mod-01-owner-concierge",
        "campaign": {"name": "Bulk launch", "channel": "whatsapp"}
    }});
    let reply = json_of(
        client
            .post(format!("{}/v1/crm/campaigns", server.address))
            .json(&body),
    )
    .await;
    reply["response"]["campaign"]["campaign_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a campaign: {reply}"))
        .to_owned()
}

/// The JSON body of the reply to `request`.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    let response = request.send().await.expect("the server answers");
    response.json().await.expect("a JSON reply")
}

fn new_batch(tenant: &str, campaign_id: &str) -> Batch {
    let ids: Vec<String> = (0..ITEMS_PER_BATCH)
        .map(|_| Uuid::new_v4().to_string())
        .collect();
    let items: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            json!({
                "followup_id": id,
                "campaign_id": campaign_id,
                "external_key": format!("launch-{id}"),
                "phone_e164": format!("+55119{:08}", n),
                "message": "Our spring collection is here.",
                "schedule_at": FUTURE,
            })
        })
        .collect();
    let body = json!({"request": {
        "request_id": Uuid::new_v4(),
        "tenant_id": tenant,
        "source_module": "mod-02-whatsapp-crm",
        "followups": items,
    }});
    Batch { body, ids }
}

/// The results of a batch answered `200`; `Err` when the server could not be reached or
/// did not answer whole. Any other answer fails the test.
async fn post_batch(
    client: &reqwest::Client,
    address: &str,
    body: &Value,
) -> Result<Vec<Value>, String> {
    let url = format!("{address}/v1/crm/followups/batch");
    let reply = post_while_up(client, &url, body).await?;
    Ok(reply["response"]["results"]
        .as_array()
        .expect("results")
        .clone())
}

/// Sends new batches one after another until the server is gone.
async fn send_until_gone(
    client: reqwest::Client,
    address: String,
    tenant: String,
    campaign_id: String,
    sent: Arc<Mutex<Sent>>,
    answered: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<(), String> {
    loop {
        let batch = new_batch(&tenant, &campaign_id);
        match post_batch(&client, &address, &batch.body).await {
            Ok(results) => {
                if let Some(result) = results.iter().find(|r| r["status"] != "created") {
                    return Err(format!("a new item was not created: {result}"));
                }
                sent.lock().unwrap().answered.push(batch);
                let _ = answered.send(());
            }
            Err(_) => {
                sent.lock().unwrap().cut.push(batch);
                return Ok(());
            }
        }
    }
}
