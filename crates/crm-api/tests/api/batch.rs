//! `POST /v1/crm/followups/batch`: each item exactly what a single create of it would
//! be, a bad item never stopping the others, an envelope that breaks its contract
//! creating nothing.

use crm_contracts::Contract;
use serde_json::{Value, json};

use crate::helpers::{
    FOLLOW_UPS_BATCH, FUTURE, TestApp, campaign_body, drained, follow_up_body, new_id, new_tenant,
    spawn_app, spawn_app_with, str_field, with,
};

/// One item: the follow-up of a valid single create, with fresh ids.
fn item(tenant: &str) -> Value {
    follow_up_body(tenant)["request"]["followup"].take()
}

fn batch(tenant: &str, items: Vec<Value>) -> Value {
    json!({"request": {
        "request_id": new_id(),
        "tenant_id": tenant,
        "source_module": "mod-02-whatsapp-crm",
        "followups": items,
    }})
}

/// The results of a batch that was answered `200`, after checking its counts add up.
#[track_caller]
fn results(reply: Value) -> Vec<Value> {
    let response = &reply["response"];
    let results = response["results"].as_array().expect("results").clone();
    for (index, result) in results.iter().enumerate() {
        assert_eq!(result["index"], index, "results in request order: {result}");
    }
    let count = |status: &str| results.iter().filter(|r| r["status"] == status).count();
    assert_eq!(response["created_count"], count("created"));
    assert_eq!(response["idempotent_count"], count("idempotent"));
    assert_eq!(response["rejected_count"], count("rejected"));
    results
}

fn statuses(results: &[Value]) -> Vec<&str> {
    results
        .iter()
        .map(|result| result["status"].as_str().expect("a status"))
        .collect()
}

/// The error word and violation pointers of a rejected item.
fn rejection(result: &Value) -> (&str, Vec<&str>) {
    assert_eq!(result["status"], "rejected", "{result}");
    assert!(result.get("followup").is_none(), "{result}");
    let pointers = result["error"]["details"]
        .as_array()
        .map(|violations| {
            violations
                .iter()
                .map(|violation| str_field(violation, "/pointer"))
                .collect()
        })
        .unwrap_or_default();
    (str_field(&result["error"], "/error"), pointers)
}

async fn stored(app: &TestApp, tenant: &str) -> Vec<Value> {
    app.all_follow_ups(tenant, &[]).await
}

#[tokio::test]
async fn each_item_is_created_as_a_single_create_would_with_its_record_and_event_in_order() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let items: Vec<Value> = (0..5).map(|_| item(&tenant)).collect();

    let results = results(
        app.create_follow_ups(&batch(&tenant, items.clone()))
            .await
            .ok(),
    );

    assert_eq!(statuses(&results), ["created"; 5]);
    for (result, sent) in results.iter().zip(&items) {
        let record = &result["followup"];
        for field in [
            "followup_id",
            "external_key",
            "lead_id",
            "phone_e164",
            "message",
        ] {
            assert_eq!(record[field], sent[field], "{field}");
        }
        assert_eq!(record["tenant_id"], tenant.as_str());
        assert_eq!(record["status"], "pending");
        // What the single read of it answers.
        let read = app
            .get_follow_up(str_field(record, "/followup_id"), &tenant)
            .await
            .ok();
        assert_eq!(&read["followup"], record);
    }
    assert_eq!(stored(&app, &tenant).await.len(), 5);
    let events = app.feed_events(&tenant, "crm.followup.scheduled").await;
    let owners: Vec<&Value> = events
        .iter()
        .map(|event| &event["payload"]["followup_id"])
        .collect();
    let ids: Vec<&Value> = items.iter().map(|item| &item["followup_id"]).collect();
    assert_eq!(owners, ids, "one event per item, in request order");
}

#[tokio::test]
async fn the_request_s_correlation_id_traces_every_item_and_without_one_each_has_its_own() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let correlation = new_id();
    let shared = with(
        batch(&tenant, vec![item(&tenant), item(&tenant)]),
        "/request/correlation_id",
        json!(correlation),
    );

    results(app.create_follow_ups(&shared).await.ok());
    let traced = app.trace(&correlation).await.ok();
    assert_eq!(traced["events"].as_array().expect("events").len(), 2);

    let own = results(
        app.create_follow_ups(&batch(&tenant, vec![item(&tenant), item(&tenant)]))
            .await
            .ok(),
    );
    let events = app.feed_events(&tenant, "crm.followup.scheduled").await;
    let correlations: std::collections::HashSet<&Value> = events
        .iter()
        .map(|event| &event["correlation_id"])
        .collect();
    assert_eq!(
        correlations.len(),
        3,
        "one shared, two of their own: {events:#?}"
    );
    assert_eq!(own.len(), 2);
}

#[tokio::test]
async fn a_repeated_batch_answers_idempotent_for_every_item_and_writes_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let body = batch(&tenant, (0..4).map(|_| item(&tenant)).collect());
    let first = results(app.create_follow_ups(&body).await.ok());

    let again = results(app.create_follow_ups(&body).await.ok());

    assert_eq!(statuses(&again), ["idempotent"; 4]);
    for (before, after) in first.iter().zip(&again) {
        assert_eq!(
            before["followup"], after["followup"],
            "the stored record, unchanged"
        );
    }
    assert_eq!(stored(&app, &tenant).await.len(), 4);
    assert_eq!(
        app.feed_events(&tenant, "crm.followup.scheduled")
            .await
            .len(),
        4,
        "a repeat emits nothing"
    );
}

#[tokio::test]
async fn an_item_repeating_an_earlier_one_of_the_batch_by_id_or_key_is_idempotent() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let first = item(&tenant);
    let same_id = with(item(&tenant), "/followup_id", first["followup_id"].clone());
    let same_key = with(
        item(&tenant),
        "/external_key",
        first["external_key"].clone(),
    );

    let results = results(
        app.create_follow_ups(&batch(&tenant, vec![first.clone(), same_id, same_key]))
            .await
            .ok(),
    );

    assert_eq!(statuses(&results), ["created", "idempotent", "idempotent"]);
    assert_eq!(results[1]["followup"], results[0]["followup"]);
    assert_eq!(results[2]["followup"], results[0]["followup"]);
    assert_eq!(stored(&app, &tenant).await.len(), 1);
    assert_eq!(
        app.feed_events(&tenant, "crm.followup.scheduled")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn a_bad_item_is_rejected_with_the_error_a_single_create_would_answer_and_stops_no_other() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let other = new_tenant();
    let foreign = app.seed_follow_up(&follow_up_body(&other)).await;
    let items = vec![
        item(&tenant),
        with(item(&tenant), "/surprise", json!(true)),
        with(item(&tenant), "/phone_e164", json!("5511")),
        with(item(&tenant), "/campaign_id", json!(new_id())),
        with(
            item(&tenant),
            "/followup_id",
            foreign["followup"]["followup_id"].clone(),
        ),
        with(
            item(&tenant),
            "/metadata",
            json!({"blob": "x".repeat(70 * 1024)}),
        ),
        with(item(&tenant), "/time_zone", json!("Mars/Olympus_Mons")),
        with(item(&tenant), "/message", json!("nul \u{0} inside")),
        json!("not an object"),
        item(&tenant),
    ];

    let results = results(
        app.create_follow_ups(&batch(&tenant, items.clone()))
            .await
            .ok(),
    );

    assert_eq!(results[0]["status"], "created");
    assert_eq!(results[9]["status"], "created");
    assert_eq!(
        rejection(&results[1]),
        ("validation_error", vec!["/request/followups/1"])
    );
    assert_eq!(
        rejection(&results[2]),
        ("validation_error", vec!["/request/followups/2/phone_e164"])
    );
    assert_eq!(rejection(&results[3]), ("campaign_not_found", vec![]));
    assert_eq!(rejection(&results[4]), ("id_conflict", vec![]));
    assert_eq!(
        rejection(&results[5]),
        ("validation_error", vec!["/request/followups/5/metadata"])
    );
    assert_eq!(
        rejection(&results[6]),
        ("validation_error", vec!["/request/followups/6/time_zone"])
    );
    assert_eq!(
        rejection(&results[7]),
        ("validation_error", vec!["/request/followups/7/message"])
    );
    assert_eq!(
        rejection(&results[8]),
        ("validation_error", vec!["/request/followups/8"])
    );
    let mut ids: Vec<String> = stored(&app, &tenant)
        .await
        .iter()
        .map(|record| str_field(record, "/followup_id").to_owned())
        .collect();
    let mut expected = vec![
        str_field(&items[0], "/followup_id").to_owned(),
        str_field(&items[9], "/followup_id").to_owned(),
    ];
    ids.sort_unstable();
    expected.sort_unstable();
    assert_eq!(ids, expected, "only the good items were stored");
    // The id another tenant owns is still theirs alone.
    let theirs = app
        .get_follow_up(str_field(&foreign["followup"], "/followup_id"), &other)
        .await
        .ok();
    assert_eq!(theirs["followup"], foreign["followup"]);
}

#[tokio::test]
async fn a_thousand_items_naming_a_campaign_the_tenant_does_not_have_are_each_rejected() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let missing = new_id();
    let items: Vec<Value> = (0..1000)
        .map(|_| with(item(&tenant), "/campaign_id", json!(missing)))
        .collect();

    let results = results(app.create_follow_ups(&batch(&tenant, items)).await.ok());

    assert!(
        results
            .iter()
            .all(|result| rejection(result) == ("campaign_not_found", vec![]))
    );
    assert!(stored(&app, &tenant).await.is_empty());
}

#[tokio::test]
async fn items_of_one_of_the_tenant_s_campaigns_are_tied_to_it() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign =
        app.create_campaign(&campaign_body(&tenant)).await.ok()["response"]["campaign"].take();
    let items: Vec<Value> = (0..3)
        .map(|_| {
            with(
                item(&tenant),
                "/campaign_id",
                campaign["campaign_id"].clone(),
            )
        })
        .collect();

    let results = results(app.create_follow_ups(&batch(&tenant, items)).await.ok());

    assert_eq!(statuses(&results), ["created"; 3]);
    let of_campaign = app
        .all_follow_ups(
            &tenant,
            &[("campaign_id", str_field(&campaign, "/campaign_id"))],
        )
        .await;
    assert_eq!(of_campaign.len(), 3);
}

#[tokio::test]
async fn an_envelope_that_breaks_its_contract_is_400_and_creates_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let cases = [
        ("no items", batch(&tenant, vec![]), "/request/followups"),
        (
            "1,001 items",
            batch(&tenant, (0..1001).map(|_| item(&tenant)).collect()),
            "/request/followups",
        ),
        (
            "no tenant",
            {
                let mut body = batch(&tenant, vec![item(&tenant)]);
                body["request"]
                    .as_object_mut()
                    .expect("object")
                    .remove("tenant_id");
                body
            },
            "/request",
        ),
        (
            "an unknown envelope field",
            with(
                batch(&tenant, vec![item(&tenant)]),
                "/request/priority",
                json!(1),
            ),
            "/request",
        ),
        (
            "items that are not a list",
            with(
                batch(&tenant, vec![]),
                "/request/followups",
                json!({"0": item(&tenant)}),
            ),
            "/request/followups",
        ),
        (
            "a request id that is not a uuid",
            with(
                batch(&tenant, vec![item(&tenant)]),
                "/request/request_id",
                json!("r-1"),
            ),
            "/request/request_id",
        ),
    ];
    for (case, body, pointer) in cases {
        let reply = app.create_follow_ups(&body).await;
        assert!(
            reply.violation_pointers().iter().any(|p| p == pointer),
            "{case}"
        );
    }
    app.post_raw(
        FOLLOW_UPS_BATCH,
        "{\"request\": ",
        Contract::FollowUpBatchResponse,
    )
    .await
    .error(400, "invalid_json");
    app.post_raw(
        FOLLOW_UPS_BATCH,
        format!(
            "{{\"request\": {0}, \"request\": {0}}}",
            batch(&tenant, vec![item(&tenant)])["request"]
        ),
        Contract::FollowUpBatchResponse,
    )
    .await
    .error(400, "invalid_json");

    assert!(stored(&app, &tenant).await.is_empty());
}

#[tokio::test]
async fn the_batch_route_takes_bodies_up_to_its_own_limit_and_the_single_create_keeps_its_own() {
    let app = spawn_app_with(|settings| {
        settings.body_limit = 4 * 1024;
        settings.batch_body_limit = 64 * 1024;
    })
    .await;
    let tenant = new_tenant();
    // About 20 KiB: over the single create's limit, under the batch's.
    let items: Vec<Value> = (0..40)
        .map(|_| with(item(&tenant), "/message", json!("y".repeat(500))))
        .collect();

    let results = results(app.create_follow_ups(&batch(&tenant, items)).await.ok());
    assert_eq!(results.len(), 40);
    let single = with(
        follow_up_body(&tenant),
        "/request/followup/message",
        json!("y".repeat(8 * 1024)),
    );
    app.create_follow_up(&single)
        .await
        .error(413, "payload_too_large");

    let too_big: Vec<Value> = (0..100)
        .map(|_| with(item(&tenant), "/message", json!("z".repeat(1000))))
        .collect();
    let details = app
        .create_follow_ups(&batch(&tenant, too_big))
        .await
        .error(413, "payload_too_large");
    assert_eq!(details["limit_bytes"], 64 * 1024);
    assert_eq!(stored(&app, &tenant).await.len(), 40);
}

#[tokio::test]
async fn the_default_batch_body_limit_is_4_mib() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    // 1,000 items of about 4.2 KiB each: a little over 4 MiB.
    let items: Vec<Value> = (0..1000)
        .map(|_| with(item(&tenant), "/message", json!("w".repeat(4300))))
        .collect();

    let details = app
        .create_follow_ups(&batch(&tenant, items))
        .await
        .error(413, "payload_too_large");

    assert_eq!(details["limit_bytes"], 4 * 1024 * 1024);
    assert!(stored(&app, &tenant).await.is_empty());
}

#[tokio::test]
async fn a_batched_follow_up_is_drained_like_any_other() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let later = with(item(&tenant), "/schedule_at", json!(FUTURE));
    let results = results(
        app.create_follow_ups(&batch(&tenant, vec![item(&tenant), later]))
            .await
            .ok(),
    );
    assert_eq!(statuses(&results), ["created", "created"]);

    let report = app.drain(&json!({"limit": 100})).await.ok();

    let due = str_field(&results[0]["followup"], "/followup_id");
    let not_yet = str_field(&results[1]["followup"], "/followup_id");
    assert_eq!(
        drained(&report, due).map(|entry| &entry["status"]),
        Some(&json!("sent")),
        "{report}"
    );
    assert!(drained(&report, not_yet).is_none(), "{report}");
}
