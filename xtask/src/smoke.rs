//! `cargo xtask smoke`: the whole flow against PostgreSQL through the real binary, then
//! the rows it must have left in `crm_campaigns`, `crm_followups`, the event log and the
//! outbound queue; once in a new schema, once in one holding the Node.js service's tables
//! (which start-up adopts). Any mismatch is a non-zero exit.

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio_postgres::NoTls;
use uuid::Uuid;

use crate::server::{Server, build};

const TENANT: &str = "tenant_smoke";

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {body}");
        }
        Ok(body)
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn patch(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }
}

fn envelope(key: &str, value: Value) -> Value {
    json!({"request": {
        "request_id": Uuid::new_v4(),
        "tenant_id": TENANT,
        "source_module": "mod-02-whatsapp-crm",
        key: value,
    }})
}

/// Collects mismatches instead of stopping at the first, for a one-screen summary.
#[derive(Default)]
struct Checks {
    lines: Vec<String>,
    failed: usize,
}

impl Checks {
    fn expect<T: std::fmt::Debug + PartialEq>(&mut self, what: &str, actual: T, expected: T) {
        let ok = actual == expected;
        self.failed += usize::from(!ok);
        let mark = if ok { "ok  " } else { "FAIL" };
        self.lines.push(format!(
            "{mark} {what}: {actual:?}{}",
            if ok {
                String::new()
            } else {
                format!(" (expected {expected:?})")
            }
        ));
    }
}

/// The Node.js service's two tables with rows it wrote (the PostgreSQL adapter's fixture).
const NODE_TABLES: &str =
    include_str!("../../crates/crm-adapters-pg/tests/fixtures/node-schema.sql");

pub async fn run() -> anyhow::Result<()> {
    let url = crate::database_url()?;
    let binary = build(false)?;
    let mut failed = 0;
    for adopted in [false, true] {
        let schema = format!("smoke_{}", Uuid::new_v4().simple());
        let outcome = async {
            let mut checks = Checks::default();
            if adopted {
                create_node_tables(&url, &schema).await?;
            }
            flow(&binary, &url, &schema, &mut checks).await?;
            if adopted {
                adopted_rows(&url, &schema, &mut checks).await?;
            }
            anyhow::Ok(checks)
        }
        .await;
        // The schema is dropped whatever happened, so smokes never pile up.
        let dropped = drop_schema(&url, &schema).await;
        let checks = outcome?;
        dropped?;
        let what = if adopted {
            "a schema adopted from the Node.js service"
        } else {
            "a new schema"
        };
        println!("smoke against PostgreSQL, {what} ({schema}):");
        for line in &checks.lines {
            println!("  {line}");
        }
        failed += checks.failed;
    }
    if failed > 0 {
        bail!("smoke: {failed} checks failed");
    }
    println!("smoke: all checks passed");
    Ok(())
}

async fn create_node_tables(url: &str, schema: &str) -> anyhow::Result<()> {
    let (db, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    db.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\"; SET search_path TO \"{schema}\"; {NODE_TABLES}"
    ))
    .await?;
    Ok(())
}

/// What adoption must leave: the service's rows, completed, beside the smoke's own.
async fn adopted_rows(url: &str, schema: &str, checks: &mut Checks) -> anyhow::Result<()> {
    let (db, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    db.batch_execute(&format!("SET search_path TO \"{schema}\""))
        .await?;
    let row = db
        .query_one(
            "SELECT count(*), min(revision), max(revision) FROM crm_campaigns \
             WHERE tenant_id LIKE 'tenant-node-%'",
            &[],
        )
        .await?;
    checks.expect(
        "crm_campaigns adopted rows (count, revisions)",
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        ),
        (3, 1, 1),
    );
    let row = db
        .query_one(
            "SELECT count(*), count(correlation_id), count(trace_id), \
                    count(*) FILTER (WHERE provider_message_id = 'wamid.HBgNNTUxMTk5OTk5MDAwMRUCABEYEjA') \
             FROM crm_followups WHERE tenant_id LIKE 'tenant-node-%'",
            &[],
        )
        .await?;
    checks.expect(
        "crm_followups adopted rows (count, with correlation, with trace, provider id kept)",
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3),
        ),
        (3, 3, 3, 1),
    );
    let recorded: i64 = db
        .query_one(
            "SELECT count(*) FROM crm_schema_history WHERE version = 1",
            &[],
        )
        .await?
        .get(0);
    checks.expect("crm_schema_history records V1", recorded, 1);
    Ok(())
}

async fn flow(
    binary: &std::path::Path,
    url: &str,
    schema: &str,
    checks: &mut Checks,
) -> anyhow::Result<()> {
    let server = Server::start(
        binary,
        &[
            "--backend",
            "postgres",
            "--database-url",
            url,
            "--pg-schema",
            schema,
        ],
    )
    .await?;
    let api = Api {
        client: reqwest::Client::new(),
        base: server.base.clone(),
    };
    let campaigns = "/v1/crm/campaigns";

    // A campaign that runs, and one that is canceled.
    let running = api
        .post(campaigns, envelope("campaign", json!({"external_key": "smoke-running", "name": "Smoke running", "channel": "whatsapp"})))
        .await?;
    let running_id = running["response"]["campaign"]["campaign_id"]
        .as_str()
        .context("campaign_id")?
        .to_owned();
    for (to_state, trigger) in [
        ("scheduled", "schedule_campaign"),
        ("running", "start_window_open"),
    ] {
        api.patch(
            &format!("{campaigns}/{running_id}/state"),
            envelope("changes", json!({"to_state": to_state, "trigger": trigger})),
        )
        .await?;
    }
    let canceled = api
        .post(campaigns, envelope("campaign", json!({"external_key": "smoke-canceled", "name": "Smoke canceled", "channel": "whatsapp", "state": "scheduled"})))
        .await?;
    let canceled_id = canceled["response"]["campaign"]["campaign_id"]
        .as_str()
        .context("campaign_id")?
        .to_owned();
    api.patch(
        &format!("{campaigns}/{canceled_id}/state"),
        envelope(
            "changes",
            json!({"to_state": "canceled", "trigger": "cancel_campaign"}),
        ),
    )
    .await?;

    // Two due follow-ups that go out, one of a canceled campaign, one in the future.
    let follow_up = |campaign: Option<&str>, schedule_at: &str| {
        envelope(
            "followup",
            json!({"campaign_id": campaign, "phone_e164": "+5511944443333", "message": "smoke", "schedule_at": schedule_at}),
        )
    };
    let mut ids = Vec::new();
    for (campaign, schedule_at) in [
        (Some(running_id.as_str()), "2025-01-01T09:00:00Z"),
        (None, "2025-01-01T09:00:01Z"),
        (Some(canceled_id.as_str()), "2025-01-01T09:00:02Z"),
        (None, "2999-01-01T00:00:00Z"),
    ] {
        let reply = api
            .post("/v1/crm/followups", follow_up(campaign, schedule_at))
            .await?;
        ids.push(
            reply["response"]["followup"]["followup_id"]
                .as_str()
                .context("followup_id")?
                .to_owned(),
        );
    }
    let drained = api
        .post("/internal/worker/crm-followups/drain", json!({"limit": 50}))
        .await?;
    // Every record of the Node.js service (there are none in a new schema) is served.
    let mut listed = 0;
    for tenant in ["tenant-node-a", "tenant-node-b"] {
        for path in ["/v1/crm/campaigns", "/v1/crm/followups"] {
            let page = api
                .call(
                    reqwest::Method::GET,
                    &format!("{path}?tenant_id={tenant}"),
                    None,
                )
                .await?;
            listed += page["count"].as_u64().context("count")?;
        }
    }
    drop(server);

    checks.expect(
        "drain processed",
        drained["processed_count"].as_u64(),
        Some(3),
    );
    checks.expect(
        "drain succeeded",
        drained["succeeded_count"].as_u64(),
        Some(2),
    );
    checks.expect("drain failed", drained["failed_count"].as_u64(), Some(1));

    let (db, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    db.batch_execute(&format!("SET search_path TO \"{schema}\""))
        .await?;
    let state_of = |id: &str| {
        let id: Uuid = id.parse().expect("uuid from the API");
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT state, revision FROM crm_campaigns WHERE campaign_id = $1",
                    &[&id],
                )
                .await?;
            anyhow::Ok((row.get::<_, String>(0), row.get::<_, i64>(1)))
        }
    };
    checks.expect(
        "crm_campaigns running campaign (state, revision)",
        state_of(&running_id).await?,
        ("running".to_owned(), 3),
    );
    checks.expect(
        "crm_campaigns canceled campaign (state, revision)",
        state_of(&canceled_id).await?,
        ("canceled".to_owned(), 2),
    );
    let campaign_rows: i64 = db
        .query_one(
            "SELECT count(*) FROM crm_campaigns WHERE tenant_id = $1",
            &[&TENANT],
        )
        .await?
        .get(0);
    checks.expect("crm_campaigns rows", campaign_rows, 2);

    let expected = [
        ("sent", None),
        ("sent", None),
        ("failed", Some("CAMPAIGN_CANCELED")),
        ("pending", None),
    ];
    for (id, (status, error)) in ids.iter().zip(expected) {
        let id: Uuid = id.parse()?;
        let row = db
            .query_one(
                "SELECT f.status, f.last_error_code, f.provider_message_id, q.queue_item_id, q.idempotency_key \
                 FROM crm_followups f LEFT JOIN crm_outbound_items q ON q.idempotency_key = 'followup:' || f.followup_id \
                 WHERE f.followup_id = $1",
                &[&id],
            )
            .await?;
        checks.expect(
            &format!("crm_followups {id} status"),
            row.get::<_, String>(0),
            status.to_owned(),
        );
        checks.expect(
            &format!("crm_followups {id} last_error_code"),
            row.get::<_, Option<String>>(1),
            error.map(str::to_owned),
        );
        let provider: Option<String> = row.get(2);
        let queued: Option<Uuid> = row.get(3);
        checks.expect(
            &format!("crm_followups {id} provider_message_id is its outbound item"),
            provider.is_some() && provider == queued.map(|id| id.to_string()),
            status == "sent",
        );
        if status != "sent" {
            checks.expect(
                &format!("crm_outbound_items has nothing for {id}"),
                queued,
                None,
            );
        }
    }
    let outbound: i64 = db
        .query_one("SELECT count(*) FROM crm_outbound_items", &[])
        .await?
        .get(0);
    checks.expect("crm_outbound_items rows", outbound, 2);

    let events = db
        .query(
            "SELECT name, count(*) FROM crm_events GROUP BY name ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
        .collect::<Vec<_>>();
    let expected_events = [
        ("crm.campaign.created", 2),
        ("crm.campaign.state.changed", 3),
        ("crm.followup.failed", 1),
        ("crm.followup.scheduled", 4),
        ("crm.followup.sent", 2),
    ]
    .map(|(name, count)| (name.to_owned(), count));
    checks.expect("crm_events by name", events, expected_events.to_vec());
    let node_records = if adopted(&db).await? { 6 } else { 0 };
    checks.expect(
        "records of the Node.js service served",
        listed,
        node_records,
    );
    Ok(())
}

/// Whether the schema was adopted from the Node.js service (its rows are there).
async fn adopted(db: &tokio_postgres::Client) -> anyhow::Result<bool> {
    Ok(db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM crm_campaigns WHERE tenant_id LIKE 'tenant-node-%')",
            &[],
        )
        .await?
        .get(0))
}

async fn drop_schema(url: &str, schema: &str) -> anyhow::Result<()> {
    let (db, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    db.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await?;
    Ok(())
}
