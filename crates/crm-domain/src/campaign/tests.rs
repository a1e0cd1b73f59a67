use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::workflow::WorkflowSet;

/// The campaign workflow exactly as the product contract states it, inline so a change
/// to the production file cannot silently change what these tests prove.
const CAMPAIGN_WORKFLOW_JSON: &str = r#"{"version": "1", "module": "test", "workflows": {"campaign": {
  "states": ["draft", "scheduled", "running", "paused", "completed", "canceled", "failed"],
  "transitions": [
    {"from": "draft", "to": "scheduled", "trigger": "schedule_campaign"},
    {"from": "scheduled", "to": "running", "trigger": "start_window_open"},
    {"from": "scheduled", "to": "canceled", "trigger": "cancel_campaign"},
    {"from": "running", "to": "paused", "trigger": "pause_campaign"},
    {"from": "paused", "to": "running", "trigger": "resume_campaign"},
    {"from": "running", "to": "completed", "trigger": "batch_finished"},
    {"from": "running", "to": "failed", "trigger": "fatal_delivery_error"},
    {"from": "paused", "to": "canceled", "trigger": "cancel_campaign"}]}}}"#;

const ALLOWED: [(CampaignState, CampaignState, &str); 8] = {
    use CampaignState::*;
    [
        (Draft, Scheduled, "schedule_campaign"),
        (Scheduled, Running, "start_window_open"),
        (Scheduled, Canceled, "cancel_campaign"),
        (Running, Paused, "pause_campaign"),
        (Paused, Running, "resume_campaign"),
        (Running, Completed, "batch_finished"),
        (Running, Failed, "fatal_delivery_error"),
        (Paused, Canceled, "cancel_campaign"),
    ]
};

fn workflow() -> Workflow {
    WorkflowSet::parse(CAMPAIGN_WORKFLOW_JSON)
        .unwrap()
        .workflow(CAMPAIGN_WORKFLOW)
        .unwrap()
        .clone()
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn campaign_in(state: CampaignState) -> Campaign {
    let (campaign, _) = Campaign::create(
        NewCampaign {
            campaign_id: CampaignId::new(Uuid::from_u128(7)),
            tenant_id: TenantId::parse("tenant_a").unwrap(),
            external_key: Some("spring-sale".into()),
            name: "Spring sale".into(),
            channel: "whatsapp".into(),
            audience_segment: None,
            state,
            scheduled_at: None,
            metadata: Map::new(),
        },
        at("2025-01-01T09:00:00.000Z"),
    );
    campaign
}

/// Asks for `from -> to` with `trigger` and returns the outcome as a wire word.
fn check(from: CampaignState, to: CampaignState, trigger: Option<&str>) -> String {
    let command = Advance {
        to_state: to,
        trigger: trigger.map(str::to_owned),
        reason_code: None,
        metadata: None,
    };
    match advance(
        &campaign_in(from),
        command,
        &workflow(),
        at("2025-01-02T00:00:00.000Z"),
    ) {
        Ok(Advanced::Unchanged) => "unchanged".into(),
        Ok(Advanced::Moved(campaign, _)) => format!("moved to {}", campaign.state),
        Err(AdvanceError::Refused(refusal)) => refusal.code().into(),
        Err(AdvanceError::MetadataTooLarge(error)) => error.to_string(),
    }
}

fn refusal(outcome: Result<Advanced, AdvanceError>) -> TransitionRefusal {
    match outcome {
        Err(AdvanceError::Refused(refusal)) => refusal,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn every_transition_of_the_campaign_workflow_moves_with_its_trigger() {
    for (from, to, trigger) in ALLOWED {
        assert_eq!(
            check(from, to, Some(trigger)),
            format!("moved to {to}"),
            "{from} -> {to}"
        );
    }
}

#[test]
fn every_pair_outside_the_workflow_is_not_allowed() {
    for from in CampaignState::ALL {
        for to in CampaignState::ALL {
            if from == to || ALLOWED.iter().any(|(f, t, _)| (*f, *t) == (from, to)) {
                continue;
            }
            assert_eq!(
                check(from, to, Some("anything")),
                "transition_not_allowed",
                "{from} -> {to}"
            );
        }
    }
}

#[test]
fn requesting_the_current_state_is_a_no_op_in_every_state() {
    for state in CampaignState::ALL {
        assert_eq!(check(state, state, None), "unchanged");
    }
}

#[test]
fn an_allowed_pair_without_a_trigger_is_missing_its_trigger() {
    assert_eq!(
        check(CampaignState::Draft, CampaignState::Scheduled, None),
        "missing_trigger"
    );
}

#[test]
fn pausing_with_the_resume_trigger_is_a_trigger_mismatch_naming_the_right_one() {
    let command = Advance {
        to_state: CampaignState::Paused,
        trigger: Some("resume_campaign".into()),
        reason_code: None,
        metadata: None,
    };
    let refusal = refusal(advance(
        &campaign_in(CampaignState::Running),
        command,
        &workflow(),
        at("2025-01-02T00:00:00.000Z"),
    ));
    assert_eq!(refusal.code(), "trigger_mismatch");
    assert_eq!(refusal.expected_trigger(), Some("pause_campaign"));
}

#[test]
fn a_state_the_workflow_lacks_is_an_unknown_current_or_next_state() {
    let narrow = WorkflowSet::parse(
        r#"{"version": "1", "module": "t", "workflows": {"campaign": {"states": ["draft", "scheduled"],
        "transitions": [{"from": "draft", "to": "scheduled", "trigger": "schedule_campaign"}]}}}"#,
    )
    .unwrap();
    let narrow = narrow.workflow(CAMPAIGN_WORKFLOW).unwrap();
    let now = at("2025-01-02T00:00:00.000Z");
    let to = |state| Advance {
        to_state: state,
        trigger: Some("x_trigger".into()),
        reason_code: None,
        metadata: None,
    };
    let from_running = advance(
        &campaign_in(CampaignState::Running),
        to(CampaignState::Draft),
        narrow,
        now,
    );
    assert_eq!(refusal(from_running).code(), "unknown_current_state");
    let to_running = advance(
        &campaign_in(CampaignState::Draft),
        to(CampaignState::Running),
        narrow,
        now,
    );
    assert_eq!(refusal(to_running).code(), "unknown_next_state");
}

#[test]
fn a_move_bumps_the_revision_and_time_merges_metadata_and_emits_the_change() {
    let mut campaign = campaign_in(CampaignState::Draft);
    campaign.metadata.insert("owner".into(), json!("ana"));
    let command = Advance {
        to_state: CampaignState::Scheduled,
        trigger: Some("schedule_campaign".into()),
        reason_code: Some("ops_request".into()),
        metadata: Some(json!({"window": "morning"}).as_object().unwrap().clone()),
    };
    let now = at("2025-01-02T00:00:00.000Z");
    let Ok(Advanced::Moved(moved, event)) = advance(&campaign, command, &workflow(), now) else {
        panic!("draft -> scheduled should move");
    };
    assert_eq!(moved.revision, campaign.revision + 1);
    assert_eq!(moved.updated_at, now);
    assert_eq!(moved.created_at, campaign.created_at);
    assert_eq!(moved.metadata["owner"], json!("ana"));
    assert_eq!(moved.metadata["window"], json!("morning"));
    assert_eq!(event.name(), "crm.campaign.state.changed");
    assert_eq!(
        event.payload(),
        json!({"campaign_id": campaign.campaign_id, "from_state": "draft", "to_state": "scheduled",
               "reason_code": "ops_request"})
    );
}

#[test]
fn creating_a_campaign_announces_it() {
    let campaign = campaign_in(CampaignState::Draft);
    let (_, event) = Campaign::create(
        NewCampaign {
            campaign_id: campaign.campaign_id,
            tenant_id: campaign.tenant_id.clone(),
            external_key: None,
            name: campaign.name.clone(),
            channel: "whatsapp".into(),
            audience_segment: None,
            state: CampaignState::Draft,
            scheduled_at: Some(at("2025-02-01T10:00:00.000Z")),
            metadata: Map::new(),
        },
        at("2025-01-01T09:00:00.000Z"),
    );
    assert_eq!(event.name(), "crm.campaign.created");
    assert_eq!(
        event.payload(),
        json!({"campaign_id": campaign.campaign_id, "channel": "whatsapp", "state": "draft",
               "scheduled_at": "2025-02-01T10:00:00.000Z"})
    );
}

#[test]
fn state_words_round_trip() {
    for state in CampaignState::ALL {
        assert_eq!(state.as_str().parse::<CampaignState>(), Ok(state));
    }
    assert!("archived".parse::<CampaignState>().is_err());
}

#[test]
fn a_workflow_with_a_state_campaigns_do_not_have_cannot_drive_campaigns() {
    assert_eq!(check_workflow(&workflow()), Ok(()));
    let odd = WorkflowSet::parse(
        r#"{"version": "1", "module": "t", "workflows": {"campaign": {"states": ["draft", "archived"], "transitions": []}}}"#,
    )
    .unwrap();
    assert_eq!(
        check_workflow(odd.workflow(CAMPAIGN_WORKFLOW).unwrap()),
        Err(UnknownCampaignState("archived".into()))
    );
}

#[test]
fn a_merge_that_would_make_the_metadata_too_large_is_refused() {
    let mut campaign = campaign_in(CampaignState::Draft);
    let half = crate::metadata::MAX_METADATA_BYTES / 2;
    campaign
        .metadata
        .insert("earlier".into(), json!("x".repeat(half)));
    let command = Advance {
        to_state: CampaignState::Scheduled,
        trigger: Some("schedule_campaign".into()),
        reason_code: None,
        metadata: Some(
            json!({"later": "y".repeat(half)})
                .as_object()
                .unwrap()
                .clone(),
        ),
    };
    let outcome = advance(
        &campaign,
        command,
        &workflow(),
        at("2025-01-02T00:00:00.000Z"),
    );
    assert!(
        matches!(outcome, Err(AdvanceError::MetadataTooLarge(_))),
        "{outcome:?}"
    );
}

fn spam_limit() -> PauseCause {
    PauseCause::ErrorCode {
        error_code: "131048".into(),
        followup_id: crate::ids::FollowUpId::new(uuid::Uuid::from_u128(7)),
    }
}

#[test]
fn an_automatic_pause_moves_a_running_campaign_as_a_patch_would_and_notes_the_cause() {
    let campaign = campaign_in(CampaignState::Running);
    let now = at("2025-01-02T00:00:00.000Z");
    let (paused, event) = auto_pause(&campaign, &spam_limit(), &workflow(), now).unwrap();
    assert_eq!(paused.state, CampaignState::Paused);
    assert_eq!(paused.revision, campaign.revision + 1);
    assert_eq!(paused.metadata["auto_pause"]["cause"], "error_code");
    assert_eq!(paused.metadata["auto_pause"]["error_code"], "131048");
    assert_eq!(
        event,
        DomainEvent::CampaignStateChanged {
            campaign_id: campaign.campaign_id,
            from_state: CampaignState::Running,
            to_state: CampaignState::Paused,
            reason_code: Some(AUTO_PAUSE.into()),
        }
    );
}

#[test]
fn an_automatic_pause_leaves_a_campaign_that_is_not_running_alone() {
    for state in CampaignState::ALL
        .into_iter()
        .filter(|state| *state != CampaignState::Running)
    {
        let campaign = campaign_in(state);
        let now = at("2025-01-02T00:00:00.000Z");
        assert_eq!(auto_pause(&campaign, &spam_limit(), &workflow(), now), None);
    }
}

#[test]
fn an_automatic_pause_without_room_for_its_note_still_pauses() {
    let mut campaign = campaign_in(CampaignState::Running);
    let room = crate::metadata::MAX_METADATA_BYTES - 64;
    campaign
        .metadata
        .insert("big".into(), json!("x".repeat(room)));
    let now = at("2025-01-02T00:00:00.000Z");
    let (paused, _) = auto_pause(&campaign, &spam_limit(), &workflow(), now).unwrap();
    assert_eq!(paused.state, CampaignState::Paused);
    assert!(!paused.metadata.contains_key("auto_pause"));
}
