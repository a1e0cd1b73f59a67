use std::sync::Arc;

use crm_contracts::Contracts;
use crm_domain::campaign::CampaignState;
use crm_domain::follow_up::FollowUpStatus;
use crm_ports::adoption::{LegacyRecord, RecordRules, adopt};
use serde_json::{Value, json};

use super::LegacyRules;

fn rules() -> LegacyRules {
    LegacyRules::new(Arc::new(Contracts::load().expect("the contracts load")))
}

/// A campaign as the Node.js service wrote it.
fn campaign() -> Value {
    json!({
        "campaign_id": "8d3c2f4e-1b2a-4c5d-9e8f-0a1b2c3d4e5f",
        "tenant_id": "tenant-node",
        "external_key": "spring-sale",
        "name": "Spring sale",
        "channel": "whatsapp",
        "audience_segment": null,
        "state": "running",
        "scheduled_at": "2025-03-01T12:00:00.000Z",
        "metadata": {"owner": "ops"},
        "created_at": "2025-02-01T10:00:00.000Z",
        "updated_at": "2025-02-02T10:00:00.123Z"
    })
}

fn follow_up() -> Value {
    json!({
        "followup_id": "1f0e2d3c-4b5a-4697-8877-665544332211",
        "tenant_id": "tenant-node",
        "campaign_id": "8d3c2f4e-1b2a-4c5d-9e8f-0a1b2c3d4e5f",
        "external_key": "reminder-1",
        "lead_id": null,
        "customer_id": null,
        "phone_e164": "+5511999990001",
        "message": "See you tomorrow",
        "schedule_at": "2025-03-02T09:00:00.000Z",
        "channel": "whatsapp",
        "status": "sent",
        "provider_message_id": "wamid.HBgNNTUxMTk5OTk5MDAwMRUCABEYEjA",
        "last_error_code": null,
        "last_error_message": null,
        "metadata": {},
        "correlation_id": "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f",
        "trace_id": "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        "created_at": "2025-02-01T10:00:00.000Z",
        "updated_at": "2025-03-02T09:00:01.000Z"
    })
}

fn with(mut record: Value, field: &str, value: Value) -> Value {
    record[field] = value;
    record
}

fn without(mut record: Value, field: &str) -> Value {
    record.as_object_mut().expect("an object").remove(field);
    record
}

fn fields_of(problems: Vec<crm_ports::adoption::FieldProblem>) -> Vec<String> {
    problems.into_iter().map(|problem| problem.field).collect()
}

#[test]
fn a_valid_campaign_is_adopted_as_it_was_at_revision_one() {
    let adopted = rules().campaign(&campaign()).expect("adopted");

    assert_eq!(adopted.state, CampaignState::Running);
    assert_eq!(adopted.external_key.as_deref(), Some("spring-sale"));
    assert_eq!(adopted.updated_at.to_string(), "2025-02-02T10:00:00.123Z");
    assert_eq!(adopted.metadata["owner"], "ops");
    assert_eq!(adopted.revision, 1);
}

#[test]
fn fields_the_node_service_left_out_are_null() {
    let record = without(without(campaign(), "audience_segment"), "external_key");

    let adopted = rules().campaign(&record).expect("adopted");

    assert_eq!(
        (adopted.external_key, adopted.audience_segment),
        (None, None)
    );
}

#[test]
fn a_follow_up_keeps_its_trace_and_provider_message_id() {
    let adopted = rules().follow_up(&follow_up()).expect("adopted");

    assert_eq!(adopted.status, FollowUpStatus::Sent);
    assert_eq!(
        adopted.correlation_id.to_string(),
        "0c1d2e3f-4a5b-4c6d-8e7f-9a0b1c2d3e4f"
    );
    assert_eq!(adopted.trace_id, "9f8e7d6c5b4a39281706f5e4d3c2b1a0");
    assert_eq!(
        adopted.provider_message_id.as_deref(),
        Some("wamid.HBgNNTUxMTk5OTk5MDAwMRUCABEYEjA")
    );
    assert_eq!((adopted.time_zone, adopted.delivery), (None, None));
}

#[test]
fn a_missing_correlation_or_trace_id_gets_a_fresh_one() {
    let record = with(
        without(follow_up(), "trace_id"),
        "correlation_id",
        Value::Null,
    );

    let first = rules().follow_up(&record).expect("adopted");
    let second = rules().follow_up(&record).expect("adopted");

    assert_ne!(first.correlation_id, second.correlation_id);
    assert!(first.trace_id.len() >= 8);
    assert_ne!(first.trace_id, second.trace_id);
}

#[test]
fn each_broken_rule_names_its_field() {
    let rules = rules();
    let campaign_cases = [
        (with(campaign(), "state", json!("archived")), "/state"),
        (
            with(campaign(), "campaign_id", json!("c-17")),
            "/campaign_id",
        ),
        (with(campaign(), "tenant_id", json!("")), "/tenant_id"),
        (
            with(campaign(), "created_at", json!("yesterday")),
            "/created_at",
        ),
        (
            with(campaign(), "updated_at", json!("+10000-01-01T00:00:00Z")),
            "/updated_at",
        ),
        (with(campaign(), "channel", json!("sms")), "/channel"),
        (with(campaign(), "metadata", json!([])), "/metadata"),
        (with(campaign(), "owner", json!("ops")), "/owner"),
        (without(campaign(), "name"), ""),
        (json!(["not", "a", "record"]), ""),
    ];
    for (record, field) in campaign_cases {
        let problems = rules.campaign(&record).expect_err("refused");
        assert!(
            fields_of(problems.clone()).contains(&field.to_owned()),
            "{field}: {problems:?}"
        );
    }
    let follow_up_cases = [
        (with(follow_up(), "status", json!("queued")), "/status"),
        (
            with(follow_up(), "phone_e164", json!("11 99999-0001")),
            "/phone_e164",
        ),
        (
            with(follow_up(), "schedule_at", json!("2025-13-01T00:00:00Z")),
            "/schedule_at",
        ),
        (
            with(follow_up(), "correlation_id", json!("abc")),
            "/correlation_id",
        ),
        (with(follow_up(), "trace_id", json!("short")), "/trace_id"),
        (with(follow_up(), "message", json!("")), "/message"),
    ];
    for (record, field) in follow_up_cases {
        let problems = rules.follow_up(&record).expect_err("refused");
        assert!(
            fields_of(problems.clone()).contains(&field.to_owned()),
            "{field}: {problems:?}"
        );
    }
}

#[test]
fn metadata_over_the_limit_is_refused() {
    let big = "x".repeat(crm_domain::metadata::MAX_METADATA_BYTES);
    let record = with(campaign(), "metadata", json!({ "notes": big }));

    let problems = rules().campaign(&record).expect_err("refused");

    assert_eq!(fields_of(problems), ["/metadata"]);
}

fn records(origin: &str, items: Vec<Value>) -> Vec<LegacyRecord> {
    items
        .into_iter()
        .enumerate()
        .map(|(index, json)| LegacyRecord {
            origin: origin.to_owned(),
            index,
            json,
        })
        .collect()
}

#[test]
fn the_set_is_adopted_when_every_record_passes() {
    let adopted = adopt(
        &records("campaigns.json", vec![campaign()]),
        &records("followups.json", vec![follow_up()]),
        &rules(),
    )
    .expect("adopted");

    assert_eq!((adopted.campaigns.len(), adopted.follow_ups.len()), (1, 1));
}

#[test]
fn ids_shared_by_tenants_duplicate_keys_and_unknown_campaigns_are_each_reported() {
    let other_tenant = with(
        with(campaign(), "tenant_id", json!("tenant-other")),
        "external_key",
        json!("other-key"),
    );
    let same_key = with(
        campaign(),
        "campaign_id",
        json!("5a5a5a5a-1b2a-4c5d-9e8f-0a1b2c3d4e5f"),
    );
    let orphan = with(
        with(
            follow_up(),
            "followup_id",
            json!("7e7e7e7e-4b5a-4697-8877-665544332211"),
        ),
        "campaign_id",
        json!("6b6b6b6b-1b2a-4c5d-9e8f-0a1b2c3d4e5f"),
    );
    let orphan = with(orphan, "external_key", json!("reminder-2"));
    let bad_phone = with(
        with(
            follow_up(),
            "followup_id",
            json!("9c9c9c9c-4b5a-4697-8877-665544332211"),
        ),
        "phone_e164",
        json!("0"),
    );

    let report = adopt(
        &records("campaigns.json", vec![campaign(), other_tenant, same_key]),
        &records("followups.json", vec![follow_up(), orphan, bad_phone]),
        &rules(),
    )
    .expect_err("refused");

    let found: Vec<(String, usize, String)> = report
        .findings
        .iter()
        .map(|f| (f.origin.clone(), f.index, f.field.clone()))
        .collect();
    assert_eq!(
        found,
        [
            ("campaigns.json".to_owned(), 1, "/campaign_id".to_owned()),
            ("campaigns.json".to_owned(), 2, "/external_key".to_owned()),
            ("followups.json".to_owned(), 1, "/campaign_id".to_owned()),
            ("followups.json".to_owned(), 2, "/phone_e164".to_owned()),
        ]
    );
    let text = report.to_string();
    assert!(
        text.contains("campaigns.json item 1 (campaign_id 8d3c2f4e"),
        "{text}"
    );
    assert!(text.contains("also used by tenant tenant-node"), "{text}");
}
