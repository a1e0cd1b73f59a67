//! The use cases of the CRM service, independent of HTTP.
//!
//! `Crm` loads what it needs through the ports, asks the domain to decide, validates
//! every event (and outbound item) against its contract, and saves each change together
//! with its events as one unit. It knows nothing about actix, SQL or files.

pub mod adoption;
mod delivery;
mod drain;
mod error;
pub mod metrics;
mod sending;
mod service;
mod status;
pub mod worker;

pub use delivery::{MAX_CLAIM_LIMIT, MAX_LEASE, MIN_LEASE};
pub use drain::{DrainCommand, DrainReport, MAX_DRAIN_LIMIT};
pub use error::{AppError, MetadataOf};
pub use sending::PolicyInForce;
pub use service::{
    AdvanceCampaign, CommandStatus, Crm, MAX_FEED_WAIT, Outcome, ScheduleFollowUp, StartCampaign,
    now,
};
pub use status::{METRICS_CAP, STATUS_CAP, SendingStatus};
