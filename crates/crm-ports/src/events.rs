//! The event port. Events are written by the store together with the change that caused
//! them (see `store`); this side only reads what was committed.

use async_trait::async_trait;
use crm_domain::event::EventEnvelope;
use crm_domain::ids::{CorrelationId, TenantId};
use crm_domain::page::EventCursor;

use crate::store::StoreError;

/// A page request over the events of one correlation id, in commit order.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceQuery {
    pub correlation_id: CorrelationId,
    /// Only this tenant's events, when given.
    pub tenant_id: Option<TenantId>,
    pub after: Option<EventCursor>,
    /// At least 1.
    pub limit: usize,
}

/// Events in commit order, and where to continue when more may follow.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub items: Vec<EventEnvelope>,
    pub next: Option<EventCursor>,
}

#[async_trait]
pub trait EventEmitter: Send + Sync {
    /// One page of the committed events of a correlation id, oldest first (commit order).
    /// A store may pass over at most `SCAN_BUDGET` events of other tenants in one call and
    /// answer with fewer items (even none) and a `next` to continue from.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn events_by_correlation(&self, query: &TraceQuery) -> Result<EventPage, StoreError>;
}

/// How many records a filtered read may pass over before it answers with what it found.
pub const SCAN_BUDGET: usize = 10_000;

/// Takes matching items, in order, up to `limit`, passing over at most `SCAN_BUDGET`
/// items. Returns them with the position of the last item looked at when more may follow,
/// so that a reader who keeps following it sees every match once.
pub fn bounded_page<T>(
    items: impl IntoIterator<Item = (u64, T)>,
    matches: impl Fn(&T) -> bool,
    limit: usize,
) -> (Vec<T>, Option<EventCursor>) {
    let mut found = Vec::new();
    let mut last = None;
    for (scanned, (position, item)) in items.into_iter().enumerate() {
        if found.len() == limit || scanned == SCAN_BUDGET {
            return (found, last.map(EventCursor));
        }
        last = Some(position);
        if matches(&item) {
            found.push(item);
        }
    }
    (found, None)
}
