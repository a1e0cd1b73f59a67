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
//! The paths come from the endpoint declarations of `routes` (the same ones that mount the
//! handlers and guard them), and the error words and statuses from `error::Code`; the
//! tests in `tests/openapi.rs` pin the documented routes, statuses and error words.

use std::collections::{BTreeMap, HashMap};

use crm_contracts::{Contract, Contracts};
use serde_json::{Map, Value, json};

use crate::endpoint::{Access, Endpoint, Failure, Location, Schema, Tag};
use crate::routes;

/// The dialect of every schema in the document: the one the contracts declare in `$schema`.
pub const JSON_SCHEMA_DIALECT: &str = "https://json-schema.org/draft/2020-12/schema";

const COMPONENT_SCHEMAS: &str = "#/components/schemas/";

/// The component name of a contract (its [`Contract`] name); `None` for the data files
/// (workflows, the table of provider answers), which are configuration and never cross
/// the wire.
pub fn component_name(contract: Contract) -> Option<&'static str> {
    (!matches!(contract, Contract::Workflows | Contract::ProviderAnswers)).then(|| contract.name())
}

/// Builds the whole document; cheap enough to build once at start-up and serve as is.
pub fn document(contracts: &Contracts) -> Value {
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "servers": [{"url": "/", "description": "The server this document was read from."}],
        "info": {
            "title": "CRM campaigns and follow-ups",
            "version": env!("CARGO_PKG_VERSION"),
            "contact": {"name": "CRM service team"},
            "description": "Multi-tenant WhatsApp campaigns moving through a workflow-defined \
                state machine, follow-up messages scheduled per phone number, the worker drain \
                that hands due follow-ups to the outbound queue, and the orchestration events of \
                every change. All bodies are JSON; every error body is \
                `{\"error\": \"<code>\", \"details\": <optional>}`, never a stack trace. \
                No text, in a body or a query parameter, may contain the U+0000 character: \
                it cannot be stored, so it is `400 validation_error` wherever it appears."
        },
        "tags": Tag::ALL
            .iter()
            .map(|tag| json!({"name": tag.name(), "description": tag.description()}))
            .collect::<Vec<_>>(),
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
        .iter()
        .copied()
        .filter_map(|contract| {
            let id = contracts.schema(contract).get("$id")?.as_str()?;
            Some((id, component_name(contract)?))
        })
        .collect();
    Contract::ALL
        .iter()
        .copied()
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

/// The path item of every declared endpoint.
fn paths(contracts: &Contracts) -> Value {
    let mut paths = Map::new();
    for endpoint in routes::endpoints() {
        let item = paths
            .entry(endpoint.path)
            .or_insert_with(|| Value::Object(Map::new()));
        item[endpoint.method.as_str().to_ascii_lowercase()] = operation(endpoint, contracts);
    }
    Value::Object(paths)
}

fn operation(endpoint: &Endpoint, contracts: &Contracts) -> Value {
    let mut operation = json!({
        "operationId": endpoint.operation_id,
        "tags": [endpoint.tag.name()],
        "summary": endpoint.summary,
        "description": endpoint.description,
    });
    if !endpoint.parameters.is_empty() {
        operation["parameters"] = endpoint
            .parameters
            .iter()
            .map(|parameter| {
                json!({
                    "name": parameter.name,
                    "in": match parameter.location {
                        Location::Query => "query",
                        Location::Path => "path",
                    },
                    "required": parameter.required,
                    "description": parameter.description,
                    "schema": (parameter.schema)(contracts),
                })
            })
            .collect();
    }
    if let Some(body) = &endpoint.body {
        operation["requestBody"] = json!({
            "description": body.description,
            "required": body.required,
            "content": {"application/json": {"schema": schema(Schema::Contract(body.contract))}}
        });
    }
    let mut responses = Map::new();
    let mut success = json!({ "description": endpoint.reply.description });
    if let Some(body) = schema(endpoint.reply.schema) {
        success["content"] = json!({ endpoint.reply.media_type: { "schema": body } });
    }
    responses.insert(endpoint.reply.status.to_string(), success);
    let mut by_status: BTreeMap<u16, Vec<Failure>> = BTreeMap::new();
    for failure in endpoint.failures() {
        by_status
            .entry(failure.code.status().as_u16())
            .or_default()
            .push(failure);
    }
    for (status, failures) in by_status {
        responses.insert(status.to_string(), error_response(&failures));
    }
    operation["responses"] = Value::Object(responses);
    let scheme = match endpoint.access {
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

fn schema(schema: Schema) -> Option<Value> {
    match schema {
        Schema::Contract(contract) => {
            let name = component_name(contract).expect("wire contracts have components");
            Some(json!({ "$ref": format!("{COMPONENT_SCHEMAS}{name}") }))
        }
        Schema::Inline(schema) => Some(schema()),
        Schema::NoBody => None,
    }
}

/// An error response: `ErrorResponse`, with each possible word described and shown.
fn error_response(failures: &[Failure]) -> Value {
    let description = failures
        .iter()
        .map(|failure| format!("`{}`: {}.", failure.code.word(), failure.when))
        .collect::<Vec<_>>()
        .join(" ");
    let examples: Map<String, Value> = failures
        .iter()
        .enumerate()
        .map(|(index, failure)| {
            let mut body = json!({ "error": failure.code.word() });
            let details = failure
                .details
                .map(|details| details())
                .or_else(|| failure.code.example_details());
            if let Some(details) = details {
                body["details"] = details;
            }
            // Two rows may share a word (a body and a query `validation_error`).
            let word = failure.code.word();
            let key = if failures[..index]
                .iter()
                .any(|other| other.code == failure.code)
            {
                format!("{word}_{index}")
            } else {
                word.to_owned()
            };
            (key, json!({ "summary": failure.when, "value": body }))
        })
        .collect();
    json!({
        "description": description,
        "content": {
            "application/json": {
                "schema": {"$ref": format!("{COMPONENT_SCHEMAS}ErrorResponse")},
                "examples": examples,
            }
        }
    })
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
