//! `GET /internal/orchestration/trace`.

use crm_contracts::Contract;
use serde_json::json;

use crate::helpers::{
    TRACE, advance_body, campaign_body, follow_up_body, names, new_id, new_tenant, retried,
    spawn_app, str_field, with,
};

#[tokio::test]
async fn a_campaign_trace_holds_its_created_and_state_changed_events_oldest_first() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let correlation_id = new_id();
    let create = with(
        campaign_body(&tenant),
        "/request/correlation_id",
        json!(correlation_id),
    );
    let campaign = app.create_campaign(&create).await.ok()["response"]["campaign"].take();
    let campaign_id = str_field(&campaign, "/campaign_id");
    let advance = with(
        advance_body(&tenant, "scheduled", "schedule_campaign"),
        "/request/correlation_id",
        json!(correlation_id),
    );
    app.advance_campaign(campaign_id, &advance).await.ok();

    let events = app.events(&correlation_id).await;

    assert_eq!(
        names(&events),
        ["crm.campaign.created", "crm.campaign.state.changed"]
    );
    for event in &events {
        assert_eq!(event["tenant_id"], tenant.as_str());
        assert_eq!(event["correlation_id"], correlation_id.as_str());
        assert_eq!(event["payload"]["campaign_id"], campaign_id);
    }
    assert_eq!(events[0]["payload"]["state"], "draft");
    assert_eq!(events[1]["payload"]["from_state"], "draft");
    assert_eq!(events[1]["payload"]["to_state"], "scheduled");
    assert!(str_field(&events[0], "/emitted_at") <= str_field(&events[1], "/emitted_at"));
}

#[tokio::test]
async fn idempotent_repeats_and_refused_commands_add_no_event() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let correlation_id = new_id();
    let create = with(
        campaign_body(&tenant),
        "/request/correlation_id",
        json!(correlation_id),
    );
    let campaign = app.create_campaign(&create).await.ok()["response"]["campaign"].take();
    let campaign_id = str_field(&campaign, "/campaign_id");

    app.create_campaign(&retried(&create)).await.ok();
    let same_state = with(
        advance_body(&tenant, "draft", "schedule_campaign"),
        "/request/correlation_id",
        json!(correlation_id),
    );
    app.advance_campaign(campaign_id, &same_state).await.ok();
    let refused = with(
        advance_body(&tenant, "running", "start_window_open"),
        "/request/correlation_id",
        json!(correlation_id),
    );
    app.advance_campaign(campaign_id, &refused)
        .await
        .error(400, "transition_error");

    assert_eq!(
        names(&app.events(&correlation_id).await),
        ["crm.campaign.created"]
    );
}

#[tokio::test]
async fn a_generated_correlation_id_leads_to_the_event_of_its_command() {
    let app = spawn_app().await;
    let tenant = new_tenant();

    let response = app.seed_follow_up(&follow_up_body(&tenant)).await;

    let correlation_id = str_field(&response, "/orchestration/correlation_id");
    let events = app.events(correlation_id).await;
    assert_eq!(names(&events), ["crm.followup.scheduled"]);
    let payload = &events[0]["payload"];
    let record = &response["followup"];
    for field in [
        "followup_id",
        "campaign_id",
        "channel",
        "schedule_at",
        "phone_e164",
    ] {
        assert_eq!(payload[field], record[field], "{field}");
    }
}

#[tokio::test]
async fn an_unknown_correlation_id_has_an_empty_trace() {
    let app = spawn_app().await;
    let correlation_id = new_id();

    let trace = app.trace(&correlation_id).await.ok();

    assert_eq!(
        trace,
        json!({"correlation_id": correlation_id, "commands": [], "events": [], "next_cursor": null})
    );
}

#[tokio::test]
async fn a_long_trace_comes_a_page_at_a_time_in_commit_order() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let correlation_id = new_id();
    for _ in 0..5 {
        let create = with(
            campaign_body(&tenant),
            "/request/correlation_id",
            json!(correlation_id),
        );
        app.create_campaign(&create).await.ok();
    }
    let all = app.events(&correlation_id).await;
    assert_eq!(all.len(), 5);
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..5 {
        let mut query = vec![("correlation_id", correlation_id.as_str()), ("limit", "2")];
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.as_str()));
        }
        let page = app.get(TRACE, &query, Contract::TraceResponse).await.ok();
        paged.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, all);
    for bad in ["c1_0_00000000000000000000000000000000", "e1_01", "e1_x"] {
        let parameters = app
            .get(
                TRACE,
                &[("correlation_id", &correlation_id), ("cursor", bad)],
                Contract::TraceResponse,
            )
            .await
            .invalid_parameters();
        assert_eq!(parameters, ["cursor"], "{bad}");
    }
}
