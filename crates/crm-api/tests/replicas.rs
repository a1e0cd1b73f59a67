//! Two `crm-api` processes on one PostgreSQL schema, as replicas run in production:
//! the event feed is exactly-once and in one order whichever replica a consumer reads
//! while both commit, and the outbound queue never hands an item to two consumers at
//! once, nor loses one whose consumer died holding its lease; and a tenant's limits (its
//! rate, its day's budget of recipients, a recipient's interval) hold while both drain.

mod process;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crm_adapters_pg::testing::{database_url, fresh_schema};
use process::{Database, FUTURE, PAST, Server, follow_up_body};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::watch;
use uuid::Uuid;

/// Writers on each replica, 8 in all.
const WRITERS_PER_REPLICA: usize = 4;
/// Follow-ups the writers create between them while the consumers follow the feed.
const CREATES: usize = 800;
/// A bound on any wait, so a broken guarantee fails the test instead of hanging it.
const PATIENCE: Duration = Duration::from_secs(60);

struct Replicas {
    servers: [Server; 2],
    client: reqwest::Client,
    _database: Database,
    _logs: TempDir,
}

async fn start_replicas(test: &str) -> Option<Replicas> {
    let url = database_url(test)?;
    let database = Database::new(url, fresh_schema("replicas"));
    let logs = TempDir::new().expect("a log dir");
    let client = process::client();
    let flags = database.flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let first = Server::start(logs.path(), logs.path(), &client, &flags).await;
    let second = Server::start(logs.path(), logs.path(), &client, &flags).await;
    Some(Replicas {
        servers: [first, second],
        client,
        _database: database,
        _logs: logs,
    })
}

impl Replicas {
    async fn post(&self, replica: usize, path: &str, body: &Value) -> Value {
        let url = format!("{}{path}", self.servers[replica].address);
        post(&self.client, &url, body).await
    }
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Value {
    let response = client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|error| panic!("POST {url}: {error}"));
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(status, 200, "POST {url}: {body}");
    body
}

/// Creates follow-ups on `address` while `budget` (shared by every writer) lasts; the ids
/// acknowledged.
async fn write_until(
    client: reqwest::Client,
    address: String,
    tenant: String,
    budget: Arc<AtomicUsize>,
) -> Vec<String> {
    let url = format!("{address}/v1/crm/followups");
    let mut created = Vec::new();
    while budget
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
            left.checked_sub(1)
        })
        .is_ok()
    {
        let id = Uuid::new_v4().to_string();
        post(&client, &url, &follow_up_body(&tenant, &id, FUTURE)).await;
        created.push(id);
    }
    created
}

/// Follows the feed of `address` for `tenant` until `done` and caught up.
async fn consume(
    client: reqwest::Client,
    address: String,
    tenant: String,
    done: watch::Receiver<bool>,
) -> Vec<Value> {
    process::follow_feed(&address, &tenant, 37, done, PATIENCE, |url| {
        let page = client.get(url).send();
        async move {
            let page = page.await.expect("the feed answers");
            Some(page.json().await.expect("a JSON page"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_exactly_once_and_in_one_order_while_two_replicas_commit() {
    let Some(replicas) =
        start_replicas("the_feed_is_exactly_once_and_in_one_order_while_two_replicas_commit").await
    else {
        return;
    };
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let budget = Arc::new(AtomicUsize::new(CREATES));
    let (caught_up, consumers_done) = watch::channel(false);
    let consumers: Vec<_> = replicas
        .servers
        .iter()
        .map(|server| {
            tokio::spawn(consume(
                replicas.client.clone(),
                server.address.clone(),
                tenant.clone(),
                consumers_done.clone(),
            ))
        })
        .collect();
    let writers: Vec<_> = replicas
        .servers
        .iter()
        .flat_map(|server| std::iter::repeat_n(server, WRITERS_PER_REPLICA))
        .map(|server| {
            tokio::spawn(write_until(
                replicas.client.clone(),
                server.address.clone(),
                tenant.clone(),
                budget.clone(),
            ))
        })
        .collect();

    let mut created = Vec::new();
    for writer in writers {
        created.extend(writer.await.expect("a writer"));
    }
    caught_up.send_replace(true);
    let mut feeds = Vec::new();
    for consumer in consumers {
        feeds.push(consumer.await.expect("a consumer"));
    }

    assert_eq!(created.len(), CREATES, "every create was acknowledged");
    let created: HashSet<&str> = created.iter().map(String::as_str).collect();
    for (replica, feed) in feeds.iter().enumerate() {
        let seen: Vec<&str> = feed
            .iter()
            .map(|event| event["payload"]["followup_id"].as_str().expect("an id"))
            .collect();
        let distinct: HashSet<&str> = seen.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            seen.len(),
            "replica {replica}: an event twice"
        );
        assert_eq!(
            distinct, created,
            "replica {replica}: events skipped or invented"
        );
    }
    let order = |feed: &Vec<Value>| -> Vec<String> {
        feed.iter()
            .map(|event| event["event_id"].as_str().expect("an id").to_owned())
            .collect()
    };
    assert_eq!(
        order(&feeds[0]),
        order(&feeds[1]),
        "both replicas serve one order"
    );
}

/// The follow-up a leased item delivers.
fn followup_of(leased: &Value) -> String {
    leased["item"]["context"]["context_id"]
        .as_str()
        .expect("a follow-up id")
        .to_owned()
}

/// One lease a sender took and acknowledged.
#[derive(Debug)]
struct Taken {
    followup_id: String,
    lease_id: String,
    attempt: u64,
}

/// Leases items through `address` and acks each as accepted until `acked` (shared by
/// every sender) reaches `total`.
async fn sender(
    client: reqwest::Client,
    address: String,
    acked: Arc<AtomicUsize>,
    total: usize,
) -> Vec<Taken> {
    let claim = format!("{address}/internal/outbound/claim");
    let ack = format!("{address}/internal/outbound/ack");
    let mut taken = Vec::new();
    let started = Instant::now();
    while acked.load(Ordering::SeqCst) < total {
        assert!(started.elapsed() < PATIENCE, "the senders did not finish");
        let leased = post(&client, &claim, &json!({"limit": 25, "lease_ms": 60000})).await;
        let items = leased["items"].as_array().expect("items");
        if items.is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        let acks: Vec<Value> = items
            .iter()
            .map(|leased| {
                json!({
                    "queue_item_id": leased["item"]["queue_item_id"],
                    "lease_id": leased["lease_id"],
                    "result": "accepted",
                })
            })
            .collect();
        let results = post(&client, &ack, &json!({ "acks": acks })).await;
        let results = results["results"].as_array().expect("results");
        for (leased, result) in items.iter().zip(results) {
            assert_eq!(result["status"], "acked", "a live lease acks: {result}");
            taken.push(Taken {
                followup_id: followup_of(leased),
                lease_id: leased["lease_id"].as_str().expect("a lease").to_owned(),
                attempt: leased["attempt"].as_u64().expect("an attempt"),
            });
        }
        acked.fetch_add(items.len(), Ordering::SeqCst);
    }
    taken
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_lease_one_item_twice_and_lose_none_to_a_dead_consumer() {
    let Some(replicas) =
        start_replicas("two_replicas_never_lease_one_item_twice_and_lose_none_to_a_dead_consumer")
            .await
    else {
        return;
    };
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    const ITEMS: usize = 300;
    for index in 0..ITEMS {
        let id = Uuid::new_v4().to_string();
        replicas
            .post(
                index % 2,
                "/v1/crm/followups",
                &follow_up_body(&tenant, &id, PAST),
            )
            .await;
    }
    let mut queued = HashSet::new();
    while queued.len() < ITEMS {
        let report = replicas
            .post(
                queued.len() % 2,
                "/internal/worker/crm-followups/drain",
                &json!({"limit": 100}),
            )
            .await;
        let processed = report["processed"].as_array().expect("processed");
        assert!(
            !processed.is_empty(),
            "the drain stalled at {}",
            queued.len()
        );
        for entry in processed {
            assert_eq!(entry["status"], "sent", "{entry}");
            queued.insert(entry["followup_id"].as_str().expect("an id").to_owned());
        }
    }
    // A consumer that leases a batch and dies without acking it.
    let abandoned = replicas
        .post(
            0,
            "/internal/outbound/claim",
            &json!({"limit": 20, "lease_ms": 1000}),
        )
        .await;
    let abandoned: HashSet<String> = abandoned["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(followup_of)
        .collect();
    assert_eq!(abandoned.len(), 20);

    let acked = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|index| {
            tokio::spawn(sender(
                replicas.client.clone(),
                replicas.servers[index % 2].address.clone(),
                Arc::clone(&acked),
                ITEMS,
            ))
        })
        .collect();
    let mut leases: HashMap<String, Vec<Taken>> = HashMap::new();
    for sender in senders {
        for taken in sender.await.expect("a sender") {
            leases
                .entry(taken.followup_id.clone())
                .or_default()
                .push(taken);
        }
    }

    let items: HashSet<String> = leases.keys().cloned().collect();
    assert_eq!(
        items, queued,
        "every drained follow-up acknowledged, none invented"
    );
    let twice: Vec<_> = leases.values().filter(|held| held.len() > 1).collect();
    assert!(twice.is_empty(), "items acked under two leases: {twice:?}");
    for (item, held) in &leases {
        let expected = if abandoned.contains(item) { 2 } else { 1 };
        assert_eq!(
            held[0].attempt, expected,
            "{item}: an abandoned lease comes back as the next attempt"
        );
        assert!(Uuid::parse_str(&held[0].lease_id).is_ok());
    }
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {url}: {error}"));
    let status = response.status();
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

/// Every follow-up of `tenant`, through all pages.
async fn follow_ups(replicas: &Replicas, tenant: &str) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "{}/v1/crm/followups?tenant_id={tenant}&limit=1000",
            replicas.servers[0].address
        );
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page = get(&replicas.client, &url).await;
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_rate_holds_in_every_second_across_two_replicas_draining_at_once() {
    let Some(replicas) =
        start_replicas("a_tenants_rate_holds_in_every_second_across_two_replicas_draining_at_once")
            .await
    else {
        return;
    };
    const RATE: usize = 20;
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let policy = format!(
        "{}/internal/tenants/{tenant}/sending-policy",
        replicas.servers[1].address
    );
    let response = replicas
        .client
        .put(&policy)
        .json(&json!({"max_per_second": RATE, "quiet_hours": null}))
        .send()
        .await
        .expect("the policy is set");
    assert_eq!(response.status(), 200);
    for index in 0..100 {
        let id = Uuid::new_v4().to_string();
        replicas
            .post(
                index % 2,
                "/v1/crm/followups",
                &follow_up_body(&tenant, &id, PAST),
            )
            .await;
    }

    drain_from_both(&replicas, 100, 3).await;

    let mut sent_at: Vec<time::OffsetDateTime> = follow_ups(&replicas, &tenant)
        .await
        .iter()
        .filter(|f| f["status"] == "sent")
        .map(|f| {
            let text = f["updated_at"].as_str().expect("updated_at");
            time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .expect("a timestamp")
        })
        .collect();
    sent_at.sort();
    assert!(
        sent_at.len() >= 2 * RATE,
        "only {} sent in three seconds",
        sent_at.len()
    );
    let most = RATE + RATE / 20;
    for (index, start) in sent_at.iter().enumerate() {
        let in_window = sent_at[index..]
            .iter()
            .take_while(|at| **at < *start + time::Duration::seconds(1))
            .count();
        assert!(
            in_window <= most,
            "{in_window} sent in the second from {start}, the rate is {RATE}"
        );
    }
}

/// Four drain loops, two per replica, each drain of `limit`, for `seconds`.
async fn drain_from_both(replicas: &Replicas, limit: usize, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let drains: Vec<_> = (0..4)
        .map(|index| {
            let client = replicas.client.clone();
            let url = format!(
                "{}/internal/worker/crm-followups/drain",
                replicas.servers[index % 2].address
            );
            tokio::spawn(async move {
                while Instant::now() < until {
                    post(&client, &url, &json!({ "limit": limit })).await;
                    // Large batches breathe between drains; small ones overlap all the time.
                    if limit > 10 {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();
    for drain in drains {
        drain.await.expect("a drain loop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_day_s_budget_and_a_recipients_interval_hold_across_two_replicas_draining_at_once() {
    let Some(replicas) = start_replicas(
        "the_day_s_budget_and_a_recipients_interval_hold_across_two_replicas_draining_at_once",
    )
    .await
    else {
        return;
    };
    const BUDGET: usize = 60;
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let policy = format!(
        "{}/internal/tenants/{tenant}/sending-policy",
        replicas.servers[1].address
    );
    let response = replicas
        .client
        .put(&policy)
        .json(&json!({"max_per_second": null, "quiet_hours": null,
                      "daily_recipient_limit": BUDGET, "recipient_min_interval_ms": 600_000}))
        .send()
        .await
        .expect("the policy is set");
    assert_eq!(response.status(), 200);
    // 120 recipients, the first 80 of them twice: the budget holds half of them, the
    // interval every second follow-up to one recipient.
    for index in 0..200 {
        let phone = format!("+55119{:08}", index % 120);
        let mut body = follow_up_body(&tenant, &Uuid::new_v4().to_string(), PAST);
        body["request"]["followup"]["phone_e164"] = json!(phone);
        replicas.post(index % 2, "/v1/crm/followups", &body).await;
    }

    // Small batches, so that drains overlap many times while the budget runs out.
    drain_from_both(&replicas, 3, 3).await;

    let mut sends: HashMap<String, usize> = HashMap::new();
    for follow_up in follow_ups(&replicas, &tenant).await {
        if follow_up["status"] == "sent" {
            let phone = follow_up["phone_e164"]
                .as_str()
                .expect("a phone")
                .to_owned();
            *sends.entry(phone).or_default() += 1;
        }
    }
    assert_eq!(
        sends.len(),
        BUDGET,
        "distinct recipients sent to: {sends:?}"
    );
    let twice: Vec<_> = sends.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        twice.is_empty(),
        "sent twice within the interval: {twice:?}"
    );
    let status = get(
        &replicas.client,
        &format!(
            "{}/internal/tenants/{tenant}/sending-status",
            replicas.servers[0].address
        ),
    )
    .await;
    assert_eq!(status["daily_recipients"]["used"], BUDGET);
    assert_eq!(status["due_pending"], 200 - BUDGET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_made_through_one_replica_stops_the_drain_of_the_other() {
    let Some(replicas) =
        start_replicas("an_opt_out_made_through_one_replica_stops_the_drain_of_the_other").await
    else {
        return;
    };
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let id = Uuid::new_v4().to_string();
    // `follow_up_body` writes to +5511999990001.
    replicas
        .post(0, "/v1/crm/followups", &follow_up_body(&tenant, &id, PAST))
        .await;
    replicas
        .post(
            0,
            "/v1/crm/opt-outs",
            &json!({"request": {
                "request_id": Uuid::new_v4(), "tenant_id": tenant,
                "source_module": "mod-02-whatsapp-crm",
                "opt_out": {"phone_e164": "+5511999990001"}
            }}),
        )
        .await;

    let report = replicas
        .post(1, "/internal/worker/crm-followups/drain", &json!({}))
        .await;

    let entry = report["processed"]
        .as_array()
        .expect("processed")
        .iter()
        .find(|entry| entry["followup_id"] == id.as_str())
        .expect("drained")
        .clone();
    assert_eq!(entry["status"], "failed");
    assert_eq!(entry["reason"], "RECIPIENT_OPTED_OUT");
}

/// Posts `body` to `path` on `replica` `times` times, each from its own task.
async fn post_concurrently(replicas: &Replicas, path: &str, bodies: Vec<(usize, Value)>) {
    let posts: Vec<_> = bodies
        .into_iter()
        .map(|(replica, body)| {
            let client = replicas.client.clone();
            let url = format!("{}{path}", replicas.servers[replica].address);
            tokio::spawn(async move { post(&client, &url, &body).await })
        })
        .collect();
    for posted in posts {
        posted.await.expect("a post");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_acks_racing_on_two_replicas_end_in_one_pass_and_one_pause() {
    race_receipts_and_acks(
        "receipts_and_acks_racing_on_two_replicas_end_in_one_pass_and_one_pause",
        "131048",
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_racing_past_the_auto_pause_ratio_on_two_replicas_pause_once() {
    // 20 failures of 60 deliveries; more than 10 % of a window of 100 pauses.
    race_receipts_and_acks(
        "failures_racing_past_the_auto_pause_ratio_on_two_replicas_pause_once",
        "131026",
        Some(json!({"window": 100, "max_failure_ratio": 0.1})),
    )
    .await;
}

/// 60 follow-ups of a running campaign: 40 accepted, then their receipts (30 read, 10
/// failed with `failure_code`) sent three times over to both replicas in opposite
/// orders while the other 20 are acked (half failed with `failure_code`) on both; with
/// `auto_pause` set on the tenant when given. Ends in the state of one clean pass, with
/// counts equal to a recount of the rows and exactly one automatic pause.
async fn race_receipts_and_acks(test: &str, failure_code: &str, auto_pause: Option<Value>) {
    let Some(replicas) = start_replicas(test).await else {
        return;
    };
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    if let Some(auto_pause) = auto_pause {
        let policy = json!({"max_per_second": null, "quiet_hours": null, "auto_pause": auto_pause});
        let url = format!(
            "{}/internal/tenants/{tenant}/sending-policy",
            replicas.servers[0].address
        );
        let put = replicas.client.put(&url).json(&policy).send().await;
        assert_eq!(put.expect("the policy is set").status(), 200);
    }
    let envelope = |inner: &str, fields: Value| {
        json!({"request": {"request_id": Uuid::new_v4(), "tenant_id": tenant,
                           "source_module": "mod-02-whatsapp-crm", inner: fields}})
    };
    let created = replicas
        .post(
            0,
            "/v1/crm/campaigns",
            &envelope(
                "campaign",
                json!({"name": "Launch", "channel": "whatsapp",
                                         "state": "scheduled"}),
            ),
        )
        .await;
    let campaign_id = created["response"]["campaign"]["campaign_id"]
        .as_str()
        .expect("a campaign id")
        .to_owned();
    let state = format!(
        "{}/v1/crm/campaigns/{campaign_id}/state",
        replicas.servers[1].address
    );
    let moved = replicas
        .client
        .patch(&state)
        .json(&envelope(
            "changes",
            json!({"to_state": "running", "trigger": "start_window_open"}),
        ))
        .send()
        .await
        .expect("the campaign moves");
    assert_eq!(moved.status(), 200);
    const ITEMS: usize = 60;
    for index in 0..ITEMS {
        let mut body = follow_up_body(&tenant, &Uuid::new_v4().to_string(), PAST);
        body["request"]["followup"]["campaign_id"] = json!(campaign_id);
        replicas.post(index % 2, "/v1/crm/followups", &body).await;
    }
    replicas
        .post(
            0,
            "/internal/worker/crm-followups/drain",
            &json!({"limit": ITEMS}),
        )
        .await;
    let mut leased = Vec::new();
    while leased.len() < ITEMS {
        let claimed = replicas
            .post(1, "/internal/outbound/claim", &json!({"limit": 100}))
            .await;
        let items = claimed["items"].as_array().expect("items").clone();
        assert!(!items.is_empty(), "claimed {} of {ITEMS}", leased.len());
        leased.extend(items);
    }
    let ack = |leased: &Value, fields: Value| {
        let mut ack = json!({"queue_item_id": leased["item"]["queue_item_id"],
                             "lease_id": leased["lease_id"]});
        ack.as_object_mut()
            .expect("an object")
            .extend(fields.as_object().expect("an object").clone());
        ack
    };
    // The first 40 accepted first; the others are acked while the receipts race.
    let accepted: Vec<Value> = leased[..40]
        .iter()
        .enumerate()
        .map(|(n, item)| {
            ack(
                item,
                json!({"result": "accepted", "provider_message_id": format!("wamid.race.{n}")}),
            )
        })
        .collect();
    replicas
        .post(0, "/internal/outbound/ack", &json!({"acks": accepted}))
        .await;
    let receipt = |n: usize, status: &str| {
        let mut receipt = json!({"provider_message_id": format!("wamid.race.{n}"),
                                 "status": status, "at": "2025-01-01T09:00:00.000Z"});
        if status == "failed" {
            receipt["error_code"] = json!(failure_code);
        }
        receipt
    };
    // Messages 0..30 are delivered and read, 30..40 delivered and failed: each pair ends
    // in one state whatever its order. Each replica gets them in its own order, three
    // times over, while acks for 40..60 (half of them failures) go to both.
    let forward: Vec<Value> = (0..40)
        .flat_map(|n| {
            let last = if n < 30 { "read" } else { "failed" };
            [receipt(n, "delivered"), receipt(n, last)]
        })
        .collect();
    let backward: Vec<Value> = forward.iter().rev().cloned().collect();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        bodies.push((0, json!({"receipts": forward})));
        bodies.push((1, json!({"receipts": backward})));
    }
    let late_acks: Vec<(usize, Value)> = leased[40..]
        .iter()
        .enumerate()
        .map(|(n, item)| {
            let fields = if n % 2 == 0 {
                json!({"result": "failed", "error_code": failure_code, "retryable": true})
            } else {
                json!({"result": "accepted", "provider_message_id": format!("wamid.late.{n}")})
            };
            (n % 2, json!({"acks": [ack(item, fields)]}))
        })
        .collect();
    let receipts = post_concurrently(&replicas, "/internal/outbound/receipts", bodies);
    let acks = post_concurrently(&replicas, "/internal/outbound/ack", late_acks);
    tokio::join!(receipts, acks);

    let records = follow_ups(&replicas, &tenant).await;
    let mut recount: HashMap<String, i64> = HashMap::new();
    for record in &records {
        let status = record["delivery"]["status"].as_str().expect("a delivery");
        *recount.entry(status.to_owned()).or_default() += 1;
    }
    let expected: HashMap<String, i64> = [("read", 30), ("failed", 20), ("accepted", 10)]
        .into_iter()
        .map(|(status, count)| (status.to_owned(), count))
        .collect();
    assert_eq!(recount, expected, "one clean pass");
    let url = format!(
        "{}/v1/crm/campaigns/{campaign_id}?tenant_id={tenant}",
        replicas.servers[1].address
    );
    let reply = get(&replicas.client, &url).await;
    assert_eq!(reply["campaign"]["state"], "paused");
    let stats = &reply["stats"]["delivery"];
    for status in ["accepted", "retrying", "failed", "delivered", "read"] {
        assert_eq!(
            stats[status].as_i64(),
            Some(recount.get(status).copied().unwrap_or(0)),
            "{status}: the counts are a recount of the rows: {stats}"
        );
    }
    let feed = format!(
        "{}/internal/orchestration/events?tenant_id={tenant}&name_prefix=crm.campaign.state.changed&limit=1000",
        replicas.servers[0].address
    );
    let changes = get(&replicas.client, &feed).await;
    let pauses: Vec<&Value> = changes["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|event| event["payload"]["to_state"] == "paused")
        .collect();
    assert_eq!(pauses.len(), 1, "one pause: {pauses:?}");
    assert_eq!(pauses[0]["payload"]["reason_code"], "auto_pause");
}
