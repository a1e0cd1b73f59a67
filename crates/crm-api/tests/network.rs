//! PostgreSQL behind a link that goes silent, through the real `crm-api` binary: every
//! call answers `503 storage_unavailable` within the configured timeout instead of
//! hanging, the service heals by itself once the link is back, and a write whose reply
//! was lost is safe to repeat.
//!
//! The database sits behind a TCP relay the test controls. Frozen, it keeps every
//! connection open and moves no byte, as a partitioned network does; TCP alone would
//! wait for many minutes.

mod process;

use std::time::{Duration, Instant};

use crm_adapters_pg::testing::{database_url, fresh_schema};
use process::{Database, Server, follow_up_body};
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use uuid::Uuid;

/// What the relay does with the bytes of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Forward,
    /// Moves nothing, either way, and accepts new connections that then move nothing.
    Frozen,
    /// Carries requests to the database but loses every reply.
    RepliesLost,
}

struct Relay {
    port: u16,
    link: watch::Sender<Link>,
}

impl Relay {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, watched) = watch::channel(Link::Forward);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let watched = watched.clone();
                tokio::spawn(async move {
                    let Ok(database) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (database_read, database_write) = database.into_split();
                    tokio::spawn(pump(client_read, database_write, watched.clone(), false));
                    pump(database_read, client_write, watched, true).await;
                });
            }
        });
        Self { port, link }
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

/// Copies `from` to `to` while the link allows; `replies` is the database's direction.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
    replies: bool,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        // A frozen link reads nothing, so the sender's window fills and it stalls.
        let _ = link.wait_for(|link| *link != Link::Frozen).await;
        let read = tokio::select! {
            read = from.read(&mut buffer) => read,
            _ = link.changed() => continue,
        };
        let count = match read {
            Ok(0) | Err(_) => return,
            Ok(count) => count,
        };
        if replies && *link.borrow() == Link::RepliesLost {
            continue;
        }
        // Bytes read just as the link froze wait until it thaws.
        let _ = link.wait_for(|link| *link != Link::Frozen).await;
        if to.write_all(&buffer[..count]).await.is_err() {
            return;
        }
    }
}

const TIMEOUT_MS: u64 = 1_000;
/// The bound under test is the server's `--pg-timeout-ms`; this slack covers scheduling
/// on a loaded machine, and is far below what a hang would take.
const ANSWER_WITHIN: Duration = Duration::from_millis(TIMEOUT_MS * 4);

async fn start_behind_relay(
    test: &str,
    pool_size: u32,
) -> Option<(Server, Relay, Database, TempDir)> {
    let url = database_url(test)?;
    let relay = Relay::start().await;
    let relayed = url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", relay.port), 1);
    assert_ne!(
        relayed, url,
        "the test database URL must name 127.0.0.1:5432"
    );
    let database = Database::new(url, fresh_schema("network"));
    let logs = TempDir::new().unwrap();
    let timeout = TIMEOUT_MS.to_string();
    let pool_size = pool_size.to_string();
    let server = Server::start(
        logs.path(),
        logs.path(),
        &process::client(),
        &[
            "--backend",
            "postgres",
            "--database-url",
            &relayed,
            "--pg-schema",
            &database.schema,
            "--pg-timeout-ms",
            &timeout,
            "--pg-pool-size",
            &pool_size,
        ],
    )
    .await;
    Some((server, relay, database, logs))
}

/// Sends a request and returns its status, body and how long the answer took.
async fn timed(request: reqwest::RequestBuilder) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_gets_bounded_503s_on_every_route_and_heals_by_itself() {
    let Some((server, relay, _database, _logs)) = start_behind_relay(
        "a_silent_link_gets_bounded_503s_on_every_route_and_heals_by_itself",
        4,
    )
    .await
    else {
        return;
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let base = server.address.clone();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let create = || {
        client
            .post(format!("{base}/v1/crm/followups"))
            .json(&follow_up_body(
                &tenant,
                &Uuid::new_v4().to_string(),
                process::PAST,
            ))
    };
    let (status, body, _) = timed(create()).await;
    assert_eq!(status, 200, "{body}");

    relay.set(Link::Frozen);
    let calls: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("create", create()),
        (
            "list",
            client.get(format!("{base}/v1/crm/followups?tenant_id={tenant}")),
        ),
        (
            "drain",
            client
                .post(format!("{base}/internal/worker/crm-followups/drain"))
                .json(&serde_json::json!({"limit": 10})),
        ),
        ("ready", client.get(format!("{base}/ready"))),
    ];
    let answers = futures_join(calls).await;
    for (name, (status, body, took)) in answers {
        assert_eq!(status, 503, "{name} while frozen: {body}");
        if name != "ready" {
            assert_eq!(body["error"], "storage_unavailable", "{name}: {body}");
        }
        assert!(
            took < ANSWER_WITHIN,
            "{name} took {took:?} with a silent link, more than {ANSWER_WITHIN:?}"
        );
    }

    relay.set(Link::Forward);
    let healed = Instant::now();
    loop {
        let (status, _, _) = timed(create()).await;
        if status == 200 {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(20),
            "still failing 20 s after the link came back:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _, _) = timed(client.get(format!("{base}/ready"))).await;
    assert_eq!(status, 200);
}

/// Sends every request at once and collects the answers by name.
async fn futures_join(
    calls: Vec<(&'static str, reqwest::RequestBuilder)>,
) -> Vec<(&'static str, (u16, Value, Duration))> {
    let mut set = tokio::task::JoinSet::new();
    for (name, request) in calls {
        set.spawn(async move { (name, timed(request).await) });
    }
    set.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_reply_was_lost_is_503_and_repeating_it_is_safe() {
    let Some((server, relay, _database, _logs)) = start_behind_relay(
        "a_create_whose_reply_was_lost_is_503_and_repeating_it_is_safe",
        1,
    )
    .await
    else {
        return;
    };
    let client = reqwest::Client::new();
    let base = server.address.clone();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let followup_id = Uuid::new_v4().to_string();
    let body = follow_up_body(&tenant, &followup_id, process::FUTURE);
    let create = || client.post(format!("{base}/v1/crm/followups")).json(&body);
    // The pool's one connection has the create statement prepared already, so what
    // goes out next is the insert itself, committed on arrival.
    let warm_up = follow_up_body(&tenant, &Uuid::new_v4().to_string(), process::FUTURE);
    let (status, _, _) = timed(
        client
            .post(format!("{base}/v1/crm/followups"))
            .json(&warm_up),
    )
    .await;
    assert_eq!(status, 200);

    relay.set(Link::RepliesLost);
    let (status, answer, took) = timed(create()).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("storage_unavailable")),
        "{answer}"
    );
    assert!(took < ANSWER_WITHIN, "took {took:?}");

    relay.set(Link::Forward);
    let deadline = Instant::now() + Duration::from_secs(20);
    let repeated = loop {
        let (status, answer, _) = timed(create()).await;
        if status == 200 {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "the repeat keeps failing: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The database did the first create; the repeat finds it and changes nothing.
    assert_eq!(repeated["response"]["status"], "idempotent", "{repeated}");
    assert_eq!(repeated["response"]["followup"]["followup_id"], followup_id);
    let listed = server.follow_up_ids(&client, &tenant).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&followup_id));
}
