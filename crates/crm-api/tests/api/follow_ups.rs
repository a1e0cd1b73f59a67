//! `POST /v1/crm/followups` and `GET /v1/crm/followups`.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};

use crate::helpers::{
    FUTURE, assert_idempotent, assert_millisecond_utc, assert_oldest_first,
    campaign_follow_up_body, distinct_ids, drained, follow_up_body, items_of, new_id, new_tenant,
    page_sizes, retried, spawn_app, status_counts, str_field, with, without,
};

#[tokio::test]
async fn scheduling_a_follow_up_returns_created_with_the_stored_record_and_its_event() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let body = follow_up_body(&tenant);

    let reply = app.create_follow_up(&body).await.ok();

    let response = &reply["response"];
    assert_eq!(response["request_id"], body["request"]["request_id"]);
    assert_eq!(response["status"], "created");
    assert_eq!(
        response["orchestration"]["lifecycle_event_name"],
        "crm.followup.scheduled"
    );
    let record = &response["followup"];
    let sent = &body["request"]["followup"];
    for field in [
        "followup_id",
        "external_key",
        "lead_id",
        "phone_e164",
        "message",
        "schedule_at",
        "metadata",
    ] {
        assert_eq!(record[field], sent[field], "{field}");
    }
    assert_eq!(record["tenant_id"], tenant.as_str());
    assert_eq!(record["campaign_id"], Value::Null);
    assert_eq!(record["customer_id"], Value::Null);
    assert_eq!(
        record["channel"], "whatsapp",
        "whatsapp is the default channel"
    );
    assert_eq!(record["status"], "pending", "pending is the default status");
    assert_eq!(record["provider_message_id"], Value::Null);
    assert_eq!(record["last_error_code"], Value::Null);
    assert_eq!(record["last_error_message"], Value::Null);
    assert_millisecond_utc(str_field(record, "/created_at"));
    assert_eq!(record["created_at"], record["updated_at"]);
}

#[tokio::test]
async fn a_follow_up_without_an_id_gets_one_and_its_schedule_is_stored_in_utc_milliseconds() {
    let app = spawn_app().await;
    let body = without(
        follow_up_body(&new_tenant()),
        "/request/followup/followup_id",
    );
    let body = with(
        body,
        "/request/followup/schedule_at",
        json!("2025-03-10T08:15:00-03:00"),
    );

    let record = app.seed_follow_up(&body).await["followup"].take();

    assert!(
        uuid::Uuid::parse_str(str_field(&record, "/followup_id")).is_ok(),
        "{record}"
    );
    assert_eq!(record["schedule_at"], "2025-03-10T11:15:00.000Z");
}

#[tokio::test]
async fn a_follow_up_of_one_of_the_tenants_campaigns_is_tied_to_it() {
    let app = spawn_app().await;
    let campaign = app.seed_campaign(&new_tenant(), "running").await;

    let record = app
        .seed_follow_up(&campaign_follow_up_body(&campaign))
        .await["followup"]
        .take();

    assert_eq!(record["campaign_id"], campaign["campaign_id"]);
}

#[tokio::test]
async fn a_follow_up_naming_an_unknown_campaign_is_campaign_not_found() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let body = with(
        follow_up_body(&tenant),
        "/request/followup/campaign_id",
        json!(new_id()),
    );

    app.create_follow_up(&body)
        .await
        .error(400, "campaign_not_found");

    assert_eq!(app.all_follow_ups(&tenant, &[]).await, Vec::<Value>::new());
}

#[tokio::test]
async fn repeating_a_follow_up_with_the_same_external_key_is_idempotent_and_changes_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let first = without(follow_up_body(&tenant), "/request/followup/followup_id");
    let original = app.seed_follow_up(&first).await["followup"].take();
    let repeat = with(
        retried(&first),
        "/request/followup/message",
        json!("Changed"),
    );

    let response = app.create_follow_up(&repeat).await.ok()["response"].take();

    assert_idempotent(&response, "followup", &original);
    assert_eq!(response["request_id"], repeat["request"]["request_id"]);
    assert_eq!(app.all_follow_ups(&tenant, &[]).await, vec![original]);
}

#[tokio::test]
async fn repeating_a_follow_up_with_the_same_followup_id_is_idempotent_and_changes_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let first = without(follow_up_body(&tenant), "/request/followup/external_key");
    let original = app.seed_follow_up(&first).await["followup"].take();
    let repeat = with(
        retried(&first),
        "/request/followup/schedule_at",
        json!(FUTURE),
    );

    let response = app.create_follow_up(&repeat).await.ok()["response"].take();

    assert_idempotent(&response, "followup", &original);
    assert_eq!(app.all_follow_ups(&tenant, &[]).await, vec![original]);
}

#[tokio::test]
async fn concurrent_identical_follow_up_creates_yield_one_created_and_the_rest_idempotent() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let body = follow_up_body(&tenant);

    let replies = app
        .at_once(20, |app| {
            let body = body.clone();
            async move { app.create_follow_up(&body).await.ok() }
        })
        .await;

    assert_eq!(
        status_counts(&replies),
        BTreeMap::from([("created", 1), ("idempotent", 19)])
    );
    assert_eq!(app.all_follow_ups(&tenant, &[]).await.len(), 1);
}

#[tokio::test]
async fn the_follow_up_list_pages_through_250_follow_ups_oldest_first_without_duplicates() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let bodies = (0..250).map(|_| follow_up_body(&tenant)).collect();
    let created = app.seed_follow_ups(bodies).await;

    let pages = app
        .follow_up_pages(&[("tenant_id", tenant.as_str()), ("limit", "100")])
        .await;

    let listed = items_of(&pages);
    assert_eq!(page_sizes(&pages), [100, 100, 50]);
    assert_oldest_first(&listed, "followup_id");
    assert_eq!(
        distinct_ids(&listed, "followup_id"),
        distinct_ids(&created, "followup_id")
    );
}

#[tokio::test]
async fn the_follow_up_list_defaults_to_pages_of_one_hundred() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let bodies = (0..101).map(|_| follow_up_body(&tenant)).collect();
    app.seed_follow_ups(bodies).await;

    let page = app
        .list_follow_ups(&[("tenant_id", tenant.as_str())])
        .await
        .ok();

    assert_eq!(page["count"], 100);
    assert!(page["next_cursor"].is_string(), "{}", page["next_cursor"]);
}

#[tokio::test]
async fn the_follow_up_list_filters_by_status() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let due = app.seed_follow_up(&follow_up_body(&tenant)).await["followup"].take();
    let later = with(
        follow_up_body(&tenant),
        "/request/followup/schedule_at",
        json!(FUTURE),
    );
    let later = app.seed_follow_up(&later).await["followup"].take();
    let report = app.drain(&json!({"limit": 100})).await.ok();
    assert!(
        drained(&report, str_field(&due, "/followup_id")).is_some(),
        "{report}"
    );

    let ids = |records: Vec<Value>| -> HashSet<String> { distinct_ids(&records, "followup_id") };
    let sent = ids(app.all_follow_ups(&tenant, &[("status", "sent")]).await);
    let pending = ids(app.all_follow_ups(&tenant, &[("status", "pending")]).await);
    let failed = ids(app.all_follow_ups(&tenant, &[("status", "failed")]).await);

    assert_eq!(sent, distinct_ids(&[due], "followup_id"));
    assert_eq!(pending, distinct_ids(&[later], "followup_id"));
    assert_eq!(failed, HashSet::new());
}

#[tokio::test]
async fn the_follow_up_list_filters_by_campaign_id() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "running").await;
    let other_campaign = app.seed_campaign(&tenant, "running").await;
    let bodies = vec![
        campaign_follow_up_body(&campaign),
        campaign_follow_up_body(&other_campaign),
        follow_up_body(&tenant),
        campaign_follow_up_body(&campaign),
    ];
    let created = app.seed_follow_ups(bodies).await;

    let listed = app
        .all_follow_ups(
            &tenant,
            &[("campaign_id", str_field(&campaign, "/campaign_id"))],
        )
        .await;

    let expected = [created[0].clone(), created[3].clone()];
    assert_eq!(
        distinct_ids(&listed, "followup_id"),
        distinct_ids(&expected, "followup_id")
    );
    let sent_of_campaign = app
        .all_follow_ups(
            &tenant,
            &[
                ("campaign_id", str_field(&campaign, "/campaign_id")),
                ("status", "sent"),
            ],
        )
        .await;
    assert_eq!(sent_of_campaign, Vec::<Value>::new(), "filters combine");
}
