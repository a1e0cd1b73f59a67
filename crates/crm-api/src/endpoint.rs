//! What an endpoint is, declared once: method, path, who may call it, its parameters,
//! request and reply contracts, the error words it can answer with, and its handler.
//!
//! The declarations (`routes::ENDPOINTS`) drive routing, the bearer-token check, the
//! `405` answers with their `Allow` header and the OpenAPI document, so adding an endpoint
//! touches one list and its handler.

use actix_web::Route;
use actix_web::http::Method;
use crm_contracts::{Contract, Contracts};
use serde_json::Value;

use crate::error::Code;

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `/v1/*`: the API token, when one is configured.
    Api,
    /// `/internal/*`: the internal token, when one is configured.
    Internal,
    /// Operations endpoints: anyone who can reach the listener.
    Open,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Query,
    Path,
}

/// A query or path parameter, as documented.
#[derive(Debug)]
pub struct Parameter {
    pub name: &'static str,
    pub location: Location,
    pub required: bool,
    pub description: &'static str,
    /// Its JSON Schema; may read a property of a contract, so enums follow the contracts.
    pub schema: fn(&Contracts) -> Value,
}

/// A body's schema: a contract of `contracts/`, a small schema of its own (the
/// operations endpoints), or no body at all.
#[derive(Debug, Clone, Copy)]
pub enum Schema {
    Contract(Contract),
    Inline(fn() -> Value),
    NoBody,
}

/// Which configured limit a request body is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodySize {
    /// `--body-limit`, 64 KiB by default.
    #[default]
    Standard,
    /// `--batch-body-limit`, 4 MiB by default: a bulk create.
    Batch,
}

impl BodySize {
    /// The `413` of a body over this limit.
    fn too_large(self) -> Failure {
        match self {
            BodySize::Standard => {
                Failure::new(Code::PayloadTooLarge, Code::PayloadTooLarge.meaning())
            }
            BodySize::Batch => Failure {
                code: Code::PayloadTooLarge,
                when: "the body is over the configured limit of this route \
                    (`--batch-body-limit`, 4 MiB by default)",
                details: Some(|| serde_json::json!({"limit_bytes": 4_194_304})),
            },
        }
    }
}

#[derive(Debug)]
pub struct Body {
    pub size: BodySize,
    pub contract: Contract,
    pub required: bool,
    pub description: &'static str,
}

/// The success reply: its status (`200`, or `204` with no body) and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub description: &'static str,
    pub media_type: &'static str,
    pub schema: Schema,
}

/// An error word an endpoint can answer with, beyond the ones every endpoint of its kind
/// has (see `Endpoint::failures`), and when.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub when: &'static str,
    /// Example `details`, when they differ from the word's usual ones.
    pub details: Option<fn() -> Value>,
}

impl Failure {
    pub const fn new(code: Code, when: &'static str) -> Self {
        Self {
            code,
            when,
            details: None,
        }
    }
}

/// The `validation_error` of a query string, with its example.
pub const fn query_violation(when: &'static str) -> Failure {
    Failure {
        code: Code::ValidationError,
        when,
        details: Some(
            || serde_json::json!([{"parameter": "limit", "message": "must be a positive integer"}]),
        ),
    }
}

/// The groups of operations in the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Campaigns,
    FollowUps,
    OptOuts,
    Tenants,
    Worker,
    Outbound,
    Orchestration,
    Operations,
}

impl Tag {
    /// In the order the document lists them.
    pub const ALL: [Tag; 8] = [
        Tag::Campaigns,
        Tag::FollowUps,
        Tag::OptOuts,
        Tag::Tenants,
        Tag::Worker,
        Tag::Outbound,
        Tag::Orchestration,
        Tag::Operations,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Tag::Campaigns => "campaigns",
            Tag::FollowUps => "follow-ups",
            Tag::OptOuts => "opt-outs",
            Tag::Tenants => "tenants",
            Tag::Worker => "worker",
            Tag::Outbound => "outbound",
            Tag::Orchestration => "orchestration",
            Tag::Operations => "operations",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Tag::Campaigns => "Create, transition and list campaigns.",
            Tag::FollowUps => "Schedule, read, list and cancel follow-up messages.",
            Tag::OptOuts => "The numbers of a tenant that get nothing more.",
            Tag::Tenants => "A tenant's sending policy: its rate and its quiet hours.",
            Tag::Worker => "Dispatch due follow-ups to the outbound queue.",
            Tag::Outbound => "Lease outbound items to a sender and take its delivery results.",
            Tag::Orchestration => {
                "Read the stored events: by correlation id, or all in commit order."
            }
            Tag::Operations => "Liveness, readiness, metrics and this document.",
        }
    }
}

#[derive(Debug)]
pub struct Endpoint {
    pub method: Method,
    pub path: &'static str,
    pub access: Access,
    pub operation_id: &'static str,
    pub tag: Tag,
    pub summary: &'static str,
    pub description: &'static str,
    pub parameters: &'static [Parameter],
    pub body: Option<Body>,
    pub reply: Reply,
    /// The error words particular to this endpoint.
    pub errors: &'static [Failure],
    /// Whether it reads or writes the store (and so can be `503` or `500`).
    pub uses_store: bool,
    /// Mounts the handler on the route of this method.
    pub handler: fn(Route) -> Route,
}

impl Endpoint {
    /// Every error this endpoint can answer with: its own, then those of its kind (any
    /// query string can name what the route does not know; a guarded route can be `401`;
    /// a body can be malformed, too large or too slow; the store can be out of reach).
    pub fn failures(&self) -> Vec<Failure> {
        let mut failures: Vec<Failure> = self
            .errors
            .iter()
            .map(|failure| Failure {
                code: failure.code,
                when: failure.when,
                details: failure.details,
            })
            .collect();
        if let Some(body) = &self.body {
            failures.insert(
                0,
                Failure::new(Code::InvalidJson, Code::InvalidJson.meaning()),
            );
            failures.insert(
                1,
                Failure::new(
                    Code::ValidationError,
                    "the body breaks its contract (formats such as `uuid` and `date-time` are \
                     asserted); `details` lists each violation with its JSON pointer",
                ),
            );
            failures.push(Failure::new(
                Code::RequestTimeout,
                Code::RequestTimeout.meaning(),
            ));
            failures.push(body.size.too_large());
        }
        failures.push(query_violation(
            "the query string names a parameter this route does not declare, or a query or \
             path parameter does not decode as UTF-8 text",
        ));
        if self.access != Access::Open {
            failures.push(Failure::new(
                Code::Unauthorized,
                Code::Unauthorized.meaning(),
            ));
        }
        if self.uses_store {
            failures.push(Failure::new(
                Code::InternalError,
                Code::InternalError.meaning(),
            ));
            failures.push(Failure::new(
                Code::StorageUnavailable,
                Code::StorageUnavailable.meaning(),
            ));
        }
        failures
    }
}
