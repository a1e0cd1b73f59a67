//! The rows of SPEC §2's error table that a request can reach: bodies that are not JSON
//! or break their contract, missing or bad query parameters, oversized bodies and bearer
//! tokens. Refusals of a resource (transition_error, campaign_not_found, not_found,
//! id_conflict) are tested with their resource.

use crm_api::config::Secret;
use crm_contracts::Contract;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::helpers::{
    CAMPAIGNS, DRAIN, FOLLOW_UPS, Reply, TRACE, TestApp, advance_body, campaign_body,
    follow_up_body, new_id, new_tenant, spawn_app, spawn_app_with, str_field, with, without,
};

const API_TOKEN: &str = "api-token-for-tests";
const INTERNAL_TOKEN: &str = "internal-token-for-tests";

/// Asserts every violation pointer is `pointer`.
#[track_caller]
fn assert_violations_at(pointers: &[String], pointer: &str, case: &str) {
    assert!(
        pointers.iter().all(|p| p == pointer),
        "{case}: expected violations at {pointer:?}, got {pointers:?}"
    );
}

/// A campaign create body that is about `size` bytes long, padded in its metadata.
fn campaign_body_of_size(tenant: &str, size: usize) -> Value {
    let body = campaign_body(tenant);
    let padding = size.saturating_sub(body.to_string().len() + 16);
    with(
        body,
        "/request/campaign/metadata",
        json!({"padding": "x".repeat(padding)}),
    )
}

#[tokio::test]
async fn a_body_that_is_not_json_is_invalid_json_on_every_command_endpoint() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "draft").await;
    let state_path = format!("{CAMPAIGNS}/{}/state", str_field(&campaign, "/campaign_id"));

    for body in [
        "{not json",
        "{\"request\": ",
        "hello",
        "{\"a\": 1} trailing",
    ] {
        app.post_raw(CAMPAIGNS, body, Contract::CampaignCommandResponse)
            .await
            .error(400, "invalid_json");
        app.post_raw(FOLLOW_UPS, body, Contract::FollowUpCommandResponse)
            .await
            .error(400, "invalid_json");
        app.drain_raw(body).await.error(400, "invalid_json");
        let patch = app
            .client
            .patch(app.url(&state_path))
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        app.send(patch, Some(Contract::CampaignCommandResponse))
            .await
            .error(400, "invalid_json");
    }

    assert_eq!(app.all_campaigns(&tenant, &[]).await, vec![campaign]);
}

#[tokio::test]
async fn an_empty_command_body_is_invalid_json() {
    let app = spawn_app().await;

    app.post_raw(CAMPAIGNS, "", Contract::CampaignCommandResponse)
        .await
        .error(400, "invalid_json");
    app.post_raw(FOLLOW_UPS, "", Contract::FollowUpCommandResponse)
        .await
        .error(400, "invalid_json");
}

#[tokio::test]
async fn campaign_fields_breaking_the_contract_are_validation_errors_at_their_pointer() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let refused = [
        ("/request/request_id", json!("not-a-uuid")),
        ("/request/tenant_id", json!("")),
        (
            "/request/source_module",
            json!("mod-05-faturamento-cobranca"),
        ),
        ("/request/correlation_id", json!("1234")),
        ("/request/campaign/campaign_id", json!("campaign-1")),
        ("/request/campaign/external_key", json!("ab")),
        ("/request/campaign/name", json!("ab")),
        ("/request/campaign/channel", json!("sms")),
        ("/request/campaign/audience_segment", json!("")),
        ("/request/campaign/state", json!("archived")),
        ("/request/campaign/scheduled_at", json!("next monday")),
        ("/request/campaign/metadata", json!("not an object")),
    ];

    for (pointer, value) in refused {
        let body = with(campaign_body(&tenant), pointer, value);
        let pointers = app.create_campaign(&body).await.violation_pointers();
        assert_violations_at(&pointers, pointer, &body.to_string());
    }

    assert_eq!(app.all_campaigns(&tenant, &[]).await, Vec::<Value>::new());
}

#[tokio::test]
async fn follow_up_fields_breaking_the_contract_are_validation_errors_at_their_pointer() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let refused = [
        ("/request/request_id", json!("not-a-uuid")),
        ("/request/source_module", json!("mod-09-unknown")),
        ("/request/followup/followup_id", json!("42")),
        ("/request/followup/campaign_id", json!("not-a-uuid")),
        ("/request/followup/lead_id", json!(42)),
        ("/request/followup/customer_id", json!("customer-7")),
        ("/request/followup/external_key", json!("ab")),
        ("/request/followup/phone_e164", json!("5511999990001")),
        ("/request/followup/phone_e164", json!("+0511999990001")),
        ("/request/followup/phone_e164", json!("+55 11 99999 0001")),
        ("/request/followup/phone_e164", json!("+5511999")),
        ("/request/followup/phone_e164", json!("+5511999990001234")),
        ("/request/followup/message", json!("")),
        ("/request/followup/schedule_at", json!("tomorrow")),
        ("/request/followup/schedule_at", json!("2025-01-01")),
        (
            "/request/followup/schedule_at",
            json!("2025-13-01T09:00:00Z"),
        ),
        ("/request/followup/schedule_at", json!(1735722000)),
        ("/request/followup/channel", json!("sms")),
        ("/request/followup/status", json!("queued")),
        ("/request/followup/metadata", json!([])),
    ];

    for (pointer, value) in refused {
        let body = with(follow_up_body(&tenant), pointer, value);
        let pointers = app.create_follow_up(&body).await.violation_pointers();
        assert_violations_at(&pointers, pointer, &body.to_string());
    }

    assert_eq!(app.all_follow_ups(&tenant, &[]).await, Vec::<Value>::new());
}

#[tokio::test]
async fn state_update_fields_breaking_the_contract_are_validation_errors_at_their_pointer() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "draft").await;
    let id = str_field(&campaign, "/campaign_id");
    let refused = [
        ("/request/request_id", json!("not-a-uuid")),
        ("/request/changes/to_state", json!("archived")),
        ("/request/changes/trigger", json!("go")),
        ("/request/changes/reason_code", json!("x")),
        ("/request/changes/metadata", json!(7)),
    ];

    for (pointer, value) in refused {
        let body = with(
            advance_body(&tenant, "scheduled", "schedule_campaign"),
            pointer,
            value,
        );
        let pointers = app.advance_campaign(id, &body).await.violation_pointers();
        assert_violations_at(&pointers, pointer, &body.to_string());
    }

    assert_eq!(app.all_campaigns(&tenant, &[]).await, vec![campaign]);
}

#[tokio::test]
async fn the_billing_module_may_schedule_follow_ups() {
    let app = spawn_app().await;
    let body = with(
        follow_up_body(&new_tenant()),
        "/request/source_module",
        json!("mod-05-faturamento-cobranca"),
    );

    app.seed_follow_up(&body).await;
}

#[tokio::test]
async fn unknown_properties_are_validation_errors_at_every_level() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "draft").await;
    let id = str_field(&campaign, "/campaign_id");

    for (parent, body) in [
        ("", campaign_body(&tenant)),
        ("/request", campaign_body(&tenant)),
        ("/request/campaign", campaign_body(&tenant)),
    ] {
        let body = with(body, &format!("{parent}/unexpected"), json!(true));
        let pointers = app.create_campaign(&body).await.violation_pointers();
        assert_violations_at(&pointers, parent, &body.to_string());
    }
    for parent in ["", "/request", "/request/followup"] {
        let body = with(
            follow_up_body(&tenant),
            &format!("{parent}/unexpected"),
            json!(1),
        );
        let pointers = app.create_follow_up(&body).await.violation_pointers();
        assert_violations_at(&pointers, parent, &body.to_string());
    }
    for parent in ["", "/request", "/request/changes"] {
        let body = with(
            advance_body(&tenant, "scheduled", "schedule_campaign"),
            &format!("{parent}/unexpected"),
            json!("x"),
        );
        let pointers = app.advance_campaign(id, &body).await.violation_pointers();
        assert_violations_at(&pointers, parent, &body.to_string());
    }
}

#[tokio::test]
async fn missing_required_fields_are_validation_errors_at_their_parent() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let campaign = app.seed_campaign(&tenant, "draft").await;
    let id = str_field(&campaign, "/campaign_id");

    for missing in [
        "/request",
        "/request/request_id",
        "/request/tenant_id",
        "/request/source_module",
        "/request/campaign",
        "/request/campaign/name",
        "/request/campaign/channel",
    ] {
        let body = without(campaign_body(&tenant), missing);
        let parent = missing.rsplit_once('/').expect("a pointer").0;
        let pointers = app.create_campaign(&body).await.violation_pointers();
        assert_violations_at(&pointers, parent, missing);
    }
    for missing in [
        "/request/followup",
        "/request/followup/phone_e164",
        "/request/followup/message",
        "/request/followup/schedule_at",
    ] {
        let body = without(follow_up_body(&tenant), missing);
        let parent = missing.rsplit_once('/').expect("a pointer").0;
        let pointers = app.create_follow_up(&body).await.violation_pointers();
        assert_violations_at(&pointers, parent, missing);
    }
    for missing in [
        "/request/changes",
        "/request/changes/to_state",
        "/request/changes/trigger",
    ] {
        let body = without(
            advance_body(&tenant, "scheduled", "schedule_campaign"),
            missing,
        );
        let parent = missing.rsplit_once('/').expect("a pointer").0;
        let pointers = app.advance_campaign(id, &body).await.violation_pointers();
        assert_violations_at(&pointers, parent, missing);
    }
    let pointers = app.create_campaign(&json!({})).await.violation_pointers();
    assert_violations_at(&pointers, "", "an empty object");
}

#[tokio::test]
async fn every_violation_of_a_body_is_listed_with_its_pointer() {
    let app = spawn_app().await;
    let body = follow_up_body(&new_tenant());
    let body = with(body, "/request/request_id", json!("not-a-uuid"));
    let body = with(body, "/request/followup/phone_e164", json!("12345"));
    let body = with(body, "/request/followup/schedule_at", json!("tomorrow"));

    let pointers = app.create_follow_up(&body).await.violation_pointers();

    for pointer in [
        "/request/request_id",
        "/request/followup/phone_e164",
        "/request/followup/schedule_at",
    ] {
        assert!(
            pointers.iter().any(|p| p == pointer),
            "{pointer}: {pointers:?}"
        );
    }
}

#[tokio::test]
async fn a_list_without_a_tenant_id_is_missing_tenant_id() {
    let app = spawn_app().await;

    app.list_campaigns(&[])
        .await
        .error(400, "missing_tenant_id");
    app.list_campaigns(&[("limit", "10"), ("state", "draft")])
        .await
        .error(400, "missing_tenant_id");
    app.list_follow_ups(&[])
        .await
        .error(400, "missing_tenant_id");
    app.list_follow_ups(&[("status", "pending")])
        .await
        .error(400, "missing_tenant_id");
}

#[tokio::test]
async fn a_trace_without_a_correlation_id_is_missing_correlation_id() {
    let app = spawn_app().await;

    app.get(TRACE, &[], Contract::TraceResponse)
        .await
        .error(400, "missing_correlation_id");
}

#[tokio::test]
async fn bad_list_query_values_are_validation_errors_naming_the_parameter() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let tenant = tenant.as_str();
    let campaign_queries = [
        ("limit", "0"),
        ("limit", "abc"),
        ("limit", "-1"),
        ("limit", "1.5"),
        ("state", "archived"),
        ("cursor", "not-a-cursor"),
    ];
    let follow_up_queries = [
        ("limit", "0"),
        ("limit", "abc"),
        ("status", "archived"),
        ("status", "PENDING"),
        ("cursor", "not-a-cursor"),
        ("campaign_id", "not-a-uuid"),
    ];

    for (parameter, value) in campaign_queries {
        let named = app
            .list_campaigns(&[("tenant_id", tenant), (parameter, value)])
            .await
            .invalid_parameters();
        assert_eq!(named, [parameter], "{parameter}={value}");
    }
    for (parameter, value) in follow_up_queries {
        let named = app
            .list_follow_ups(&[("tenant_id", tenant), (parameter, value)])
            .await
            .invalid_parameters();
        assert_eq!(named, [parameter], "{parameter}={value}");
    }
}

#[tokio::test]
async fn the_largest_list_limit_is_accepted() {
    let app = spawn_app().await;
    let tenant = new_tenant();

    app.list_campaigns(&[("tenant_id", tenant.as_str()), ("limit", "1000")])
        .await
        .ok();
    app.list_follow_ups(&[("tenant_id", tenant.as_str()), ("limit", "1000")])
        .await
        .ok();
}

#[tokio::test]
async fn a_body_over_the_configured_limit_is_payload_too_large() {
    let app = spawn_app_with(|settings| settings.body_limit = 1024).await;
    let tenant = new_tenant();

    app.create_campaign(&campaign_body_of_size(&tenant, 2048))
        .await
        .error(413, "payload_too_large");
    let follow_up = with(
        follow_up_body(&tenant),
        "/request/followup/message",
        json!("x".repeat(2048)),
    );
    app.create_follow_up(&follow_up)
        .await
        .error(413, "payload_too_large");
    let padded_drain = format!("{{\"limit\": 1{}}}", " ".repeat(2048));
    app.drain_raw(&padded_drain)
        .await
        .error(413, "payload_too_large");

    assert_eq!(app.all_campaigns(&tenant, &[]).await, Vec::<Value>::new());
    app.create_campaign(&campaign_body_of_size(&tenant, 900))
        .await
        .ok();
}

#[tokio::test]
async fn the_default_body_limit_is_64_kib() {
    let app = spawn_app().await;
    let tenant = new_tenant();

    app.create_campaign(&campaign_body_of_size(&tenant, 70 * 1024))
        .await
        .error(413, "payload_too_large");
    app.create_campaign(&campaign_body_of_size(&tenant, 60 * 1024))
        .await
        .ok();
}

/// Sends a campaign create and a drain with the given bearer tokens.
async fn create_and_drain(
    app: &TestApp,
    api_token: Option<&str>,
    internal_token: Option<&str>,
) -> (Reply, Reply) {
    let mut create = app
        .client
        .post(app.url(CAMPAIGNS))
        .json(&campaign_body(&new_tenant()));
    if let Some(token) = api_token {
        create = create.bearer_auth(token);
    }
    let mut drain = app.client.post(app.url(DRAIN)).json(&json!({}));
    if let Some(token) = internal_token {
        drain = drain.bearer_auth(token);
    }
    (
        app.send(create, Some(Contract::CampaignCommandResponse))
            .await,
        app.send(drain, Some(Contract::DrainResponse)).await,
    )
}

#[tokio::test]
async fn a_configured_token_is_required_on_its_scope_and_only_there() {
    let app = spawn_app_with(|settings| {
        settings.api_token = Some(Secret::new(API_TOKEN));
        settings.internal_token = Some(Secret::new(INTERNAL_TOKEN));
    })
    .await;

    let (create, drain) = create_and_drain(&app, None, None).await;
    create.error(401, "unauthorized");
    drain.error(401, "unauthorized");

    let (create, drain) = create_and_drain(&app, Some("wrong"), Some("wrong")).await;
    create.error(401, "unauthorized");
    drain.error(401, "unauthorized");

    let (create, drain) = create_and_drain(&app, Some(INTERNAL_TOKEN), Some(API_TOKEN)).await;
    create.error(401, "unauthorized");
    drain.error(401, "unauthorized");

    let (create, drain) = create_and_drain(&app, Some(API_TOKEN), Some(INTERNAL_TOKEN)).await;
    create.ok();
    drain.ok();
}

#[tokio::test]
async fn lists_and_traces_need_their_token_too() {
    let app = spawn_app_with(|settings| {
        settings.api_token = Some(Secret::new(API_TOKEN));
        settings.internal_token = Some(Secret::new(INTERNAL_TOKEN));
    })
    .await;
    let tenant = new_tenant();
    let list = |token: Option<&str>| {
        let mut url = app.url(FOLLOW_UPS);
        url.query_pairs_mut().append_pair("tenant_id", &tenant);
        let request = app.client.get(url);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    let trace = |token: Option<&str>| {
        let mut url = app.url(TRACE);
        url.query_pairs_mut()
            .append_pair("correlation_id", &new_id());
        let request = app.client.get(url);
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };

    app.send(list(None), Some(Contract::FollowUpList))
        .await
        .error(401, "unauthorized");
    app.send(trace(None), Some(Contract::TraceResponse))
        .await
        .error(401, "unauthorized");
    app.send(list(Some(API_TOKEN)), Some(Contract::FollowUpList))
        .await
        .ok();
    app.send(trace(Some(INTERNAL_TOKEN)), Some(Contract::TraceResponse))
        .await
        .ok();
}
