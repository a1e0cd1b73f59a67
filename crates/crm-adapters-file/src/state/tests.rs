use super::*;
use crm_domain::follow_up::FollowUpStatus;
use crm_domain::ids::CorrelationId;
use serde_json::Map;

fn at(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_735_722_000_000 + millis).unwrap()
}

fn campaign(state: CampaignState) -> Campaign {
    Campaign {
        campaign_id: CampaignId::new(Uuid::new_v4()),
        tenant_id: TenantId::parse("tenant_b").unwrap(),
        external_key: None,
        name: "held".into(),
        channel: "whatsapp".into(),
        audience_segment: None,
        state,
        scheduled_at: None,
        metadata: Map::new(),
        created_at: at(0),
        updated_at: at(0),
        revision: 1,
    }
}

fn follow_up(tenant: &str, campaign_id: Option<CampaignId>, schedule_at: Timestamp) -> FollowUp {
    FollowUp {
        followup_id: FollowUpId::new(Uuid::new_v4()),
        tenant_id: TenantId::parse(tenant).unwrap(),
        campaign_id,
        external_key: None,
        lead_id: None,
        customer_id: None,
        phone_e164: "+5511999998888".into(),
        message: "hi".into(),
        schedule_at,
        channel: "whatsapp".into(),
        status: FollowUpStatus::Pending,
        provider_message_id: None,
        last_error_code: None,
        last_error_message: None,
        metadata: Map::new(),
        correlation_id: CorrelationId::new(Uuid::new_v4()),
        trace_id: "abcdefgh".into(),
        time_zone: None,
        sender: None,
        sent_at: None,
        delivery: None,
        created_at: at(0),
        updated_at: at(0),
    }
}

#[test]
fn a_drain_looks_at_the_same_few_entries_however_many_follow_ups_a_paused_campaign_holds() {
    let mut state = State::default();
    for index in 0..3 {
        state.put_follow_up(follow_up("tenant_a", None, at(100 + index)));
    }
    let paused = campaign(CampaignState::Paused);
    let held = vec![CampaignState::Paused];
    let before = due(&state, at(10_000), 100, &held);
    state.put_campaign(paused.clone());
    for index in 0..100_000 {
        // Held follow-ups are all due before the free ones.
        state.put_follow_up(follow_up(
            "tenant_b",
            Some(paused.campaign_id),
            at(index % 50),
        ));
    }
    let (after, examined) = due(&state, at(10_000), 100, &held);
    assert_eq!(after.len(), 3);
    assert!(
        examined <= before.1 + 1,
        "examined {examined} entries with the paused campaign, {} without",
        before.1
    );
}

/// What a drain of `limit` at `now` may claim, with the lanes of `held` campaigns closed,
/// and how many entries it looked at.
fn due(
    state: &State,
    now: Timestamp,
    limit: usize,
    held: &[CampaignState],
) -> (Vec<crm_ports::Candidate>, usize) {
    let open: Vec<_> = state
        .lanes()
        .into_iter()
        .filter(|lane| !lane.campaign_state.is_some_and(|s| held.contains(&s)))
        .map(|lane| lane.lane)
        .collect();
    let (candidates, examined) =
        state.candidates(now, &open, &HashMap::new(), limit, (&[], 0), |_| false);
    let ordered = crm_ports::drain::in_turns(
        candidates,
        |c| &c.tenant_id,
        |c| (c.schedule_at, c.followup_id),
        &HashMap::new(),
        limit,
    );
    (ordered, examined)
}

#[test]
fn due_follow_ups_come_tenants_in_turn_and_oldest_first_within_a_turn() {
    let mut state = State::default();
    let running = campaign(CampaignState::Running);
    state.put_campaign(running.clone());
    let first = follow_up("tenant_a", Some(running.campaign_id), at(1));
    let second = follow_up("tenant_a", None, at(2));
    let third = follow_up("tenant_b", Some(running.campaign_id), at(3));
    for follow_up in [&third, &first, &second] {
        state.put_follow_up(follow_up.clone());
    }
    let (due, _) = due(&state, at(10), 10, &[]);
    let ids: Vec<_> = due.iter().map(|c| c.followup_id).collect();
    assert_eq!(
        ids,
        vec![first.followup_id, third.followup_id, second.followup_id]
    );
}
