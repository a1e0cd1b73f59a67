//! Opt-outs: phone numbers of a tenant that must receive nothing more.

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
