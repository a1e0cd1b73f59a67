//! Reads from a hot standby (`--read-database-url`), seen by the clients of the real
//! binary: single reads may be stale while the standby lags less than
//! `--read-max-lag-ms`, come from the primary once it lags more, and go back to the
//! standby once it catches up; the event feed read through all of it has every event
//! once, in order, and a long-poll on the standby wakes promptly. A replica URL that
//! names a primary is refused, and reads stay on the primary.

mod process;

use std::time::{Duration, Instant};

use crm_adapters_pg::testing::{database_url, fresh_schema};
use process::clusters::{Clusters, connect};
use process::{Database, FUTURE, Server, follow_up_body};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::watch;
use uuid::Uuid;

const SCHEMA: &str = "crm_reads";
/// Generous, so that a slow machine does not turn a stale read into a fresh one.
const MAX_LAG_MS: u64 = 3_000;
const PATIENCE: Duration = Duration::from_secs(60);

struct Client {
    http: reqwest::Client,
    address: String,
    tenant: String,
}

impl Client {
    async fn create(&self) -> String {
        let id = Uuid::new_v4().to_string();
        let response = self
            .http
            .post(format!("{}/v1/crm/followups", self.address))
            .json(&follow_up_body(&self.tenant, &id, FUTURE))
            .send()
            .await
            .expect("the create answers");
        assert_eq!(response.status(), 200, "a create");
        id
    }

    /// The status of `GET` of the follow-up.
    async fn read(&self, id: &str) -> u16 {
        self.http
            .get(format!(
                "{}/v1/crm/followups/{id}?tenant_id={}",
                self.address, self.tenant
            ))
            .send()
            .await
            .expect("the read answers")
            .status()
            .as_u16()
    }

    /// Reads the follow-up until it is found; how long that took.
    async fn read_until_found(&self, id: &str) -> Duration {
        let started = Instant::now();
        while self.read(id).await != 200 {
            assert!(started.elapsed() < PATIENCE, "{id} was never read back");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        started.elapsed()
    }
}

async fn replay(standby: &tokio_postgres::Client, resume: bool) {
    let statement = if resume {
        "SELECT pg_wal_replay_resume()"
    } else {
        "SELECT pg_wal_replay_pause()"
    };
    standby.execute(statement, &[]).await.expect(statement);
}

/// A primary with a standby streaming from it (not synchronously), and a server reading
/// from the standby; `None` where the machine cannot run the clusters.
struct Setup {
    client: Client,
    server: Server,
    clusters: Clusters,
    _logs: TempDir,
}

async fn start_reading_replica(test: &str) -> Option<Setup> {
    let clusters = Clusters::start(test, false)?;
    clusters.wait_for_streaming().await;
    let logs = TempDir::new().expect("a log dir");
    let http = process::client();
    let (primary, standby) = (clusters.primary.url(), clusters.standby.url());
    let lag = MAX_LAG_MS.to_string();
    let flags = [
        "--backend",
        "postgres",
        "--database-url",
        &primary,
        "--read-database-url",
        &standby,
        "--read-max-lag-ms",
        &lag,
        "--pg-schema",
        SCHEMA,
    ];
    let server = Server::start(logs.path(), logs.path(), &http, &flags).await;
    let client = Client {
        http,
        address: server.address.clone(),
        tenant: format!("tenant-{}", Uuid::new_v4().simple()),
    };
    Some(Setup {
        client,
        server,
        clusters,
        _logs: logs,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_use_a_replica_within_its_lag_bound_and_the_primary_beyond_it() {
    let test = "reads_use_a_replica_within_its_lag_bound_and_the_primary_beyond_it";
    let Some(Setup {
        client,
        server,
        clusters,
        _logs,
    }) = start_reading_replica(test).await
    else {
        return;
    };
    let http = client.http.clone();
    let standby = connect(&clusters.standby.url()).await;

    let (stop, stopped) = watch::channel(false);
    let consumer = {
        let (http, address, tenant) = (http.clone(), server.address.clone(), client.tenant.clone());
        tokio::spawn(async move {
            process::follow_feed(&address, &tenant, 50, stopped, PATIENCE, |url| {
                let page = http.get(url).send();
                async move {
                    let page = page.await.expect("the feed answers");
                    assert_eq!(page.status(), 200, "a feed read");
                    Some(page.json::<Value>().await.expect("a JSON page"))
                }
            })
            .await
        })
    };

    // The standby replays: what was created is soon read back, from it.
    let first = client.create().await;
    client.read_until_found(&first).await;
    server.wait_for_log("reads go to the replica", 1).await;

    // The standby stops replaying: a read just after a create is stale (the standby is
    // within its bound), and the primary serves it once the standby is past the bound.
    replay(&standby, false).await;
    let during_pause = client.create().await;
    assert_eq!(
        client.read(&during_pause).await,
        404,
        "a stale read, from the standby"
    );
    let fell_back_after = client.read_until_found(&during_pause).await;
    server
        .wait_for_log("the replica lags; reads go to the primary", 1)
        .await;

    // Replaying again, the standby catches up and serves reads again: stale ones too.
    let before = server.log_text().matches("reads go to the replica").count();
    replay(&standby, true).await;
    server
        .wait_for_log("reads go to the replica", before + 1)
        .await;

    replay(&standby, false).await;
    let second_pause = client.create().await;
    assert_eq!(
        client.read(&second_pause).await,
        404,
        "reads are back on the standby"
    );
    replay(&standby, true).await;
    client.read_until_found(&second_pause).await;

    // The feed read through all of it: every event of the primary once, in order.
    stop.send_replace(true);
    let events = consumer.await.expect("the consumer");
    let read: Vec<String> = events
        .iter()
        .map(|event| event["event_id"].as_str().expect("an id").to_owned())
        .collect();
    let primary_client = connect(&clusters.primary.url()).await;
    let all: Vec<String> = primary_client
        .query(
            &format!("SELECT event_id FROM {SCHEMA}.crm_events WHERE tenant_id = $1 ORDER BY seq"),
            &[&client.tenant],
        )
        .await
        .expect("the events answer")
        .iter()
        .map(|row| row.get::<_, Uuid>(0).to_string())
        .collect();
    assert_eq!(all.len(), 3, "one event per create");
    assert_eq!(read, all, "the feed through the replica and the primary");
    eprintln!("a stale read fell back to the primary after {fell_back_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_the_replica_wakes_when_the_standby_replays_the_event() {
    let test = "a_long_poll_on_the_replica_wakes_when_the_standby_replays_the_event";
    let Some(Setup {
        client,
        server,
        clusters: _clusters,
        _logs,
    }) = start_reading_replica(test).await
    else {
        return;
    };
    let http = client.http.clone();
    let first = client.create().await;
    client.read_until_found(&first).await;
    server.wait_for_log("reads go to the replica", 1).await;
    let feed = format!("{}/internal/orchestration/events", server.address);
    let page: Value = http
        .get(format!("{feed}?tenant_id={}", client.tenant))
        .send()
        .await
        .expect("the feed answers")
        .json()
        .await
        .expect("a page");
    let mut cursor = page["next_cursor"].as_str().expect("a cursor").to_owned();

    let mut latencies = Vec::new();
    for _ in 0..20 {
        let url = format!(
            "{feed}?tenant_id={}&after={cursor}&wait_ms=10000",
            client.tenant
        );
        let waiting = tokio::spawn(http.get(url).send());
        // Let the read start waiting before the event commits.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let created = Instant::now();
        client.create().await;
        let page: Value = waiting
            .await
            .expect("the long-poll")
            .expect("the feed answers")
            .json()
            .await
            .expect("a page");
        latencies.push(created.elapsed());
        assert_eq!(page["items"].as_array().expect("items").len(), 1, "{page}");
        cursor = page["next_cursor"].as_str().expect("a cursor").to_owned();
    }
    latencies.sort();
    eprintln!(
        "long-poll on the replica, create sent -> event read: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    // Woken, not timed out: well before the 10 s the reads were willing to wait.
    assert!(latencies[latencies.len() - 1] < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_url_that_names_a_primary_is_refused_and_reads_stay_on_the_primary() {
    let test = "a_replica_url_that_names_a_primary_is_refused_and_reads_stay_on_the_primary";
    let Some(url) = database_url(test) else {
        return;
    };
    let database = Database::new(url.clone(), fresh_schema("replica_is_primary"));
    let logs = TempDir::new().expect("a log dir");
    let http = process::client();
    let mut flags = database.flags();
    flags.extend(["--read-database-url".to_owned(), url]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = Server::start(logs.path(), logs.path(), &http, &flags).await;
    let client = Client {
        http,
        address: server.address.clone(),
        tenant: format!("tenant-{}", Uuid::new_v4().simple()),
    };
    for _ in 0..5 {
        let id = client.create().await;
        assert_eq!(client.read(&id).await, 200, "read from the primary");
    }
    server.wait_for_log("is a primary, not a standby", 1).await;
    // Ten looks of the monitor later, still said once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = server.log_text();
    assert_eq!(
        log.matches("is a primary, not a standby").count(),
        1,
        "said once:\n{log}"
    );
    assert!(!log.contains("reads go to the replica"), "{log}");
}
