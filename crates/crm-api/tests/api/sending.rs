//! The sending policy over HTTP: rate, quiet hours, opt-outs and fairness at the drain;
//! single records with counts; cancel. The drain is global, so each test that drains
//! uses its own server.

use serde_json::{Value, json};

use crate::helpers::{
    FUTURE, TestApp, campaign_follow_up_body, drained, eventually, follow_up_body, new_id,
    new_tenant, spawn_app, str_field, with,
};

/// Creates `count` due follow-ups of `tenant` (to `phone` when given); their ids.
async fn due(app: &TestApp, tenant: &str, count: usize, phone: Option<&str>) -> Vec<String> {
    let bodies = (0..count)
        .map(|_| {
            let body = follow_up_body(tenant);
            match phone {
                Some(phone) => with(body, "/request/followup/phone_e164", json!(phone)),
                None => body,
            }
        })
        .collect();
    app.seed_follow_ups(bodies)
        .await
        .iter()
        .map(|record| str_field(record, "/followup_id").to_owned())
        .collect()
}

/// How many of `ids` a drain reply reports with `status`.
fn count_in(report: &Value, ids: &[String], status: &str) -> usize {
    ids.iter()
        .filter(|id| drained(report, id).is_some_and(|entry| entry["status"] == status))
        .count()
}

/// `HH:MM` of the current UTC time moved by `minutes`.
fn utc_clock(minutes: i64) -> String {
    let now = time::OffsetDateTime::now_utc() + time::Duration::minutes(minutes);
    format!("{:02}:{:02}", now.hour(), now.minute())
}

#[tokio::test]
async fn a_tenant_without_a_policy_gets_the_default_and_a_policy_reads_back_as_set() {
    let app = spawn_app().await;
    let tenant = new_tenant();

    let default = app.sending_policy(&tenant).await.ok();
    let policy = json!({
        "max_per_second": 80,
        "quiet_hours": {"start": "21:00", "end": "08:00", "time_zone": "America/Sao_Paulo"}
    });
    let put = app.put_sending_policy(&tenant, &policy).await.ok();
    let read = app.sending_policy(&tenant).await.ok();

    assert_eq!(
        default,
        json!({"tenant_id": tenant, "max_per_second": null, "quiet_hours": null,
               "max_per_second_per_sender": null, "daily_recipient_limit": null,
               "recipient_min_interval_ms": null, "recipient_daily_cap": null,
               "auto_pause": null, "source": "default"})
    );
    assert_eq!(put, read);
    assert_eq!(read["max_per_second"], 80);
    assert_eq!(read["quiet_hours"], policy["quiet_hours"]);
    assert_eq!(read["source"], "tenant");
}

#[tokio::test]
async fn a_bad_policy_is_a_validation_error_naming_its_field_and_changes_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let good = json!({"max_per_second": 10, "quiet_hours": null});
    app.put_sending_policy(&tenant, &good).await.ok();
    let quiet = |start: &str, end: &str, zone: &str| json!({"max_per_second": 10, "quiet_hours": {"start": start, "end": end, "time_zone": zone}});

    for (policy, pointer) in [
        (
            json!({"max_per_second": 0, "quiet_hours": null}),
            "/max_per_second",
        ),
        (
            json!({"max_per_second": 100001, "quiet_hours": null}),
            "/max_per_second",
        ),
        (
            json!({"max_per_second": 1.5, "quiet_hours": null}),
            "/max_per_second",
        ),
        (quiet("25:00", "08:00", "UTC"), "/quiet_hours/start"),
        (quiet("21:00", "8:00", "UTC"), "/quiet_hours/end"),
        (
            quiet("21:00", "08:00", "Mars/Olympus_Mons"),
            "/quiet_hours/time_zone",
        ),
        (quiet("08:00", "08:00", "UTC"), "/quiet_hours"),
        (json!({"max_per_second": 10}), ""),
    ] {
        let pointers = app
            .put_sending_policy(&tenant, &policy)
            .await
            .violation_pointers();
        assert!(
            pointers.contains(&pointer.to_owned()),
            "{policy}: {pointers:?}"
        );
    }

    assert_eq!(app.sending_policy(&tenant).await.ok()["max_per_second"], 10);
}

#[tokio::test]
async fn a_paced_tenant_gets_its_rate_per_second_while_others_drain_freely() {
    let app = spawn_app().await;
    let (paced, free) = (new_tenant(), new_tenant());
    app.put_sending_policy(&paced, &json!({"max_per_second": 3, "quiet_hours": null}))
        .await
        .ok();
    let paced_ids = due(&app, &paced, 10, None).await;
    let free_ids = due(&app, &free, 10, None).await;

    let first = app.drain(&json!({"limit": 100})).await.ok();
    let again = app.drain(&json!({"limit": 100})).await.ok();
    // The first drain of the next second gets the next three.
    let later = eventually("a drain in the paced tenant's next second", async || {
        let report = app.drain(&json!({"limit": 100})).await.ok();
        (report["processed_count"] != 0).then_some(report)
    })
    .await;

    assert_eq!(count_in(&first, &paced_ids, "sent"), 3, "{first}");
    assert_eq!(
        count_in(&first, &free_ids, "sent"),
        10,
        "the batch goes to others"
    );
    assert_eq!(count_in(&again, &paced_ids, "sent"), 0, "{again}");
    assert_eq!(
        again["processed_count"], 0,
        "follow-ups over the rate are not skipped, just not due yet"
    );
    assert_eq!(count_in(&later, &paced_ids, "sent"), 3, "a new second");
    let pending = app.all_follow_ups(&paced, &[("status", "pending")]).await;
    assert_eq!(pending.len(), 4);
}

#[tokio::test]
async fn quiet_hours_hold_follow_ups_in_the_recipients_zone_without_failing_them() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    // A window around now, in UTC.
    let policy = json!({"max_per_second": null, "quiet_hours": {
        "start": utc_clock(-60), "end": utc_clock(60), "time_zone": "UTC"}});
    app.put_sending_policy(&tenant, &policy).await.ok();
    let held = app.seed_follow_up(&follow_up_body(&tenant)).await;
    // Five and a half hours ahead of UTC: outside the window.
    let elsewhere = with(
        follow_up_body(&tenant),
        "/request/followup/time_zone",
        json!("Asia/Kolkata"),
    );
    let open = app.seed_follow_up(&elsewhere).await;
    let held_id = str_field(&held, "/followup/followup_id");
    let open_id = str_field(&open, "/followup/followup_id");

    let report = app.drain(&json!({})).await.ok();

    assert_eq!(drained(&report, held_id), None, "{report}");
    assert_eq!(drained(&report, open_id).unwrap()["status"], "sent");
    let record = app.get_follow_up(held_id, &tenant).await.ok();
    assert_eq!(record["followup"]["status"], "pending");
    assert_eq!(
        record["followup"]["schedule_at"],
        held["followup"]["schedule_at"]
    );
    assert_eq!(open["followup"]["time_zone"], "Asia/Kolkata");
    app.put_sending_policy(
        &tenant,
        &json!({"max_per_second": null, "quiet_hours": null}),
    )
    .await
    .ok();
    let report = app.drain(&json!({})).await.ok();
    assert_eq!(drained(&report, held_id).unwrap()["status"], "sent");
}

#[tokio::test]
async fn an_unknown_time_zone_on_a_follow_up_is_a_validation_error() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let body = with(
        follow_up_body(&tenant),
        "/request/followup/time_zone",
        json!("America/Atlantis"),
    );

    let pointers = app.create_follow_up(&body).await.violation_pointers();

    assert_eq!(pointers, ["/request/followup/time_zone"]);
    assert!(app.all_follow_ups(&tenant, &[]).await.is_empty());
}

#[tokio::test]
async fn a_due_follow_up_to_an_opted_out_number_fails_and_never_reaches_the_queue() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let phone = "+5511987650000";
    let added = app.add_opt_out(&tenant, phone).await.ok();
    let repeated = app.add_opt_out(&tenant, phone).await.ok();
    let ids = due(&app, &tenant, 2, Some(phone)).await;
    let other = due(&app, &tenant, 1, None).await;

    let report = app.drain(&json!({})).await.ok();

    assert_eq!(added["response"]["status"], "created");
    assert_eq!(repeated["response"]["status"], "idempotent");
    assert_eq!(
        repeated["response"]["opt_out"],
        added["response"]["opt_out"]
    );
    for id in &ids {
        let entry = drained(&report, id).expect("drained");
        assert_eq!(entry["status"], "failed");
        assert_eq!(entry["reason"], "RECIPIENT_OPTED_OUT");
    }
    assert_eq!(drained(&report, &other[0]).unwrap()["status"], "sent");
    let leased = app.claim(&json!({"limit": 100})).await.ok();
    let items = leased["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the other follow-up was queued");
    assert_eq!(items[0]["item"]["context"]["context_id"], other[0].as_str());
}

#[tokio::test]
async fn removing_a_policy_returns_the_tenant_to_the_default() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let default = app.sending_policy(&tenant).await.ok();
    app.put_sending_policy(&tenant, &json!({"max_per_second": 5, "quiet_hours": null}))
        .await
        .ok();

    assert_eq!(app.remove_sending_policy(&tenant).await, 204);
    assert_eq!(app.sending_policy(&tenant).await.ok(), default);
    assert_eq!(
        app.remove_sending_policy(&tenant).await,
        204,
        "none left is no error"
    );
}

#[tokio::test]
async fn each_change_of_the_opt_out_list_reaches_the_feed_once() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    app.add_opt_out(&tenant, "+5511900000004").await.ok();
    app.add_opt_out(&tenant, "+5511900000004").await.ok();
    app.remove_opt_out(&tenant, "+5511900000004").await.ok();
    app.remove_opt_out(&tenant, "+5511900000004").await.ok();

    let events = app.feed_events(&tenant, "crm.optout.").await;
    let seen: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|event| {
            (
                str_field(event, "/name"),
                str_field(event, "/payload/phone_e164"),
                str_field(event, "/payload/source"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("crm.optout.added", "+5511900000004", "api"),
            ("crm.optout.removed", "+5511900000004", "api")
        ]
    );
    assert_eq!(events[0]["payload"]["reason"], "asked by text");
}

#[tokio::test]
async fn opt_outs_are_listed_per_tenant_and_removed_once() {
    let app = spawn_app().await;
    let (tenant, other) = (new_tenant(), new_tenant());
    for phone in ["+5511900000003", "+5511900000001", "+5511900000002"] {
        app.add_opt_out(&tenant, phone).await.ok();
    }
    app.add_opt_out(&other, "+5511900000009").await.ok();

    let first = app
        .opt_outs(&[("tenant_id", &tenant), ("limit", "2")])
        .await
        .ok();
    let cursor = str_field(&first, "/next_cursor").to_owned();
    let second = app
        .opt_outs(&[("tenant_id", &tenant), ("cursor", &cursor)])
        .await
        .ok();
    let removed = app.remove_opt_out(&tenant, "+5511900000001").await.ok();
    let again = app.remove_opt_out(&tenant, "+5511900000001").await.ok();

    let phones = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| str_field(item, "/phone_e164").to_owned())
            .collect()
    };
    assert_eq!(phones(&first), ["+5511900000001", "+5511900000002"]);
    assert_eq!(phones(&second), ["+5511900000003"]);
    assert_eq!(second["next_cursor"], Value::Null);
    assert_eq!(removed["removed"], true);
    assert_eq!(again["removed"], false);
    let left = app.opt_outs(&[("tenant_id", &tenant)]).await.ok();
    assert_eq!(phones(&left), ["+5511900000002", "+5511900000003"]);
    let parameters = app
        .remove_opt_out(&tenant, "5511900000002")
        .await
        .invalid_parameters();
    assert_eq!(parameters, ["phone_e164"]);
    let body = json!({"request": {
        "request_id": new_id(), "tenant_id": tenant, "source_module": "mod-02-whatsapp-crm",
        "opt_out": {"phone_e164": "11 9999-0000"}
    }});
    let pointers = app
        .post_json(
            crate::helpers::OPT_OUTS,
            &body,
            crm_contracts::Contract::OptOutCommandResponse,
        )
        .await
        .violation_pointers();
    assert_eq!(pointers, ["/request/opt_out/phone_e164"]);
}

#[tokio::test]
async fn a_tenant_with_a_long_queue_delays_another_by_at_most_one_batch() {
    let app = spawn_app().await;
    let (big, small) = (new_tenant(), new_tenant());
    due(&app, &big, 150, None).await;
    let small_ids = due(&app, &small, 5, None).await;

    let first = app.drain(&json!({"limit": 100})).await.ok();

    assert_eq!(first["processed_count"], 100);
    assert_eq!(count_in(&first, &small_ids, "sent"), 5, "{first}");
}

#[tokio::test]
async fn a_campaign_reads_back_with_the_counts_of_its_follow_ups() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "running").await;
    let campaign_id = str_field(&campaign, "/campaign_id").to_owned();
    let bodies = (0..3).map(|_| campaign_follow_up_body(&campaign)).collect();
    app.seed_follow_ups(bodies).await;
    let later = with(
        campaign_follow_up_body(&campaign),
        "/request/followup/schedule_at",
        json!(FUTURE),
    );
    app.seed_follow_up(&later).await;
    app.drain(&json!({"limit": 2})).await.ok();
    let leased = app.claim(&json!({"limit": 1})).await.ok();
    let lease = &leased["items"][0];
    app.ack(
        &json!({"acks": [{"queue_item_id": lease["item"]["queue_item_id"],
        "lease_id": lease["lease_id"], "result": "accepted"}]}),
    )
    .await
    .ok();

    let read = app.get_campaign(&campaign_id, &tenant).await.ok();

    assert_eq!(read["campaign"], campaign);
    assert_eq!(
        read["stats"],
        json!({"followups": {"pending": 2, "sent": 2, "failed": 0},
               "delivery": {"accepted": 1, "retrying": 0, "failed": 0, "delivered": 0,
                            "read": 0}})
    );
    app.get_campaign(&campaign_id, &new_tenant())
        .await
        .error(404, "not_found");
    app.get_campaign("not-a-uuid", &tenant)
        .await
        .error(404, "not_found");
    let path = format!("{}/{campaign_id}", crate::helpers::CAMPAIGNS);
    app.get(&path, &[], crm_contracts::Contract::CampaignResponse)
        .await
        .error(400, "missing_tenant_id");
}

#[tokio::test]
async fn a_follow_up_reads_back_for_its_tenant_only() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let created = app.seed_follow_up(&follow_up_body(&tenant)).await;
    let id = str_field(&created, "/followup/followup_id");

    let read = app.get_follow_up(id, &tenant).await.ok();

    assert_eq!(read["followup"], created["followup"]);
    app.get_follow_up(id, &new_tenant())
        .await
        .error(404, "not_found");
    app.get_follow_up(&new_id(), &tenant)
        .await
        .error(404, "not_found");
}

#[tokio::test]
async fn canceling_fails_a_pending_follow_up_once_with_its_event() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let created = app.seed_follow_up(&follow_up_body(&tenant)).await;
    let id = str_field(&created, "/followup/followup_id");
    let correlation_id = str_field(&created, "/orchestration/correlation_id");

    let canceled = app.cancel(id, &tenant).await.ok()["response"].take();
    let repeated = app.cancel(id, &tenant).await.ok()["response"].take();

    assert_eq!(canceled["status"], "updated");
    assert_eq!(canceled["followup"]["status"], "failed");
    assert_eq!(canceled["followup"]["last_error_code"], "CANCELED");
    assert_eq!(
        canceled["orchestration"]["lifecycle_event_name"],
        "crm.followup.failed"
    );
    assert_eq!(repeated["status"], "idempotent");
    assert_eq!(repeated["followup"], canceled["followup"]);
    assert_eq!(
        repeated["orchestration"]["lifecycle_event_name"],
        Value::Null
    );
    let events = app.events(correlation_id).await;
    assert_eq!(events.len(), 2, "one event for the cancel");
    assert_eq!(events[1]["name"], "crm.followup.failed");
    assert_eq!(events[1]["payload"]["error_code"], "CANCELED");
    assert_eq!(events[1]["payload"]["retryable"], false);
    let report = app.drain(&json!({})).await.ok();
    assert_eq!(
        drained(&report, id),
        None,
        "a canceled follow-up is not due"
    );
}

#[tokio::test]
async fn a_sent_follow_up_cannot_be_canceled_and_an_unknown_one_is_not_found() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let created = app.seed_follow_up(&follow_up_body(&tenant)).await;
    let id = str_field(&created, "/followup/followup_id");
    app.drain(&json!({})).await.ok();
    let before = app.get_follow_up(id, &tenant).await.ok();

    let details = app.cancel(id, &tenant).await.error(400, "transition_error");

    assert_eq!(details, json!({"code": "not_pending", "status": "sent"}));
    assert_eq!(app.get_follow_up(id, &tenant).await.ok(), before);
    app.cancel(&new_id(), &tenant).await.error(404, "not_found");
    app.cancel(id, &new_tenant()).await.error(404, "not_found");
}
