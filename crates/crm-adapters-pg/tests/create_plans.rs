//! The group commit's insert costs in proportion to the follow-ups it carries, however
//! many that is: no node of its plan handles more than a few rows per follow-up, even as
//! the generic plan that cannot see how many the arrays hold.

use crm_adapters_pg::testing::{create_plan, database_url, drop_schema, fresh_store, plan_nodes};
use crm_ports::Scheduled;
use crm_ports::conformance::{at, new_follow_up, tenant};

/// Follow-ups in the batch: the most one statement carries.
const BATCH: u64 = 1_000;

#[tokio::test]
async fn a_batch_of_a_thousand_creates_handles_a_few_rows_per_follow_up_in_every_node() {
    let Some(url) = database_url("create_plans") else {
        return;
    };
    let (_store, options) = fresh_store(&url, "create_plans").await;
    let tenant_id = tenant("tenant_a");
    let items: Vec<Scheduled> = (0..BATCH)
        .map(|n| {
            let key = format!("plan-{n}");
            let (follow_up, events) = new_follow_up(&tenant_id, None, Some(&key), at(0), at(1));
            Scheduled { follow_up, events }
        })
        .collect();

    let plan = create_plan(&options, &items).await;

    for node in plan_nodes(&plan) {
        let loops = node["Actual Loops"].as_u64().unwrap_or(1);
        let handled = node["Actual Rows"].as_u64().unwrap_or(0) * loops;
        let kind = node["Node Type"].as_str().unwrap_or_default();
        assert!(
            handled <= 4 * BATCH,
            "{kind} handles {handled} rows\n{plan:#}"
        );
        for waste in ["Rows Removed by Join Filter", "Rows Removed by Filter"] {
            let removed = node[waste].as_u64().unwrap_or(0) * loops;
            assert!(removed <= 4 * BATCH, "{kind}: {waste} {removed}\n{plan:#}");
        }
    }
    drop_schema(&url, options.schema()).await;
}
