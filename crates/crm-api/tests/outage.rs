//! A PostgreSQL outage seen over HTTP: requests answer `503 storage_unavailable` without
//! hanging and change nothing, `/ready` says so, and the service recovers by itself.
//!
//! The database sits behind a TCP relay that the test can cut and restore, so the
//! outage is real (connections drop, new ones are refused) without touching the server.

use std::time::{Duration, Instant};

use crm_adapters_pg::testing::{database_url, drop_schema, fresh_schema};
use crm_api::config::{PgSettings, Secret, Settings, StoreKind};
use crm_api::startup::Application;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:port` to the database until cut.
struct Relay {
    port: u16,
    accept: Option<JoinHandle<()>>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(port: u16) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(([127, 0, 0, 1], port).into()).unwrap();
        let listener: TcpListener = socket.listen(64).unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let tracked = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut database) = TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut database).await;
                    }
                });
                tracked.lock().unwrap().push(relay);
            }
        });
        Self {
            port,
            accept: Some(accept),
            connections,
        }
    }

    /// Drops every relayed connection and stops listening.
    fn cut(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
        }
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request
        .send()
        .await
        .expect("the server answers (it must not hang)");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn campaign(tenant: &str, key: &str) -> Value {
    json!({"request": {
        "request_id": uuid::Uuid::new_v4(), "tenant_id": tenant, "source_module": "mod-02-whatsapp-crm",
        "campaign": {"external_key": key, "name": "Outage campaign", "channel": "whatsapp"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_503_changes_nothing_and_heals_by_itself() {
    let Some(url) = database_url("a_database_outage_is_503_changes_nothing_and_heals_by_itself")
    else {
        return;
    };
    let mut relay = Relay::start(0).await;
    let relayed = url.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", relay.port), 1);
    assert_ne!(
        relayed, url,
        "the test database URL must name 127.0.0.1:5432"
    );
    let schema = fresh_schema("outage");
    let mut pg = PgSettings::new(Secret::new(relayed), schema.clone());
    pg.timeout = Duration::from_secs(1);
    pg.pool_size = 4;
    let app = Application::build(Settings::new(StoreKind::Postgres(pg)))
        .await
        .unwrap();
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());
    // A hang would show up as this timeout, failing the test.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let tenant = format!("tenant_{}", uuid::Uuid::new_v4().simple());
    let create = |key: &str| {
        client
            .post(format!("{base}/v1/crm/campaigns"))
            .json(&campaign(&tenant, key))
    };
    let list = || client.get(format!("{base}/v1/crm/campaigns?tenant_id={tenant}"));
    let ready = || client.get(format!("{base}/ready"));

    assert_eq!(send(create("before-outage")).await.0, 200);
    assert_eq!(send(ready()).await.0, 200);

    relay.cut();
    let (status, body) = send(create("during-outage")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("storage_unavailable")),
        "{body}"
    );
    assert_eq!(body.get("details"), None, "a 5xx body carries no internals");
    let (status, body) = send(list()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("storage_unavailable"))
    );
    let (status, body) = send(ready()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("storage_unavailable"))
    );
    assert_eq!(
        send(client.get(format!("{base}/health"))).await.0,
        200,
        "the process itself is fine"
    );

    let _relay = Relay::start(relay.port).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while send(ready()).await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "the service did not recover after the database returned"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = send(list()).await;
    assert_eq!(status, 200);
    let keys: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["external_key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["before-outage"],
        "the request made during the outage left nothing behind"
    );
    assert_eq!(send(create("after-outage")).await.0, 200);
    drop_schema(&url, &schema).await;
}
