//! The wire-format contracts of the CRM service, built into the binary.
//!
//! `contracts/` at the repository root is the single definition of every request, response,
//! outbound queue item and event; this crate embeds those JSON Schemas (draft 2020-12) with
//! `include_str!`, compiles each one once in [`Contracts::load`], and validates instances
//! against them with formats (`uuid`, `date-time`) asserted.
//! Cross-file `$ref`s (for example `{"$ref": "campaign.record.schema.json"}`) resolve through an
//! in-memory registry: loading never touches the network or the file system.
//!
//! It deliberately knows nothing about HTTP, storage or the domain types: callers hand it
//! `serde_json::Value`s and get back the violations with their JSON pointers.

use std::fmt;

use jsonschema::{Registry, Validator};
use serde_json::Value;

/// The built-in copy of `workflows/workflows.json`, used unless an operator points at another file.
pub const WORKFLOWS_JSON: &str = include_str!("../../../workflows/workflows.json");

/// The built-in copy of `workflows/provider-answers.json`, the table of what a provider's
/// error codes mean, used unless an operator points at another file.
pub const PROVIDER_ANSWERS_JSON: &str = include_str!("../../../workflows/provider-answers.json");

const EVENT_CATALOG_FILE: &str = "event-catalog.json";
const EVENT_CATALOG_JSON: &str = include_str!("../../../contracts/event-catalog.json");

/// Declares every contract once: its variant (also its OpenAPI component name), its file
/// in `contracts/`, and its place in [`Contract::ALL`].
macro_rules! contracts {
    ($($name:ident => $file:literal,)*) => {
        /// Every schema in `contracts/`, one per wire format.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Contract {
            $($name,)*
        }

        impl Contract {
            /// Every contract, in declaration order.
            pub const ALL: &'static [Contract] = &[$(Contract::$name,)*];

            /// The variant's name, PascalCase: the contract's name in the OpenAPI document.
            pub fn name(self) -> &'static str {
                match self {
                    $(Contract::$name => stringify!($name),)*
                }
            }

            /// The file name and the embedded text of the schema.
            fn embedded(self) -> (&'static str, &'static str) {
                match self {
                    $(Contract::$name => ($file, include_str!(concat!("../../../contracts/", $file))),)*
                }
            }
        }
    };
}

contracts! {
    CampaignCreate => "campaign-create.request.schema.json",
    CampaignStateUpdate => "campaign-state-update.request.schema.json",
    CampaignRecord => "campaign.record.schema.json",
    CampaignCommandResponse => "campaign-command.response.schema.json",
    CampaignList => "campaign-list.response.schema.json",
    FollowUpCreate => "followup-create.request.schema.json",
    FollowUpFields => "followup.fields.schema.json",
    FollowUpBatchRequest => "followup-batch.request.schema.json",
    FollowUpBatchResponse => "followup-batch.response.schema.json",
    FollowUpRecord => "followup.record.schema.json",
    FollowUpCommandResponse => "followup-command.response.schema.json",
    FollowUpList => "followup-list.response.schema.json",
    DrainRequest => "drain.request.schema.json",
    DrainResponse => "drain.response.schema.json",
    TraceResponse => "trace.response.schema.json",
    EventsFeed => "events-feed.response.schema.json",
    OutboundClaimRequest => "outbound-claim.request.schema.json",
    OutboundClaimResponse => "outbound-claim.response.schema.json",
    OutboundAckRequest => "outbound-ack.request.schema.json",
    OutboundAckResponse => "outbound-ack.response.schema.json",
    OutboundReceiptsRequest => "outbound-receipts.request.schema.json",
    OutboundReceiptsResponse => "outbound-receipts.response.schema.json",
    ErrorResponse => "error.response.schema.json",
    OutboundQueueItem => "outbound-queue.schema.json",
    EventEnvelope => "orchestration-event.schema.json",
    Workflows => "workflows.schema.json",
    ProviderAnswers => "provider-answers.schema.json",
    CampaignResponse => "campaign.response.schema.json",
    FollowUpResponse => "followup.response.schema.json",
    FollowUpCancel => "followup-cancel.request.schema.json",
    SendingPolicyRequest => "sending-policy.request.schema.json",
    SendingPolicyResponse => "sending-policy.response.schema.json",
    SendingStatusResponse => "sending-status.response.schema.json",
    OptOutRecord => "opt-out.record.schema.json",
    OptOutCreate => "opt-out-create.request.schema.json",
    OptOutCommandResponse => "opt-out-command.response.schema.json",
    OptOutList => "opt-out-list.response.schema.json",
    OptOutRemoval => "opt-out-removal.response.schema.json",
}

impl Contract {
    /// The schema's file name in `contracts/`, which is also the last segment of its `$id`.
    pub fn file_name(self) -> &'static str {
        self.embedded().0
    }

    /// Position in [`Contract::ALL`], used to index the compiled validators.
    fn index(self) -> usize {
        self as usize
    }
}

/// One way an instance breaks a contract.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Violation {
    /// JSON pointer of the offending instance location, `""` for the root.
    pub pointer: String,
    pub message: String,
}

/// Why the built-in contracts could not be loaded; each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("contract {file} is not valid json")]
    Parse {
        file: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("contract {file} has no string $id")]
    MissingId { file: &'static str },
    #[error("contract {file} cannot be registered")]
    Register {
        file: &'static str,
        #[source]
        source: Box<jsonschema::ReferencingError>,
    },
    #[error("a $ref between the contracts in contracts/ does not resolve")]
    Resolve {
        #[source]
        source: Box<jsonschema::ReferencingError>,
    },
    #[error("contract {file} does not compile: {message}")]
    Compile { file: &'static str, message: String },
}

/// The parsed and compiled contracts; build once with [`Contracts::load`] and share.
pub struct Contracts {
    /// Parsed schema documents, indexed like [`Contract::ALL`].
    schemas: Vec<Value>,
    /// Compiled validators, indexed like [`Contract::ALL`].
    validators: Vec<Validator>,
    event_catalog: Value,
}

impl Contracts {
    /// Parses and compiles every embedded contract once.
    ///
    /// # Errors
    ///
    /// Returns a [`ContractError`] naming the file that is not JSON, has no `$id` or does not
    /// compile, or, for a `$ref` to a file that is not in `contracts/`, the missing URI.
    pub fn load() -> Result<Contracts, ContractError> {
        let mut schemas = Vec::with_capacity(Contract::ALL.len());
        for &contract in Contract::ALL {
            let (file, text) = contract.embedded();
            let schema: Value = serde_json::from_str(text)
                .map_err(|source| ContractError::Parse { file, source })?;
            schemas.push(schema);
        }
        let event_catalog =
            serde_json::from_str(EVENT_CATALOG_JSON).map_err(|source| ContractError::Parse {
                file: EVENT_CATALOG_FILE,
                source,
            })?;

        let validators = compile(&schemas)?;

        Ok(Contracts {
            schemas,
            validators,
            event_catalog,
        })
    }

    /// Checks `instance` against `contract`.
    ///
    /// # Errors
    ///
    /// Returns every violation, sorted by pointer and then message, without duplicates, so the
    /// same instance always yields the same list.
    pub fn validate(&self, contract: Contract, instance: &Value) -> Result<(), Vec<Violation>> {
        let mut violations: Vec<Violation> = self.validators[contract.index()]
            .iter_errors(instance)
            .map(|error| Violation {
                pointer: error.instance_path().as_str().to_owned(),
                message: error.to_string(),
            })
            .collect();
        if violations.is_empty() {
            return Ok(());
        }
        violations.sort_by(|left, right| {
            (&left.pointer, &left.message).cmp(&(&right.pointer, &right.message))
        });
        violations.dedup();
        Err(violations)
    }

    /// The raw parsed schema document of `contract`.
    pub fn schema(&self, contract: Contract) -> &Value {
        &self.schemas[contract.index()]
    }

    /// The parsed `contracts/event-catalog.json`.
    pub fn event_catalog(&self) -> &Value {
        &self.event_catalog
    }
}

/// Compiles `schemas` (indexed like [`Contract::ALL`]) against a registry holding all of them,
/// so a `$ref` to a sibling file resolves in memory.
fn compile(schemas: &[Value]) -> Result<Vec<Validator>, ContractError> {
    let mut ids = Vec::with_capacity(schemas.len());
    let mut builder = Registry::new();
    for (contract, schema) in Contract::ALL.iter().copied().zip(schemas) {
        let file = contract.file_name();
        let id = schema
            .get("$id")
            .and_then(Value::as_str)
            .ok_or(ContractError::MissingId { file })?;
        builder = builder
            .add(id, schema)
            .map_err(|source| ContractError::Register {
                file,
                source: Box::new(source),
            })?;
        ids.push(id);
    }
    let registry = builder.prepare().map_err(|source| ContractError::Resolve {
        source: Box::new(source),
    })?;

    let mut validators = Vec::with_capacity(schemas.len());
    for ((contract, schema), id) in Contract::ALL.iter().copied().zip(schemas).zip(ids) {
        let validator = jsonschema::options()
            .offline()
            .should_validate_formats(true)
            .with_registry(&registry)
            .with_base_uri(id)
            .build(schema)
            .map_err(|error| ContractError::Compile {
                file: contract.file_name(),
                message: error.to_string(),
            })?;
        validators.push(validator);
    }
    Ok(validators)
}

impl fmt::Debug for Contracts {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let files: Vec<&str> = Contract::ALL.iter().map(|c| c.file_name()).collect();
        formatter
            .debug_struct("Contracts")
            .field("files", &files)
            .finish_non_exhaustive()
    }
}
