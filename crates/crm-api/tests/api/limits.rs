//! WhatsApp's own limits over HTTP: senders on follow-ups and leases, every limit of the
//! policy (set, read back, refused out of range), what each holds at the drain, and the
//! sending status and metric that say why work waits. The drain is global, so each test
//! that drains uses its own server.

use serde_json::{Value, json};

use crate::helpers::{TestApp, drained, follow_up_body, new_tenant, spawn_app, str_field, with};

/// A policy with only `fields` set.
fn policy(fields: Value) -> Value {
    let mut policy = json!({"max_per_second": null, "quiet_hours": null});
    for (key, value) in fields.as_object().unwrap() {
        policy[key] = value.clone();
    }
    policy
}

/// Creates a due follow-up of `tenant` to `phone` (from `sender` when given), each one
/// due a little later than the one before, so that drain order is creation order; its id.
async fn due_to(app: &TestApp, tenant: &str, phone: &str, sender: Option<&str>) -> String {
    static ORDER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let order = ORDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let schedule_at = format!("2025-01-01T09:{:02}:{:02}Z", order / 60 % 60, order % 60);
    let mut body = with(
        follow_up_body(tenant),
        "/request/followup/phone_e164",
        json!(phone),
    );
    body = with(body, "/request/followup/schedule_at", json!(schedule_at));
    if let Some(sender) = sender {
        body = with(body, "/request/followup/sender", json!(sender));
    }
    let record = app.seed_follow_up(&body).await;
    str_field(&record, "/followup/followup_id").to_owned()
}

/// Drains once; the ids of `ids` it sent.
async fn sent_of(app: &TestApp, ids: &[String]) -> Vec<String> {
    let report = app.drain(&json!({"limit": 100})).await.ok();
    ids.iter()
        .filter(|id| drained(&report, id).is_some_and(|entry| entry["status"] == "sent"))
        .cloned()
        .collect()
}

#[tokio::test]
async fn every_limit_reads_back_as_set_and_a_put_replaces_the_whole_policy() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let all = policy(json!({
        "max_per_second": 80, "max_per_second_per_sender": 20, "daily_recipient_limit": 2000,
        "recipient_min_interval_ms": 6000, "recipient_daily_cap": 3
    }));
    let put = app.put_sending_policy(&tenant, &all).await.ok();
    assert_eq!(app.sending_policy(&tenant).await.ok(), put);
    for field in [
        "max_per_second",
        "max_per_second_per_sender",
        "daily_recipient_limit",
        "recipient_min_interval_ms",
        "recipient_daily_cap",
    ] {
        assert_eq!(put[field], all[field], "{field}");
    }
    let fewer = app
        .put_sending_policy(&tenant, &policy(json!({"recipient_daily_cap": 5})))
        .await
        .ok();
    assert_eq!(fewer["recipient_daily_cap"], 5);
    assert_eq!(
        fewer["daily_recipient_limit"],
        Value::Null,
        "left out means none"
    );
    assert_eq!(fewer["max_per_second"], Value::Null);
}

#[tokio::test]
async fn a_limit_out_of_its_range_is_a_validation_error_naming_it_and_nothing_is_stored() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let before = app.sending_policy(&tenant).await.ok();
    for (field, low, high) in [
        ("max_per_second_per_sender", 0, 1_001),
        ("daily_recipient_limit", 0, 10_000_001),
        ("recipient_min_interval_ms", 0, 86_400_001),
        ("recipient_daily_cap", 0, 1_001),
    ] {
        for bad in [json!(low), json!(high), json!(1.5), json!("10")] {
            let body = policy(json!({ field: bad }));
            let pointers = app
                .put_sending_policy(&tenant, &body)
                .await
                .violation_pointers();
            assert!(
                pointers.contains(&format!("/{field}")),
                "{field} = {bad}: {pointers:?}"
            );
        }
    }
    assert_eq!(app.sending_policy(&tenant).await.ok(), before);
}

#[tokio::test]
async fn auto_pause_reads_back_as_set_to_the_millionth_and_bad_values_name_it() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let set = policy(json!({"auto_pause": {"window": 200, "max_failure_ratio": 0.125}}));
    let put = app.put_sending_policy(&tenant, &set).await.ok();
    assert_eq!(
        put["auto_pause"],
        json!({"window": 200, "max_failure_ratio": 0.125})
    );
    assert_eq!(app.sending_policy(&tenant).await.ok(), put);
    let rounded = policy(json!({"auto_pause": {"window": 10, "max_failure_ratio": 0.3333333333}}));
    let put = app.put_sending_policy(&tenant, &rounded).await.ok();
    assert_eq!(put["auto_pause"]["max_failure_ratio"], 0.333333);
    let before = app.sending_policy(&tenant).await.ok();
    for bad in [
        json!({"window": 9, "max_failure_ratio": 0.5}),
        json!({"window": 10_001, "max_failure_ratio": 0.5}),
        json!({"window": 10.5, "max_failure_ratio": 0.5}),
        json!({"window": 100, "max_failure_ratio": -0.01}),
        json!({"window": 100, "max_failure_ratio": 1.01}),
        json!({"window": 100, "max_failure_ratio": "0.5"}),
        json!({"window": 100}),
        json!({"max_failure_ratio": 0.5}),
        json!({"window": 100, "max_failure_ratio": 0.5, "min_deliveries": 3}),
        json!(0.5),
    ] {
        let body = policy(json!({ "auto_pause": bad }));
        let pointers = app
            .put_sending_policy(&tenant, &body)
            .await
            .violation_pointers();
        assert!(
            pointers.iter().any(|p| p.starts_with("/auto_pause")),
            "{bad}: {pointers:?}"
        );
    }
    assert_eq!(app.sending_policy(&tenant).await.ok(), before);
}

#[tokio::test]
async fn a_follow_up_keeps_its_sender_and_each_lease_names_it() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let id = due_to(&app, &tenant, "+5511900000001", Some("109876543210987")).await;
    let without = due_to(&app, &tenant, "+5511900000002", None).await;
    assert_eq!(
        app.follow_up(&tenant, &id).await["sender"],
        "109876543210987"
    );
    assert_eq!(
        app.follow_up(&tenant, &without).await["sender"],
        Value::Null
    );
    app.drain(&json!({"limit": 10})).await.ok();

    let claimed = app.claim(&json!({"limit": 10})).await.ok();
    let senders: Vec<(&str, &Value)> = claimed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lease| {
            (
                str_field(lease, "/item/context/context_id"),
                &lease["sender"],
            )
        })
        .collect();
    assert!(
        senders.contains(&(id.as_str(), &json!("109876543210987"))),
        "{senders:?}"
    );
    assert!(
        senders.contains(&(without.as_str(), &Value::Null)),
        "{senders:?}"
    );

    for bad in ["", "has space", "ç", &"x".repeat(65)] {
        let body = with(
            follow_up_body(&tenant),
            "/request/followup/sender",
            json!(bad),
        );
        assert_eq!(
            app.create_follow_up(&body).await.violation_pointers(),
            ["/request/followup/sender"],
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn the_day_s_budget_holds_new_recipients_lets_counted_ones_through_and_says_so() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    app.put_sending_policy(&tenant, &policy(json!({"daily_recipient_limit": 2})))
        .await
        .ok();
    let first = [
        due_to(&app, &tenant, "+5511900000001", None).await,
        due_to(&app, &tenant, "+5511900000002", None).await,
        due_to(&app, &tenant, "+5511900000003", None).await,
    ];
    let sent = sent_of(&app, &first).await;
    assert_eq!(sent, first[..2], "the oldest due first, up to the budget");

    let again = due_to(&app, &tenant, "+5511900000001", None).await;
    let sent = sent_of(&app, &[first[2].clone(), again.clone()]).await;
    assert_eq!(sent, [again], "a recipient counted already goes out free");

    let status = app.sending_status(&tenant).await.ok();
    assert_eq!(status["due_pending"], 1);
    assert_eq!(status["held"]["daily_recipient_limit"], 1);
    assert_eq!(status["daily_recipients"]["used"], 2);
    assert_eq!(status["daily_recipients"]["limit"], 2);
    let release = str_field(&status, "/daily_recipients/next_release_at");
    let release =
        time::OffsetDateTime::parse(release, &time::format_description::well_known::Rfc3339)
            .unwrap();
    let in_a_day = time::OffsetDateTime::now_utc() + time::Duration::hours(24);
    assert!(
        (release - in_a_day).abs() < time::Duration::minutes(5),
        "the first send leaves the day a day after it was made: {release}"
    );
    assert_eq!(status["policy"]["daily_recipient_limit"], 2);
}

#[tokio::test]
async fn a_recipient_waits_its_interval_and_its_daily_cap_across_campaigns() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    app.put_sending_policy(
        &tenant,
        &policy(json!({"recipient_min_interval_ms": 3_600_000, "recipient_daily_cap": 1})),
    )
    .await
    .ok();
    let ids = [
        due_to(&app, &tenant, "+5511900000001", None).await,
        due_to(&app, &tenant, "+5511900000001", None).await,
        due_to(&app, &tenant, "+5511900000002", None).await,
    ];
    let sent = sent_of(&app, &ids).await;
    assert_eq!(sent, [ids[0].clone(), ids[2].clone()]);
    let status = app.sending_status(&tenant).await.ok();
    assert_eq!(status["due_pending"], 1);
    assert_eq!(
        status["held"]["recipient_interval"], 1,
        "the first rule that holds it"
    );
    // Without the interval the cap is what holds it.
    app.put_sending_policy(&tenant, &policy(json!({"recipient_daily_cap": 1})))
        .await
        .ok();
    assert!(sent_of(&app, &ids).await.is_empty());
    let status = app.sending_status(&tenant).await.ok();
    assert_eq!(status["held"]["recipient_daily_cap"], 1);
    assert_eq!(status["held"]["recipient_interval"], 0);
}

#[tokio::test]
async fn a_sender_rate_holds_one_sender_while_another_sends() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    app.put_sending_policy(&tenant, &policy(json!({"max_per_second_per_sender": 1})))
        .await
        .ok();
    let mut ids = Vec::new();
    for (phone, sender) in [
        ("+5511900000001", "pn-1"),
        ("+5511900000002", "pn-1"),
        ("+5511900000003", "pn-2"),
    ] {
        ids.push(due_to(&app, &tenant, phone, Some(sender)).await);
    }
    // The status says what a drain would do, before any drain.
    let status = app.sending_status(&tenant).await.ok();
    assert_eq!(status["due_pending"], 3);
    assert_eq!(status["held"]["sender_rate"], 1);
    let sent = sent_of(&app, &ids).await;
    assert_eq!(sent.len(), 2);
    assert!(sent.contains(&ids[2]), "pn-2 has its own budget");
}

#[tokio::test]
async fn the_status_counts_what_a_paused_campaign_quiet_hours_and_the_rate_hold() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let paused = app.seed_campaign(&tenant, "running").await;
    let paused = app.move_campaign(&paused, "paused", "pause_campaign").await;
    app.seed_follow_up(&crate::helpers::campaign_follow_up_body(&paused))
        .await;
    // Quiet all day long in one zone, whatever the hour of the test.
    let now = time::OffsetDateTime::now_utc();
    let start = format!("{:02}:{:02}", now.hour(), now.minute());
    let end = format!("{:02}:{:02}", (now.hour() + 2) % 24, now.minute());
    let quiet = with(
        follow_up_body(&tenant),
        "/request/followup/time_zone",
        json!("UTC"),
    );
    app.seed_follow_up(&quiet).await;
    for phone in ["+5511900000001", "+5511900000002", "+5511900000003"] {
        due_to(&app, &tenant, phone, None).await;
    }
    app.put_sending_policy(
        &tenant,
        &json!({"max_per_second": 1,
                "quiet_hours": {"start": start, "end": end, "time_zone": "Asia/Kolkata"}}),
    )
    .await
    .ok();
    let status = app.sending_status(&tenant).await.ok();
    assert_eq!(status["due_pending"], 5);
    assert_eq!(status["held"]["campaign_paused"], 1);
    // The follow-up in UTC is quiet now; the others are in the policy's zone, where it is
    // five and a half hours later, outside the window.
    assert_eq!(status["held"]["quiet_hours"], 1);
    assert_eq!(
        status["held"]["rate"], 2,
        "one of the three goes this second"
    );

    let metrics = app.metrics().await;
    for reason in ["campaign_paused", "rate"] {
        assert!(
            metrics.lines().any(|line| line
                .starts_with(&format!("crm_followups_held{{reason=\"{reason}\"}}"))
                && !line.ends_with(" 0")),
            "no held count for {reason}:\n{metrics}"
        );
    }
}
