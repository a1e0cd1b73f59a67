//! The OpenAPI 3.1 document served at `GET /openapi.json`: every endpoint with its parameters,
//! bodies, security and error words, and the contracts of `contracts/` as component schemas.
//!
//! The component schemas are derived at run time from the loaded contracts, never copied: each
//! is its contract file without `$id` and `$schema`, with cross-file `$ref`s pointed at
//! `#/components/schemas/<Name>`, so the document and `contracts/` cannot drift apart.
//! The document is written with `serde_json` rather than utoipa: utoipa's typed `Schema` model
//! has no `if`/`then`/`const` fields, cannot hold `properties` beside `allOf` and drops unknown
//! keywords when it reads JSON, so the contracts could not be embedded without a lossy translation.
//!
//! It deliberately describes the routes and does not mount them: the route table stays in
//! `routes`, and `tests/openapi.rs` pins the documented routes, statuses and error words.

use std::collections::HashMap;

use crm_contracts::{Contract, Contracts};
use crm_domain::page::CURSOR_PATTERN;
use serde_json::{Map, Value, json};

/// The dialect of every schema in the document: the one the contracts declare in `$schema`.
pub const JSON_SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

const COMPONENT_SCHEMAS: &str = "#/components/schemas/";

/// The component name of a contract, PascalCase after its [`Contract`] variant; `None` for the
/// workflows file, which is configuration and never crosses the wire.
pub fn component_name(contract: Contract) -> Option<&'static str> {
    Some(match contract {
        Contract::CampaignCreate => "CampaignCreate",
        Contract::CampaignStateUpdate => "CampaignStateUpdate",
        Contract::CampaignRecord => "CampaignRecord",
        Contract::CampaignCommandResponse => "CampaignCommandResponse",
        Contract::CampaignList => "CampaignList",
        Contract::FollowUpCreate => "FollowUpCreate",
        Contract::FollowUpRecord => "FollowUpRecord",
        Contract::FollowUpCommandResponse => "FollowUpCommandResponse",
        Contract::FollowUpList => "FollowUpList",
        Contract::DrainRequest => "DrainRequest",
        Contract::DrainResponse => "DrainResponse",
        Contract::TraceResponse => "TraceResponse",
        Contract::ErrorResponse => "ErrorResponse",
        Contract::OutboundQueueItem => "OutboundQueueItem",
        Contract::EventEnvelope => "EventEnvelope",
        Contract::Workflows => return None,
    })
}

/// Builds the whole document; cheap enough to build once at start-up and serve as is.
pub fn document(contracts: &Contracts) -> Value {
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "info": {
            "title": "CRM campaigns and follow-ups",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Multi-tenant WhatsApp campaigns moving through a workflow-defined \
                state machine, follow-up messages scheduled per phone number, the worker drain \
                that hands due follow-ups to the outbound queue, and the orchestration events of \
                every change. All bodies are JSON; every error body is \
                `{\"error\": \"<code>\", \"details\": <optional>}`, never a stack trace. \
                No text, in a body or a query parameter, may contain the U+0000 character: \
                it cannot be stored, so it is `400 validation_error` wherever it appears."
        },
        "tags": [
            {"name": "campaigns", "description": "Create, transition and list campaigns."},
            {"name": "follow-ups", "description": "Schedule and list follow-up messages."},
            {"name": "worker", "description": "Dispatch due follow-ups to the outbound queue."},
            {"name": "orchestration", "description": "Read the events of one correlation id."},
            {"name": "operations", "description": "Liveness, readiness, metrics and this document."}
        ],
        "paths": paths(contracts),
        "components": {
            "schemas": component_schemas(contracts),
            "securitySchemes": {
                "api_token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token set with `--api-token` (`CRM_API_TOKEN`), \
                        required on `/v1/*` when configured."
                },
                "internal_token": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token set with `--internal-token` \
                        (`CRM_INTERNAL_TOKEN`), required on `/internal/*` when configured."
                }
            }
        }
    })
}

/// One component per contract, keyed by [`component_name`].
fn component_schemas(contracts: &Contracts) -> Map<String, Value> {
    // Every contract's `$id`, so that a `$ref` resolved against its base finds its component.
    let by_id: HashMap<&str, &'static str> = Contract::ALL
        .into_iter()
        .filter_map(|contract| {
            let id = contracts.schema(contract).get("$id")?.as_str()?;
            Some((id, component_name(contract)?))
        })
        .collect();
    Contract::ALL
        .into_iter()
        .filter_map(|contract| {
            let name = component_name(contract)?;
            let mut schema = contracts.schema(contract).clone();
            let base = schema
                .get("$id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let Some(root) = schema.as_object_mut() {
                root.remove("$id");
                root.remove("$schema");
            }
            rewrite_refs(&mut schema, &base, name, &by_id);
            Some((name.to_owned(), schema))
        })
        .collect()
}

/// Points every `$ref` of a contract that names a contract (by file name, by `$id`, or `#…` for
/// the contract itself) at the component of that contract, keeping any JSON-pointer fragment.
fn rewrite_refs(value: &mut Value, base: &str, own: &str, by_id: &HashMap<&str, &'static str>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(reference) if key == "$ref" => {
                        if let Some(rewritten) = component_ref(reference, base, own, by_id) {
                            *reference = rewritten;
                        }
                    }
                    _ => rewrite_refs(child, base, own, by_id),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_refs(item, base, own, by_id);
            }
        }
        _ => {}
    }
}

fn component_ref(
    reference: &str,
    base: &str,
    own: &str,
    by_id: &HashMap<&str, &'static str>,
) -> Option<String> {
    let (resource, fragment) = reference.split_once('#').unwrap_or((reference, ""));
    // Only a JSON pointer survives the move into the document; a named anchor would not.
    if !(fragment.is_empty() || fragment.starts_with('/')) {
        return None;
    }
    let name = if resource.is_empty() {
        own
    } else if resource.contains("://") {
        by_id.get(resource)?
    } else {
        let directory = &base[..base.rfind('/').map_or(0, |slash| slash + 1)];
        let file = resource.strip_prefix("./").unwrap_or(resource);
        by_id.get(format!("{directory}{file}").as_str())?
    };
    Some(format!("{COMPONENT_SCHEMAS}{name}{fragment}"))
}

/// Who may call an operation.
#[derive(Clone, Copy)]
enum Access {
    /// `/v1/*`: the API token when one is configured.
    Api,
    /// `/internal/*`: the internal token when one is configured.
    Internal,
    /// Operations endpoints: anyone who can reach the listener.
    Open,
}

/// One `error` word a response can carry, when it is sent, and the `details` that come with it.
struct Word {
    code: &'static str,
    when: &'static str,
    details: Option<Value>,
}

fn word(code: &'static str, when: &'static str) -> Word {
    Word {
        code,
        when,
        details: None,
    }
}

fn word_with(code: &'static str, when: &'static str, details: Value) -> Word {
    Word {
        code,
        when,
        details: Some(details),
    }
}

fn invalid_json() -> Word {
    word_with(
        "invalid_json",
        "the body is not JSON",
        json!({"message": "expected value at line 1 column 1"}),
    )
}

fn body_violation() -> Word {
    word_with(
        "validation_error",
        "the body breaks its contract (formats such as `uuid` and `date-time` are asserted); \
         `details` lists each violation with its JSON pointer",
        json!([{"pointer": "/request/request_id", "message": "\"x\" is not a \"uuid\""}]),
    )
}

fn query_violation(parameters: &'static str) -> Word {
    word_with(
        "validation_error",
        parameters,
        json!([{"parameter": "limit", "message": "must be a positive integer"}]),
    )
}

fn missing_tenant_id() -> Word {
    word(
        "missing_tenant_id",
        "the `tenant_id` query parameter is missing or empty",
    )
}

fn unauthorized() -> Word {
    word(
        "unauthorized",
        "a bearer token is configured for this route and the request's is missing or wrong",
    )
}

fn payload_too_large() -> Word {
    word_with(
        "payload_too_large",
        "the body is over the configured limit (`--body-limit`, 64 KiB by default)",
        json!({"limit_bytes": 65536}),
    )
}

fn storage_unavailable() -> Word {
    word(
        "storage_unavailable",
        "the store cannot be reached; the request changed nothing and may be retried",
    )
}

fn internal_error() -> Word {
    word(
        "internal_error",
        "an unexpected failure; the body carries no internals and the cause is logged",
    )
}

/// What an operation is, in the order the document shows it.
struct Operation {
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    description: &'static str,
    access: Access,
    parameters: Vec<Value>,
    request_body: Option<Value>,
    ok: Value,
    errors: Vec<(u16, Vec<Word>)>,
}

impl Operation {
    fn into_json(self) -> Value {
        let mut operation = json!({
            "operationId": self.id,
            "tags": [self.tag],
            "summary": self.summary,
            "description": self.description,
        });
        if !self.parameters.is_empty() {
            operation["parameters"] = Value::Array(self.parameters);
        }
        if let Some(body) = self.request_body {
            operation["requestBody"] = body;
        }
        let mut responses = Map::new();
        responses.insert("200".to_owned(), self.ok);
        for (status, words) in self.errors {
            responses.insert(status.to_string(), error_response(&words));
        }
        operation["responses"] = Value::Object(responses);
        let scheme = match self.access {
            Access::Api => Some("api_token"),
            Access::Internal => Some("internal_token"),
            Access::Open => None,
        };
        if let Some(scheme) = scheme {
            // The empty requirement says that a server started without tokens needs none.
            operation["security"] = json!([{ scheme: [] }, {}]);
        }
        operation
    }
}

/// An error response: `ErrorResponse`, with each possible word described and shown.
fn error_response(words: &[Word]) -> Value {
    let description = words
        .iter()
        .map(|word| format!("`{}`: {}.", word.code, word.when))
        .collect::<Vec<_>>()
        .join(" ");
    let examples: Map<String, Value> = words
        .iter()
        .enumerate()
        .map(|(index, word)| {
            let mut body = json!({ "error": word.code });
            if let Some(details) = &word.details {
                body["details"] = details.clone();
            }
            // Two rows may share a word (a body and a query `validation_error`).
            let key = if words[..index].iter().any(|other| other.code == word.code) {
                format!("{}_{index}", word.code)
            } else {
                word.code.to_owned()
            };
            (key, json!({ "summary": word.when, "value": body }))
        })
        .collect();
    json!({
        "description": description,
        "content": {
            "application/json": {
                "schema": component("ErrorResponse"),
                "examples": examples,
            }
        }
    })
}

fn component(name: &str) -> Value {
    json!({ "$ref": format!("{COMPONENT_SCHEMAS}{name}") })
}

fn json_response(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema } }
    })
}

fn json_body(description: &str, name: &str, required: bool) -> Value {
    json!({
        "description": description,
        "required": required,
        "content": { "application/json": { "schema": component(name) } }
    })
}

fn query(name: &str, required: bool, description: &str, schema: Value) -> Value {
    json!({
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    })
}

/// A property schema of a contract, so enums in parameters follow the contracts.
fn contract_property(contracts: &Contracts, contract: Contract, property: &str) -> Value {
    let mut schema = contracts.schema(contract)["properties"][property].clone();
    if let Some(map) = schema.as_object_mut() {
        map.remove("description");
    }
    schema
}

fn tenant_parameter() -> Value {
    query(
        "tenant_id",
        true,
        "The tenant whose records are listed; missing or empty is `400 missing_tenant_id`.",
        json!({"type": "string", "minLength": 1}),
    )
}

fn page_parameters() -> [Value; 2] {
    [
        query(
            "limit",
            false,
            "Page size, 100 by default; values above 1000 are served as 1000. \
             Zero or a non-integer is `400 validation_error`.",
            json!({"type": "integer", "minimum": 1, "default": 100}),
        ),
        query(
            "cursor",
            false,
            "The `next_cursor` of the previous page. Text of another shape is \
             `400 validation_error`.",
            json!({"type": "string", "pattern": CURSOR_PATTERN}),
        ),
    ]
}

/// The errors of a `/v1` or `/internal` route that reads or writes the store.
fn guarded(
    access_400: Vec<Word>,
    extra: Vec<(u16, Vec<Word>)>,
    has_body: bool,
) -> Vec<(u16, Vec<Word>)> {
    let mut errors = vec![(400, access_400), (401, vec![unauthorized()])];
    errors.extend(extra);
    if has_body {
        errors.push((413, vec![payload_too_large()]));
    }
    errors.push((500, vec![internal_error()]));
    errors.push((503, vec![storage_unavailable()]));
    errors.sort_by_key(|(status, _)| *status);
    errors
}

fn paths(contracts: &Contracts) -> Value {
    let campaign_state = contract_property(contracts, Contract::CampaignRecord, "state");
    let follow_up_status = contract_property(contracts, Contract::FollowUpRecord, "status");

    let create_campaign = Operation {
        id: "create_campaign",
        tag: "campaigns",
        summary: "Create a campaign (idempotent)",
        description: "Creates a WhatsApp campaign and emits `crm.campaign.created`. A repeat \
            with the same `(tenant_id, external_key)` or `(tenant_id, campaign_id)` returns \
            `idempotent` with the stored record unchanged and emits nothing.",
        access: Access::Api,
        parameters: vec![],
        request_body: Some(json_body("The campaign to create.", "CampaignCreate", true)),
        ok: json_response(
            "`created`, or `idempotent` for a repeat.",
            component("CampaignCommandResponse"),
        ),
        errors: guarded(
            vec![invalid_json(), body_violation()],
            vec![(
                409,
                vec![word(
                    "id_conflict",
                    "the `campaign_id` is already used by another tenant",
                )],
            )],
            true,
        ),
    };
    let list_campaigns = Operation {
        id: "list_campaigns",
        tag: "campaigns",
        summary: "List a tenant's campaigns",
        description: "One page of the tenant's campaigns, oldest first (`created_at`, then id).",
        access: Access::Api,
        parameters: [
            tenant_parameter(),
            query(
                "state",
                false,
                "Only campaigns in this state; an unknown state is `400 validation_error`.",
                campaign_state,
            ),
        ]
        .into_iter()
        .chain(page_parameters())
        .collect(),
        request_body: None,
        ok: json_response("One page of campaigns.", component("CampaignList")),
        errors: guarded(
            vec![
                missing_tenant_id(),
                query_violation(
                    "a query parameter has a bad value (unknown `state`, `limit` not a positive \
                     integer, a `cursor` this server did not issue, a malformed query string)",
                ),
            ],
            vec![],
            false,
        ),
    };
    let advance_campaign = Operation {
        id: "advance_campaign",
        tag: "campaigns",
        summary: "Transition a campaign",
        description: "Moves the campaign along the campaign workflow and emits \
            `crm.campaign.state.changed` (`updated`); a `to_state` equal to the current state is \
            an `idempotent` no-op that writes nothing and emits nothing.",
        access: Access::Api,
        parameters: vec![json!({
            "name": "campaign_id",
            "in": "path",
            "required": true,
            "description": "The campaign's id. Any text is accepted: one that is not a uuid \
                names no campaign and is `404 not_found`.",
            "schema": {"type": "string"}
        })],
        request_body: Some(json_body(
            "The state to move to and its trigger.",
            "CampaignStateUpdate",
            true,
        )),
        ok: json_response(
            "`updated`, or `idempotent` when `to_state` is the current state.",
            component("CampaignCommandResponse"),
        ),
        errors: guarded(
            vec![
                invalid_json(),
                body_violation(),
                word_with(
                    "transition_error",
                    "the workflow refuses the transition; `details.code` is one of \
                     `unknown_current_state`, `unknown_next_state`, `transition_not_allowed`, \
                     `missing_trigger`, `trigger_mismatch` (with `expected_trigger`)",
                    json!({"code": "trigger_mismatch", "expected_trigger": "schedule_campaign"}),
                ),
            ],
            vec![(
                404,
                vec![word(
                    "not_found",
                    "the tenant has no campaign with this id (other tenants' ids look the same, \
                     and so does an id that is not a uuid)",
                )],
            )],
            true,
        ),
    };
    let create_follow_up = Operation {
        id: "create_follow_up",
        tag: "follow-ups",
        summary: "Schedule a follow-up (idempotent)",
        description: "Schedules one WhatsApp message to a phone number at `schedule_at` and \
            emits `crm.followup.scheduled`. A repeat with the same `(tenant_id, external_key)` \
            or `(tenant_id, followup_id)` returns `idempotent` with the stored record unchanged \
            and emits nothing.",
        access: Access::Api,
        parameters: vec![],
        request_body: Some(json_body(
            "The follow-up to schedule.",
            "FollowUpCreate",
            true,
        )),
        ok: json_response(
            "`created`, or `idempotent` for a repeat.",
            component("FollowUpCommandResponse"),
        ),
        errors: guarded(
            vec![
                invalid_json(),
                body_violation(),
                word(
                    "campaign_not_found",
                    "the follow-up names a `campaign_id` the tenant does not have",
                ),
            ],
            vec![(
                409,
                vec![word(
                    "id_conflict",
                    "the `followup_id` is already used by another tenant",
                )],
            )],
            true,
        ),
    };
    let list_follow_ups = Operation {
        id: "list_follow_ups",
        tag: "follow-ups",
        summary: "List a tenant's follow-ups",
        description: "One page of the tenant's follow-ups, oldest first (`created_at`, then id), \
            optionally filtered by status and campaign.",
        access: Access::Api,
        parameters: [
            tenant_parameter(),
            query(
                "status",
                false,
                "Only follow-ups with this status; an unknown status is \
                 `400 validation_error`.",
                follow_up_status,
            ),
            query(
                "campaign_id",
                false,
                "Only follow-ups of this campaign; a value that is not a uuid is \
                 `400 validation_error`.",
                json!({"type": "string", "format": "uuid"}),
            ),
        ]
        .into_iter()
        .chain(page_parameters())
        .collect(),
        request_body: None,
        ok: json_response("One page of follow-ups.", component("FollowUpList")),
        errors: guarded(
            vec![
                missing_tenant_id(),
                query_violation(
                    "a query parameter has a bad value (unknown `status`, `campaign_id` not a \
                     uuid, `limit` not a positive integer, a `cursor` this server did not issue, \
                     a malformed query string)",
                ),
            ],
            vec![],
            false,
        ),
    };
    let drain_follow_ups = Operation {
        id: "drain_follow_ups",
        tag: "worker",
        summary: "Dispatch due follow-ups",
        description: "Takes due pending follow-ups (oldest `schedule_at` first), hands each to \
            the outbound queue exactly once and marks it `sent`, or `failed` when its outbound \
            item breaks the contract, `force_failure` is set or its campaign is canceled or \
            failed. Follow-ups of a paused campaign wait; an outage leaves them pending.",
        access: Access::Internal,
        parameters: vec![],
        request_body: Some(json_body(
            "Optional: an empty body means the defaults (`limit` 10, `force_failure` false); \
             a `limit` above 100 is served as 100.",
            "DrainRequest",
            false,
        )),
        ok: json_response(
            "What the drain did with each follow-up it took.",
            component("DrainResponse"),
        ),
        errors: guarded(vec![invalid_json(), body_violation()], vec![], true),
    };
    let read_trace = Operation {
        id: "read_trace",
        tag: "orchestration",
        summary: "Read the events of one correlation id",
        description: "The orchestration events of one correlation id, oldest first. `commands` \
            stays empty; it is kept for clients of the existing implementation.",
        access: Access::Internal,
        parameters: vec![
            query(
                "correlation_id",
                true,
                "The correlation id; missing or empty is `400 missing_correlation_id`, and text \
                 that is not a uuid simply has no events.",
                json!({"type": "string", "minLength": 1}),
            ),
            query(
                "tenant_id",
                false,
                "Only this tenant's events. Correlation ids come from clients, so a caller \
                 acting for one tenant should always say which.",
                json!({"type": "string", "minLength": 1}),
            ),
        ],
        request_body: None,
        ok: json_response("The events, oldest first.", component("TraceResponse")),
        errors: guarded(
            vec![
                word(
                    "missing_correlation_id",
                    "the `correlation_id` query parameter is missing or empty",
                ),
                query_violation("the query string is malformed"),
            ],
            vec![],
            false,
        ),
    };
    let check_health = Operation {
        id: "check_health",
        tag: "operations",
        summary: "Liveness",
        description: "The process is up; touches no storage.",
        access: Access::Open,
        parameters: vec![],
        request_body: None,
        ok: json_response(
            "The process is up.",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["status"],
                "properties": {"status": {"type": "string", "const": "ok"}}
            }),
        ),
        errors: vec![],
    };
    let check_readiness = Operation {
        id: "check_readiness",
        tag: "operations",
        summary: "Readiness",
        description: "The store can serve requests.",
        access: Access::Open,
        parameters: vec![],
        request_body: None,
        ok: json_response(
            "The store answered.",
            json!({
                "type": "object",
                "additionalProperties": false,
                "required": ["status", "backend"],
                "properties": {
                    "status": {"type": "string", "const": "ready"},
                    "backend": {"type": "string", "enum": ["file", "postgres"]}
                }
            }),
        ),
        errors: vec![(503, vec![storage_unavailable()])],
    };
    let read_metrics = Operation {
        id: "read_metrics",
        tag: "operations",
        summary: "Prometheus metrics",
        description: "Counters and histograms in the Prometheus text exposition format \
            (version 0.0.4).",
        access: Access::Open,
        parameters: vec![],
        request_body: None,
        ok: json!({
            "description": "The metrics, in the Prometheus text exposition format.",
            "content": {"text/plain": {"schema": {"type": "string"}}}
        }),
        errors: vec![],
    };
    let read_openapi = Operation {
        id: "read_openapi",
        tag: "operations",
        summary: "This OpenAPI document",
        description: "The OpenAPI 3.1 description of every endpoint, with the contracts of \
            `contracts/` as component schemas.",
        access: Access::Open,
        parameters: vec![],
        request_body: None,
        ok: json_response(
            "An OpenAPI 3.1 document.",
            json!({
                "type": "object",
                "required": ["openapi", "info", "paths", "components"],
                "properties": {"openapi": {"type": "string", "pattern": "^3\\.1\\.\\d+$"}}
            }),
        ),
        errors: vec![],
    };

    let routes = [
        ("/v1/crm/campaigns", "post", create_campaign),
        ("/v1/crm/campaigns", "get", list_campaigns),
        (
            "/v1/crm/campaigns/{campaign_id}/state",
            "patch",
            advance_campaign,
        ),
        ("/v1/crm/followups", "post", create_follow_up),
        ("/v1/crm/followups", "get", list_follow_ups),
        (
            "/internal/worker/crm-followups/drain",
            "post",
            drain_follow_ups,
        ),
        ("/internal/orchestration/trace", "get", read_trace),
        ("/health", "get", check_health),
        ("/ready", "get", check_readiness),
        ("/metrics", "get", read_metrics),
        ("/openapi.json", "get", read_openapi),
    ];
    let mut paths = Map::new();
    for (path, method, operation) in routes {
        let item = paths
            .entry(path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[method] = operation.into_json();
    }
    Value::Object(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> HashMap<&'static str, &'static str> {
        HashMap::from([
            (
                "https://contracts.crm.local/campaign.record.schema.json",
                "CampaignRecord",
            ),
            (
                "https://contracts.crm.local/trace.response.schema.json",
                "TraceResponse",
            ),
        ])
    }

    fn rewritten(reference: &str) -> Option<String> {
        component_ref(
            reference,
            "https://contracts.crm.local/trace.response.schema.json",
            "TraceResponse",
            &ids(),
        )
    }

    #[test]
    fn a_ref_to_a_sibling_file_or_its_id_points_at_its_component() {
        let expected = Some("#/components/schemas/CampaignRecord".to_owned());
        assert_eq!(rewritten("campaign.record.schema.json"), expected);
        assert_eq!(rewritten("./campaign.record.schema.json"), expected);
        assert_eq!(
            rewritten("https://contracts.crm.local/campaign.record.schema.json"),
            expected
        );
    }

    #[test]
    fn a_json_pointer_fragment_is_kept_below_the_component() {
        assert_eq!(
            rewritten("campaign.record.schema.json#/properties/state").as_deref(),
            Some("#/components/schemas/CampaignRecord/properties/state")
        );
        assert_eq!(
            rewritten("#/properties/events").as_deref(),
            Some("#/components/schemas/TraceResponse/properties/events")
        );
    }

    #[test]
    fn a_ref_to_no_known_contract_or_to_an_anchor_is_left_alone() {
        assert_eq!(rewritten("workflows.schema.json"), None);
        assert_eq!(rewritten("campaign.record.schema.json#state"), None);
        assert_eq!(
            rewritten("https://example.com/campaign.record.schema.json"),
            None
        );
    }
}
