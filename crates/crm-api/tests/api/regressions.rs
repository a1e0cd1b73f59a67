//! What API fuzzing (schemathesis) found, each pinned as a regression test: methods a
//! path does not serve, limits and cursors at the edges of their types, timestamps whose
//! offset leaves the representable years, U+0000 in text, over-long keys, and drain and
//! claim numbers written as floats.

use std::collections::BTreeSet;

use crm_contracts::Contract;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{
    CAMPAIGNS, CLAIM, DRAIN, FOLLOW_UPS, TRACE, advance_body, campaign_body, follow_up_body,
    new_tenant, spawn_app, str_field, with,
};

const ZEROS: &str = "00000000000000000000000000000000";

/// Asserts every violation pointer is `pointer`.
#[track_caller]
fn assert_violations_at(pointers: &[String], pointer: &str, case: &str) {
    assert!(
        pointers.iter().all(|p| p == pointer),
        "{case}: expected violations at {pointer:?}, got {pointers:?}"
    );
}

#[tokio::test]
async fn a_method_a_path_does_not_serve_is_405_with_the_allowed_methods() {
    let app = spawn_app().await;
    let cases = [
        (Method::TRACE, "/health", "GET"),
        (Method::POST, "/ready", "GET"),
        (Method::DELETE, CAMPAIGNS, "GET, POST"),
        (Method::PUT, FOLLOW_UPS, "GET, POST"),
        (Method::GET, "/v1/crm/campaigns/some-id/state", "PATCH"),
        (Method::PUT, DRAIN, "POST"),
        (Method::GET, DRAIN, "POST"),
        (Method::POST, TRACE, "GET"),
        (Method::DELETE, "/metrics", "GET"),
        (Method::POST, "/openapi.json", "GET"),
    ];

    for (method, path, allowed) in cases {
        let case = format!("{method} {path}");
        let reply = app
            .send(app.client.request(method, app.url(path)), None)
            .await;
        assert_eq!(
            (reply.status, &reply.body),
            (405, &json!({"error": "method_not_allowed"})),
            "{case}"
        );
        let listed: BTreeSet<&str> = reply
            .header("allow")
            .unwrap_or_else(|| panic!("{case}: no Allow header: {:?}", reply.headers))
            .split(',')
            .map(str::trim)
            .collect();
        let expected: BTreeSet<&str> = allowed.split(", ").collect();
        assert_eq!(listed, expected, "{case}");
    }
}

#[tokio::test]
async fn an_unknown_path_is_404_not_found_whatever_the_method() {
    let app = spawn_app().await;

    for (method, path) in [
        (Method::GET, "/no/such/path"),
        (Method::POST, "/v1/crm/unknown"),
        (Method::DELETE, "/internal"),
    ] {
        let reply = app
            .send(app.client.request(method.clone(), app.url(path)), None)
            .await;
        assert_eq!(
            (reply.status, &reply.body),
            (404, &json!({"error": "not_found"})),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_list_limit_above_one_thousand_is_a_validation_error_not_a_silent_clamp() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    for limit in ["1001", "3298813592504923120750529871872"] {
        let query = [("tenant_id", tenant.as_str()), ("limit", limit)];
        assert_eq!(
            app.list_follow_ups(&query).await.invalid_parameters(),
            ["limit"]
        );
        assert_eq!(
            app.list_campaigns(&query).await.invalid_parameters(),
            ["limit"]
        );
    }
}

#[tokio::test]
async fn a_list_limit_with_leading_zeros_is_read_in_decimal() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let bodies = (0..8).map(|_| follow_up_body(&tenant)).collect();
    app.seed_follow_ups(bodies).await;

    let page = app
        .list_follow_ups(&[("tenant_id", tenant.as_str()), ("limit", "007")])
        .await
        .ok();

    assert_eq!(page["count"], 7);
    assert!(page["next_cursor"].is_string(), "{page}");
}

#[tokio::test]
async fn a_list_limit_that_is_not_a_positive_integer_is_a_validation_error() {
    let app = spawn_app().await;
    let tenant = new_tenant();

    for limit in ["0", "-1", "1.5", "00", "+5", "1e3", ""] {
        let query = [("tenant_id", tenant.as_str()), ("limit", limit)];
        let named = app.list_follow_ups(&query).await.invalid_parameters();
        assert_eq!(named, ["limit"], "follow-ups, limit={limit:?}");
        let named = app.list_campaigns(&query).await.invalid_parameters();
        assert_eq!(named, ["limit"], "campaigns, limit={limit:?}");
    }
}

#[tokio::test]
async fn an_empty_cursor_is_a_validation_error() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let query = [("tenant_id", tenant.as_str()), ("cursor", "")];

    let named = app.list_follow_ups(&query).await.invalid_parameters();
    assert_eq!(named, ["cursor"]);
    let named = app.list_campaigns(&query).await.invalid_parameters();
    assert_eq!(named, ["cursor"]);
}

#[tokio::test]
async fn a_well_shaped_cursor_past_either_end_of_time_is_a_position_not_an_error() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let bodies = (0..3).map(|_| follow_up_body(&tenant)).collect();
    app.seed_follow_ups(bodies).await;
    app.seed_campaign(&tenant, "draft").await;
    let after_the_end = format!("c1_999999999999999999_{ZEROS}");
    let before_the_start = format!("c1_-999999999999999999_{ZEROS}");
    let whole = [("tenant_id", tenant.as_str())];
    let late = [("tenant_id", tenant.as_str()), ("cursor", &after_the_end)];
    let early = [
        ("tenant_id", tenant.as_str()),
        ("cursor", &before_the_start),
    ];
    let empty = json!({"tenant_id": tenant, "count": 0, "items": [], "next_cursor": null});

    assert_eq!(app.list_follow_ups(&late).await.ok(), empty);
    assert_eq!(app.list_campaigns(&late).await.ok(), empty);
    let all_follow_ups = app.list_follow_ups(&whole).await.ok();
    assert_eq!(all_follow_ups["count"], 3);
    assert_eq!(app.list_follow_ups(&early).await.ok(), all_follow_ups);
    let all_campaigns = app.list_campaigns(&whole).await.ok();
    assert_eq!(all_campaigns["count"], 1);
    assert_eq!(app.list_campaigns(&early).await.ok(), all_campaigns);
}

/// The bodies that carry a timestamp, with the pointer of that timestamp.
fn timestamp_bodies(tenant: &str) -> [(Value, &'static str, Contract); 2] {
    [
        (
            follow_up_body(tenant),
            "/request/followup/schedule_at",
            Contract::FollowUpCommandResponse,
        ),
        (
            campaign_body(tenant),
            "/request/campaign/scheduled_at",
            Contract::CampaignCommandResponse,
        ),
    ]
}

/// The path a body of `contract` is created at.
fn create_path(contract: Contract) -> &'static str {
    match contract {
        Contract::CampaignCommandResponse => CAMPAIGNS,
        _ => FOLLOW_UPS,
    }
}

#[tokio::test]
async fn a_timestamp_whose_offset_leaves_years_0000_to_9999_is_a_validation_error() {
    let app = spawn_app().await;
    let tenant = new_tenant();

    for text in ["9999-12-31T23:59:59-01:00", "0000-01-01T00:00:00+01:00"] {
        for (body, pointer, contract) in timestamp_bodies(&tenant) {
            let body = with(body, pointer, json!(text));
            let pointers = app
                .post_json(create_path(contract), &body, contract)
                .await
                .violation_pointers();
            assert_violations_at(&pointers, pointer, text);
        }
    }

    assert_eq!(app.all_follow_ups(&tenant, &[]).await, Vec::<Value>::new());
    assert_eq!(app.all_campaigns(&tenant, &[]).await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_leap_second_is_stored_as_the_last_millisecond_of_its_minute() {
    let app = spawn_app().await;
    let tenant = new_tenant();

    for (body, pointer, contract) in timestamp_bodies(&tenant) {
        let body = with(body, pointer, json!("1990-12-31T23:59:60Z"));
        let reply = app.post_json(create_path(contract), &body, contract).await;
        let response = &reply.ok()["response"];
        let field = pointer.rsplit_once('/').expect("a pointer").1;
        let record = if contract == Contract::CampaignCommandResponse {
            &response["campaign"]
        } else {
            &response["followup"]
        };
        assert_eq!(record[field], "1990-12-31T23:59:59.999Z", "{pointer}");
    }

    let listed = app.all_follow_ups(&tenant, &[]).await;
    assert_eq!(listed[0]["schedule_at"], "1990-12-31T23:59:59.999Z");
    let listed = app.all_campaigns(&tenant, &[]).await;
    assert_eq!(listed[0]["scheduled_at"], "1990-12-31T23:59:59.999Z");
}

#[tokio::test]
async fn text_holding_u0000_is_a_validation_error_at_its_pointer_and_stores_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "draft").await;
    let campaign_id = str_field(&campaign, "/campaign_id");
    let metadata = "/request/campaign/metadata";
    // (where the value goes, the value, the pointer of the U+0000)
    let campaigns = [
        (
            "/request/campaign/name",
            json!("Spring\u{0}sale"),
            "/request/campaign/name".to_owned(),
        ),
        (
            metadata,
            json!({"owner": "a\u{0}b"}),
            format!("{metadata}/owner"),
        ),
        (
            metadata,
            json!({"a\u{0}b": "owner"}),
            format!("{metadata}/a\u{0}b"),
        ),
        (
            metadata,
            json!({"list": ["ok", "\u{0}"]}),
            format!("{metadata}/list/1"),
        ),
    ];
    let follow_ups = [
        (
            "/request/followup/message",
            json!("\u{0}"),
            "/request/followup/message".to_owned(),
        ),
        (
            "/request/followup/metadata",
            json!({"nested": {"x": "\u{0}"}}),
            "/request/followup/metadata/nested/x".to_owned(),
        ),
    ];

    for (pointer, value, expected) in campaigns {
        let body = with(campaign_body(&tenant), pointer, value);
        let pointers = app.create_campaign(&body).await.violation_pointers();
        assert_violations_at(&pointers, &expected, &body.to_string());
    }
    for (pointer, value, expected) in follow_ups {
        let body = with(follow_up_body(&tenant), pointer, value);
        let pointers = app.create_follow_up(&body).await.violation_pointers();
        assert_violations_at(&pointers, &expected, &body.to_string());
    }
    let body = with(
        advance_body(&tenant, "scheduled", "schedule_campaign"),
        "/request/changes/metadata",
        json!({"a\u{0}b": 1}),
    );
    let pointers = app
        .advance_campaign(campaign_id, &body)
        .await
        .violation_pointers();
    assert_violations_at(
        &pointers,
        "/request/changes/metadata/a\u{0}b",
        "state update",
    );

    assert_eq!(app.all_campaigns(&tenant, &[]).await, vec![campaign]);
    assert_eq!(app.all_follow_ups(&tenant, &[]).await, Vec::<Value>::new());
}

#[tokio::test]
async fn a_query_parameter_holding_u0000_is_a_validation_error_naming_it() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    app.seed_follow_up(&follow_up_body(&tenant)).await;
    let nul_tenant = [("tenant_id", "a\u{0}b")];

    let named = [
        app.list_follow_ups(&nul_tenant).await.invalid_parameters(),
        app.list_campaigns(&nul_tenant).await.invalid_parameters(),
        app.get(
            TRACE,
            &[("correlation_id", "a\u{0}b")],
            Contract::TraceResponse,
        )
        .await
        .invalid_parameters(),
    ];

    assert_eq!(
        named,
        [["tenant_id"], ["tenant_id"], ["correlation_id"]],
        "follow-up list, campaign list (tenant_id=a%00b), trace (correlation_id=a%00b)"
    );
}

#[tokio::test]
async fn a_tenant_id_or_external_key_over_255_characters_is_a_validation_error() {
    let app = spawn_app().await;
    let too_long = "t".repeat(256);
    let campaign = app.seed_campaign(&new_tenant(), "draft").await;
    let campaign_id = str_field(&campaign, "/campaign_id");
    let tenant = new_tenant();
    let campaign_cases = ["/request/tenant_id", "/request/campaign/external_key"];
    let follow_up_cases = ["/request/tenant_id", "/request/followup/external_key"];

    for pointer in campaign_cases {
        let body = with(campaign_body(&tenant), pointer, json!(too_long));
        let pointers = app.create_campaign(&body).await.violation_pointers();
        assert_violations_at(&pointers, pointer, pointer);
    }
    for pointer in follow_up_cases {
        let body = with(follow_up_body(&tenant), pointer, json!(too_long));
        let pointers = app.create_follow_up(&body).await.violation_pointers();
        assert_violations_at(&pointers, pointer, pointer);
    }
    let body = with(
        advance_body(&tenant, "scheduled", "schedule_campaign"),
        "/request/tenant_id",
        json!(too_long),
    );
    let pointers = app
        .advance_campaign(campaign_id, &body)
        .await
        .violation_pointers();
    assert_violations_at(&pointers, "/request/tenant_id", "state update");
    for tenant in [&tenant, &too_long] {
        assert_eq!(app.all_campaigns(tenant, &[]).await, Vec::<Value>::new());
        assert_eq!(app.all_follow_ups(tenant, &[]).await, Vec::<Value>::new());
    }
}

#[tokio::test]
async fn a_tenant_id_and_external_key_of_255_characters_are_accepted_even_when_not_ascii() {
    let app = spawn_app().await;
    // 255 characters, 510 bytes in UTF-8: the limit counts characters, as JSON Schema does.
    let tenant = "é".repeat(255);
    let external_key = "ß".repeat(255);

    let campaign = with(
        campaign_body(&tenant),
        "/request/campaign/external_key",
        json!(external_key),
    );
    let stored = app.create_campaign(&campaign).await.ok()["response"]["campaign"].take();
    let follow_up = with(
        follow_up_body(&tenant),
        "/request/followup/external_key",
        json!(external_key),
    );
    app.seed_follow_up(&follow_up).await;

    assert_eq!(stored["tenant_id"], tenant.as_str());
    assert_eq!(stored["external_key"], external_key.as_str());
    assert_eq!(app.all_campaigns(&tenant, &[]).await, vec![stored]);
    assert_eq!(app.all_follow_ups(&tenant, &[]).await.len(), 1);
}

#[tokio::test]
async fn a_drain_limit_written_as_a_float_is_read_as_the_whole_number_it_is() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let bodies = (0..106).map(|_| follow_up_body(&tenant)).collect();
    app.seed_follow_ups(bodies).await;

    let five = app.drain_raw(r#"{"limit": 5.0}"#).await.ok();
    let capped = app.drain_raw(r#"{"limit": 1e300}"#).await.ok();

    assert_eq!(five["processed_count"], 5, "{five}");
    assert_eq!(capped["processed_count"], 100, "{capped}");
    let pending = app.all_follow_ups(&tenant, &[("status", "pending")]).await;
    assert_eq!(pending.len(), 1);
}

#[tokio::test]
async fn claim_numbers_written_as_floats_are_read_as_the_whole_numbers_they_are() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let bodies = (0..3).map(|_| follow_up_body(&tenant)).collect();
    app.seed_follow_ups(bodies).await;
    app.drain(&json!({})).await.ok();

    let reply = app
        .post_raw(
            CLAIM,
            r#"{"limit": 2.0, "lease_ms": 68215.0}"#,
            Contract::OutboundClaimResponse,
        )
        .await
        .ok();

    assert_eq!(
        reply["items"].as_array().expect("items").len(),
        2,
        "{reply}"
    );
    let pointers = app
        .post_raw(CLAIM, r#"{"limit": 2.5}"#, Contract::OutboundClaimResponse)
        .await
        .violation_pointers();
    assert_eq!(pointers, ["/limit"]);
}

#[tokio::test]
async fn a_body_declared_as_anything_but_json_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let body = campaign_body(&tenant).to_string();
    // What a web page can send to a local server without a preflight.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let request = app
            .client
            .post(app.url(CAMPAIGNS))
            .header("content-type", content_type)
            .body(body.clone());
        let reply = app.send(request, None).await;
        assert_eq!(
            (reply.status, reply.body["error"].as_str()),
            (400, Some("invalid_json")),
            "{content_type}"
        );
    }
    let listed = app
        .list_campaigns(&[("tenant_id", tenant.as_str())])
        .await
        .ok();
    assert_eq!(listed["count"], json!(0));
    let request = app
        .client
        .post(app.url(CAMPAIGNS))
        .header("content-type", "application/json; charset=utf-8")
        .body(body);
    assert_eq!(
        app.send(request, Some(Contract::CampaignCommandResponse))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn the_trace_of_a_shared_correlation_id_can_be_limited_to_one_tenant() {
    let app = spawn_app().await;
    let (first, second) = (new_tenant(), new_tenant());
    let correlation_id = uuid::Uuid::new_v4().to_string();
    for tenant in [&first, &second] {
        let body = with(
            campaign_body(tenant),
            "/request/correlation_id",
            json!(correlation_id),
        );
        app.create_campaign(&body).await.ok();
    }
    let all = app.trace(&correlation_id).await.ok();
    assert_eq!(all["events"].as_array().unwrap().len(), 2);
    let reply = app
        .get(
            TRACE,
            &[
                ("correlation_id", correlation_id.as_str()),
                ("tenant_id", first.as_str()),
            ],
            Contract::TraceResponse,
        )
        .await
        .ok();
    let tenants: Vec<&str> = reply["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, [first.as_str()]);
}

#[tokio::test]
async fn an_empty_tenant_filter_on_the_trace_is_a_validation_error() {
    let app = spawn_app().await;
    let correlation_id = uuid::Uuid::new_v4().to_string();
    let reply = app
        .get(
            TRACE,
            &[
                ("correlation_id", correlation_id.as_str()),
                ("tenant_id", ""),
            ],
            Contract::TraceResponse,
        )
        .await;
    assert_eq!(reply.invalid_parameters(), ["tenant_id"]);
}
