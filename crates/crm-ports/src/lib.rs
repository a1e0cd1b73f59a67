//! The ports of the CRM service: what the use cases need from storage, as traits.
//!
//! A change and the events it causes are saved as one unit: every write method takes
//! the changed record *and* its events (and, for the drain, the outbound item), so an
//! adapter commits all of them or none. The event and outbound-queue ports then only
//! read what was committed.
//!
//! With the `conformance` feature this crate also exports the behaviour suite that every
//! store adapter must pass.

pub mod adoption;
pub mod drain;
pub mod events;
pub mod outbound;
pub mod store;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use drain::{
    Candidate, DispatchDecision, Dispatcher, DrainOutcome, DrainPlan, DrainStatus, DueEntry,
    DueFollowUp, HoldReason, Lane, LaneState, Limited, Planner, RecipientUsage, SendingFacts,
    SkipReason, Take, TenantUsage, UsageNeeds, Windows,
};
pub use events::{
    EventEmitter, EventPage, FeedPage, FeedQuery, SCAN_BUDGET, Scan, TraceQuery, bounded_page,
};
pub use outbound::{
    AckBatch, AckDecision, AckRequest, Acker, ClaimBatch, Effects, HeldCampaign, LeaseDecision,
    LeasedItem, Leaser, OutboundQueue, Pauser, ReceiptApplier, ReceiptBatch, ReceiptDecision,
    ack_decision, ack_holds, decide_acks, decide_claims, decide_receipts, receipt_decision,
    receipt_holds, window_needed,
};
pub use store::{
    BoxError, CampaignQuery, CampaignStore, CreateResult, Created, Expired, FollowUpQuery,
    FollowUpStore, NewOptOut, OptOutPage, OptOutQuery, OptOutStore, PolicyStore, Retention,
    Scheduled, Store, StoreError,
};
