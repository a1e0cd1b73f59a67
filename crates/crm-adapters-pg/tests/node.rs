//! Adopting the tables of the Node.js service (`tests/fixtures/node-schema.sql`: its DDL
//! and rows holding the same records as the file store's `tests/fixtures/node`).

use std::path::Path;
use std::sync::Arc;

use crm_adapters_pg::testing::{connect, database_url, drop_schema, fresh_schema, node_schema};
use crm_adapters_pg::{PgError, PgOptions, PgStore, check_adoption, migrate};
use crm_app::adoption::LegacyRules;
use crm_contracts::Contracts;
use crm_ports::adoption::{AdoptionCheck, RecordRules};
use crm_ports::conformance::{all_follow_ups, tenant};
use crm_ports::{CampaignQuery, CampaignStore, Store};
use serde_json::Value;

fn rules() -> LegacyRules {
    LegacyRules::new(Arc::new(Contracts::load().unwrap()))
}

/// The file store's fixture: the same records as the rows of `node-schema.sql`.
fn items(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crm-adapters-file/tests/fixtures/node")
        .join(name);
    let file: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    file["items"].as_array().unwrap().clone()
}

/// A schema holding the Node.js service's tables, dropped at the end of the test.
struct NodeSchema {
    url: String,
    options: PgOptions,
}

impl NodeSchema {
    async fn new(url: String) -> Self {
        let schema = node_schema(&url, "node").await;
        let options = PgOptions::new(&url, schema).unwrap();
        Self { url, options }
    }

    async fn sql(&self, statements: &str) {
        connect(&self.options)
            .await
            .batch_execute(statements)
            .await
            .unwrap();
    }

    /// Columns, constraints and indexes of the schema, and every row of both tables.
    async fn everything(&self) -> Vec<String> {
        let client = connect(&self.options).await;
        let mut lines = Vec::new();
        for query in [
            "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable \
             || ' ' || coalesce(column_default, '') FROM information_schema.columns \
             WHERE table_schema = current_schema() ORDER BY 1",
            "SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
             FROM pg_constraint WHERE connamespace = current_schema()::regnamespace ORDER BY 1",
            "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() ORDER BY 1",
            "SELECT to_jsonb(c)::text FROM crm_campaigns c ORDER BY campaign_id",
            "SELECT to_jsonb(f)::text FROM crm_followups f ORDER BY followup_id",
        ] {
            for row in client.query(query, &[]).await.unwrap() {
                lines.push(row.get::<_, String>(0));
            }
        }
        lines
    }

    async fn drop(self) {
        drop_schema(&self.url, self.options.schema()).await;
    }
}

async fn assert_adopted(store: &dyn Store) {
    let rules = rules();
    let mut campaigns = Vec::new();
    let mut follow_ups = Vec::new();
    for name in ["tenant-node-a", "tenant-node-b"] {
        let query = CampaignQuery {
            tenant_id: tenant(name),
            state: None,
            limit: 100,
            after: None,
        };
        campaigns.extend(store.list_campaigns(&query).await.unwrap().items);
        follow_ups.extend(all_follow_ups(store, &tenant(name)).await);
    }
    for original in items("campaigns.json") {
        let expected = rules.campaign(&original).unwrap();
        assert!(campaigns.contains(&expected), "{original}");
    }
    for original in items("followups.json") {
        let mut expected = rules.follow_up(&original).unwrap();
        let stored = follow_ups
            .iter()
            .find(|f| f.followup_id == expected.followup_id)
            .unwrap_or_else(|| panic!("{original}"));
        if original.get("correlation_id").is_none_or(Value::is_null) {
            expected.correlation_id = stored.correlation_id;
            expected.trace_id = stored.trace_id.clone();
            assert!(stored.trace_id.len() >= 8);
        }
        assert_eq!(stored, &expected);
    }
    assert_eq!((campaigns.len(), follow_ups.len()), (3, 3));
}

#[tokio::test]
async fn the_node_tables_are_adopted_with_every_row_and_match_a_fresh_schema() {
    let Some(url) =
        database_url("the_node_tables_are_adopted_with_every_row_and_match_a_fresh_schema")
    else {
        return;
    };
    let node = NodeSchema::new(url.clone()).await;
    let fresh = PgOptions::new(&url, fresh_schema("fresh")).unwrap();

    migrate(&node.options, Some(&rules())).await.unwrap();
    migrate(&fresh, None).await.unwrap();

    let store = PgStore::new(&node.options).unwrap();
    assert_adopted(&store).await;
    let shape = |lines: Vec<String>, schema: &str| -> Vec<String> {
        lines
            .into_iter()
            // Rows and defaults differ by design: the adopted tables keep the service's
            // defaults so that it can still insert during a rolling switch.
            .filter(|line| !line.starts_with('{'))
            .map(|line| line.replace(schema, "<schema>"))
            .map(
                |line| match line.split_once(" YES ").or(line.split_once(" NO ")) {
                    Some((column, _)) if line.contains(" NO ") => format!("{column} NO"),
                    Some((column, _)) => format!("{column} YES"),
                    None => line,
                },
            )
            .collect()
    };
    let adopted = shape(node.everything().await, node.options.schema());
    let fresh_schema = NodeSchema {
        url: url.clone(),
        options: fresh.clone(),
    };
    let expected = shape(fresh_schema.everything().await, fresh.schema());
    assert_eq!(
        adopted, expected,
        "the adopted schema is the one migrations make"
    );
    // A second start finds nothing to do.
    migrate(&node.options, Some(&rules())).await.unwrap();
    assert_adopted(&store).await;
    node.drop().await;
    fresh_schema.drop().await;
}

#[tokio::test]
async fn each_broken_rule_refuses_the_tables_naming_the_row_and_changes_nothing() {
    let Some(url) =
        database_url("each_broken_rule_refuses_the_tables_naming_the_row_and_changes_nothing")
    else {
        return;
    };
    let cases = [
        (
            "UPDATE crm_campaigns SET state = 'archived' WHERE name = 'Winter clearance'",
            ("crm_campaigns", 1, "/state"),
        ),
        (
            "UPDATE crm_followups SET status = 'queued' WHERE external_key = 'cobranca-42'",
            ("crm_followups", 2, "/status"),
        ),
        (
            "UPDATE crm_followups SET phone_e164 = '011 99999-0001' WHERE external_key = 'reminder-1'",
            ("crm_followups", 0, "/phone_e164"),
        ),
        (
            "UPDATE crm_followups SET schedule_at = 'infinity' WHERE external_key = 'reminder-1'",
            ("crm_followups", 0, "/schedule_at"),
        ),
        (
            "UPDATE crm_followups SET campaign_id = '8d3c2f4e-1b2a-4c5d-9e8f-0a1b2c3d4e5f' \
             WHERE external_key = 'cobranca-42'",
            ("crm_followups", 2, "/campaign_id"),
        ),
        (
            "UPDATE crm_followups SET trace_id = 'x' WHERE external_key = 'reminder-1'",
            ("crm_followups", 0, "/trace_id"),
        ),
    ];
    for (breaking, (table, index, field)) in cases {
        let node = NodeSchema::new(url.clone()).await;
        node.sql(breaking).await;
        let before = node.everything().await;

        let error = migrate(&node.options, Some(&rules()))
            .await
            .expect_err("refused");

        let PgError::Refused(report) = &error else {
            panic!("{breaking}: not a refusal: {error}");
        };
        let named: Vec<_> = report
            .findings
            .iter()
            .map(|f| (f.origin.as_str(), f.index, f.field.as_str()))
            .collect();
        assert!(
            named.contains(&(table, index, field)),
            "{breaking}: {error}"
        );
        assert_eq!(
            node.everything().await,
            before,
            "{breaking}: the schema changed"
        );
        node.drop().await;
    }
}

#[tokio::test]
async fn the_dry_run_reports_and_changes_nothing() {
    let Some(url) = database_url("the_dry_run_reports_and_changes_nothing") else {
        return;
    };
    let node = NodeSchema::new(url).await;
    let before = node.everything().await;

    let found = check_adoption(&node.options, &rules()).await.unwrap();

    assert_eq!(
        found,
        AdoptionCheck::Adoptable {
            campaigns: 3,
            follow_ups: 3
        }
    );
    assert_eq!(node.everything().await, before);
    node.sql("UPDATE crm_campaigns SET channel = 'sms' WHERE name = 'Spring sale'")
        .await;
    let refused = check_adoption(&node.options, &rules()).await;
    assert!(
        matches!(&refused, Err(PgError::Refused(report)) if report.findings[0].field == "/channel"),
        "{refused:?}"
    );
    node.drop().await;
}

#[tokio::test]
async fn tables_adopted_by_a_start_that_stopped_before_recording_it_are_recognised() {
    let Some(url) =
        database_url("tables_adopted_by_a_start_that_stopped_before_recording_it_are_recognised")
    else {
        return;
    };
    let node = NodeSchema::new(url).await;
    // The adoption's transaction committed; the process died before refinery recorded V1.
    node.sql(include_str!("../src/adopt_node.sql")).await;

    migrate(&node.options, Some(&rules())).await.unwrap();

    let store = PgStore::new(&node.options).unwrap();
    assert_eq!(
        store
            .list_campaigns(&CampaignQuery {
                tenant_id: tenant("tenant-node-a"),
                state: None,
                limit: 100,
                after: None,
            })
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    let recorded: i64 = connect(&node.options)
        .await
        .query_one("SELECT count(*) FROM crm_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert!(recorded >= 3, "V1 recorded, later migrations applied");
    node.drop().await;
}
