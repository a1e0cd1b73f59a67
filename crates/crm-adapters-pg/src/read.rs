//! Reading records back: pages and their keysets, a record its tenant owns, and the
//! record an idempotent create ran into.
//!
//! Nothing here decides what a port answers; each port's file does, with these. Running
//! a statement is `statement.rs`'s.

use crm_domain::ids::TenantId;
use crm_domain::page::{Cursor, Page};
use crm_ports::{Created, StoreError};
use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::PgStore;
use crate::rows;
use crate::statement::one;
use crate::store::unavailable;

impl PgStore {
    /// The record `by_id` finds for `id`, if `tenant_id` owns it (another tenant's is
    /// `None`, as an unknown one).
    pub(crate) async fn tenants<T: Send>(
        &self,
        tenant_id: &TenantId,
        by_id: &str,
        id: Uuid,
        map: fn(&tokio_postgres::Row) -> Result<T, rows::RowError>,
        owner: fn(&T) -> &TenantId,
    ) -> Result<Option<T>, StoreError> {
        let found = self
            .read_call(async |client| one(&*client, by_id, &[&id], map).await)
            .await?;
        Ok(found.filter(|record| owner(record) == tenant_id))
    }
}

/// How to find the stored record an idempotent create ran into.
pub(crate) struct Lookup<T> {
    pub(crate) by_id: &'static str,
    pub(crate) by_key: &'static str,
    pub(crate) map: fn(&tokio_postgres::Row) -> Result<T, rows::RowError>,
    pub(crate) tenant_of: fn(&T) -> &TenantId,
}

impl<T> Lookup<T> {
    /// The insert did nothing, so the id or the tenant's key is taken: by id first (an id
    /// of another tenant is a conflict), then by key.
    pub(crate) async fn repeated(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        tenant_id: &TenantId,
        external_key: &Option<String>,
    ) -> Result<Created<T>, StoreError> {
        if let Some(existing) = one(client, self.by_id, &[&id], self.map).await? {
            if (self.tenant_of)(&existing) != tenant_id {
                return Err(StoreError::IdConflict { id });
            }
            return Ok(Created::Existing(existing));
        }
        let by_key = one(
            client,
            self.by_key,
            &[&tenant_id.as_str(), external_key],
            self.map,
        )
        .await?;
        by_key
            .map(Created::Existing)
            .ok_or_else(|| unavailable("an insert conflicted with a row that is gone"))
    }
}

pub(crate) fn page<T>(items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> Cursor) -> Page<T> {
    let (items, next_cursor) = split_page(items, limit, cursor);
    Page { items, next_cursor }
}

/// The first `limit` of `items` (fetched one more than asked for), and where the next
/// page starts when there is one.
pub(crate) fn split_page<T, C>(
    mut items: Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> C,
) -> (Vec<T>, Option<C>) {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(cursor) } else { None };
    (items, next)
}

/// One more than asked for, to know whether another page follows.
pub(crate) fn fetch_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1
}

/// The keyset a page starts after: `after`, or before every record (a year no record
/// has).
pub(crate) fn keyset(after: Option<Cursor>) -> (OffsetDateTime, Uuid) {
    match after {
        Some(cursor) => (cursor.created_at.as_datetime(), cursor.id),
        None => (
            time::Date::from_calendar_date(-1, time::Month::January, 1)
                .expect("a valid date")
                .midnight()
                .assume_utc(),
            Uuid::nil(),
        ),
    }
}
