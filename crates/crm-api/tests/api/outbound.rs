//! `POST /internal/outbound/claim` and `POST /internal/outbound/ack`.
//!
//! The queue is global (every tenant), so each test uses its own server.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    TestApp, advance_body, eventually, follow_up_body, names, new_id, new_tenant, spawn_app,
    str_field, with,
};

/// One follow-up of a fresh tenant, drained into the queue: `(tenant, followup_id,
/// correlation_id)`.
async fn queued(app: &TestApp) -> (String, String, String) {
    let tenant = new_tenant();
    let response = app.seed_follow_up(&follow_up_body(&tenant)).await;
    let report = app.drain(&json!({})).await.ok();
    assert_eq!(report["succeeded_count"], 1, "{report}");
    (
        tenant,
        str_field(&response, "/followup/followup_id").to_owned(),
        str_field(&response, "/orchestration/correlation_id").to_owned(),
    )
}

/// Claims with `body` and returns the leased entries.
async fn claim(app: &TestApp, body: Value) -> Vec<Value> {
    let reply = app.claim(&body).await.ok();
    reply["items"].as_array().expect("items").clone()
}

/// Claims until an item comes back (a retry waits out its backoff, a lease runs out).
async fn claim_when_ready(app: &TestApp) -> Value {
    eventually("an item ready to claim", async || {
        claim(app, json!({})).await.pop()
    })
    .await
}

fn ack_of(leased: &Value, fields: Value) -> Value {
    let mut ack = json!({
        "queue_item_id": leased["item"]["queue_item_id"],
        "lease_id": leased["lease_id"],
    });
    ack.as_object_mut()
        .expect("an object")
        .extend(fields.as_object().expect("an object").clone());
    json!({"acks": [ack]})
}

/// The statuses of an ack reply, in order.
async fn ack(app: &TestApp, body: &Value) -> Vec<String> {
    let reply = app.ack(body).await.ok();
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| str_field(result, "/status").to_owned())
        .collect()
}

#[tokio::test]
async fn an_empty_queue_leases_nothing() {
    let app = spawn_app().await;

    assert_eq!(claim(&app, json!({})).await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_drained_follow_up_is_leased_to_one_consumer_at_a_time() {
    let app = spawn_app().await;
    let (tenant, followup_id, _) = queued(&app).await;

    let leased = claim(&app, json!({"limit": 5, "lease_ms": 60000})).await;
    let again = claim(&app, json!({"limit": 5})).await;

    assert_eq!(leased.len(), 1);
    let entry = &leased[0];
    assert_eq!(entry["attempt"], 1);
    assert_eq!(entry["item"]["tenant_id"], tenant.as_str());
    assert_eq!(entry["item"]["context"]["context_id"], followup_id.as_str());
    let record = app.follow_up(&tenant, &followup_id).await;
    assert_eq!(
        entry["item"]["queue_item_id"], record["provider_message_id"],
        "the item the drain reported"
    );
    assert!(
        str_field(entry, "/lease_expires_at") > str_field(&record, "/updated_at"),
        "{entry}"
    );
    assert_eq!(again, Vec::<Value>::new(), "the item is leased already");
}

#[tokio::test]
async fn an_accepted_ack_records_the_delivery_and_its_event_once() {
    let app = spawn_app().await;
    let (tenant, followup_id, correlation_id) = queued(&app).await;
    let leased = claim_when_ready(&app).await;
    let body = ack_of(
        &leased,
        json!({"result": "accepted", "provider_message_id": "wamid.HBgM"}),
    );

    assert_eq!(ack(&app, &body).await, ["acked"]);
    let record = app.follow_up(&tenant, &followup_id).await;
    assert_eq!(ack(&app, &body).await, ["acked"], "an ack is idempotent");

    assert_eq!(record["status"], "sent");
    let delivery = &record["delivery"];
    assert_eq!(delivery["status"], "accepted");
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(delivery["provider_message_id"], "wamid.HBgM");
    assert_eq!(delivery["error_code"], Value::Null);
    assert_eq!(app.follow_up(&tenant, &followup_id).await, record);
    let events = app.events(&correlation_id).await;
    assert_eq!(
        names(&events),
        [
            "crm.followup.scheduled",
            "crm.followup.sent",
            "crm.followup.delivery.accepted"
        ]
    );
    let accepted = &events[2];
    assert_eq!(accepted["status"], "completed");
    assert_eq!(accepted["payload"]["attempt"], 1);
    assert_eq!(accepted["payload"]["provider_message_id"], "wamid.HBgM");
    assert_eq!(accepted["trace_id"], events[0]["trace_id"]);
    assert_eq!(claim(&app, json!({})).await, Vec::<Value>::new(), "done");
}

#[tokio::test]
async fn a_retryable_failure_comes_back_with_the_next_attempt_until_attempts_run_out() {
    let app = spawn_app().await;
    let (tenant, followup_id, correlation_id) = queued(&app).await;
    // The provider's throughput code: the table retries it with the item's backoff.
    let failure = json!({"result": "failed", "error_code": "130429", "retryable": true});

    let first = claim_when_ready(&app).await;
    assert_eq!(
        ack(&app, &ack_of(&first, failure.clone())).await,
        ["retry_scheduled"]
    );
    let retrying = app.follow_up(&tenant, &followup_id).await;
    let second = claim_when_ready(&app).await;
    assert_eq!(
        ack(&app, &ack_of(&second, failure.clone())).await,
        ["retry_scheduled"]
    );
    let third = claim_when_ready(&app).await;
    assert_eq!(ack(&app, &ack_of(&third, failure)).await, ["acked"]);

    assert_eq!(retrying["delivery"]["status"], "retrying");
    assert_eq!(retrying["delivery"]["error_code"], "130429");
    let attempts: Vec<&Value> = [&first, &second, &third]
        .iter()
        .map(|leased| &leased["attempt"])
        .collect();
    assert_eq!(attempts, [&json!(1), &json!(2), &json!(3)]);
    assert_eq!(first["item"], third["item"], "the same item each time");
    let record = app.follow_up(&tenant, &followup_id).await;
    assert_eq!(record["delivery"]["status"], "failed");
    assert_eq!(record["delivery"]["attempts"], 3);
    let events = app.events(&correlation_id).await;
    let failures: Vec<(&Value, &Value)> = events[2..]
        .iter()
        .map(|event| (&event["payload"]["attempt"], &event["payload"]["retryable"]))
        .collect();
    assert_eq!(
        failures,
        [
            (&json!(1), &json!(true)),
            (&json!(2), &json!(true)),
            (&json!(3), &json!(false))
        ],
        "one delivery event per attempt, retryable while attempts are left"
    );
    assert_eq!(
        names(&events[2..]),
        [
            "crm.followup.delivery.retrying",
            "crm.followup.delivery.retrying",
            "crm.followup.delivery.failed"
        ],
        "one delivery.failed per item: transient failures are retrying"
    );
    assert!(events[2]["payload"]["retry_at"].is_string());
}

#[tokio::test]
async fn a_final_failure_is_recorded_with_its_error_code() {
    let app = spawn_app().await;
    let (tenant, followup_id, correlation_id) = queued(&app).await;
    let leased = claim_when_ready(&app).await;

    let statuses = ack(
        &app,
        &ack_of(
            &leased,
            json!({"result": "failed", "error_code": "131026", "error_message": "undeliverable"}),
        ),
    )
    .await;

    assert_eq!(statuses, ["acked"]);
    let delivery = &app.follow_up(&tenant, &followup_id).await["delivery"];
    assert_eq!(delivery["status"], "failed");
    assert_eq!(delivery["error_code"], "131026");
    let events = app.events(&correlation_id).await;
    let failed = events.last().expect("events");
    assert_eq!(failed["name"], "crm.followup.delivery.failed");
    assert_eq!(failed["payload"]["error_code"], "131026");
    assert_eq!(claim(&app, json!({})).await, Vec::<Value>::new(), "done");
}

#[tokio::test]
async fn an_expired_lease_hands_the_item_on_and_its_late_ack_is_lease_lost() {
    let app = spawn_app().await;
    let (tenant, followup_id, correlation_id) = queued(&app).await;
    let first = claim(&app, json!({"lease_ms": 1000}))
        .await
        .pop()
        .expect("an item");
    let before = app.follow_up(&tenant, &followup_id).await;

    // Comes back once the first lease has run out.
    let second = claim_when_ready(&app).await;
    let late = ack(&app, &ack_of(&first, json!({"result": "accepted"}))).await;

    assert_eq!(second["attempt"], 2);
    assert_ne!(second["lease_id"], first["lease_id"]);
    assert_eq!(late, ["lease_lost"]);
    assert_eq!(
        app.follow_up(&tenant, &followup_id).await,
        before,
        "nothing changed"
    );
    assert_eq!(app.events(&correlation_id).await.len(), 2, "no event");
    assert_eq!(
        ack(&app, &ack_of(&second, json!({"result": "accepted"}))).await,
        ["acked"],
        "the current lease still acks"
    );
}

#[tokio::test]
async fn acks_for_unknown_items_or_foreign_leases_change_nothing() {
    let app = spawn_app().await;
    let (tenant, followup_id, correlation_id) = queued(&app).await;
    let leased = claim_when_ready(&app).await;
    let before = app.follow_up(&tenant, &followup_id).await;
    let unknown_item = json!({
        "queue_item_id": new_id(), "lease_id": leased["lease_id"], "result": "accepted"
    });
    let foreign_lease = json!({
        "queue_item_id": leased["item"]["queue_item_id"], "lease_id": new_id(),
        "result": "accepted"
    });

    let statuses = ack(&app, &json!({"acks": [unknown_item, foreign_lease]})).await;

    assert_eq!(statuses, ["not_found", "lease_lost"]);
    assert_eq!(app.follow_up(&tenant, &followup_id).await, before);
    assert_eq!(app.events(&correlation_id).await.len(), 2);
}

#[tokio::test]
async fn malformed_claims_and_acks_are_validation_errors_and_write_nothing() {
    let app = spawn_app().await;
    let (tenant, followup_id, correlation_id) = queued(&app).await;
    let leased = claim_when_ready(&app).await;
    let before = app.follow_up(&tenant, &followup_id).await;
    let good = ack_of(&leased, json!({"result": "accepted"}));

    for (body, pointer) in [
        (json!({"limit": 0}), "/limit"),
        (json!({"limit": 101}), "/limit"),
        (json!({"lease_ms": 999}), "/lease_ms"),
        (json!({"lease_ms": "30000"}), "/lease_ms"),
        (json!({"limit": 1, "extra": true}), ""),
    ] {
        let pointers = app.claim(&body).await.violation_pointers();
        assert!(
            pointers.contains(&pointer.to_owned()),
            "{body}: {pointers:?}"
        );
    }
    for (body, pointer) in [
        (
            with(good.clone(), "/acks/0/result", json!("delivered")),
            "/acks/0/result",
        ),
        (
            with(good.clone(), "/acks/0/lease_id", json!("lease-1")),
            "/acks/0/lease_id",
        ),
        (
            with(good.clone(), "/acks/0/queue_item_id", json!(42)),
            "/acks/0/queue_item_id",
        ),
        (json!({"acks": []}), "/acks"),
        (json!({}), ""),
    ] {
        let pointers = app.ack(&body).await.violation_pointers();
        assert!(
            pointers.contains(&pointer.to_owned()),
            "{body}: {pointers:?}"
        );
    }

    assert_eq!(app.follow_up(&tenant, &followup_id).await, before);
    assert_eq!(app.events(&correlation_id).await.len(), 2);
    assert_eq!(ack(&app, &good).await, ["acked"], "the lease is intact");
}

#[tokio::test]
async fn concurrent_consumers_never_hold_the_same_item() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let bodies = (0..40).map(|_| follow_up_body(&tenant)).collect();
    app.seed_follow_ups(bodies).await;
    app.drain(&json!({"limit": 100})).await.ok();

    let batches = app
        .at_once(
            8,
            |app| async move { claim(&app, json!({"limit": 7})).await },
        )
        .await;

    let ids: Vec<String> = batches
        .iter()
        .flatten()
        .map(|leased| str_field(leased, "/item/queue_item_id").to_owned())
        .collect();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len(), "an item leased twice");
    assert_eq!(ids.len(), 40, "every item leased once");
    assert!(ids.iter().all(|id| Uuid::parse_str(id).is_ok()));
}

/// A running campaign of a fresh tenant with one follow-up drained into the queue and
/// leased: `(campaign, followup_id, leased)`.
async fn leased_in_running_campaign(app: &TestApp) -> (Value, String, Value) {
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "scheduled").await;
    let campaign = app
        .move_campaign(&campaign, "running", "start_window_open")
        .await;
    let body = with(
        follow_up_body(&tenant),
        "/request/followup/campaign_id",
        campaign["campaign_id"].clone(),
    );
    let response = app.seed_follow_up(&body).await;
    let report = app.drain(&json!({})).await.ok();
    assert_eq!(report["succeeded_count"], 1, "{report}");
    let leased = claim_when_ready(app).await;
    let followup_id = str_field(&response, "/followup/followup_id").to_owned();
    (campaign, followup_id, leased)
}

#[tokio::test]
async fn a_spam_rate_answer_pauses_the_running_campaign_as_a_patch_would() {
    let app = spawn_app().await;
    let (campaign, followup_id, leased) = leased_in_running_campaign(&app).await;
    let tenant = str_field(&campaign, "/tenant_id");
    let campaign_id = str_field(&campaign, "/campaign_id");

    let answer = json!({"result": "failed", "error_code": "131048", "retryable": true});
    assert_eq!(ack(&app, &ack_of(&leased, answer)).await, ["acked"]);

    let reply = app.get_campaign(campaign_id, tenant).await.ok();
    let paused = &reply["campaign"];
    assert_eq!(paused["state"], "paused");
    assert_eq!(
        paused["metadata"]["owner"], "tests",
        "merged, as a PATCH merges"
    );
    let note = &paused["metadata"]["auto_pause"];
    assert_eq!(note["cause"], "error_code");
    assert_eq!(note["error_code"], "131048");
    assert_eq!(note["followup_id"], followup_id.as_str());
    assert_eq!(reply["stats"]["delivery"]["failed"], 1);
    let changes = app.feed_events(tenant, "crm.campaign.state.changed").await;
    let reasons: Vec<(&Value, &Value)> = changes
        .iter()
        .map(|event| {
            (
                &event["payload"]["to_state"],
                &event["payload"]["reason_code"],
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (&json!("running"), &Value::Null),
            (&json!("paused"), &json!("auto_pause"))
        ]
    );
    // Nothing is retried, and a person resumes the campaign as usual.
    assert_eq!(claim(&app, json!({})).await, Vec::<Value>::new());
    let resumed = app
        .move_campaign(paused, "running", "resume_campaign")
        .await;
    assert_eq!(resumed["state"], "running");
}

#[tokio::test]
async fn a_patch_reason_code_travels_in_its_state_changed_event() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "draft").await;
    let body = with(
        advance_body(&tenant, "scheduled", "schedule_campaign"),
        "/request/changes/reason_code",
        json!("ops_request"),
    );
    app.advance_campaign(str_field(&campaign, "/campaign_id"), &body)
        .await
        .ok();
    let changes = app.feed_events(&tenant, "crm.campaign.state.changed").await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["payload"]["reason_code"], "ops_request");
}

#[tokio::test]
async fn a_marketing_opt_out_answer_puts_the_recipient_on_the_list_once() {
    let app = spawn_app().await;
    let (campaign, _, leased) = leased_in_running_campaign(&app).await;
    let tenant = str_field(&campaign, "/tenant_id");

    let answer = json!({"result": "failed", "error_code": "131050", "retryable": true});
    assert_eq!(ack(&app, &ack_of(&leased, answer)).await, ["acked"]);

    let list = app.opt_outs(&[("tenant_id", tenant)]).await.ok();
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["phone_e164"], "+5511999990001");
    assert_eq!(items[0]["reason"], "provider:131050");
    let added = app.feed_events(tenant, "crm.optout.added").await;
    assert_eq!(added.len(), 1);
    assert_eq!(added[0]["payload"]["source"], "provider");
    let campaign_now = app
        .get_campaign(str_field(&campaign, "/campaign_id"), tenant)
        .await
        .ok();
    assert_eq!(campaign_now["campaign"]["state"], "running", "not paused");
    assert_eq!(
        claim(&app, json!({})).await,
        Vec::<Value>::new(),
        "not retried"
    );
}

/// A follow-up of a running campaign whose message the provider accepted as `wamid`:
/// `(campaign, followup_id)`.
async fn accepted_as(app: &TestApp, wamid: &str) -> (Value, String) {
    let (campaign, followup_id, leased) = leased_in_running_campaign(app).await;
    let answer = json!({"result": "accepted", "provider_message_id": wamid});
    assert_eq!(ack(app, &ack_of(&leased, answer)).await, ["acked"]);
    (campaign, followup_id)
}

/// The answers of a receipts reply, in order.
async fn receipts(app: &TestApp, receipts: Value) -> Vec<String> {
    let reply = app.receipts(&json!({ "receipts": receipts })).await.ok();
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|result| str_field(result, "/status").to_owned())
        .collect()
}

/// A receipt `at` a moment just past.
fn receipt(wamid: &str, status: &str) -> Value {
    json!({"provider_message_id": wamid, "status": status, "at": "2025-01-01T09:00:00.000Z"})
}

#[tokio::test]
async fn receipts_move_an_accepted_delivery_forward_once_whatever_their_order() {
    let app = spawn_app().await;
    let wamid = format!("wamid.{}", Uuid::new_v4().simple());
    let (campaign, followup_id) = accepted_as(&app, &wamid).await;
    let tenant = str_field(&campaign, "/tenant_id");

    let answers = receipts(
        &app,
        json!([
            receipt(&wamid, "read"),
            receipt(&wamid, "delivered"),
            receipt(&wamid, "read"),
            receipt("wamid.nobody", "delivered")
        ]),
    )
    .await;

    assert_eq!(answers, ["applied", "stale", "duplicate", "not_found"]);
    let record = app.follow_up(tenant, &followup_id).await;
    assert_eq!(record["delivery"]["status"], "read");
    assert_eq!(record["delivery"]["read_at"], "2025-01-01T09:00:00.000Z");
    assert_eq!(
        record["delivery"]["delivered_at"],
        "2025-01-01T09:00:00.000Z"
    );
    let stats = app
        .get_campaign(str_field(&campaign, "/campaign_id"), tenant)
        .await
        .ok()["stats"]["delivery"]
        .take();
    assert_eq!(
        stats,
        json!({"accepted": 0, "retrying": 0, "failed": 0, "delivered": 0, "read": 1})
    );
    let events = app.feed_events(tenant, "crm.followup.delivery.").await;
    assert_eq!(
        names(&events),
        [
            "crm.followup.delivery.accepted",
            "crm.followup.delivery.read"
        ]
    );
    assert_eq!(events[1]["payload"]["at"], "2025-01-01T09:00:00.000Z");
    assert_eq!(
        claim(&app, json!({})).await,
        Vec::<Value>::new(),
        "nothing resent"
    );
}

#[tokio::test]
async fn a_failed_receipt_with_a_spam_code_pauses_the_campaign() {
    let app = spawn_app().await;
    let wamid = format!("wamid.{}", Uuid::new_v4().simple());
    let (campaign, _) = accepted_as(&app, &wamid).await;
    let tenant = str_field(&campaign, "/tenant_id");
    let mut failed = receipt(&wamid, "failed");
    failed["error_code"] = json!("131048");

    assert_eq!(receipts(&app, json!([failed])).await, ["applied"]);

    let reply = app
        .get_campaign(str_field(&campaign, "/campaign_id"), tenant)
        .await
        .ok();
    assert_eq!(reply["campaign"]["state"], "paused");
    assert_eq!(reply["stats"]["delivery"]["failed"], 1);
    assert_eq!(claim(&app, json!({})).await, Vec::<Value>::new(), "final");
}

#[tokio::test]
async fn failed_deliveries_past_the_auto_pause_ratio_pause_the_campaign_by_acks_and_receipts() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let policy = json!({"max_per_second": null, "quiet_hours": null,
                        "auto_pause": {"window": 10, "max_failure_ratio": 0.1}});
    app.put_sending_policy(&tenant, &policy).await.ok();
    let campaign = app.seed_campaign(&tenant, "scheduled").await;
    let campaign = app
        .move_campaign(&campaign, "running", "start_window_open")
        .await;
    let campaign_id = str_field(&campaign, "/campaign_id");
    for _ in 0..3 {
        let body = with(
            follow_up_body(&tenant),
            "/request/followup/campaign_id",
            json!(campaign_id),
        );
        app.seed_follow_up(&body).await;
    }
    let report = app.drain(&json!({})).await.ok();
    assert_eq!(report["succeeded_count"], 3, "{report}");
    let leased = claim(&app, json!({"limit": 3})).await;
    assert_eq!(leased.len(), 3);
    // One failure for good (an undeliverable number) and one message accepted: 1 of 10
    // is not more than 10 %.
    let undeliverable = json!({"result": "failed", "error_code": "131026", "retryable": false});
    let wamid = format!("wamid.{}", Uuid::new_v4().simple());
    let accepted = json!({"result": "accepted", "provider_message_id": wamid});
    let acks = json!({"acks": [ack_of(&leased[0], undeliverable)["acks"][0].clone(),
                               ack_of(&leased[1], accepted)["acks"][0].clone()]});
    assert_eq!(ack(&app, &acks).await, ["acked", "acked"]);
    let state = || async { app.get_campaign(campaign_id, &tenant).await.ok()["campaign"].take() };
    assert_eq!(state().await["state"], "running");
    // The accepted message then fails by its receipt: 2 of 10.
    assert_eq!(
        receipts(&app, json!([receipt(&wamid, "failed")])).await,
        ["applied"]
    );
    let paused = state().await;
    assert_eq!(paused["state"], "paused");
    let note = &paused["metadata"]["auto_pause"];
    assert_eq!(note["cause"], "failure_ratio");
    assert_eq!(
        (&note["failures"], &note["window"]),
        (&json!(2), &json!(10))
    );
    assert_eq!(note["max_failure_ratio"], 0.1);
    // The third item is still leased; its failure changes nothing more.
    let third = json!({"result": "failed", "error_code": "131026", "retryable": false});
    assert_eq!(ack(&app, &ack_of(&leased[2], third)).await, ["acked"]);
    let changes = app.feed_events(&tenant, "crm.campaign.state.changed").await;
    assert_eq!(changes.len(), 2, "started, then paused once");
    assert_eq!(changes[1]["payload"]["reason_code"], "auto_pause");
}

#[tokio::test]
async fn bad_receipts_are_refused_whole_and_change_nothing() {
    let app = spawn_app().await;
    let wamid = format!("wamid.{}", Uuid::new_v4().simple());
    let (campaign, followup_id) = accepted_as(&app, &wamid).await;
    let tenant = str_field(&campaign, "/tenant_id");
    let good = receipt(&wamid, "delivered");
    let future = json!({"provider_message_id": wamid, "status": "read",
                        "at": "2999-01-01T00:00:00.000Z"});
    let too_many: Vec<Value> = (0..1_001).map(|_| good.clone()).collect();
    let cases = [
        (json!({"receipts": []}), "/receipts"),
        (json!({"receipts": too_many}), "/receipts"),
        (
            json!({"receipts": [good, receipt(&wamid, "sent")]}),
            "/receipts/1/status",
        ),
        (json!({"receipts": [good, future]}), "/receipts/1/at"),
        (
            json!({"receipts": [with(good.clone(), "/extra", json!(1))]}),
            "/receipts/0",
        ),
        (
            json!({"receipts": [with(good.clone(), "/at", json!("yesterday"))]}),
            "/receipts/0/at",
        ),
        (
            json!({"receipts": [with(good.clone(), "/tenant_id", json!(""))]}),
            "/receipts/0/tenant_id",
        ),
    ];
    for (body, pointer) in cases {
        let reply = app.receipts(&body).await;
        let details = reply.error(400, "validation_error").to_string();
        assert!(
            details.contains(&format!("\"pointer\":\"{pointer}")),
            "{pointer}: {details}"
        );
    }
    let record = app.follow_up(tenant, &followup_id).await;
    assert_eq!(record["delivery"]["status"], "accepted", "nothing written");
}

#[tokio::test]
async fn a_thousand_receipts_fit_the_batch_body_limit() {
    let app = spawn_app().await;
    let many: Vec<Value> = (0..1_000)
        .map(|n| {
            receipt(
                &format!("wamid.unknown.{n:04}.{}", "x".repeat(200)),
                "delivered",
            )
        })
        .collect();

    let answers = receipts(&app, json!(many)).await;

    assert_eq!(answers.len(), 1_000);
    assert!(answers.iter().all(|answer| answer == "not_found"));
}
