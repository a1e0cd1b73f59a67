//! Every list filter the API offers is served by an index in key order: the plan has no
//! sort, no sequential scan, and no node that reads and throws away more than a page of
//! rows, with tens of thousands of rows of the tenant and of others around.

use crm_adapters_pg::testing::{
    connect, database_url, drop_schema, fresh_store, list_plans, plan_nodes,
};

const PAGE: i64 = 101;

#[tokio::test]
async fn every_list_filter_reads_one_page_of_rows_in_index_order() {
    let Some(url) = database_url("every_list_filter_reads_one_page_of_rows_in_index_order") else {
        return;
    };
    let (_store, options) = fresh_store(&url, "list_plans").await;
    // Tenant a: 20,000 campaigns in turn running and draft, 30,000 follow-ups over 4 of them
    // and none, in turn pending, sent and failed; tenant b: as many of each.
    connect(&options)
        .await
        .batch_execute(
            "SET statement_timeout = 0; \
             INSERT INTO crm_campaigns (campaign_id, tenant_id, name, channel, state, \
             metadata_json, revision, created_at, updated_at) \
             SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, \
                    CASE WHEN n % 2 = 0 THEN 'tenant_a' ELSE 'tenant_b' END, 'campaign', \
                    'whatsapp', CASE WHEN n % 4 < 2 THEN 'running' ELSE 'draft' END, '{}', 1, \
                    now() - n * interval '1 minute', now() \
             FROM generate_series(1, 40000) n; \
             INSERT INTO crm_followups (followup_id, tenant_id, campaign_id, phone_e164, \
             message, schedule_at, channel, status, metadata_json, correlation_id, trace_id, \
             created_at, updated_at) \
             SELECT gen_random_uuid(), CASE WHEN n % 2 = 0 THEN 'tenant_a' ELSE 'tenant_b' END, \
                    CASE WHEN n % 5 = 4 THEN NULL ELSE ('00000000-0000-4000-8000-' \
                    || lpad((2 * (n % 5) + 2 - n % 2)::text, 12, '0'))::uuid END, \
                    '+5511999998888', 'hi', now(), 'whatsapp', \
                    (ARRAY['pending', 'sent', 'failed'])[n % 3 + 1], '{}', gen_random_uuid(), \
                    'abcdefgh', now() - n * interval '1 second', now() \
             FROM generate_series(1, 60000) n; \
             ANALYZE",
        )
        .await
        .expect("rows are seeded");
    let campaign = uuid::Uuid::parse_str("00000000-0000-4000-8000-000000000002").unwrap();

    for (variant, plan) in list_plans(&options, "tenant_a", campaign, PAGE).await {
        let returned = plan["Actual Rows"].as_u64().unwrap_or(0);
        assert!(
            returned > 0 && returned <= PAGE as u64,
            "{variant}: {returned} rows"
        );
        for node in plan_nodes(&plan) {
            let kind = node["Node Type"].as_str().unwrap_or_default();
            assert!(
                !kind.contains("Sort") && kind != "Seq Scan",
                "{variant}: a {kind} node\n{plan:#}"
            );
            for waste in ["Rows Removed by Filter", "Rows Removed by Index Recheck"] {
                let removed = node[waste].as_u64().unwrap_or(0);
                assert!(
                    removed <= PAGE as u64,
                    "{variant}: {waste} {removed}\n{plan:#}"
                );
            }
        }
    }
    drop_schema(&url, options.schema()).await;
}
