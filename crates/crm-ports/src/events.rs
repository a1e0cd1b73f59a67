//! The event port. Events are written by the store together with the change that caused
//! them (see `store`); this side only reads what was committed.

use async_trait::async_trait;
use crm_domain::event::EventEnvelope;
use crm_domain::ids::CorrelationId;

use crate::store::StoreError;

#[async_trait]
pub trait EventEmitter: Send + Sync {
    /// Every committed event of one correlation id, oldest first (in commit order).
    ///
    /// # Errors
    /// `Unavailable`.
    async fn events_by_correlation(
        &self,
        correlation_id: CorrelationId,
    ) -> Result<Vec<EventEnvelope>, StoreError>;
}
