//! Support for tests that need a real database: `CRM_TEST_DATABASE_URL` and a fresh
//! schema per test. Not used by the service itself.

use crate::{PgOptions, PgStore, migrate};

/// The test database URL, or `None` after saying the test is skipped. When `CI` is set a
/// missing URL is a failure: a skipped database test must never pass as green.
pub fn database_url(test: &str) -> Option<String> {
    match std::env::var("CRM_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "{test}: CRM_TEST_DATABASE_URL is not set, and CI requires the PostgreSQL tests to run"
            )
        }
        _ => {
            eprintln!("{test}: skipped, CRM_TEST_DATABASE_URL is not set");
            None
        }
    }
}

/// A schema name no other test uses.
pub fn fresh_schema(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A migrated store in a schema of its own.
pub async fn fresh_store(url: &str, prefix: &str) -> (PgStore, PgOptions) {
    let options = PgOptions::new(url, fresh_schema(prefix)).expect("valid test database options");
    migrate(&options, None)
        .await
        .expect("migrations apply to a fresh schema");
    // The conformance suite's clock starts on 2025-01-01 and runs a few days; the service
    // makes partitions for the real days ahead, and a write for a day without one is
    // refused once (making it).
    crate::partitions::make_days(
        &connect(&options).await,
        Some(time::macros::datetime!(2025-01-01 00:00 UTC)),
        10,
    )
    .await
    .expect("the test days' partitions are made");
    (PgStore::new(&options).expect("pool builds"), options)
}

/// Drops a test schema and everything in it.
pub async fn drop_schema(url: &str, schema: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("test database reachable");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop test schema");
}

/// The Node.js service's two tables, with the rows of `tests/fixtures/node-schema.sql`
/// (the records of the file store's `tests/fixtures/node`), in a new schema of `url`;
/// returns the schema's name.
pub async fn node_schema(url: &str, prefix: &str) -> String {
    let schema = fresh_schema(prefix);
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("test database reachable");
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\"; SET search_path = \"{schema}\"; {}",
            include_str!("../tests/fixtures/node-schema.sql")
        ))
        .await
        .expect("the Node.js service's tables");
    schema
}

/// A connection to the store's schema, for tests that seed or inspect tables directly.
pub async fn connect(options: &PgOptions) -> tokio_postgres::Client {
    let (client, connection) = options
        .pg_config()
        .expect("valid test database options")
        .connect(tokio_postgres::NoTls)
        .await
        .expect("test database reachable");
    tokio::spawn(connection);
    client
}

/// How many shared buffers (hit or read) a drain's claim of `limit` touches at `now`
/// (listing the lanes, then claiming from those a held campaign does not close), and how
/// many rows it claims, measured by `EXPLAIN (ANALYZE, BUFFERS)` in a transaction that is
/// rolled back: a measure of work that does not depend on the machine's speed.
pub async fn claim_cost(
    options: &PgOptions,
    now: crm_domain::timestamp::Timestamp,
    limit: i64,
) -> (u64, u64) {
    let mut client = connect(options).await;
    let transaction = client.transaction().await.expect("a transaction");
    let explained = |plan: serde_json::Value| {
        let top = &plan[0]["Plan"];
        let count = |key: &str| top[key].as_u64().unwrap_or(0);
        (
            count("Shared Hit Blocks") + count("Shared Read Blocks"),
            count("Actual Rows"),
        )
    };
    let explain = |sql: &str| format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}");
    let row = transaction
        .query_one(&explain(crate::sql::LANES), &[])
        .await
        .expect("the lanes explain");
    let (lane_buffers, _) = explained(row.get(0));
    let held = crm_domain::follow_up::holding_states();
    let open: Vec<crm_ports::LaneState> = transaction
        .query(crate::sql::LANES, &[])
        .await
        .expect("the lanes")
        .iter()
        .map(|row| crate::rows::lane_state(row).expect("a lane"))
        .filter(|lane| {
            !lane
                .campaign_state
                .is_some_and(|state| held.contains(&state))
        })
        .collect();
    let tenants: Vec<&str> = open.iter().map(|l| l.lane.tenant_id.as_str()).collect();
    let campaigns: Vec<uuid::Uuid> = open
        .iter()
        .map(|l| {
            l.lane
                .campaign_id
                .map_or(uuid::Uuid::nil(), |id| id.as_uuid())
        })
        .collect();
    let zones: Vec<&str> = open
        .iter()
        .map(|l| l.lane.time_zone.as_deref().unwrap_or(""))
        .collect();
    let no_caps: (Vec<&str>, Vec<i64>) = (Vec::new(), Vec::new());
    let row = transaction
        .query_one(
            &explain(crate::sql::CANDIDATES),
            &[
                &tenants,
                &campaigns,
                &zones,
                &no_caps.0,
                &no_caps.1,
                &now.as_datetime(),
                &(limit * 4),
            ],
        )
        .await
        .expect("the claim explains");
    let (claim_buffers, claimed) = explained(row.get(0));
    (lane_buffers + claim_buffers, claimed)
}

/// `EXPLAIN (ANALYZE, FORMAT JSON)` of every list query variant for `tenant` (filtered
/// by `campaign_id`, follow-up status `pending` and campaign state `running` where the
/// variant filters), a page of `limit` from the start: `(variant, plan)`.
pub async fn list_plans(
    options: &PgOptions,
    tenant: &str,
    campaign_id: uuid::Uuid,
    limit: i64,
) -> Vec<(&'static str, serde_json::Value)> {
    use crate::sql;
    use tokio_postgres::types::ToSql;
    let client = connect(options).await;
    let start = time::Date::from_calendar_date(-1, time::Month::January, 1)
        .expect("a date")
        .midnight()
        .assume_utc();
    let nil = uuid::Uuid::nil();
    let base: [&(dyn ToSql + Sync); 4] = [&tenant, &start, &nil, &limit];
    let variants: [(&'static str, &'static str, Vec<&(dyn ToSql + Sync)>); 6] = [
        ("campaigns", sql::LIST_CAMPAIGNS, vec![]),
        (
            "campaigns by state",
            sql::LIST_CAMPAIGNS_BY_STATE,
            vec![&"running"],
        ),
        ("follow-ups", sql::LIST_FOLLOW_UPS, vec![]),
        (
            "follow-ups by status",
            sql::LIST_FOLLOW_UPS_BY_STATUS,
            vec![&"pending"],
        ),
        (
            "follow-ups by campaign",
            sql::LIST_FOLLOW_UPS_BY_CAMPAIGN,
            vec![&campaign_id],
        ),
        (
            "follow-ups by campaign and status",
            sql::LIST_FOLLOW_UPS_BY_CAMPAIGN_AND_STATUS,
            vec![&campaign_id, &"pending"],
        ),
    ];
    let mut plans = Vec::new();
    for (name, query, filters) in variants {
        let params: Vec<&(dyn ToSql + Sync)> = base.iter().copied().chain(filters).collect();
        let row = client
            .query_one(&format!("EXPLAIN (ANALYZE, FORMAT JSON) {query}"), &params)
            .await
            .unwrap_or_else(|error| panic!("{name} explains: {error}"));
        let plan: serde_json::Value = row.get(0);
        plans.push((name, plan[0]["Plan"].clone()));
    }
    plans
}

/// The plans (`EXPLAIN (ANALYZE, BUFFERS)`, JSON) of what a claim asks the ledger of `tenant` at
/// `now` and writes to it, for `phones` (the recipients of its batch), and of the status
/// route's `next_release_at`. The writes are rolled back.
pub async fn ledger_plans(
    options: &PgOptions,
    tenant: &str,
    phones: &[String],
    now: time::OffsetDateTime,
) -> Vec<(&'static str, serde_json::Value)> {
    use crate::sql;
    use tokio_postgres::types::ToSql;
    let client = connect(options).await;
    let second_ago = now - time::Duration::seconds(1);
    let day_start = now - time::Duration::milliseconds(crm_domain::limits::DAY_MILLIS);
    let horizon = now - time::Duration::milliseconds(crm_domain::limits::LEDGER_RETENTION_MILLIS);
    let tenants = vec![tenant; phones.len()];
    let senders: Vec<Option<&str>> = vec![Some("sender-0"); phones.len()];
    let at = vec![now; phones.len()];
    let ids: Vec<uuid::Uuid> = phones.iter().map(|_| uuid::Uuid::new_v4()).collect();
    let one = vec![tenant];
    let variants: [(&'static str, &'static str, Vec<&(dyn ToSql + Sync)>); 7] = [
        (
            "rate window",
            sql::TENANT_SENDS,
            vec![&one, &second_ago, &horizon],
        ),
        (
            "rate window settled",
            sql::SETTLE_RATES,
            vec![&one, &second_ago, &horizon],
        ),
        (
            "recipients of a batch",
            sql::RECIPIENT_SENDS,
            vec![&tenants, &phones, &day_start],
        ),
        (
            "budget read",
            sql::BUDGETS,
            vec![&one, &day_start, &horizon],
        ),
        (
            "budget settled",
            sql::SETTLE_BUDGETS,
            vec![&one, &day_start, &horizon],
        ),
        (
            "sends recorded",
            sql::RECORD_SENDS,
            vec![&tenants, &senders, &phones, &at, &ids],
        ),
        ("next release", sql::NEXT_RELEASE, vec![&tenant, &day_start]),
    ];
    let mut plans = Vec::new();
    for (name, query, params) in variants {
        client.batch_execute("BEGIN").await.expect("a transaction");
        let row = client
            .query_one(
                &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}"),
                &params,
            )
            .await
            .unwrap_or_else(|error| panic!("{name} explains: {error}"));
        client.batch_execute("ROLLBACK").await.expect("a rollback");
        let plan: serde_json::Value = row.get(0);
        plans.push((name, plan[0]["Plan"].clone()));
    }
    plans
}

/// The plan (`EXPLAIN (ANALYZE, FORMAT JSON)`) of the group commit's insert of `items`
/// (each follow-up with its events) as a generic plan, the one PostgreSQL settles on for
/// the batcher's cached statement, blind to the arrays' lengths. Rolled back.
pub async fn create_plan(options: &PgOptions, items: &[crm_ports::Scheduled]) -> serde_json::Value {
    use crate::batch::{Columns, CreateJob};
    let jobs: Vec<CreateJob> = items
        .iter()
        .map(|item| CreateJob {
            follow_up: item.follow_up.clone(),
            events: item.events.clone(),
            reply: tokio::sync::oneshot::channel().0,
        })
        .collect();
    let columns = Columns::new(&jobs).expect("columns of valid follow-ups");
    let client = connect(options).await;
    client
        .batch_execute("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
        .await
        .expect("a transaction");
    let row = client
        .query_one(
            &format!(
                "EXPLAIN (ANALYZE, FORMAT JSON) {}",
                crate::sql::CREATE_FOLLOW_UPS
            ),
            &columns.params(),
        )
        .await
        .unwrap_or_else(|error| panic!("the create explains: {error}"));
    client.batch_execute("ROLLBACK").await.expect("a rollback");
    let plan: serde_json::Value = row.get(0);
    plan[0]["Plan"].clone()
}

/// Every node of an `EXPLAIN (FORMAT JSON)` plan, with its subplans (InitPlan, SubPlan,
/// CTEs), depth first.
pub fn plan_nodes(plan: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut found = vec![plan];
    for child in plan["Plans"].as_array().into_iter().flatten() {
        found.extend(plan_nodes(child));
    }
    found
}

/// The generic plan (`EXPLAIN (ANALYZE, FORMAT JSON)`) of the feed's questions a waiting
/// reader asks, for a cursor at `after`: whether an event follows it, then the feed's
/// bounds. Prepared and executed, so that the plan is the one made blind to the cursor,
/// as for the store's cached statements. Rolled back.
pub async fn feed_wait_plans(options: &PgOptions, after: i64) -> Vec<serde_json::Value> {
    let client = connect(options).await;
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
             PREPARE event_after(bigint) AS {}; PREPARE feed_bounds AS {}",
            crate::sql::EVENT_AFTER,
            crate::sql::FEED_BOUNDS
        ))
        .await
        .expect("the questions prepare");
    let mut plans = Vec::new();
    for execute in [format!("event_after({after})"), "feed_bounds".to_owned()] {
        let row = client
            .query_one(
                &format!("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {execute}"),
                &[],
            )
            .await
            .expect("the question runs");
        let plan: serde_json::Value = row.get(0);
        plans.push(plan[0]["Plan"].clone());
    }
    client.batch_execute("ROLLBACK").await.expect("a rollback");
    plans
}
