//! PostgreSQL fails over under load, seen by the clients of the real binary.
//!
//! The test starts a primary and a synchronous standby, and a `crm-api` whose
//! `--database-url` names both. While writers create, a worker drains, a sender claims
//! and acks, and a consumer follows the event feed, the primary crashes and the standby is
//! promoted. The service answers `503 storage_unavailable` during the gap, serves again
//! from the new primary within 10 s of the promotion without a restart, and nothing it
//! acknowledged is missing there: every create, drain and ack; no follow-up is queued
//! twice, no item leased twice, and the consumer has seen every event once. Then the
//! former primary comes back read-write, and neither the running service nor a new one
//! writes to it.

mod process;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use process::clusters::{Clusters, connect};
use process::{PAST, Server, follow_up_body};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::watch;
use uuid::Uuid;

const SCHEMA: &str = "crm_failover";
/// The promise: serving again within this long of the promotion.
const BACK_WITHIN: Duration = Duration::from_secs(10);
const PATIENCE: Duration = Duration::from_secs(60);

/// What the clients saw, each answer with the time it came.
#[derive(Default)]
struct Seen {
    /// Follow-ups whose create answered 200.
    created: HashSet<String>,
    /// Follow-ups a drain answered as handed to the queue.
    drained: HashSet<String>,
    /// Each queue item's leases, from claims that answered 200.
    leases: HashMap<String, Vec<String>>,
    /// Items whose ack answered `acked`.
    acked: HashSet<String>,
    /// Statuses other than 200, with the error code.
    refusals: Vec<(u16, String)>,
    /// When a request last succeeded.
    successes: Vec<Instant>,
}

type Shared = Arc<Mutex<Seen>>;

async fn post(client: &reqwest::Client, url: &str, body: &Value, seen: &Shared) -> Option<Value> {
    let response = client.post(url).json(body).send().await;
    answered(response, seen).await
}

/// The body of a 200, after noting the time; any other answer is noted as a refusal.
async fn answered(response: reqwest::Result<reqwest::Response>, seen: &Shared) -> Option<Value> {
    let response = match response {
        Ok(response) => response,
        Err(error) => panic!("the service did not answer: {error}"),
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let mut seen = seen.lock().unwrap();
    if status == 200 {
        seen.successes.push(Instant::now());
        Some(body)
    } else {
        let code = body["error"].as_str().unwrap_or_default().to_owned();
        seen.refusals.push((status, code));
        None
    }
}

/// Waits until what the clients saw satisfies `done`, polling, within `PATIENCE`.
async fn until(seen: &Shared, what: &str, done: impl Fn(&Seen) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done(&seen.lock().unwrap()) {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        pause().await;
    }
}

async fn pause() {
    tokio::time::sleep(Duration::from_millis(50)).await;
}

async fn write(
    client: reqwest::Client,
    address: String,
    tenant: String,
    seen: Shared,
    stop: watch::Receiver<bool>,
) {
    let url = format!("{address}/v1/crm/followups");
    while !*stop.borrow() {
        let id = Uuid::new_v4().to_string();
        match post(&client, &url, &follow_up_body(&tenant, &id, PAST), &seen).await {
            Some(_) => {
                seen.lock().unwrap().created.insert(id);
            }
            None => pause().await,
        }
    }
}

async fn drain(
    client: reqwest::Client,
    address: String,
    seen: Shared,
    stop: watch::Receiver<bool>,
) {
    let url = format!("{address}/internal/worker/crm-followups/drain");
    while !*stop.borrow() {
        let Some(report) = post(&client, &url, &json!({"limit": 50}), &seen).await else {
            pause().await;
            continue;
        };
        let processed = report["processed"].as_array().expect("processed");
        {
            let mut seen = seen.lock().unwrap();
            for entry in processed {
                if entry["status"] == "sent" {
                    let id = entry["followup_id"].as_str().expect("an id").to_owned();
                    assert!(seen.drained.insert(id.clone()), "{id} drained twice");
                }
            }
        }
        if processed.is_empty() {
            pause().await;
        }
    }
}

/// Claims items and acks each as accepted; an ack refused during the gap is sent again
/// until it is answered, as a real sender would.
async fn send(client: reqwest::Client, address: String, seen: Shared, stop: watch::Receiver<bool>) {
    let claim = format!("{address}/internal/outbound/claim");
    let ack = format!("{address}/internal/outbound/ack");
    while !*stop.borrow() {
        let body = json!({"limit": 25, "lease_ms": 120000});
        let Some(leased) = post(&client, &claim, &body, &seen).await else {
            pause().await;
            continue;
        };
        let items = leased["items"].as_array().expect("items").clone();
        if items.is_empty() {
            pause().await;
            continue;
        }
        let mut acks = Vec::new();
        {
            let mut seen = seen.lock().unwrap();
            for leased in &items {
                let item = leased["item"]["queue_item_id"].as_str().expect("an item");
                let lease = leased["lease_id"].as_str().expect("a lease");
                seen.leases
                    .entry(item.to_owned())
                    .or_default()
                    .push(lease.to_owned());
                acks.push(json!({"queue_item_id": item, "lease_id": lease, "result": "accepted"}));
            }
        }
        let started = Instant::now();
        let results = loop {
            if let Some(results) = post(&client, &ack, &json!({ "acks": acks }), &seen).await {
                break results;
            }
            assert!(started.elapsed() < PATIENCE, "acks were never answered");
            pause().await;
        };
        let mut seen = seen.lock().unwrap();
        for (ack, result) in acks
            .iter()
            .zip(results["results"].as_array().expect("results"))
        {
            // An ack that committed before a refused answer is repeated: `duplicate`.
            assert!(
                result["status"] == "acked" || result["status"] == "duplicate",
                "a live lease acks: {result}"
            );
            seen.acked
                .insert(ack["queue_item_id"].as_str().expect("an item").to_owned());
        }
    }
}

/// Follows the tenant's feed until `stop` and caught up, through refusals.
async fn consume(
    client: reqwest::Client,
    address: String,
    tenant: String,
    seen: Shared,
    stop: watch::Receiver<bool>,
) -> Vec<Value> {
    process::follow_feed(&address, &tenant, 100, stop, 2 * PATIENCE, |url| {
        let (page, seen) = (client.get(url).send(), seen.clone());
        async move { answered(page.await, &seen).await }
    })
    .await
}

/// Creates `count` follow-ups through `address`, retrying refusals; the ids.
async fn create_surely(
    client: &reqwest::Client,
    address: &str,
    tenant: &str,
    count: usize,
) -> Vec<String> {
    let seen = Shared::default();
    let url = format!("{address}/v1/crm/followups");
    let started = Instant::now();
    let mut ids = Vec::new();
    while ids.len() < count {
        assert!(
            started.elapsed() < PATIENCE,
            "creates were refused for a minute"
        );
        let id = Uuid::new_v4().to_string();
        let body = follow_up_body(tenant, &id, PAST);
        if post(client, &url, &body, &seen).await.is_some() {
            ids.push(id);
        } else {
            pause().await;
        }
    }
    ids
}

async fn ids_of(
    client: &tokio_postgres::Client,
    statement: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> HashSet<String> {
    client
        .query(statement, params)
        .await
        .unwrap_or_else(|error| panic!("{statement}: {error}"))
        .iter()
        .map(|row| row.get::<_, Uuid>(0).to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_synchronous_standby_loses_nothing_acknowledged_and_serves_within_10_s() {
    let test =
        "a_failover_to_a_synchronous_standby_loses_nothing_acknowledged_and_serves_within_10_s";
    let Some(mut clusters) = Clusters::start(test, true) else {
        return;
    };
    clusters.wait_for_streaming().await;
    let logs = TempDir::new().expect("a log dir");
    let client = process::client();
    let url = clusters.failover_url();
    let flags = [
        "--backend",
        "postgres",
        "--database-url",
        &url,
        "--pg-schema",
        SCHEMA,
    ];
    let server = Server::start(logs.path(), logs.path(), &client, &flags).await;
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());

    let seen = Shared::default();
    let (stop, stopped) = watch::channel(false);
    let mut load = Vec::new();
    for _ in 0..2 {
        let (client, address) = (client.clone(), server.address.clone());
        load.push(tokio::spawn(write(
            client,
            address,
            tenant.clone(),
            seen.clone(),
            stopped.clone(),
        )));
    }
    load.push(tokio::spawn(drain(
        client.clone(),
        server.address.clone(),
        seen.clone(),
        stopped.clone(),
    )));
    load.push(tokio::spawn(send(
        client.clone(),
        server.address.clone(),
        seen.clone(),
        stopped.clone(),
    )));
    let consumer = tokio::spawn(consume(
        client.clone(),
        server.address.clone(),
        tenant.clone(),
        seen.clone(),
        stopped.clone(),
    ));

    // A real load before the crash: creates, drains and acks under way.
    until(&seen, "the load started", |seen| {
        seen.created.len() >= 300 && seen.acked.len() >= 50
    })
    .await;
    clusters.crash(&clusters.primary);
    let crashed = Instant::now();
    // The clients see the gap before the standby is promoted.
    until(&seen, "the clients saw the gap", |seen| {
        seen.refusals.len() >= 20
    })
    .await;
    clusters.promote_standby();
    let promoted = Instant::now();
    // Serving again: a good run of successes after the promotion.
    until(&seen, "the service served again", |seen| {
        seen.successes.iter().filter(|at| **at >= promoted).count() >= 300
    })
    .await;
    stop.send_replace(true);
    for task in load {
        task.await.expect("a load task");
    }
    let events = consumer.await.expect("the consumer");
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    // The gap, from the client's side.
    let last_before = seen.successes.iter().filter(|at| **at <= crashed).max();
    let first_after = seen.successes.iter().filter(|at| **at >= promoted).min();
    let first_after = first_after.expect("the service serves again after the promotion");
    let back_after = first_after.duration_since(promoted);
    eprintln!(
        "failover gap: last success {:?} before the crash, first {back_after:?} after the \
         promotion ({:?} without a primary)",
        last_before.map(|at| crashed.duration_since(*at)),
        promoted.duration_since(crashed)
    );
    eprintln!(
        "under load: {} creates, {} drained, {} leased, {} acked, {} events read, {} refusals",
        seen.created.len(),
        seen.drained.len(),
        seen.leases.len(),
        seen.acked.len(),
        events.len(),
        seen.refusals.len()
    );
    assert!(
        back_after <= BACK_WITHIN,
        "serving again took {back_after:?}"
    );
    assert!(!seen.refusals.is_empty(), "the gap was seen by the clients");
    for (status, code) in &seen.refusals {
        assert_eq!((*status, code.as_str()), (503, "storage_unavailable"));
    }

    // Everything acknowledged is on the new primary.
    let standby = connect(&clusters.standby.url()).await;
    let stored = ids_of(
        &standby,
        &format!("SELECT followup_id FROM {SCHEMA}.crm_followups WHERE tenant_id = $1"),
        &[&tenant],
    )
    .await;
    assert!(
        seen.created.len() > 100,
        "a real load: {} creates",
        seen.created.len()
    );
    let lost: Vec<_> = seen.created.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged creates lost: {lost:?}");
    let sent = ids_of(
        &standby,
        &format!(
            "SELECT followup_id FROM {SCHEMA}.crm_followups WHERE tenant_id = $1 \
             AND status <> 'pending'"
        ),
        &[&tenant],
    )
    .await;
    let undone: Vec<_> = seen.drained.difference(&sent).collect();
    assert!(undone.is_empty(), "acknowledged drains lost: {undone:?}");
    let queued_twice = standby
        .query(
            &format!(
                "SELECT followup_id FROM {SCHEMA}.crm_outbound_items \
                 GROUP BY followup_id HAVING count(*) > 1"
            ),
            &[],
        )
        .await
        .expect("the queue answers");
    assert!(
        queued_twice.is_empty(),
        "follow-ups queued twice: {}",
        queued_twice.len()
    );
    let twice: Vec<_> = seen
        .leases
        .iter()
        .filter(|(_, leases)| leases.len() > 1)
        .collect();
    assert!(twice.is_empty(), "items leased twice: {twice:?}");
    let done = ids_of(
        &standby,
        &format!("SELECT queue_item_id FROM {SCHEMA}.crm_outbound_items WHERE status = 'done'"),
        &[],
    )
    .await;
    assert!(!seen.acked.is_empty(), "the sender acked items");
    let unacked: Vec<_> = seen.acked.difference(&done).collect();
    assert!(unacked.is_empty(), "acknowledged acks lost: {unacked:?}");

    // The consumer saw every event of the new primary once, in order.
    let read: Vec<&str> = events
        .iter()
        .map(|event| event["event_id"].as_str().expect("an id"))
        .collect();
    let distinct: HashSet<&str> = read.iter().copied().collect();
    assert_eq!(distinct.len(), read.len(), "an event read twice");
    let all = standby
        .query(
            &format!("SELECT event_id FROM {SCHEMA}.crm_events WHERE tenant_id = $1 ORDER BY seq"),
            &[&tenant],
        )
        .await
        .expect("the events answer");
    let all: Vec<String> = all
        .iter()
        .map(|row| row.get::<_, Uuid>(0).to_string())
        .collect();
    let read: Vec<String> = read.iter().map(|id| (*id).to_owned()).collect();
    assert_eq!(
        read, all,
        "the feed across the failover: every event once, in order"
    );

    // The former primary comes back read-write: its timeline is the old one.
    clusters.restart_former_primary();
    standby
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'crm-api' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("the service's connections end");
    let later = create_surely(&client, &server.address, &tenant, 20).await;
    let fresh = Server::start(logs.path(), logs.path(), &client, &flags).await;
    let fresher = create_surely(&client, &fresh.address, &tenant, 20).await;
    let stored = ids_of(
        &standby,
        &format!("SELECT followup_id FROM {SCHEMA}.crm_followups WHERE tenant_id = $1"),
        &[&tenant],
    )
    .await;
    for id in later.iter().chain(&fresher) {
        assert!(stored.contains(id), "{id} is not on the new primary");
    }
    let former = connect(&clusters.primary.url()).await;
    let split = former
        .query(
            &format!(
                "SELECT followup_id FROM {SCHEMA}.crm_followups WHERE followup_id::text = ANY($1)"
            ),
            &[&later.iter().chain(&fresher).cloned().collect::<Vec<_>>()],
        )
        .await
        .expect("the former primary answers");
    assert!(
        split.is_empty(),
        "writes went to the former primary: {}",
        split.len()
    );
    // The running service starts from the host that answered last and never needs the
    // former primary; a new one asks every host, and says why it refused that one.
    let log = fresh.log_text();
    assert!(
        log.contains("a former primary refused") && log.contains("older than timeline 2"),
        "the refusal is logged:\n{log}"
    );
}

/// Accepts connections on a loopback port and never answers on them, as a host whose
/// server hangs does (or a firewall that lets the handshake through).
async fn silent_host() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let port = listener.local_addr().expect("an address").port();
    let held = tokio::spawn(async move {
        let mut connections = Vec::new();
        while let Ok((connection, _)) = listener.accept().await {
            connections.push(connection);
        }
    });
    (port, held)
}

/// The test database's URL with `first` listed before its own host.
fn url_with_first_host(url: &str, first: u16) -> String {
    let config: tokio_postgres::Config = url.parse().expect("a test database URL");
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        other => panic!("the test database is reached over TCP, not {other:?}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres");
    let dbname = config.get_dbname().unwrap_or(user);
    let password = config
        .get_password()
        .map(|password| format!(" password={}", String::from_utf8_lossy(password)))
        .unwrap_or_default();
    format!("host=127.0.0.1,{host} port={first},{port} user={user} dbname={dbname}{password}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_host_that_never_answers_is_passed_over_within_its_share_of_the_timeout() {
    let test = "a_first_host_that_never_answers_is_passed_over_within_its_share_of_the_timeout";
    let Some(url) = crm_adapters_pg::testing::database_url(test) else {
        return;
    };
    let (silent, _held) = silent_host().await;
    let database = process::Database::new(
        url.clone(),
        crm_adapters_pg::testing::fresh_schema("silent_first"),
    );
    let both = url_with_first_host(&url, silent);
    let logs = TempDir::new().expect("a log dir");
    let client = process::client();
    let flags = [
        "--backend",
        "postgres",
        "--database-url",
        &both,
        "--pg-schema",
        &database.schema,
    ];
    // Start-up asks every host (it knows no timeline yet): without a bound on each, the
    // silent one would hold start-up for ever (the driver's connect timeout covers the
    // TCP handshake only).
    let server = Server::start(logs.path(), logs.path(), &client, &flags).await;
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let ids = create_surely(&client, &server.address, &tenant, 50).await;
    for id in &ids {
        let url = format!(
            "{}/v1/crm/followups/{id}?tenant_id={tenant}",
            server.address
        );
        let response = client.get(url).send().await.expect("the read answers");
        assert_eq!(response.status(), 200);
    }
}
