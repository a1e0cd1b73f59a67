//! `POST /internal/worker/crm-followups/drain`.
//!
//! The drain is global (every tenant), so each test uses its own server and asserts on
//! its own follow-ups.

use std::collections::HashSet;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    FUTURE, TestApp, campaign_follow_up_body, distinct_ids, drained, follow_up_body, names,
    new_tenant, spawn_app, str_field, with,
};

/// The status a drain reply gives `followup_id`, `None` when the drain did not take it.
fn drain_status(report: &Value, followup_id: &str) -> Option<String> {
    drained(report, followup_id).map(|entry| str_field(entry, "/status").to_owned())
}

/// Seeds a follow-up from `body` and returns `(followup_id, correlation_id)`.
async fn seed(app: &TestApp, body: &Value) -> (String, String) {
    let response = app.seed_follow_up(body).await;
    (
        str_field(&response, "/followup/followup_id").to_owned(),
        str_field(&response, "/orchestration/correlation_id").to_owned(),
    )
}

fn scheduled_at(tenant: &str, schedule_at: &str) -> Value {
    with(
        follow_up_body(tenant),
        "/request/followup/schedule_at",
        json!(schedule_at),
    )
}

#[tokio::test]
async fn a_drain_with_nothing_due_processes_nothing() {
    let app = spawn_app().await;

    let report = app.drain(&json!({})).await.ok();

    assert_eq!(
        report,
        json!({
            "processed_count": 0,
            "succeeded_count": 0,
            "failed_count": 0,
            "skipped_count": 0,
            "processed": []
        })
    );
}

#[tokio::test]
async fn draining_a_due_follow_up_sends_it_with_the_queue_item_as_provider_message_id() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let (id, correlation_id) = seed(&app, &follow_up_body(&tenant)).await;

    let report = app.drain(&json!({})).await.ok();

    assert_eq!(
        drain_status(&report, &id).as_deref(),
        Some("sent"),
        "{report}"
    );
    let record = app.follow_up(&tenant, &id).await;
    assert_eq!(record["status"], "sent");
    assert_eq!(record["last_error_code"], Value::Null);
    let provider_message_id = str_field(&record, "/provider_message_id");
    assert!(Uuid::parse_str(provider_message_id).is_ok(), "{record}");
    let events = app.events(&correlation_id).await;
    assert_eq!(
        names(&events),
        ["crm.followup.scheduled", "crm.followup.sent"]
    );
    let sent = &events[1];
    assert_eq!(sent["status"], "completed");
    assert_eq!(sent["tenant_id"], tenant.as_str());
    assert_eq!(sent["payload"]["followup_id"], id.as_str());
    assert_eq!(sent["payload"]["provider_message_id"], provider_message_id);
    assert_eq!(
        events[0]["trace_id"], sent["trace_id"],
        "a follow-up's events share one trace"
    );
}

#[tokio::test]
async fn a_sent_follow_up_is_never_drained_again() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let (id, _) = seed(&app, &follow_up_body(&tenant)).await;
    app.drain(&json!({})).await.ok();
    let sent = app.follow_up(&tenant, &id).await;

    let report = app.drain(&json!({})).await.ok();

    assert_eq!(drain_status(&report, &id), None, "{report}");
    assert_eq!(app.follow_up(&tenant, &id).await, sent);
}

#[tokio::test]
async fn a_follow_up_scheduled_in_the_future_is_not_drained() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let (id, _) = seed(&app, &scheduled_at(&tenant, FUTURE)).await;

    let report = app.drain(&json!({"limit": 100})).await.ok();

    assert_eq!(drain_status(&report, &id), None, "{report}");
    assert_eq!(app.follow_up(&tenant, &id).await["status"], "pending");
}

#[tokio::test]
async fn follow_ups_created_as_sent_or_failed_are_never_drained() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let mut ids = Vec::new();
    for status in ["sent", "failed"] {
        let body = with(
            follow_up_body(&tenant),
            "/request/followup/status",
            json!(status),
        );
        ids.push((seed(&app, &body).await.0, status));
    }

    let report = app.drain(&json!({"limit": 100})).await.ok();

    for (id, status) in ids {
        assert_eq!(drain_status(&report, &id), None, "{report}");
        assert_eq!(app.follow_up(&tenant, &id).await["status"], status);
    }
}

#[tokio::test]
async fn a_drain_takes_the_oldest_schedule_first() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let mut ids = Vec::new();
    for schedule_at in [
        "2025-01-03T09:00:00.000Z",
        "2025-01-01T09:00:00.000Z",
        "2025-01-02T09:00:00.000Z",
    ] {
        ids.push(seed(&app, &scheduled_at(&tenant, schedule_at)).await.0);
    }

    let mut order = Vec::new();
    for _ in 0..3 {
        let report = app.drain(&json!({"limit": 1})).await.ok();
        assert_eq!(report["processed_count"], 1, "{report}");
        order.push(str_field(&report, "/processed/0/followup_id").to_owned());
    }

    assert_eq!(order, [ids[1].clone(), ids[2].clone(), ids[0].clone()]);
}

#[tokio::test]
async fn a_forced_failure_fails_the_follow_up_for_good_as_a_retryable_provider_error() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let (id, correlation_id) = seed(&app, &follow_up_body(&tenant)).await;

    let report = app
        .drain(&json!({"limit": 10, "force_failure": true}))
        .await
        .ok();

    assert_eq!(
        drain_status(&report, &id).as_deref(),
        Some("failed"),
        "{report}"
    );
    let record = app.follow_up(&tenant, &id).await;
    assert_eq!(record["status"], "failed");
    assert_eq!(record["last_error_code"], "PROVIDER_SEND_ERROR");
    assert_eq!(record["provider_message_id"], Value::Null);
    let events = app.events(&correlation_id).await;
    assert_eq!(
        names(&events),
        ["crm.followup.scheduled", "crm.followup.failed"]
    );
    assert_eq!(events[1]["status"], "failed");
    assert_eq!(events[1]["payload"]["error_code"], "PROVIDER_SEND_ERROR");
    assert_eq!(events[1]["payload"]["retryable"], true);

    let later = app.drain(&json!({"limit": 10})).await.ok();
    assert_eq!(drain_status(&later, &id), None, "failed is final: {later}");
    assert_eq!(app.follow_up(&tenant, &id).await, record);
}

#[tokio::test]
async fn the_message_text_never_decides_a_follow_ups_fate() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let mut ids = Vec::new();
    for message in [
        "FAIL",
        "force_failure",
        "{\"force_failure\": true}",
        "error: PROVIDER_SEND_ERROR",
    ] {
        let body = with(
            follow_up_body(&tenant),
            "/request/followup/message",
            json!(message),
        );
        ids.push(seed(&app, &body).await.0);
    }

    let report = app.drain(&json!({"limit": 100})).await.ok();

    for id in ids {
        assert_eq!(
            drain_status(&report, &id).as_deref(),
            Some("sent"),
            "{report}"
        );
    }
}

#[tokio::test]
async fn follow_ups_of_a_paused_campaign_wait_without_blocking_those_behind_them() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "running").await;
    let paused = app
        .move_campaign(&campaign, "paused", "pause_campaign")
        .await;
    let mut gated = Vec::new();
    for _ in 0..2 {
        gated.push(seed(&app, &campaign_follow_up_body(&paused)).await.0);
    }
    let behind = scheduled_at(&tenant, "2025-02-01T09:00:00.000Z");
    let (free, _) = seed(&app, &behind).await;

    let report = app.drain(&json!({"limit": 1})).await.ok();

    assert_eq!(
        drain_status(&report, &free).as_deref(),
        Some("sent"),
        "{report}"
    );
    for id in &gated {
        let status = drain_status(&report, id);
        assert!(
            status.as_deref() != Some("sent") && status.as_deref() != Some("failed"),
            "{report}"
        );
        assert_eq!(app.follow_up(&tenant, id).await["status"], "pending");
    }

    app.move_campaign(&paused, "running", "resume_campaign")
        .await;
    let resumed = app.drain(&json!({"limit": 100})).await.ok();

    for id in &gated {
        assert_eq!(
            drain_status(&resumed, id).as_deref(),
            Some("sent"),
            "{resumed}"
        );
        assert_eq!(app.follow_up(&tenant, id).await["status"], "sent");
    }
}

#[tokio::test]
async fn follow_ups_of_a_canceled_or_failed_campaign_fail_without_retry() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let endings = [
        (
            "scheduled",
            "canceled",
            "cancel_campaign",
            "CAMPAIGN_CANCELED",
        ),
        (
            "running",
            "failed",
            "fatal_delivery_error",
            "CAMPAIGN_FAILED",
        ),
    ];
    for (from, to, trigger, error_code) in endings {
        let campaign = app.seed_campaign(&tenant, from).await;
        let (id, correlation_id) = seed(&app, &campaign_follow_up_body(&campaign)).await;
        app.move_campaign(&campaign, to, trigger).await;

        let report = app.drain(&json!({"limit": 100})).await.ok();

        assert_eq!(
            drain_status(&report, &id).as_deref(),
            Some("failed"),
            "{report}"
        );
        let record = app.follow_up(&tenant, &id).await;
        assert_eq!(record["status"], "failed");
        assert_eq!(record["last_error_code"], error_code);
        let events = app.events(&correlation_id).await;
        assert_eq!(
            names(&events),
            ["crm.followup.scheduled", "crm.followup.failed"]
        );
        assert_eq!(events[1]["payload"]["error_code"], error_code);
        assert_eq!(events[1]["payload"]["retryable"], false);
    }
}

#[tokio::test]
async fn an_empty_drain_body_means_the_defaults_and_takes_ten() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let bodies = (0..12).map(|_| follow_up_body(&tenant)).collect();
    app.seed_follow_ups(bodies).await;

    let first = app.drain_raw("").await.ok();
    let second = app.drain(&json!({})).await.ok();

    assert_eq!(first["processed_count"], 10, "{first}");
    assert_eq!(
        first["succeeded_count"], 10,
        "force_failure defaults to false"
    );
    assert_eq!(second["processed_count"], 2, "{second}");
}

#[tokio::test]
async fn a_drain_limit_above_one_hundred_is_served_as_one_hundred() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let bodies = (0..105).map(|_| follow_up_body(&tenant)).collect();
    app.seed_follow_ups(bodies).await;

    let report = app.drain(&json!({"limit": 500})).await.ok();

    assert_eq!(report["processed_count"], 100);
    assert_eq!(
        app.all_follow_ups(&tenant, &[("status", "pending")])
            .await
            .len(),
        5
    );
}

#[tokio::test]
async fn drain_bodies_breaking_the_contract_are_validation_errors_that_drain_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let (id, _) = seed(&app, &follow_up_body(&tenant)).await;
    let refused = [
        (json!({"limit": 0}), "/limit"),
        (json!({"limit": -5}), "/limit"),
        (json!({"limit": "5"}), "/limit"),
        (json!({"limit": 2.5}), "/limit"),
        (json!({"force_failure": "yes"}), "/force_failure"),
        (json!({"limit": 5, "batch_size": 5}), ""),
        (json!([]), ""),
    ];

    for (body, pointer) in refused {
        let pointers = app.drain(&body).await.violation_pointers();
        assert!(
            pointers.iter().any(|p| p == pointer),
            "{body}: {pointers:?}"
        );
    }

    assert_eq!(app.follow_up(&tenant, &id).await["status"], "pending");
}

#[tokio::test]
async fn concurrent_drains_dispatch_each_follow_up_exactly_once() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let bodies = (0..60).map(|_| follow_up_body(&tenant)).collect();
    let created = app.seed_follow_ups(bodies).await;

    let mut sent = Vec::new();
    for _round in 0..20 {
        let reports = app
            .at_once(8, |app| async move {
                app.drain(&json!({"limit": 10})).await.ok()
            })
            .await;
        let mut dispatched_this_round = 0;
        for report in reports {
            for entry in report["processed"].as_array().expect("processed") {
                match entry["status"].as_str() {
                    Some("sent") => sent.push(str_field(entry, "/followup_id").to_owned()),
                    Some("failed") => panic!("nothing should fail: {report}"),
                    _ => continue,
                }
                dispatched_this_round += 1;
            }
        }
        if dispatched_this_round == 0 {
            break;
        }
    }

    let unique: HashSet<&String> = sent.iter().collect();
    assert_eq!(unique.len(), sent.len(), "a follow-up was sent twice");
    assert_eq!(sent.len(), 60);
    let listed = app.all_follow_ups(&tenant, &[]).await;
    assert!(listed.iter().all(|record| record["status"] == "sent"));
    assert_eq!(
        distinct_ids(&listed, "provider_message_id").len(),
        60,
        "one queue item per follow-up"
    );
    assert_eq!(
        unique.into_iter().cloned().collect::<HashSet<_>>(),
        distinct_ids(&created, "followup_id")
    );
}
