//! `POST /v1/crm/campaigns`, `PATCH /v1/crm/campaigns/{id}/state`, `GET /v1/crm/campaigns`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::helpers::{
    advance_body, assert_idempotent, assert_millisecond_utc, assert_oldest_first, campaign_body,
    distinct_ids, items_of, new_id, new_tenant, page_sizes, retried, spawn_app, status_counts,
    str_field, with, without,
};

/// Every transition of the campaign workflow (SPEC §3), as `(from, to, trigger)`.
const WORKFLOW: [(&str, &str, &str); 8] = [
    ("draft", "scheduled", "schedule_campaign"),
    ("scheduled", "running", "start_window_open"),
    ("scheduled", "canceled", "cancel_campaign"),
    ("running", "paused", "pause_campaign"),
    ("paused", "running", "resume_campaign"),
    ("running", "completed", "batch_finished"),
    ("running", "failed", "fatal_delivery_error"),
    ("paused", "canceled", "cancel_campaign"),
];

#[tokio::test]
async fn creating_a_campaign_returns_created_with_the_stored_record_and_its_event() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let body = campaign_body(&tenant);

    let reply = app.create_campaign(&body).await.ok();

    let response = &reply["response"];
    assert_eq!(response["request_id"], body["request"]["request_id"]);
    assert_eq!(response["status"], "created");
    assert_eq!(
        response["orchestration"]["lifecycle_event_name"],
        "crm.campaign.created"
    );
    let campaign = &response["campaign"];
    let sent = &body["request"]["campaign"];
    assert_eq!(campaign["tenant_id"], tenant.as_str());
    assert_eq!(campaign["external_key"], sent["external_key"]);
    assert_eq!(campaign["name"], sent["name"]);
    assert_eq!(campaign["channel"], "whatsapp");
    assert_eq!(campaign["audience_segment"], sent["audience_segment"]);
    assert_eq!(campaign["state"], "draft", "draft is the default state");
    assert_eq!(campaign["scheduled_at"], Value::Null);
    assert_eq!(campaign["metadata"], sent["metadata"]);
    assert_millisecond_utc(str_field(campaign, "/created_at"));
    assert_eq!(campaign["created_at"], campaign["updated_at"]);
}

#[tokio::test]
async fn a_created_campaign_keeps_the_given_id_initial_state_and_schedule_in_utc() {
    let app = spawn_app().await;
    let campaign_id = new_id();
    let body = campaign_body(&new_tenant());
    let body = with(body, "/request/campaign/campaign_id", json!(campaign_id));
    let body = with(body, "/request/campaign/state", json!("scheduled"));
    let body = with(
        body,
        "/request/campaign/scheduled_at",
        json!("2025-06-01T12:30:00+02:00"),
    );

    let campaign = app.create_campaign(&body).await.ok()["response"]["campaign"].take();

    assert_eq!(campaign["campaign_id"], campaign_id.as_str());
    assert_eq!(campaign["state"], "scheduled");
    assert_eq!(campaign["scheduled_at"], "2025-06-01T10:30:00.000Z");
}

#[tokio::test]
async fn a_campaign_without_optional_fields_stores_them_as_null_or_empty() {
    let app = spawn_app().await;
    let body = campaign_body(&new_tenant());
    let body = without(body, "/request/campaign/external_key");
    let body = without(body, "/request/campaign/audience_segment");
    let body = without(body, "/request/campaign/metadata");

    let campaign = app.create_campaign(&body).await.ok()["response"]["campaign"].take();

    assert_eq!(campaign["external_key"], Value::Null);
    assert_eq!(campaign["audience_segment"], Value::Null);
    assert_eq!(campaign["metadata"], json!({}));
}

#[tokio::test]
async fn a_given_correlation_id_is_echoed_and_a_missing_one_is_generated() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let correlation_id = new_id();
    let given = with(
        campaign_body(&tenant),
        "/request/correlation_id",
        json!(correlation_id),
    );

    let echoed = app.create_campaign(&given).await.ok();
    let generated = app.create_campaign(&campaign_body(&tenant)).await.ok();

    assert_eq!(
        echoed["response"]["orchestration"]["correlation_id"],
        correlation_id.as_str()
    );
    let generated_id = str_field(&generated, "/response/orchestration/correlation_id");
    assert_ne!(generated_id, correlation_id, "a fresh id per request");
}

#[tokio::test]
async fn repeating_a_create_with_the_same_external_key_is_idempotent_and_changes_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let first = campaign_body(&tenant);
    let original = app.create_campaign(&first).await.ok()["response"]["campaign"].take();
    let repeat = with(retried(&first), "/request/campaign/name", json!("Renamed"));

    let reply = app.create_campaign(&repeat).await.ok();

    let response = &reply["response"];
    assert_idempotent(response, "campaign", &original);
    assert_eq!(response["request_id"], repeat["request"]["request_id"]);
    assert_eq!(app.all_campaigns(&tenant, &[]).await, vec![original]);
}

#[tokio::test]
async fn repeating_a_create_with_the_same_campaign_id_is_idempotent_and_changes_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let first = with(
        without(campaign_body(&tenant), "/request/campaign/external_key"),
        "/request/campaign/campaign_id",
        json!(new_id()),
    );
    let original = app.create_campaign(&first).await.ok()["response"]["campaign"].take();
    let repeat = with(retried(&first), "/request/campaign/state", json!("running"));

    let response = app.create_campaign(&repeat).await.ok()["response"].take();

    assert_idempotent(&response, "campaign", &original);
    assert_eq!(app.all_campaigns(&tenant, &[]).await, vec![original]);
}

#[tokio::test]
async fn concurrent_identical_creates_yield_one_created_and_the_rest_idempotent() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let body = campaign_body(&tenant);

    let replies = app
        .at_once(20, |app| {
            let body = body.clone();
            async move { app.create_campaign(&body).await.ok() }
        })
        .await;

    assert_eq!(
        status_counts(&replies),
        BTreeMap::from([("created", 1), ("idempotent", 19)])
    );
    let ids: Vec<&str> = replies
        .iter()
        .map(|reply| str_field(reply, "/response/campaign/campaign_id"))
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]), "one campaign: {ids:?}");
    assert_eq!(app.all_campaigns(&tenant, &[]).await.len(), 1);
}

#[tokio::test]
async fn every_transition_of_the_campaign_workflow_is_allowed_with_its_trigger() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    for (from, to, trigger) in WORKFLOW {
        let campaign = app.seed_campaign(&tenant, from).await;
        let id = str_field(&campaign, "/campaign_id");

        let response = app
            .advance_campaign(id, &advance_body(&tenant, to, trigger))
            .await
            .ok()["response"]
            .take();

        assert_eq!(response["status"], "updated", "{from} -> {to}");
        assert_eq!(
            response["orchestration"]["lifecycle_event_name"],
            "crm.campaign.state.changed"
        );
        let moved = &response["campaign"];
        assert_eq!(moved["state"], to);
        assert_eq!(moved["created_at"], campaign["created_at"]);
        assert!(str_field(moved, "/updated_at") >= str_field(&campaign, "/updated_at"));
    }
}

#[tokio::test]
async fn an_update_is_stored_and_its_reply_echoes_the_request() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "draft").await;
    let id = str_field(&campaign, "/campaign_id");
    let body = advance_body(&tenant, "scheduled", "schedule_campaign");
    let body = with(body, "/request/changes/reason_code", json!("owner_request"));
    let body = with(body, "/request/changes/metadata", json!({"by": "tests"}));

    let response = app.advance_campaign(id, &body).await.ok()["response"].take();

    assert_eq!(response["request_id"], body["request"]["request_id"]);
    let listed = app.all_campaigns(&tenant, &[]).await;
    assert_eq!(listed, vec![response["campaign"].clone()]);
    assert_eq!(listed[0]["state"], "scheduled");
}

#[tokio::test]
async fn advancing_to_the_current_state_is_an_idempotent_no_op() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "scheduled").await;
    let id = str_field(&campaign, "/campaign_id");

    let response = app
        .advance_campaign(id, &advance_body(&tenant, "scheduled", "schedule_campaign"))
        .await
        .ok()["response"]
        .take();

    assert_eq!(response["status"], "idempotent");
    assert_eq!(
        response["orchestration"]["lifecycle_event_name"],
        Value::Null
    );
    assert_eq!(response["campaign"], campaign, "nothing written");
    assert_eq!(app.all_campaigns(&tenant, &[]).await, vec![campaign]);
}

#[tokio::test]
async fn the_same_state_is_idempotent_before_any_trigger_is_checked() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "completed").await;
    let id = str_field(&campaign, "/campaign_id");

    let response = app
        .advance_campaign(id, &advance_body(&tenant, "completed", "no_such_trigger"))
        .await
        .ok()["response"]
        .take();

    assert_eq!(response["status"], "idempotent");
    assert_eq!(response["campaign"], campaign);
}

#[tokio::test]
async fn a_transition_the_workflow_does_not_have_is_refused_as_transition_not_allowed() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let refused = [
        ("draft", "running", "start_window_open"),
        ("draft", "completed", "batch_finished"),
        ("completed", "running", "resume_campaign"),
        ("canceled", "scheduled", "schedule_campaign"),
        ("failed", "running", "start_window_open"),
        ("paused", "completed", "batch_finished"),
    ];
    for (from, to, trigger) in refused {
        let campaign = app.seed_campaign(&tenant, from).await;
        let id = str_field(&campaign, "/campaign_id");

        let details = app
            .advance_campaign(id, &advance_body(&tenant, to, trigger))
            .await
            .error(400, "transition_error");

        assert_eq!(
            details,
            json!({"code": "transition_not_allowed"}),
            "{from} -> {to}"
        );
        let listed = app.all_campaigns(&tenant, &[("state", from)]).await;
        assert!(
            listed.contains(&campaign),
            "{from} -> {to} changed the campaign"
        );
    }
}

#[tokio::test]
async fn a_wrong_trigger_is_refused_as_trigger_mismatch_naming_the_expected_trigger() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "draft").await;
    let id = str_field(&campaign, "/campaign_id");

    let details = app
        .advance_campaign(id, &advance_body(&tenant, "scheduled", "start_window_open"))
        .await
        .error(400, "transition_error");

    assert_eq!(
        details,
        json!({"code": "trigger_mismatch", "expected_trigger": "schedule_campaign"})
    );
    assert_eq!(app.all_campaigns(&tenant, &[]).await, vec![campaign]);
}

#[tokio::test]
async fn advancing_a_campaign_id_that_is_not_a_uuid_is_not_found() {
    let app = spawn_app().await;
    let body = advance_body(&new_tenant(), "scheduled", "schedule_campaign");

    app.advance_campaign("not-a-uuid", &body)
        .await
        .error(404, "not_found");
}

#[tokio::test]
async fn advancing_an_unknown_campaign_is_not_found() {
    let app = spawn_app().await;
    let body = advance_body(&new_tenant(), "scheduled", "schedule_campaign");

    app.advance_campaign(&new_id(), &body)
        .await
        .error(404, "not_found");
}

#[tokio::test]
async fn a_tenant_without_campaigns_lists_an_empty_last_page() {
    let app = spawn_app().await;
    let tenant = new_tenant();

    let page = app
        .list_campaigns(&[("tenant_id", tenant.as_str())])
        .await
        .ok();

    assert_eq!(
        page,
        json!({"tenant_id": tenant, "count": 0, "items": [], "next_cursor": null})
    );
}

#[tokio::test]
async fn campaigns_are_listed_oldest_first() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(app.seed_campaign(&tenant, "draft").await);
    }

    let page = app
        .list_campaigns(&[("tenant_id", tenant.as_str())])
        .await
        .ok();

    assert_eq!(page["count"], 5);
    assert_eq!(page["next_cursor"], Value::Null);
    let listed = page["items"].as_array().expect("items");
    assert_oldest_first(listed, "campaign_id");
    assert_eq!(
        distinct_ids(listed, "campaign_id"),
        distinct_ids(&created, "campaign_id")
    );
}

#[tokio::test]
async fn the_campaign_list_pages_through_every_campaign_with_its_cursor() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(app.seed_campaign(&tenant, "draft").await);
    }

    let pages = app
        .campaign_pages(&[("tenant_id", tenant.as_str()), ("limit", "2")])
        .await;

    let listed = items_of(&pages);
    assert_eq!(page_sizes(&pages), [2, 2, 1]);
    assert_oldest_first(&listed, "campaign_id");
    assert_eq!(
        distinct_ids(&listed, "campaign_id"),
        distinct_ids(&created, "campaign_id")
    );
}

#[tokio::test]
async fn the_campaign_list_filters_by_state() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let running = app.seed_campaign(&tenant, "running").await;
    app.seed_campaign(&tenant, "draft").await;
    let draft_then_running = app.seed_campaign(&tenant, "scheduled").await;
    let draft_then_running = app
        .move_campaign(&draft_then_running, "running", "start_window_open")
        .await;

    let listed = app.all_campaigns(&tenant, &[("state", "running")]).await;

    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&running) && listed.contains(&draft_then_running));
    let paused = app.all_campaigns(&tenant, &[("state", "paused")]).await;
    assert_eq!(paused, Vec::<Value>::new());
}
