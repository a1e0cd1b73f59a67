//! The outbound-queue port: the items the drain handed to the WhatsApp sender.
//!
//! Items are enqueued by the store in the same unit as the follow-up's status change
//! (`FollowUpStore::drain`), which is what makes the hand-off exactly-once; the sender,
//! and operators, read the queue through this trait.

use async_trait::async_trait;
use crm_domain::outbound::OutboundItem;

use crate::store::StoreError;

#[async_trait]
pub trait OutboundQueue: Send + Sync {
    /// Items in enqueue order, skipping the first `offset`, at most `limit`.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn outbound_items(
        &self,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<OutboundItem>, StoreError>;
}
