//! Checks the OpenAPI document of `GET /openapi.json`: it is OpenAPI 3.1, it agrees with the
//! files in `contracts/`, its references resolve, and it describes every route with the
//! statuses and error words the server really gives.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use crm_api::error::Code;
use crm_api::openapi;
use crm_contracts::{Contract, Contracts};
use jsonschema::{Registry, Validator};
use serde_json::{Value, json};

static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let contracts = Contracts::load().expect("the built-in contracts load");
    openapi::document(&contracts)
});

const CONTRACTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contracts/");

/// Component name and contract file, written out here so that a renamed component or file
/// fails this test rather than silently following the code.
const COMPONENTS: [(&str, &str); 36] = [
    ("CampaignCreate", "campaign-create.request.schema.json"),
    (
        "CampaignStateUpdate",
        "campaign-state-update.request.schema.json",
    ),
    ("CampaignRecord", "campaign.record.schema.json"),
    (
        "CampaignCommandResponse",
        "campaign-command.response.schema.json",
    ),
    ("CampaignList", "campaign-list.response.schema.json"),
    ("FollowUpCreate", "followup-create.request.schema.json"),
    ("FollowUpFields", "followup.fields.schema.json"),
    ("FollowUpBatchRequest", "followup-batch.request.schema.json"),
    (
        "FollowUpBatchResponse",
        "followup-batch.response.schema.json",
    ),
    ("FollowUpRecord", "followup.record.schema.json"),
    (
        "FollowUpCommandResponse",
        "followup-command.response.schema.json",
    ),
    ("FollowUpList", "followup-list.response.schema.json"),
    ("DrainRequest", "drain.request.schema.json"),
    ("DrainResponse", "drain.response.schema.json"),
    ("TraceResponse", "trace.response.schema.json"),
    ("EventsFeed", "events-feed.response.schema.json"),
    ("OutboundClaimRequest", "outbound-claim.request.schema.json"),
    (
        "OutboundClaimResponse",
        "outbound-claim.response.schema.json",
    ),
    ("OutboundAckRequest", "outbound-ack.request.schema.json"),
    ("OutboundAckResponse", "outbound-ack.response.schema.json"),
    (
        "OutboundReceiptsRequest",
        "outbound-receipts.request.schema.json",
    ),
    (
        "OutboundReceiptsResponse",
        "outbound-receipts.response.schema.json",
    ),
    ("ErrorResponse", "error.response.schema.json"),
    ("OutboundQueueItem", "outbound-queue.schema.json"),
    ("EventEnvelope", "orchestration-event.schema.json"),
    ("CampaignResponse", "campaign.response.schema.json"),
    ("FollowUpResponse", "followup.response.schema.json"),
    ("FollowUpCancel", "followup-cancel.request.schema.json"),
    ("SendingPolicyRequest", "sending-policy.request.schema.json"),
    (
        "SendingPolicyResponse",
        "sending-policy.response.schema.json",
    ),
    ("OptOutRecord", "opt-out.record.schema.json"),
    ("OptOutCreate", "opt-out-create.request.schema.json"),
    (
        "OptOutCommandResponse",
        "opt-out-command.response.schema.json",
    ),
    ("OptOutList", "opt-out-list.response.schema.json"),
    ("OptOutRemoval", "opt-out-removal.response.schema.json"),
    (
        "SendingStatusResponse",
        "sending-status.response.schema.json",
    ),
];

/// Every route of the service: method, path, operationId, and the error statuses it can give.
const OPERATIONS: [(&str, &str, &str, &[u16]); 26] = [
    (
        "post",
        "/v1/crm/campaigns",
        "create_campaign",
        &[400, 401, 408, 409, 413, 500, 503],
    ),
    (
        "get",
        "/v1/crm/campaigns",
        "list_campaigns",
        &[400, 401, 500, 503],
    ),
    (
        "patch",
        "/v1/crm/campaigns/{campaign_id}/state",
        "advance_campaign",
        &[400, 401, 404, 408, 413, 500, 503],
    ),
    (
        "post",
        "/v1/crm/followups",
        "create_follow_up",
        &[400, 401, 408, 409, 413, 500, 503],
    ),
    (
        "post",
        "/v1/crm/followups/batch",
        "create_follow_ups",
        &[400, 401, 408, 413, 500, 503],
    ),
    (
        "get",
        "/v1/crm/followups",
        "list_follow_ups",
        &[400, 401, 500, 503],
    ),
    (
        "get",
        "/v1/crm/campaigns/{campaign_id}",
        "get_campaign",
        &[400, 401, 404, 500, 503],
    ),
    (
        "get",
        "/v1/crm/followups/{followup_id}",
        "get_follow_up",
        &[400, 401, 404, 500, 503],
    ),
    (
        "post",
        "/v1/crm/followups/{followup_id}/cancel",
        "cancel_follow_up",
        &[400, 401, 404, 408, 413, 500, 503],
    ),
    (
        "post",
        "/v1/crm/opt-outs",
        "add_opt_out",
        &[400, 401, 408, 413, 500, 503],
    ),
    (
        "get",
        "/v1/crm/opt-outs",
        "list_opt_outs",
        &[400, 401, 500, 503],
    ),
    (
        "delete",
        "/v1/crm/opt-outs/{phone_e164}",
        "remove_opt_out",
        &[400, 401, 500, 503],
    ),
    (
        "get",
        "/internal/tenants/{tenant_id}/sending-policy",
        "get_sending_policy",
        &[400, 401, 500, 503],
    ),
    (
        "put",
        "/internal/tenants/{tenant_id}/sending-policy",
        "put_sending_policy",
        &[400, 401, 408, 413, 500, 503],
    ),
    (
        "post",
        "/internal/worker/crm-followups/drain",
        "drain_follow_ups",
        &[400, 401, 408, 413, 500, 503],
    ),
    (
        "post",
        "/internal/outbound/claim",
        "claim_outbound_items",
        &[400, 401, 408, 413, 500, 503],
    ),
    (
        "post",
        "/internal/outbound/ack",
        "ack_outbound_items",
        &[400, 401, 408, 413, 500, 503],
    ),
    (
        "post",
        "/internal/outbound/receipts",
        "apply_delivery_receipts",
        &[400, 401, 408, 413, 500, 503],
    ),
    (
        "get",
        "/internal/orchestration/trace",
        "read_trace",
        &[400, 401, 500, 503],
    ),
    (
        "get",
        "/internal/orchestration/events",
        "read_event_feed",
        &[400, 401, 410, 500, 503],
    ),
    (
        "get",
        "/internal/tenants/{tenant_id}/sending-status",
        "get_sending_status",
        &[400, 401, 500, 503],
    ),
    (
        "delete",
        "/internal/tenants/{tenant_id}/sending-policy",
        "delete_sending_policy",
        &[400, 401, 500, 503],
    ),
    ("get", "/health", "check_health", &[400]),
    ("get", "/ready", "check_readiness", &[400, 503]),
    ("get", "/metrics", "read_metrics", &[400]),
    ("get", "/openapi.json", "read_openapi", &[400]),
];

/// The operations whose bodies are JSON contracts (not the one with no body, nor the
/// operations endpoints).
const CONTRACT_OPERATIONS: usize = 21;

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

const CAMPAIGN_ID: &str = "7d0c7f6e-2f7a-4a5e-9c43-1f2b3c4d5e6f";
const FOLLOWUP_ID: &str = "0b6f1a2c-3d4e-4f50-8a61-7b8c9d0e1f2a";
const CORRELATION_ID: &str = "5f3e2d1c-0b9a-4876-a543-210fedcba987";

fn operation(method: &str, path: &str) -> &'static Value {
    let operation = &DOCUMENT["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is not documented");
    operation
}

/// Every object in `value`, with its JSON pointer.
fn objects<'a>(value: &'a Value, at: &str, found: &mut Vec<(String, &'a Value)>) {
    match value {
        Value::Object(map) => {
            found.push((at.to_owned(), value));
            for (key, child) in map {
                let pointer = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                objects(child, &pointer, found);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                objects(item, &format!("{at}/{index}"), found);
            }
        }
        _ => {}
    }
}

fn read_contract_file(file: &str) -> Value {
    let text = std::fs::read_to_string(format!("{CONTRACTS_DIR}{file}"))
        .unwrap_or_else(|error| panic!("cannot read contracts/{file}: {error}"));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("contracts/{file}: {error}"))
}

/// A contract file as the document should carry it: without `$id` and `$schema`, and with
/// each `$ref` to a sibling file pointed at that file's component.
fn expected_component(file: &str) -> Value {
    fn rewrite(value: &mut Value, own: &str) {
        match value {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    if key == "$ref" {
                        let target = child.as_str().expect("a $ref is a string");
                        *child = json!(match target.strip_prefix('#') {
                            // A pointer into the contract itself stays below its component.
                            Some(pointer) => format!("#/components/schemas/{own}{pointer}"),
                            None => {
                                let (name, _) = COMPONENTS
                                    .iter()
                                    .find(|(_, file)| *file == target)
                                    .unwrap_or_else(|| panic!("$ref {target} names no component"));
                                format!("#/components/schemas/{name}")
                            }
                        });
                    } else {
                        rewrite(child, own);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| rewrite(item, own)),
            _ => {}
        }
    }
    let own = COMPONENTS
        .iter()
        .find(|(_, known)| *known == file)
        .map(|(name, _)| *name)
        .expect("a contract with a component");
    let mut schema = read_contract_file(file);
    let root = schema.as_object_mut().expect("a contract is an object");
    root.remove("$id");
    root.remove("$schema");
    rewrite(&mut schema, own);
    schema
}

/// Validators for `#/components/schemas/<name>` and any pointer into the document, compiled
/// by `jsonschema` against a registry holding the whole document.
struct Compiled {
    registry: Registry<'static>,
}

const DOCUMENT_URI: &str = "https://openapi.crm.local/openapi.json";

impl Compiled {
    fn new() -> Self {
        let registry = Registry::new()
            .add(DOCUMENT_URI, &*DOCUMENT)
            .expect("the document can be registered")
            .prepare()
            .expect("the document's references resolve");
        Self { registry }
    }

    fn at(&self, pointer: &str) -> Validator {
        jsonschema::options()
            .offline()
            .should_validate_formats(true)
            .with_registry(&self.registry)
            .build(&json!({ "$ref": format!("{DOCUMENT_URI}#{pointer}") }))
            .unwrap_or_else(|error| panic!("the schema at {pointer} does not compile: {error}"))
    }

    fn component(&self, name: &str) -> Validator {
        self.at(&format!("/components/schemas/{name}"))
    }
}

#[track_caller]
fn assert_accepts(validator: &Validator, what: &str, instance: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|error| format!("{}: {error}", error.instance_path().as_str()))
        .collect();
    assert!(errors.is_empty(), "{what} rejected {instance}: {errors:#?}");
}

#[track_caller]
fn assert_rejects(validator: &Validator, what: &str, instance: &Value) {
    assert!(
        !validator.is_valid(instance),
        "{what} accepted an invalid {instance}"
    );
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
        "status": "pending",
        "provider_message_id": null,
        "last_error_code": null,
        "last_error_message": null,
        "metadata": {},
        "time_zone": null,
        "sender": null,
        "delivery": null,
        "created_at": "2025-01-01T08:00:00.000Z",
        "updated_at": "2025-01-01T08:00:00.000Z"
    })
}

fn state_changed_event() -> Value {
    json!({
        "schema_version": "1.0.0",
        "kind": "event",
        "event_id": "1e2d3c4b-5a69-4788-9a0b-c1d2e3f4a5b6",
        "name": "crm.campaign.state.changed",
        "tenant_id": "tenant-a",
        "source_module": "mod-02-whatsapp-crm",
        "target_module": "mod-01-owner-concierge",
        "emitted_at": "2025-01-01T09:00:00.000Z",
        "correlation_id": CORRELATION_ID,
        "trace_id": "trace-0001",
        "status": "info",
        "payload": {"campaign_id": CAMPAIGN_ID, "from_state": "draft", "to_state": "scheduled"}
    })
}

#[test]
fn the_document_declares_openapi_3_1_and_the_dialect_of_the_contracts() {
    let version = DOCUMENT["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3.1."), "openapi is {version}");
    assert_eq!(DOCUMENT["jsonSchemaDialect"], openapi::JSON_SCHEMA_DIALECT);
    // Dropping `$schema` from the components is only sound if it says what the dialect says.
    for (_, file) in COMPONENTS {
        assert_eq!(
            read_contract_file(file)["$schema"],
            openapi::JSON_SCHEMA_DIALECT,
            "{file}"
        );
    }
}

#[test]
fn the_document_names_the_service_and_the_crate_version() {
    assert_eq!(DOCUMENT["info"]["title"], "CRM campaigns and follow-ups");
    assert_eq!(DOCUMENT["info"]["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn every_contract_but_the_data_files_is_a_component_named_after_its_variant() {
    for &contract in Contract::ALL {
        let expected = COMPONENTS
            .iter()
            .find(|(_, file)| *file == contract.file_name())
            .map(|(name, _)| *name);
        assert_eq!(openapi::component_name(contract), expected, "{contract:?}");
        if let Some(name) = expected {
            assert_eq!(name, format!("{contract:?}"));
        }
    }
    let documented: BTreeSet<&str> = DOCUMENT["components"]["schemas"]
        .as_object()
        .expect("components.schemas is an object")
        .keys()
        .map(String::as_str)
        .collect();
    let expected: BTreeSet<&str> = COMPONENTS.iter().map(|(name, _)| *name).collect();
    assert_eq!(documented, expected);
}

#[test]
fn every_component_schema_is_its_contract_file_with_only_ids_removed_and_refs_rewritten() {
    for (name, file) in COMPONENTS {
        assert_eq!(
            DOCUMENT["components"]["schemas"][name],
            expected_component(file),
            "component {name} and contracts/{file} disagree"
        );
    }
}

#[test]
fn every_ref_in_the_document_resolves_inside_it() {
    let mut objects_found = Vec::new();
    objects(&DOCUMENT, "", &mut objects_found);
    let found: Vec<(String, &str)> = objects_found
        .into_iter()
        .filter_map(|(at, object)| Some((at, object.get("$ref")?.as_str()?)))
        .collect();
    assert!(found.len() > 30, "only {} $refs found", found.len());
    for (at, reference) in found {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: $ref {reference} leaves the document"));
        assert!(
            DOCUMENT.pointer(pointer).is_some(),
            "{at}: $ref {reference} does not resolve"
        );
    }
}

/// Generators drop a schema whose array has no item type (an earlier `commands` did), so
/// every array in the document says what it holds.
#[test]
fn every_array_schema_in_the_document_declares_its_items() {
    let mut schemas = Vec::new();
    objects(&DOCUMENT, "", &mut schemas);
    let arrays: Vec<_> = schemas
        .into_iter()
        .filter(|(_, object)| match &object["type"] {
            Value::String(kind) => kind == "array",
            Value::Array(kinds) => kinds.iter().any(|kind| kind == "array"),
            _ => false,
        })
        .collect();
    assert!(
        arrays
            .iter()
            .any(|(at, _)| at.ends_with("/TraceResponse/properties/commands")),
        "the walk misses the trace's commands: {:?}",
        arrays.iter().map(|(at, _)| at).collect::<Vec<_>>()
    );
    for (at, array) in arrays {
        assert!(
            array.get("items").is_some_and(Value::is_object) || array.get("prefixItems").is_some(),
            "{at}: an array without items: {array}"
        );
    }
}

#[test]
fn path_items_use_only_http_method_keys() {
    for (path, item) in DOCUMENT["paths"].as_object().expect("paths is an object") {
        assert!(path.starts_with('/'), "{path}");
        for key in item.as_object().expect("a path item is an object").keys() {
            assert!(
                HTTP_METHODS.contains(&key.as_str()),
                "{path} has the key {key}"
            );
        }
    }
}

#[test]
fn the_document_lists_exactly_the_routes_of_the_service() {
    let mut documented = BTreeSet::new();
    for (path, item) in DOCUMENT["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.as_str(), path.as_str()));
        }
    }
    let expected: BTreeSet<(&str, &str)> = OPERATIONS
        .iter()
        .map(|(method, path, ..)| (*method, *path))
        .collect();
    assert_eq!(documented, expected);
}

#[test]
fn every_operation_has_its_operation_id_a_summary_and_a_success_response() {
    let mut ids = BTreeSet::new();
    for (method, path, id, _) in OPERATIONS {
        let operation = operation(method, path);
        assert_eq!(operation["operationId"], id, "{method} {path}");
        assert!(ids.insert(id), "operationId {id} repeats");
        assert!(operation["summary"].is_string(), "{id} has no summary");
        // A removal answers 204 with no body; everything else 200 with one.
        let (status, content) = if method == "delete" && path.starts_with("/internal/") {
            ("204", false)
        } else {
            ("200", true)
        };
        let ok = &operation["responses"][status];
        assert!(
            ok["description"].is_string(),
            "{id} has no {status} response"
        );
        assert_eq!(ok["content"].is_object(), content, "{id}'s {status}");
    }
}

#[test]
fn v1_and_internal_operations_take_their_bearer_token_or_none_and_document_401() {
    for (method, path, id, _) in OPERATIONS {
        let scheme = if path.starts_with("/v1/") {
            "api_token"
        } else if path.starts_with("/internal/") {
            "internal_token"
        } else {
            continue;
        };
        let operation = operation(method, path);
        assert_eq!(operation["security"], json!([{ scheme: [] }, {}]), "{id}");
        assert!(operation["responses"]["401"].is_object(), "{id} has no 401");
    }
    for scheme in ["api_token", "internal_token"] {
        assert_eq!(
            DOCUMENT["components"]["securitySchemes"][scheme]["type"],
            "http"
        );
        assert_eq!(
            DOCUMENT["components"]["securitySchemes"][scheme]["scheme"],
            "bearer"
        );
    }
}

#[test]
fn operations_endpoints_need_no_token() {
    assert!(DOCUMENT.get("security").is_none());
    for (method, path, id, _) in OPERATIONS
        .iter()
        .filter(|(_, path, ..)| !path.starts_with("/v1/") && !path.starts_with("/internal/"))
    {
        let operation = operation(method, path);
        assert!(operation.get("security").is_none(), "{id}");
        assert!(operation["responses"].get("401").is_none(), "{id}");
    }
}

#[test]
fn every_request_body_and_200_body_of_the_json_endpoints_references_a_component() {
    let is_component = |schema: &Value| {
        schema["$ref"]
            .as_str()
            .is_some_and(|reference| reference.starts_with("#/components/schemas/"))
    };
    let with_body = [
        "create_campaign",
        "advance_campaign",
        "create_follow_up",
        "create_follow_ups",
        "cancel_follow_up",
        "add_opt_out",
        "put_sending_policy",
        "ack_outbound_items",
        "apply_delivery_receipts",
    ];
    for (method, path, id, _) in &OPERATIONS[..CONTRACT_OPERATIONS] {
        let operation = operation(method, path);
        let ok = &operation["responses"]["200"]["content"]["application/json"]["schema"];
        assert!(is_component(ok), "{id}'s 200 body is {ok}");
        match operation.get("requestBody") {
            Some(body) => {
                let schema = &body["content"]["application/json"]["schema"];
                assert!(is_component(schema), "{id}'s request body is {schema}");
                let required = with_body.contains(id);
                assert_eq!(body["required"], required, "{id}");
            }
            None => assert!(["get", "delete"].contains(method), "{id} takes a body"),
        }
    }
    assert_eq!(
        operation("post", "/internal/worker/crm-followups/drain")["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/DrainRequest"
    );
}

#[test]
fn each_operation_documents_exactly_the_error_statuses_its_route_can_give() {
    for (method, path, id, statuses) in OPERATIONS {
        let documented: BTreeSet<u16> = operation(method, path)["responses"]
            .as_object()
            .unwrap()
            .keys()
            .map(|status| status.parse().expect("statuses are numbers"))
            .filter(|status| !(200..300).contains(status))
            .collect();
        let expected: BTreeSet<u16> = statuses.iter().copied().collect();
        assert_eq!(documented, expected, "{id}");
    }
}

#[test]
fn every_error_response_is_an_error_response_that_names_and_shows_its_words() {
    let compiled = Compiled::new();
    let error_response = compiled.component("ErrorResponse");
    let mut words_by_status: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for (method, path, id, statuses) in OPERATIONS {
        for status in statuses {
            let response = &operation(method, path)["responses"][status.to_string()];
            let media = &response["content"]["application/json"];
            assert_eq!(
                media["schema"]["$ref"], "#/components/schemas/ErrorResponse",
                "{id} {status}"
            );
            let description = response["description"].as_str().unwrap();
            let examples = media["examples"].as_object().unwrap();
            assert!(!examples.is_empty(), "{id} {status} shows no body");
            for example in examples.values() {
                let body = &example["value"];
                assert_accepts(&error_response, "ErrorResponse", body);
                let word = body["error"].as_str().unwrap();
                assert!(
                    description.contains(&format!("`{word}`")),
                    "{id} {status}: {description:?} does not describe {word}"
                );
                words_by_status
                    .entry(*status)
                    .or_default()
                    .insert(word.to_owned());
            }
        }
    }
    // Every word of the one table of error words, under its status, but the one the
    // router gives for a method a path does not serve (no operation has it).
    let mut expected: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for code in Code::ALL
        .iter()
        .filter(|code| **code != Code::MethodNotAllowed)
    {
        expected
            .entry(code.status().as_u16())
            .or_default()
            .insert(code.word().to_owned());
    }
    assert_eq!(words_by_status, expected);
}

#[test]
fn the_query_and_path_parameters_match_what_the_server_accepts() {
    let parameters = |method: &str, path: &str| -> BTreeMap<String, Value> {
        operation(method, path)["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|parameter| {
                (
                    parameter["name"].as_str().unwrap().to_owned(),
                    parameter.clone(),
                )
            })
            .collect()
    };
    let campaigns = parameters("get", "/v1/crm/campaigns");
    assert_eq!(
        campaigns.keys().collect::<Vec<_>>(),
        ["cursor", "limit", "state", "tenant_id"]
    );
    assert_eq!(campaigns["tenant_id"]["required"], true);
    assert_eq!(
        campaigns["tenant_id"]["schema"],
        json!({"type": "string", "minLength": 1})
    );
    assert_eq!(
        campaigns["state"]["schema"]["enum"],
        json!([
            "draft",
            "scheduled",
            "running",
            "paused",
            "completed",
            "canceled",
            "failed"
        ])
    );
    assert_eq!(campaigns["limit"]["schema"]["type"], "integer");
    assert_eq!(campaigns["limit"]["schema"]["minimum"], 1);
    assert!(
        campaigns["limit"]["description"]
            .as_str()
            .unwrap()
            .contains("1000")
    );
    assert_eq!(campaigns["cursor"]["schema"]["type"], "string");

    let follow_ups = parameters("get", "/v1/crm/followups");
    assert_eq!(
        follow_ups.keys().collect::<Vec<_>>(),
        ["campaign_id", "cursor", "limit", "status", "tenant_id"]
    );
    assert_eq!(
        follow_ups["status"]["schema"]["enum"],
        json!(["pending", "sent", "failed"])
    );
    assert_eq!(follow_ups["campaign_id"]["schema"]["format"], "uuid");
    assert_eq!(follow_ups["limit"], campaigns["limit"]);

    let trace = parameters("get", "/internal/orchestration/trace");
    assert_eq!(trace["correlation_id"]["required"], true);
    assert_eq!(
        trace["correlation_id"]["schema"],
        json!({"type": "string", "minLength": 1})
    );

    let patch = parameters("patch", "/v1/crm/campaigns/{campaign_id}/state");
    assert_eq!(patch["campaign_id"]["in"], "path");
    assert_eq!(patch["campaign_id"]["required"], true);
    // Any text reaches the handler: a non-uuid is a 404, not a 400.
    assert_eq!(patch["campaign_id"]["schema"], json!({"type": "string"}));
    assert!(
        operation("patch", "/v1/crm/campaigns/{campaign_id}/state")["responses"]["404"].is_object()
    );

    for (method, path, id, _) in OPERATIONS {
        for parameter in operation(method, path)["parameters"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let place = parameter["in"].as_str().unwrap();
            assert!(["query", "path"].contains(&place), "{id}: {parameter}");
            if place == "path" {
                let name = parameter["name"].as_str().unwrap();
                assert!(path.contains(&format!("{{{name}}}")), "{id}: {name}");
            }
        }
    }
}

#[test]
fn every_schema_in_the_document_compiles_and_judges_bodies_like_the_contracts() {
    let compiled = Compiled::new();
    for (name, _) in COMPONENTS {
        compiled.component(name);
    }
    // Each inline schema too: parameters, the operations endpoints' bodies.
    for (method, path, _, _) in OPERATIONS {
        // A JSON pointer in a URI fragment is percent-encoded: `{campaign_id}` is not a URI.
        let escaped = path
            .replace('~', "~0")
            .replace('/', "~1")
            .replace('{', "%7B")
            .replace('}', "%7D");
        let base = format!("/paths/{escaped}/{method}");
        let operation = operation(method, path);
        for index in 0..operation["parameters"].as_array().map_or(0, Vec::len) {
            compiled.at(&format!("{base}/parameters/{index}/schema"));
        }
        for (status, response) in operation["responses"].as_object().unwrap() {
            let Some(content) = response["content"].as_object() else {
                continue;
            };
            for media in content.keys() {
                let media = media.replace('~', "~0").replace('/', "~1");
                compiled.at(&format!("{base}/responses/{status}/content/{media}/schema"));
            }
        }
    }

    let campaign_create = json!({"request": {
        "request_id": "3b241101-e2bb-4255-8caf-4136c566a962",
        "tenant_id": "tenant-a",
        "source_module": "mod-01-owner-concierge",
        "campaign": {"name": "Black Friday", "channel": "whatsapp"}
    }});
    let create = compiled.component("CampaignCreate");
    assert_accepts(&create, "CampaignCreate", &campaign_create);
    let mut sms = campaign_create.clone();
    sms["request"]["campaign"]["channel"] = json!("sms");
    assert_rejects(&create, "CampaignCreate", &sms);
    let mut not_a_uuid = campaign_create.clone();
    not_a_uuid["request"]["request_id"] = json!("42");
    assert_rejects(&create, "CampaignCreate", &not_a_uuid);

    let follow_up_create = json!({"request": {
        "request_id": "9a7b6c5d-4e3f-4a1b-8c2d-3e4f5a6b7c8d",
        "tenant_id": "tenant-a",
        "source_module": "mod-05-faturamento-cobranca",
        "followup": {
            "phone_e164": "+5511999990000",
            "message": "Olá! Sua fatura vence amanhã.",
            "schedule_at": "2025-01-01T09:00:00.000Z"
        }
    }});
    let schedule = compiled.component("FollowUpCreate");
    assert_accepts(&schedule, "FollowUpCreate", &follow_up_create);
    let mut bad_phone = follow_up_create.clone();
    bad_phone["request"]["followup"]["phone_e164"] = json!("5511999990000");
    assert_rejects(&schedule, "FollowUpCreate", &bad_phone);

    let command_reply = json!({"response": {
        "request_id": "3b241101-e2bb-4255-8caf-4136c566a962",
        "status": "created",
        "campaign": campaign_record(),
        "orchestration": {"correlation_id": CORRELATION_ID, "lifecycle_event_name": "crm.campaign.created"}
    }});
    let reply = compiled.component("CampaignCommandResponse");
    assert_accepts(&reply, "CampaignCommandResponse", &command_reply);
    // The record is checked through the rewritten $ref.
    let mut broken_record = command_reply.clone();
    broken_record["response"]["campaign"]["state"] = json!("archived");
    assert_rejects(&reply, "CampaignCommandResponse", &broken_record);

    let list = json!({"tenant_id": "tenant-a", "count": 1, "items": [followup_record()], "next_cursor": null});
    assert_accepts(&compiled.component("FollowUpList"), "FollowUpList", &list);

    let trace = compiled.component("TraceResponse");
    let trace_reply = json!({"correlation_id": CORRELATION_ID, "commands": [], "events": [state_changed_event()], "next_cursor": null});
    assert_accepts(&trace, "TraceResponse", &trace_reply);
    // The event's if/then survived the move: a state change must have status info.
    let mut wrong_status = trace_reply.clone();
    wrong_status["events"][0]["status"] = json!("completed");
    assert_rejects(&trace, "TraceResponse", &wrong_status);

    let drain = compiled.component("DrainRequest");
    assert_accepts(&drain, "DrainRequest", &json!({}));
    assert_rejects(&drain, "DrainRequest", &json!({"limit": 0}));

    let health = compiled.at("/paths/~1health/get/responses/200/content/application~1json/schema");
    assert_accepts(&health, "health", &json!({"status": "ok"}));
    assert_rejects(&health, "health", &json!({"status": "ok", "uptime": 3}));
    let ready = compiled.at("/paths/~1ready/get/responses/200/content/application~1json/schema");
    for backend in ["file", "postgres"] {
        assert_accepts(
            &ready,
            "ready",
            &json!({"status": "ready", "backend": backend}),
        );
    }
    assert_rejects(
        &ready,
        "ready",
        &json!({"status": "ready", "backend": "memory"}),
    );
    assert_rejects(&ready, "ready", &json!({"status": "ready"}));
}
