//! What a claim asks the ledger of sends, and what it writes to it, reads a bounded part
//! of the ledger however many sends the day holds: no sequential scan of the ledger, and
//! no node that returns, throws away or touches in its pages more than a batch's worth,
//! with 300,000 sends of the tenant and 100,000 of another in the last day; whether the
//! planner's statistics are fresh or were taken when the ledger was small.

use crm_adapters_pg::PgOptions;
use crm_adapters_pg::testing::{
    connect, database_url, drop_schema, fresh_store, ledger_plans, plan_nodes,
};

/// The most ledger rows a node may read: a batch's recipients and a second of sends,
/// with room to spare, far below the day's 300,000.
const BOUND: u64 = 5_000;

/// The most pages (of the table and its indexes) a node may touch: an index descent for
/// each of a batch's recipients, and the pages of a second of sends, far below the
/// thousands that hold the tenant's day.
const PAGES: u64 = 600;

/// Tenant a's sends: `rows` over the last 24 hours and a minute, the oldest first from
/// row `from`, to recipients drawn from 250,000 at random, from 64 senders.
fn tenant_a_sends(from: u32, rows: u32) -> String {
    format!(
        "INSERT INTO crm_send_ledger (tenant_id, sender, phone_e164, sent_at, followup_id) \
         SELECT 'tenant_a', 'sender-' || (n % 64), '+55' || floor(random() * 250000)::int, \
                now() - n * interval '288.2 milliseconds', gen_random_uuid() \
         FROM generate_series({}, {}) n;",
        300_000 - from - rows + 1,
        300_000 - from
    )
}

/// A ledger holding tenant a's 300,000 sends, tenant b's 100,000, tenant a's budget
/// settled ten seconds ago and its rate window a tenth of a second ago. With `stale` statistics, the planner last looked at it when
/// it held a thousand.
async fn seeded(url: &str, stale: bool) -> PgOptions {
    let (_store, options) = fresh_store(url, "ledger_plans").await;
    let db = connect(&options).await;
    let seed = |sql: String| {
        let db = &db;
        async move { db.batch_execute(&sql).await.expect("the ledger is seeded") }
    };
    seed(
        "SET statement_timeout = 0; \
          ALTER TABLE crm_send_ledger SET (autovacuum_enabled = off)"
            .to_owned(),
    )
    .await;
    if stale {
        seed(tenant_a_sends(0, 1_000) + " ANALYZE crm_send_ledger").await;
        seed(tenant_a_sends(1_000, 299_000)).await;
    } else {
        seed(tenant_a_sends(0, 300_000)).await;
    }
    seed(
        "INSERT INTO crm_send_ledger (tenant_id, sender, phone_e164, sent_at, followup_id) \
          SELECT 'tenant_b', NULL, '+55' || n, now() - n * interval '864 milliseconds', \
                 gen_random_uuid() \
          FROM generate_series(1, 100000) n; \
          INSERT INTO crm_send_windows (tenant_id, since) \
          VALUES ('tenant_a', now() - interval '1100 milliseconds'); \
          INSERT INTO crm_send_rates (tenant_id, sender, sends) \
          SELECT 'tenant_a', coalesce(sender, ''), count(*) FROM crm_send_ledger \
          WHERE tenant_id = 'tenant_a' AND sent_at > now() - interval '1100 milliseconds' \
          GROUP BY 1, 2; \
          INSERT INTO crm_send_budgets (tenant_id, cutoff, counted) \
          SELECT 'tenant_a', now() - interval '1 day 10 seconds', count(DISTINCT phone_e164) \
          FROM crm_send_ledger \
          WHERE tenant_id = 'tenant_a' AND sent_at > now() - interval '1 day 10 seconds'"
            .to_owned(),
    )
    .await;
    if !stale {
        seed("ANALYZE".to_owned()).await;
    }
    options
}

async fn assert_bounded(options: &PgOptions) {
    // A batch of 100: 50 recipients counted today and 50 new ones.
    let mut phones: Vec<String> = connect(options)
        .await
        .query(
            "SELECT DISTINCT phone_e164 FROM crm_send_ledger WHERE tenant_id = 'tenant_a' LIMIT 50",
            &[],
        )
        .await
        .expect("recipients of the day")
        .iter()
        .map(|row| row.get(0))
        .collect();
    phones.extend((0..50).map(|n| format!("+1555{n:07}")));

    let plans = ledger_plans(
        options,
        "tenant_a",
        &phones,
        time::OffsetDateTime::now_utc(),
    )
    .await;
    assert_eq!(plans.len(), 7);
    for (question, plan) in plans {
        for node in plan_nodes(&plan) {
            // A node that never ran is a branch this claim did not take: counting a
            // budget afresh, once, when a tenant's first needs it.
            let loops = node["Actual Loops"].as_u64().unwrap_or(1);
            if node["Relation Name"] != "crm_send_ledger" || loops == 0 {
                continue;
            }
            let kind = node["Node Type"].as_str().unwrap_or_default();
            assert_ne!(kind, "Seq Scan", "{question}: scans the ledger\n{plan:#}");
            let read = node["Actual Rows"].as_u64().unwrap_or(0) * loops;
            assert!(read <= BOUND, "{question}: reads {read} rows\n{plan:#}");
            // An insert touches a few pages of each index per row it adds, the logarithm
            // of the ledger's size: that is the price of any index, not a scan.
            let pages = node["Shared Hit Blocks"].as_u64().unwrap_or(0)
                + node["Shared Read Blocks"].as_u64().unwrap_or(0);
            assert!(
                pages <= PAGES || kind == "ModifyTable",
                "{question}: touches {pages} pages\n{plan:#}"
            );
            for waste in ["Rows Removed by Filter", "Rows Removed by Index Recheck"] {
                let removed = node[waste].as_u64().unwrap_or(0) * loops;
                assert!(removed <= BOUND, "{question}: {waste} {removed}\n{plan:#}");
            }
        }
    }
}

#[tokio::test]
async fn a_claim_reads_a_bounded_part_of_the_ledger_however_many_sends_the_day_holds() {
    let Some(url) =
        database_url("a_claim_reads_a_bounded_part_of_the_ledger_however_many_sends_the_day_holds")
    else {
        return;
    };
    let options = seeded(&url, false).await;
    assert_bounded(&options).await;
    drop_schema(&url, options.schema()).await;
}

#[tokio::test]
async fn a_claim_reads_a_bounded_part_of_the_ledger_with_statistics_from_when_it_was_small() {
    let Some(url) = database_url(
        "a_claim_reads_a_bounded_part_of_the_ledger_with_statistics_from_when_it_was_small",
    ) else {
        return;
    };
    let options = seeded(&url, true).await;
    assert_bounded(&options).await;
    drop_schema(&url, options.schema()).await;
}
