//! A drain's claim costs the same however many follow-ups are held back: the follow-ups
//! of a paused campaign are passed over as one lane, never row by row. Work is counted in
//! database buffers, not time, so the check does not depend on the machine.

use crm_adapters_pg::testing::{claim_cost, connect, database_url, drop_schema, fresh_store};
use crm_domain::campaign::CampaignState;
use crm_ports::conformance::{at, create_campaign, move_campaign, schedule, tenant};

const HELD: i64 = 30_000;

#[tokio::test]
async fn a_claim_costs_the_same_with_thirty_thousand_follow_ups_held_by_a_paused_campaign() {
    let Some(url) = database_url(
        "a_claim_costs_the_same_with_thirty_thousand_follow_ups_held_by_a_paused_campaign",
    ) else {
        return;
    };
    let (store, options) = fresh_store(&url, "claim_cost").await;
    let tenant_id = tenant("tenant_a");
    for _ in 0..5 {
        schedule(&store, &tenant_id, None, at(10)).await;
    }
    let now = at(1_000_000);
    let (without_held, claimed) = claim_cost(&options, now, 100).await;
    assert_eq!(claimed, 5);

    let campaign = create_campaign(&store, &tenant("tenant_b"), at(0)).await;
    let campaign = move_campaign(&store, &campaign, CampaignState::Scheduled, at(1)).await;
    let campaign = move_campaign(&store, &campaign, CampaignState::Running, at(2)).await;
    move_campaign(&store, &campaign, CampaignState::Paused, at(3)).await;
    // Held follow-ups, all due earlier than the free ones.
    connect(&options)
        .await
        .batch_execute(&format!(
            "SET statement_timeout = 0; \
             INSERT INTO crm_followups (followup_id, tenant_id, campaign_id, phone_e164, \
             message, schedule_at, channel, status, metadata_json, correlation_id, trace_id, \
             created_at, updated_at) \
             SELECT gen_random_uuid(), 'tenant_b', '{}', '+5511999998888', 'held', \
             '2025-01-01T00:00:00Z', 'whatsapp', 'pending', '{{}}', gen_random_uuid(), \
             'abcdefgh', now(), now() FROM generate_series(1, {HELD}); ANALYZE crm_followups",
            campaign.campaign_id
        ))
        .await
        .expect("held follow-ups are seeded");
    let (with_held, claimed) = claim_cost(&options, now, 100).await;
    assert_eq!(claimed, 5, "only the free follow-ups are due");
    assert!(
        with_held <= without_held * 2 + 10,
        "a claim touched {with_held} buffers with {HELD} held follow-ups, {without_held} without"
    );
    drop_schema(&url, options.schema()).await;
}
