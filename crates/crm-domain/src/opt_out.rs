//! Opt-outs: phone numbers of a tenant that must receive nothing more, and the events
//! that tell other modules when one joins or leaves the list.

use crate::event::DomainEvent;
use crate::ids::TenantId;
use crate::timestamp::Timestamp;

/// One tenant's recipient who asked to receive nothing more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOut {
    pub tenant_id: TenantId,
    pub phone_e164: String,
    pub reason: Option<String>,
    pub created_at: Timestamp,
}

/// Who put a number on the list, or took it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptOutSource {
    /// The opt-out routes.
    Api,
    /// A sender's ack with `opt_out: true`.
    Ack,
    /// A provider's error code that means the person stopped such messages.
    Provider,
}

impl OptOutSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Ack => "ack",
            Self::Provider => "provider",
        }
    }
}

/// What an opt-out event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutFacts {
    pub phone_e164: String,
    pub reason: Option<String>,
    pub source: OptOutSource,
}

impl OptOut {
    /// The event of this number joining the list; stored only if it was not on it.
    pub fn added(&self, source: OptOutSource) -> DomainEvent {
        DomainEvent::OptOutAdded(OptOutFacts {
            phone_e164: self.phone_e164.clone(),
            reason: self.reason.clone(),
            source,
        })
    }
}

/// The event of `phone_e164` leaving the list; stored only if it was on it.
pub fn removed(phone_e164: &str, source: OptOutSource) -> DomainEvent {
    DomainEvent::OptOutRemoved(OptOutFacts {
        phone_e164: phone_e164.to_owned(),
        reason: None,
        source,
    })
}
