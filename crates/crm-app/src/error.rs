use crm_contracts::Violation;
use crm_domain::campaign::AdvanceError;
use crm_domain::follow_up::FollowUpStatus;
use crm_domain::metadata::MetadataTooLarge;
use crm_domain::page::EventCursor;
use crm_domain::workflow::TransitionRefusal;
use crm_ports::StoreError;

/// Why a use case refused or failed. The HTTP edge maps each variant to one status.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The workflow guard refused the transition.
    #[error("transition refused: {0}")]
    Transition(#[from] TransitionRefusal),
    /// The metadata of the request would make its record too large.
    #[error("{of:?} metadata: {error}")]
    MetadataTooLarge {
        of: MetadataOf,
        error: MetadataTooLarge,
    },
    /// The campaign to transition does not exist for this tenant.
    #[error("campaign not found")]
    NotFound,
    /// The follow-up is no longer pending (sent, or failed for another reason than a
    /// cancel): it cannot be canceled.
    #[error("the follow-up is {0}, not pending")]
    NotPending(FollowUpStatus),
    /// A follow-up names a campaign the tenant does not have.
    #[error("the follow-up names a campaign the tenant does not have")]
    CampaignNotFound,
    /// The id already belongs to another tenant.
    #[error("id already used by another tenant")]
    IdConflict,
    /// A feed cursor older than the retention window.
    #[error("the events after this cursor were removed by retention")]
    CursorExpired { oldest: EventCursor },
    /// A feed cursor the service never issued.
    #[error("the cursor is past every event")]
    CursorNotIssued,
    /// Storage is unavailable: a read returned nothing; a write's outcome is unknown, and
    /// repeating it with the same ids is safe.
    #[error("storage unavailable")]
    Unavailable(#[source] StoreError),
    /// Something we built ourselves broke its contract: a bug, never the client's fault.
    #[error("{what} breaks its contract: {violations:?}")]
    Internal {
        what: &'static str,
        violations: Vec<Violation>,
    },
}

impl From<StoreError> for AppError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::IdConflict { .. } => Self::IdConflict,
            StoreError::NotFound { .. } => Self::NotFound,
            StoreError::CursorExpired { oldest } => Self::CursorExpired { oldest },
            StoreError::CursorNotIssued => Self::CursorNotIssued,
            // A use case that can see `Stale` retries it; one that escapes is an outage of
            // the guarantee, reported as such rather than as the client's fault.
            StoreError::Stale { .. } | StoreError::Unavailable(_) => Self::Unavailable(error),
        }
    }
}

/// Which metadata of a request broke the size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataOf {
    Campaign,
    FollowUp,
    /// The metadata a transition merges into its campaign's.
    Changes,
}

impl From<AdvanceError> for AppError {
    fn from(error: AdvanceError) -> Self {
        match error {
            AdvanceError::Refused(refusal) => Self::Transition(refusal),
            AdvanceError::MetadataTooLarge(error) => Self::MetadataTooLarge {
                of: MetadataOf::Changes,
                error,
            },
        }
    }
}
