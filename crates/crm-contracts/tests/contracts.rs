//! Checks the contracts in `contracts/` and the built-in workflows file: they compile, they
//! accept the documents the service produces, and they reject bad ones at the right pointer.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use crm_contracts::{Contract, Contracts, PROVIDER_ANSWERS_JSON, Violation, WORKFLOWS_JSON};
use serde_json::{Value, json};

static CONTRACTS: LazyLock<Contracts> =
    LazyLock::new(|| Contracts::load().expect("the built-in contracts load"));

const FIVE_CRM_EVENTS: [&str; 5] = [
    "crm.campaign.created",
    "crm.campaign.state.changed",
    "crm.followup.scheduled",
    "crm.followup.sent",
    "crm.followup.failed",
];

const CAMPAIGN_ID: &str = "7d0c7f6e-2f7a-4a5e-9c43-1f2b3c4d5e6f";
const FOLLOWUP_ID: &str = "0b6f1a2c-3d4e-4f50-8a61-7b8c9d0e1f2a";
const CORRELATION_ID: &str = "5f3e2d1c-0b9a-4876-a543-210fedcba987";

#[track_caller]
fn assert_valid(contract: Contract, instance: &Value) {
    if let Err(violations) = CONTRACTS.validate(contract, instance) {
        panic!("{contract:?} rejected a valid document: {violations:#?}\n{instance:#}");
    }
}

/// The pointers of the violations, which must exist.
#[track_caller]
fn rejected_at(contract: Contract, instance: &Value) -> Vec<String> {
    match CONTRACTS.validate(contract, instance) {
        Ok(()) => panic!("{contract:?} accepted an invalid document:\n{instance:#}"),
        Err(violations) => violations.into_iter().map(|v| v.pointer).collect(),
    }
}

fn campaign_create() -> Value {
    json!({"request": {
        "request_id": "3b241101-e2bb-4255-8caf-4136c566a962",
        "tenant_id": "tenant-a",
        "source_module": "mod-01-owner-concierge",
        "campaign": {"name": "Black Friday", "channel": "whatsapp"}
    }})
}

fn followup_create() -> Value {
    json!({"request": {
        "request_id": "9a7b6c5d-4e3f-4a1b-8c2d-3e4f5a6b7c8d",
        "tenant_id": "tenant-a",
        "source_module": "mod-05-faturamento-cobranca",
        "followup": {
            "phone_e164": "+5511999990000",
            "message": "Olá! Sua fatura vence amanhã.",
            "schedule_at": "2025-01-01T09:00:00.000Z"
        }
    }})
}

fn campaign_record() -> Value {
    json!({
        "campaign_id": CAMPAIGN_ID,
        "tenant_id": "tenant-a",
        "external_key": null,
        "name": "Black Friday",
        "channel": "whatsapp",
        "audience_segment": null,
        "state": "draft",
        "scheduled_at": null,
        "metadata": {},
        "created_at": "2025-01-01T09:00:00.000Z",
        "updated_at": "2025-01-01T09:00:00.000Z"
    })
}

fn followup_record() -> Value {
    json!({
        "followup_id": FOLLOWUP_ID,
        "tenant_id": "tenant-a",
        "campaign_id": CAMPAIGN_ID,
        "external_key": "invoice-42",
        "lead_id": null,
        "customer_id": null,
        "phone_e164": "+5511999990000",
        "message": "Olá!",
        "schedule_at": "2025-01-01T09:00:00.000Z",
        "channel": "whatsapp",
        "status": "failed",
        "provider_message_id": null,
        "last_error_code": "PROVIDER_SEND_ERROR",
        "last_error_message": "forced failure",
        "metadata": {"invoice": 42},
        "time_zone": "America/Sao_Paulo",
        "sender": "5511900000001",
        "delivery": null,
        "created_at": "2025-01-01T08:00:00.000Z",
        "updated_at": "2025-01-01T09:00:01.250Z"
    })
}

fn outbound_item() -> Value {
    json!({
        "queue_item_id": "c56a4180-65aa-42ec-a945-5fd21dec0538",
        "tenant_id": "tenant-a",
        "trace_id": "trace-0001",
        "correlation_id": CORRELATION_ID,
        "idempotency_key": format!("followup:{FOLLOWUP_ID}"),
        "context": {
            "type": "followup",
            "context_id": FOLLOWUP_ID,
            "task_id": CAMPAIGN_ID,
            "module_source": "mod-02-whatsapp-crm"
        },
        "recipient": {"phone_e164": "+5511999990000"},
        "message": {"type": "text", "text": "Olá!"},
        "retry_policy": {"max_attempts": 3, "backoff_ms": 500},
        "created_at": "2025-01-01T09:00:00.000Z"
    })
}

/// A valid event of one of the CRM names of the catalog.
fn event(name: &str) -> Value {
    let scheduled = json!({
        "followup_id": FOLLOWUP_ID,
        "campaign_id": null,
        "channel": "whatsapp",
        "schedule_at": "2025-01-01T09:00:00.000Z",
        "phone_e164": "+5511999990000"
    });
    let with = |extra: Value| {
        let mut payload = scheduled.clone();
        payload
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        payload
    };
    let (status, payload) = match name {
        "crm.campaign.created" => (
            "info",
            json!({"campaign_id": CAMPAIGN_ID, "channel": "whatsapp", "state": "draft", "scheduled_at": null}),
        ),
        "crm.campaign.state.changed" => (
            "info",
            json!({"campaign_id": CAMPAIGN_ID, "from_state": "draft", "to_state": "scheduled",
                   "reason_code": null}),
        ),
        "crm.followup.scheduled" => ("info", scheduled.clone()),
        "crm.followup.sent" => (
            "completed",
            with(json!({"provider_message_id": "c56a4180-65aa-42ec-a945-5fd21dec0538"})),
        ),
        "crm.followup.failed" => (
            "failed",
            with(json!({"error_code": "PROVIDER_SEND_ERROR", "retryable": true})),
        ),
        "crm.followup.delivery.accepted" => (
            "completed",
            json!({"followup_id": FOLLOWUP_ID, "campaign_id": null,
                   "queue_item_id": "c56a4180-65aa-42ec-a945-5fd21dec0538", "attempt": 1,
                   "provider_message_id": "wamid.HBgL", "error_code": null, "retryable": false}),
        ),
        "crm.followup.delivery.failed" => (
            "failed",
            json!({"followup_id": FOLLOWUP_ID, "campaign_id": CAMPAIGN_ID,
                   "queue_item_id": "c56a4180-65aa-42ec-a945-5fd21dec0538", "attempt": 2,
                   "provider_message_id": null, "error_code": "131026", "retryable": false}),
        ),
        "crm.followup.delivery.delivered" | "crm.followup.delivery.read" => (
            "completed",
            json!({"followup_id": FOLLOWUP_ID, "campaign_id": CAMPAIGN_ID,
                   "queue_item_id": "c56a4180-65aa-42ec-a945-5fd21dec0538", "attempt": 1,
                   "provider_message_id": "wamid.HBgL", "error_code": null, "retryable": false,
                   "at": "2025-01-01T09:00:02.000Z"}),
        ),
        "crm.followup.delivery.retrying" => (
            "info",
            json!({"followup_id": FOLLOWUP_ID, "campaign_id": CAMPAIGN_ID,
                   "queue_item_id": "c56a4180-65aa-42ec-a945-5fd21dec0538", "attempt": 1,
                   "provider_message_id": null, "error_code": "130429", "retryable": true,
                   "retry_at": "2025-01-01T09:00:01.000Z"}),
        ),
        "crm.optout.added" => (
            "info",
            json!({"phone_e164": "+5511999998888", "reason": "replied STOP", "source": "api"}),
        ),
        "crm.optout.removed" => (
            "info",
            json!({"phone_e164": "+5511999998888", "reason": null, "source": "api"}),
        ),
        other => panic!("no sample for event {other}"),
    };
    json!({
        "schema_version": "1.0.0",
        "kind": "event",
        "event_id": "1e2d3c4b-5a69-4788-9a0b-c1d2e3f4a5b6",
        "name": name,
        "tenant_id": "tenant-a",
        "source_module": "mod-02-whatsapp-crm",
        "target_module": "mod-01-owner-concierge",
        "emitted_at": "2025-01-01T09:00:00.000Z",
        "correlation_id": CORRELATION_ID,
        "trace_id": "trace-0001",
        "status": status,
        "payload": payload
    })
}

#[test]
fn every_contract_parses_and_compiles_with_its_own_id() {
    for &contract in Contract::ALL {
        let schema = CONTRACTS.schema(contract);
        let file = contract.file_name();
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{file}"
        );
        assert_eq!(
            schema["$id"],
            format!("https://contracts.crm.local/{file}"),
            "{file}"
        );
        assert!(schema["title"].is_string(), "{file} has no title");
        assert!(
            schema["description"].is_string(),
            "{file} has no description"
        );
    }
}

#[test]
fn every_file_in_the_contracts_folder_is_a_known_contract_or_the_catalog() {
    let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contracts");
    let on_disk: BTreeSet<String> = std::fs::read_dir(folder)
        .expect("contracts/ is readable")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut known: BTreeSet<String> = Contract::ALL
        .iter()
        .map(|contract| contract.file_name().to_owned())
        .collect();
    known.insert("event-catalog.json".to_owned());
    assert_eq!(on_disk, known);
}

#[test]
fn contracts_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Contracts>();
    assert!(format!("{:?}", *CONTRACTS).contains("campaign.record.schema.json"));
}

#[test]
fn the_catalog_lists_the_five_crm_events_as_mandatory() {
    let catalog = CONTRACTS.event_catalog();
    assert_eq!(catalog["module"], "mod-02-whatsapp-crm");
    let mandatory: Vec<&str> = catalog["mandatory"]
        .as_array()
        .expect("mandatory is a list")
        .iter()
        .map(|name| name.as_str().expect("event names are strings"))
        .collect();
    for name in FIVE_CRM_EVENTS {
        assert!(mandatory.contains(&name), "{name} is not mandatory");
    }
    let listed: Vec<&str> = catalog["events"]
        .as_array()
        .expect("events is a list")
        .iter()
        .map(|entry| entry["name"].as_str().expect("event names are strings"))
        .collect();
    for name in mandatory {
        assert!(listed.contains(&name), "{name} is mandatory but not listed");
    }
}

#[test]
fn each_catalog_entry_status_is_the_one_the_event_schema_demands() {
    for entry in CONTRACTS.event_catalog()["events"].as_array().unwrap() {
        let name = entry["name"].as_str().unwrap();
        let mut instance = event(name);
        instance["status"] = entry["status"].clone();
        assert_valid(Contract::EventEnvelope, &instance);
        for other in ["info", "accepted", "completed", "failed"] {
            if other != entry["status"] {
                instance["status"] = json!(other);
                assert_eq!(rejected_at(Contract::EventEnvelope, &instance), ["/status"]);
            }
        }
    }
}

#[test]
fn the_built_in_workflows_file_matches_its_schema() {
    let workflows: Value = serde_json::from_str(WORKFLOWS_JSON).expect("workflows.json is json");
    assert_valid(Contract::Workflows, &workflows);
}

#[test]
fn the_built_in_table_of_answers_matches_its_schema_and_the_spec_codes() {
    let table: Value = serde_json::from_str(PROVIDER_ANSWERS_JSON).expect("answers are json");
    assert_valid(Contract::ProviderAnswers, &table);
    let action_of = |code: &str| {
        table["answers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|answer| {
                answer["codes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c == code)
            })
            .map(|answer| answer["action"].as_str().unwrap().to_owned())
    };
    for (code, action) in [
        ("131048", "pause_campaign"),
        ("132015", "pause_campaign"),
        ("132016", "pause_campaign"),
        ("131050", "opt_out"),
        ("131026", "finish"),
        ("130403", "finish"),
        ("131049", "retry"),
        ("131056", "retry"),
        ("130429", "retry"),
    ] {
        assert_eq!(action_of(code).as_deref(), Some(action), "{code}");
    }
}

#[test]
fn a_table_of_answers_with_a_delay_on_a_final_action_breaks_the_schema() {
    let table = json!({"version": "1", "provider": "p", "answers": [
        {"codes": ["1"], "action": "finish", "not_before": {"ms": 5}}]});
    assert!(!rejected_at(Contract::ProviderAnswers, &table).is_empty());
    let both = json!({"version": "1", "provider": "p", "answers": [
        {"codes": ["1"], "action": "retry", "not_before": {"ms": 5, "growth": 2}}]});
    assert!(!rejected_at(Contract::ProviderAnswers, &both).is_empty());
}

#[test]
fn every_transition_references_only_its_own_workflows_states() {
    let workflows: Value = serde_json::from_str(WORKFLOWS_JSON).unwrap();
    for (name, workflow) in workflows["workflows"].as_object().unwrap() {
        let states: Vec<&Value> = workflow["states"].as_array().unwrap().iter().collect();
        if let Some(initial) = workflow.get("initial_state") {
            assert!(states.contains(&initial), "{name}: initial state {initial}");
        }
        let mut pairs = BTreeSet::new();
        for transition in workflow["transitions"].as_array().unwrap() {
            for end in ["from", "to"] {
                assert!(
                    states.contains(&&transition[end]),
                    "{name}: {transition} names an unknown state"
                );
            }
            assert!(
                pairs.insert((transition["from"].to_string(), transition["to"].to_string())),
                "{name}: {transition} repeats a from->to pair"
            );
        }
    }
}

#[test]
fn the_campaign_workflow_has_exactly_the_transitions_of_the_spec() {
    let workflows: Value = serde_json::from_str(WORKFLOWS_JSON).unwrap();
    let campaign = &workflows["workflows"]["campaign"];
    assert_eq!(campaign["initial_state"], "draft");
    let transitions: BTreeSet<(String, String, String)> = campaign["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let text = |key: &str| t[key].as_str().unwrap().to_owned();
            (text("from"), text("to"), text("trigger"))
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = [
        ("draft", "scheduled", "schedule_campaign"),
        ("scheduled", "running", "start_window_open"),
        ("scheduled", "canceled", "cancel_campaign"),
        ("running", "paused", "pause_campaign"),
        ("paused", "running", "resume_campaign"),
        ("running", "completed", "batch_finished"),
        ("running", "failed", "fatal_delivery_error"),
        ("paused", "canceled", "cancel_campaign"),
    ]
    .into_iter()
    .map(|(from, to, trigger)| (from.to_owned(), to.to_owned(), trigger.to_owned()))
    .collect();
    assert_eq!(transitions, expected);
}

#[test]
fn minimal_and_full_campaign_create_requests_are_valid() {
    assert_valid(Contract::CampaignCreate, &campaign_create());
    assert_valid(
        Contract::CampaignCreate,
        &json!({"request": {
            "request_id": "3b241101-e2bb-4255-8caf-4136c566a962",
            "tenant_id": "t",
            "source_module": "mod-02-whatsapp-crm",
            "correlation_id": CORRELATION_ID,
            "campaign": {
                "campaign_id": CAMPAIGN_ID,
                "external_key": "bf-2025",
                "name": "Black Friday",
                "channel": "whatsapp",
                "audience_segment": "vip",
                "state": "scheduled",
                "scheduled_at": "2025-11-28T12:00:00.000Z",
                "metadata": {"anything": ["goes", 1, null]}
            }
        }}),
    );
}

#[test]
fn a_campaign_state_update_request_is_valid() {
    assert_valid(
        Contract::CampaignStateUpdate,
        &json!({"request": {
            "request_id": "3b241101-e2bb-4255-8caf-4136c566a962",
            "tenant_id": "tenant-a",
            "source_module": "mod-01-owner-concierge",
            "changes": {
                "to_state": "scheduled",
                "trigger": "schedule_campaign",
                "reason_code": "owner_request",
                "metadata": {}
            }
        }}),
    );
}

#[test]
fn minimal_and_full_followup_create_requests_are_valid() {
    assert_valid(Contract::FollowUpCreate, &followup_create());
    let mut full = followup_create();
    full["request"]["followup"] = json!({
        "followup_id": FOLLOWUP_ID,
        "campaign_id": null,
        "external_key": "invoice-42",
        "lead_id": "2c1b0a99-8877-4665-9544-332211009988",
        "customer_id": null,
        "phone_e164": "+14155550100",
        "message": "x",
        "schedule_at": "2025-01-01T06:00:00-03:00",
        "channel": "whatsapp",
        "status": "pending",
        "metadata": {"invoice": 42}
    });
    assert_valid(Contract::FollowUpCreate, &full);
}

#[test]
fn empty_and_full_drain_requests_are_valid() {
    assert_valid(Contract::DrainRequest, &json!({}));
    assert_valid(
        Contract::DrainRequest,
        &json!({"limit": 500, "force_failure": true}),
    );
}

#[test]
fn an_outbound_item_as_the_worker_builds_it_is_valid() {
    assert_valid(Contract::OutboundQueueItem, &outbound_item());
    let mut with_ids = outbound_item();
    with_ids["recipient"] = json!({
        "phone_e164": "+5511999990000",
        "lead_id": "2c1b0a99-8877-4665-9544-332211009988",
        "customer_id": "4d3c2b1a-0f9e-48d7-b6c5-a4b3c2d1e0f9"
    });
    assert_valid(Contract::OutboundQueueItem, &with_ids);
}

#[test]
fn each_of_the_five_crm_events_is_valid() {
    for name in FIVE_CRM_EVENTS {
        assert_valid(Contract::EventEnvelope, &event(name));
    }
    let mut caused = event("crm.followup.sent");
    caused["causation_id"] = json!("6a5b4c3d-2e1f-4a0b-9c8d-7e6f5a4b3c2d");
    assert_valid(Contract::EventEnvelope, &caused);
}

#[test]
fn an_event_of_another_name_only_needs_a_valid_envelope() {
    let mut other = event("crm.campaign.created");
    other["name"] = json!("owner.command.accepted");
    other["status"] = json!("accepted");
    other["payload"] = json!({"free": "form"});
    assert_valid(Contract::EventEnvelope, &other);
}

#[test]
fn responses_as_the_service_returns_them_are_valid() {
    assert_valid(Contract::CampaignRecord, &campaign_record());
    assert_valid(
        Contract::CampaignCommandResponse,
        &json!({"response": {
            "request_id": "3b241101-e2bb-4255-8caf-4136c566a962",
            "status": "created",
            "campaign": campaign_record(),
            "orchestration": {"correlation_id": CORRELATION_ID, "lifecycle_event_name": "crm.campaign.created"}
        }}),
    );
    assert_valid(
        Contract::CampaignList,
        &json!({"tenant_id": "tenant-a", "count": 1, "items": [campaign_record()], "next_cursor": null}),
    );
    assert_valid(Contract::FollowUpRecord, &followup_record());
    assert_valid(
        Contract::FollowUpCommandResponse,
        &json!({"response": {
            "request_id": "9a7b6c5d-4e3f-4a1b-8c2d-3e4f5a6b7c8d",
            "status": "idempotent",
            "followup": followup_record(),
            "orchestration": {"correlation_id": CORRELATION_ID, "lifecycle_event_name": null}
        }}),
    );
    assert_valid(
        Contract::FollowUpList,
        &json!({"tenant_id": "tenant-a", "count": 1, "items": [followup_record()], "next_cursor": "opaque"}),
    );
    assert_valid(
        Contract::DrainResponse,
        &json!({
            "processed_count": 2, "succeeded_count": 1, "failed_count": 1, "skipped_count": 0,
            "processed": [
                {"followup_id": FOLLOWUP_ID, "status": "sent"},
                {"followup_id": CAMPAIGN_ID, "status": "failed", "reason": "PROVIDER_SEND_ERROR"}
            ]
        }),
    );
    assert_valid(
        Contract::TraceResponse,
        &json!({"correlation_id": CORRELATION_ID, "commands": [], "events": [event("crm.followup.scheduled"), event("crm.followup.sent")], "next_cursor": "e1_42"}),
    );
    assert_valid(Contract::ErrorResponse, &json!({"error": "not_found"}));
    assert_valid(
        Contract::ErrorResponse,
        &json!({"error": "validation_error", "details": [{"pointer": "/request", "message": "m"}]}),
    );
}

#[test]
fn a_request_id_that_is_not_a_uuid_is_rejected_at_its_pointer() {
    let mut request = campaign_create();
    request["request"]["request_id"] = json!("req-1");
    assert_eq!(
        rejected_at(Contract::CampaignCreate, &request),
        ["/request/request_id"]
    );
}

#[test]
fn a_schedule_at_that_is_not_rfc_3339_is_rejected_at_its_pointer() {
    for bad in [
        "tomorrow",
        "2025-13-01T00:00:00Z",
        "2025-01-01 09:00:00",
        "2025-01-01",
    ] {
        let mut request = followup_create();
        request["request"]["followup"]["schedule_at"] = json!(bad);
        assert_eq!(
            rejected_at(Contract::FollowUpCreate, &request),
            ["/request/followup/schedule_at"],
            "{bad}"
        );
    }
}

#[test]
fn a_phone_that_is_not_e164_is_rejected_at_its_pointer() {
    for bad in [
        "5511999990000",
        "+0511999990000",
        "+551199",
        "+55 11 99999 0000",
    ] {
        let mut request = followup_create();
        request["request"]["followup"]["phone_e164"] = json!(bad);
        assert_eq!(
            rejected_at(Contract::FollowUpCreate, &request),
            ["/request/followup/phone_e164"],
            "{bad}"
        );
    }
}

#[test]
fn an_unknown_property_is_rejected_at_every_level_of_a_request() {
    let mut top = campaign_create();
    top["extra"] = json!(1);
    assert_eq!(rejected_at(Contract::CampaignCreate, &top), [""]);

    let mut envelope = campaign_create();
    envelope["request"]["extra"] = json!(1);
    assert_eq!(
        rejected_at(Contract::CampaignCreate, &envelope),
        ["/request"]
    );

    let mut campaign = campaign_create();
    campaign["request"]["campaign"]["extra"] = json!(1);
    assert_eq!(
        rejected_at(Contract::CampaignCreate, &campaign),
        ["/request/campaign"]
    );

    let mut followup = followup_create();
    followup["request"]["followup"]["extra"] = json!(1);
    assert_eq!(
        rejected_at(Contract::FollowUpCreate, &followup),
        ["/request/followup"]
    );

    let mut item = outbound_item();
    item["context"]["extra"] = json!(1);
    assert_eq!(
        rejected_at(Contract::OutboundQueueItem, &item),
        ["/context"]
    );
}

#[test]
fn a_followup_from_module_05_is_accepted_but_a_campaign_from_it_is_not() {
    let mut campaign = campaign_create();
    campaign["request"]["source_module"] = json!("mod-05-faturamento-cobranca");
    assert_eq!(
        rejected_at(Contract::CampaignCreate, &campaign),
        ["/request/source_module"]
    );
}

#[test]
fn a_drain_limit_that_is_not_a_positive_integer_is_rejected() {
    for bad in [json!(0), json!(-1), json!("5"), json!(2.5), json!(null)] {
        assert_eq!(
            rejected_at(Contract::DrainRequest, &json!({"limit": bad})),
            ["/limit"],
            "{bad}"
        );
    }
}

#[test]
fn an_event_with_the_wrong_status_for_its_name_is_rejected_at_status() {
    let mut sent = event("crm.followup.sent");
    sent["status"] = json!("info");
    assert_eq!(rejected_at(Contract::EventEnvelope, &sent), ["/status"]);
}

#[test]
fn an_event_payload_missing_a_field_or_with_an_extra_one_is_rejected_at_payload() {
    let mut failed = event("crm.followup.failed");
    failed["payload"]
        .as_object_mut()
        .unwrap()
        .remove("retryable");
    assert_eq!(rejected_at(Contract::EventEnvelope, &failed), ["/payload"]);

    let mut created = event("crm.campaign.created");
    created["payload"]
        .as_object_mut()
        .unwrap()
        .remove("scheduled_at");
    assert_eq!(rejected_at(Contract::EventEnvelope, &created), ["/payload"]);

    let mut changed = event("crm.campaign.state.changed");
    changed["payload"]["note"] = json!("x");
    assert_eq!(rejected_at(Contract::EventEnvelope, &changed), ["/payload"]);
}

#[test]
fn an_outbound_item_with_a_foreign_idempotency_key_is_rejected() {
    let mut item = outbound_item();
    item["idempotency_key"] = json!(FOLLOWUP_ID);
    assert_eq!(
        rejected_at(Contract::OutboundQueueItem, &item),
        ["/idempotency_key"]
    );
}

#[test]
fn all_violations_are_reported_sorted_by_pointer_and_the_same_every_time() {
    let request = json!({"request": {
        "request_id": "nope",
        "tenant_id": "",
        "source_module": "mod-02-whatsapp-crm",
        "followup": {"phone_e164": "123", "message": "", "schedule_at": "tomorrow"},
        "zzz": true
    }, "aaa": true});
    let first = CONTRACTS
        .validate(Contract::FollowUpCreate, &request)
        .unwrap_err();
    let second = CONTRACTS
        .validate(Contract::FollowUpCreate, &request)
        .unwrap_err();
    assert_eq!(first, second);
    let pointers: Vec<&str> = first.iter().map(|v| v.pointer.as_str()).collect();
    assert_eq!(
        pointers,
        [
            "",
            "/request",
            "/request/followup/message",
            "/request/followup/phone_e164",
            "/request/followup/schedule_at",
            "/request/request_id",
            "/request/tenant_id",
        ]
    );
    assert!(
        first
            .iter()
            .all(|Violation { message, .. }| !message.is_empty())
    );
}

#[test]
fn records_and_events_referenced_from_other_files_are_checked_too() {
    let mut response = json!({"response": {
        "request_id": "3b241101-e2bb-4255-8caf-4136c566a962",
        "status": "updated",
        "campaign": campaign_record(),
        "orchestration": {"correlation_id": CORRELATION_ID, "lifecycle_event_name": null}
    }});
    response["response"]["campaign"]["state"] = json!("archived");
    response["response"]["campaign"]["created_at"] = json!("yesterday");
    assert_eq!(
        rejected_at(Contract::CampaignCommandResponse, &response),
        ["/response/campaign/created_at", "/response/campaign/state"]
    );

    let mut list = json!({"tenant_id": "tenant-a", "count": 1, "items": [followup_record()], "next_cursor": null});
    list["items"][0]["followup_id"] = json!("f-1");
    assert_eq!(
        rejected_at(Contract::FollowUpList, &list),
        ["/items/0/followup_id"]
    );

    let mut sent = event("crm.followup.sent");
    sent["status"] = json!("failed");
    let trace = json!({"correlation_id": CORRELATION_ID, "commands": [], "events": [event("crm.followup.scheduled"), sent], "next_cursor": null});
    assert_eq!(
        rejected_at(Contract::TraceResponse, &trace),
        ["/events/1/status"]
    );
}
