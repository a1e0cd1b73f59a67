//! A reader waiting at the end of the feed asks whether an event follows its cursor on
//! every wake: the answer must cost a few index entries whatever the log holds, as the
//! generic plan PostgreSQL settles on for the cached statement.

use crm_adapters_pg::testing::{
    connect, database_url, drop_schema, feed_wait_plans, fresh_store, plan_nodes,
};

/// Events in the log: enough that reading them all shows.
const EVENTS: i64 = 100_000;

#[tokio::test]
async fn a_waiting_reader_s_questions_read_a_few_rows_however_long_the_log() {
    let Some(url) = database_url("feed_plans") else {
        return;
    };
    let (_store, options) = fresh_store(&url, "feed_plans").await;
    let client = connect(&options).await;
    client
        .execute(
            "INSERT INTO crm_events (event_id, tenant_id, name, correlation_id, emitted_at, \
             envelope) SELECT gen_random_uuid(), 'tenant_a', 'crm.followup.created', \
             gen_random_uuid(), now(), '{}'::jsonb FROM generate_series(1, $1::bigint)",
            &[&EVENTS],
        )
        .await
        .expect("events seeded");
    client.batch_execute("ANALYZE crm_events").await.unwrap();
    let last: i64 = client
        .query_one("SELECT max(seq) FROM crm_events", &[])
        .await
        .unwrap()
        .get(0);

    for plan in feed_wait_plans(&options, last).await {
        for node in plan_nodes(&plan) {
            let kind = node["Node Type"].as_str().unwrap_or_default();
            let relation = node["Relation Name"].as_str().unwrap_or_default();
            assert!(
                !(kind.contains("Seq Scan") && relation.starts_with("crm_events_p")),
                "a scan of the log: {kind} on {relation}\n{plan:#}"
            );
            let loops = node["Actual Loops"].as_u64().unwrap_or(1);
            let read = (node["Actual Rows"].as_u64().unwrap_or(0)
                + node["Rows Removed by Filter"].as_u64().unwrap_or(0))
                * loops;
            assert!(read <= 10, "{kind} reads {read} rows\n{plan:#}");
        }
    }
    drop_schema(&url, options.schema()).await;
}
