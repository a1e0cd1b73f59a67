//! Input that looks valid but must not be taken at face value: repeated keys, numbers a
//! float would round, metadata that grows without bound, and bodies sent too slowly.

use std::time::Duration;

use crm_contracts::Contract;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    CAMPAIGNS, advance_body, campaign_body, new_id, new_tenant, spawn_app, spawn_app_with, with,
};

#[tokio::test]
async fn a_body_that_repeats_a_key_is_invalid_json_and_creates_nothing() {
    let app = spawn_app().await;
    let (first, second) = (new_tenant(), new_tenant());
    let body = format!(
        r#"{{"request": {{"request_id": "{}", "tenant_id": "{first}", "tenant_id": "{second}",
        "source_module": "mod-02-whatsapp-crm",
        "campaign": {{"name": "Twice", "channel": "whatsapp"}}}}}}"#,
        new_id()
    );
    let details = app
        .post_raw(CAMPAIGNS, body, Contract::CampaignCommandResponse)
        .await
        .error(400, "invalid_json");
    let message = details["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("tenant_id") && message.contains("/request"),
        "{details}"
    );
    for tenant in [first, second] {
        let listed = app.list_campaigns(&[("tenant_id", &tenant)]).await.ok();
        assert_eq!(listed["count"], 0, "{tenant}: {listed}");
    }
}

#[tokio::test]
async fn metadata_numbers_come_back_as_exactly_the_decimal_values_sent() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let body = with(campaign_body(&tenant), "/request/campaign/metadata", json!({}))
        .to_string()
        .replace(
            r#""metadata":{}"#,
            r#""metadata":{"big":123456789012345678901234567890,"e":1E2,"frac":0.10,"tiny":1.5e-3,"neg":-0}"#,
        );
    let expected =
        r#"{"big":123456789012345678901234567890,"e":100,"frac":0.10,"neg":0,"tiny":0.0015}"#;
    let created = app
        .post_raw(CAMPAIGNS, body, Contract::CampaignCommandResponse)
        .await
        .ok();
    assert_eq!(
        created["response"]["campaign"]["metadata"].to_string(),
        expected
    );
    let listed = app.list_campaigns(&[("tenant_id", &tenant)]).await.ok();
    assert_eq!(listed["items"][0]["metadata"].to_string(), expected);
}

#[tokio::test]
async fn a_number_too_large_to_write_out_is_a_validation_error_naming_it() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let body = with(
        campaign_body(&tenant),
        "/request/campaign/metadata",
        json!({}),
    )
    .to_string()
    .replace(r#""metadata":{}"#, r#""metadata":{"huge":1e1000000}"#);
    let pointers = app
        .post_raw(CAMPAIGNS, body, Contract::CampaignCommandResponse)
        .await
        .violation_pointers();
    assert_eq!(pointers, ["/request/campaign/metadata/huge"]);
    let listed = app.list_campaigns(&[("tenant_id", &tenant)]).await.ok();
    assert_eq!(listed["count"], 0);
}

#[tokio::test]
async fn a_transition_whose_merged_metadata_would_pass_the_limit_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let created = app
        .create_campaign(&with(
            campaign_body(&tenant),
            "/request/campaign/metadata",
            json!({"notes": "n".repeat(40_000)}),
        ))
        .await
        .ok();
    let campaign = created["response"]["campaign"].clone();
    let id = campaign["campaign_id"].as_str().unwrap();
    let body = with(
        advance_body(&tenant, "scheduled", "schedule_campaign"),
        "/request/changes/metadata",
        json!({"more": "m".repeat(30_000)}),
    );
    let pointers = app.advance_campaign(id, &body).await.violation_pointers();
    assert_eq!(pointers, ["/request/changes/metadata"]);
    let listed = app.list_campaigns(&[("tenant_id", &tenant)]).await.ok();
    assert_eq!(listed["items"][0], campaign, "the campaign is unchanged");
}

#[tokio::test]
async fn a_body_sent_too_slowly_is_408_and_does_not_hold_the_connection() {
    let app =
        spawn_app_with(|settings| settings.request_timeout = Duration::from_millis(500)).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(
            format!(
                "POST {CAMPAIGNS} HTTP/1.1\r\nHost: {address}\r\ncontent-type: application/json\r\n\
                 content-length: 200\r\n\r\n{{\"request\""
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // Trickles no further; the server must answer on its own.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server held a trickling request for 30 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body: Value = serde_json::from_str(text.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap();
    assert_eq!(body["error"], "request_timeout", "{body}");
}

#[tokio::test]
async fn headers_trickled_a_byte_at_a_time_do_not_hold_the_connection() {
    let app =
        spawn_app_with(|settings| settings.request_timeout = Duration::from_millis(500)).await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!("POST {CAMPAIGNS} HTTP/1.1\r\nHost: {address}\r\n");
    writer.write_all(head.as_bytes()).await.unwrap();
    // One more header byte every 100 ms, never the blank line that ends the headers: a
    // timer restarted by each byte would never fire.
    let trickle = tokio::spawn(async move {
        for byte in b"x-trickle: ".iter().cycle() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut answer)).await;
    trickle.abort();
    assert!(read.is_ok(), "the server held trickling headers for 30 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "an answer other than 408: {text}"
    );
}
