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

/// A page request over the whole event log, in commit order.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedQuery {
    /// `None`: from the oldest retained event.
    pub after: Option<EventCursor>,
    /// At least 1.
    pub limit: usize,
    pub tenant_id: Option<TenantId>,
    /// Only events whose name starts with this.
    pub name_prefix: Option<String>,
}

/// Events after the query's cursor, and where to continue: past every event looked at,
/// matching or not, so that the next call never looks at them again.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedPage {
    pub items: Vec<EventEnvelope>,
    pub next: EventCursor,
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

    /// One page of the event log after the query's cursor, in commit order: a reader that
    /// keeps following `next` sees every stored event once, each after every event that
    /// committed before it, whatever number of writers commit at once. A store may pass
    /// over at most `SCAN_BUDGET` events that do not match in one call.
    ///
    /// # Errors
    /// `CursorExpired` when retention removed events after the cursor; `CursorNotIssued`
    /// for a position past every event the store ever numbered; `Unavailable`.
    async fn read_feed(&self, query: &FeedQuery) -> Result<FeedPage, StoreError>;

    /// Returns once an event after `after` may have been committed, or after `wait`;
    /// never busy: it waits on a signal from the writers (any process's, for stores
    /// shared by replicas). Returning early without a new event is allowed.
    ///
    /// # Errors
    /// `Unavailable`.
    async fn wait_for_events(
        &self,
        after: EventCursor,
        wait: std::time::Duration,
    ) -> Result<(), StoreError>;
}

/// How many records a filtered read may pass over before it answers with what it found.
pub const SCAN_BUDGET: usize = 10_000;

/// What a bounded scan found: the matching items, the last position it looked at, and
/// whether it stopped before the end.
#[derive(Debug)]
pub struct Scan<T> {
    pub items: Vec<T>,
    pub last: Option<EventCursor>,
    pub more: bool,
}

impl<T> Scan<T> {
    /// Where a reader continues, when more may follow.
    pub fn next(&self) -> Option<EventCursor> {
        self.last.filter(|_| self.more)
    }
}

/// Takes matching items, in order, up to `limit`, passing over at most `SCAN_BUDGET`
/// items, so that a reader who keeps following the last position sees every match once.
pub fn bounded_page<T>(
    items: impl IntoIterator<Item = (u64, T)>,
    matches: impl Fn(&T) -> bool,
    limit: usize,
) -> Scan<T> {
    let mut found = Vec::new();
    let mut last = None;
    for (scanned, (position, item)) in items.into_iter().enumerate() {
        if found.len() == limit || scanned == SCAN_BUDGET {
            return Scan {
                items: found,
                last: last.map(EventCursor),
                more: true,
            };
        }
        last = Some(position);
        if matches(&item) {
            found.push(item);
        }
    }
    Scan {
        items: found,
        last: last.map(EventCursor),
        more: false,
    }
}
