//! The event feed: events of one correlation (the trace), the feed read in order from a
//! cursor, and waiting for events past a cursor, woken by `LISTEN crm_events`.
//!
//! Events are written by the writers of the records they are about and expired by
//! `Store::expire` (`store.rs`), never here. A notification only wakes a waiter, which
//! then looks for itself: a lost notification delays an answer by a fallback step at
//! most, and never loses an event.

use std::time::Duration;

use async_trait::async_trait;
use crm_domain::event::EventEnvelope;
use crm_domain::page::EventCursor;
use crm_ports::{
    EventEmitter, EventPage, FeedPage, FeedQuery, SCAN_BUDGET, StoreError, TraceQuery, bounded_page,
};
use tokio::sync::watch;
use tokio_postgres::types::ToSql;

use crate::PgStore;
use crate::primary::{self, Connected, Timeline};
use crate::read::fetch_limit;
use crate::sql;
use crate::statement::{query_row, query_rows, query_value};
use crate::store::unavailable;

#[async_trait]
impl EventEmitter for PgStore {
    async fn events_by_correlation(&self, query: &TraceQuery) -> Result<EventPage, StoreError> {
        let after = position(query.after);
        // Enough rows to find out whether another page follows, or, for one tenant's
        // events, to pass over the most others one call may.
        let wanted = match query.tenant_id {
            None => query.limit,
            Some(_) => SCAN_BUDGET,
        };
        let fetch = fetch_limit(wanted);
        let params: [&(dyn ToSql + Sync); 3] = [&query.correlation_id.as_uuid(), &after, &fetch];
        let rows = self
            .read_call(async |client| {
                query_rows(&*client, sql::EVENTS_BY_CORRELATION, &params).await
            })
            .await?;
        let scan = bounded_page(
            numbered(&rows)?,
            |row| {
                query.tenant_id.as_ref().is_none_or(|tenant| {
                    row.try_get::<_, &str>("tenant_id").ok() == Some(tenant.as_str())
                })
            },
            query.limit,
        );
        Ok(EventPage {
            next: scan.next(),
            items: envelopes(&scan.items)?,
        })
    }

    async fn read_feed(&self, query: &FeedQuery) -> Result<FeedPage, StoreError> {
        let read = async |client: &mut deadpool_postgres::Object| {
            let bounds = query_row(&*client, sql::FEED_BOUNDS, &[]).await?;
            let deleted_through: i64 = bounds.try_get(0).map_err(unavailable)?;
            let last_issued: i64 = bounds.try_get(1).map_err(unavailable)?;
            let visible_through: i64 = bounds.try_get(2).map_err(unavailable)?;
            let start = query
                .after
                .map_or(deleted_through, |cursor| position(Some(cursor)));
            if start > last_issued {
                return Err(StoreError::CursorNotIssued);
            }
            if start < deleted_through {
                return Err(StoreError::CursorExpired {
                    oldest: EventCursor(u64::try_from(deleted_through).unwrap_or(0)),
                });
            }
            // One tenant's events come from its own index; otherwise the log is read in
            // order, passing over at most a budget of events that do not match.
            let fetch = fetch_limit(if query.name_prefix.is_some() {
                SCAN_BUDGET
            } else {
                query.limit
            });
            let rows = match &query.tenant_id {
                Some(tenant) => {
                    let params: [&(dyn ToSql + Sync); 3] = [&start, &fetch, &tenant.as_str()];
                    query_rows(&*client, sql::FEED_OF_TENANT, &params).await?
                }
                None => query_rows(&*client, sql::FEED, &[&start, &fetch]).await?,
            };
            // Retention may have run between the bounds and the rows: a page that lost
            // events to it is an expired cursor, not a page to move past them with.
            let deleted_through: i64 =
                query_value(&*client, sql::EVENTS_DELETED_THROUGH, &[]).await?;
            if start < deleted_through {
                return Err(StoreError::CursorExpired {
                    oldest: EventCursor(u64::try_from(deleted_through).unwrap_or(0)),
                });
            }
            Ok((start, visible_through, rows))
        };
        // A replica has not issued the numbers it has not replayed yet: a cursor past
        // them is read on the primary (whether or not the replica was the one asked).
        let (start, visible_through, rows) = match self.read_call(read).await {
            Err(StoreError::CursorNotIssued) if self.has_replica() => self.call(read).await,
            read => read,
        }?;
        let cursor = |seq: i64| EventCursor(u64::try_from(seq).unwrap_or(0));
        let scan = bounded_page(
            numbered(&rows)?,
            |row| {
                query.name_prefix.as_deref().is_none_or(|prefix| {
                    row.try_get::<_, &str>("name")
                        .is_ok_and(|name| name.starts_with(prefix))
                })
            },
            query.limit,
        );
        let mut next = scan.last.unwrap_or(cursor(start));
        // One tenant's events come from its own index, so the rows say nothing of the
        // others': a complete page moves the cursor past every event the bounds saw,
        // or a waiting reader would be woken again and again by other tenants' events.
        if query.tenant_id.is_some() && !scan.more {
            next = next.max(cursor(visible_through));
        }
        Ok(FeedPage {
            next,
            items: envelopes(&scan.items)?,
        })
    }

    async fn wait_for_events(&self, after: EventCursor, wait: Duration) -> Result<(), StoreError> {
        let mut notified = self.notifications();
        notified.borrow_and_update();
        let deadline = tokio::time::Instant::now() + wait;
        let after = position(Some(after));
        let exists = async |client: &mut deadpool_postgres::Object| -> Result<bool, StoreError> {
            query_value(&*client, sql::EVENT_AFTER, &[&after]).await
        };
        let mut primary_has_one = false;
        loop {
            if self.read_call(exists).await? {
                return Ok(());
            }
            // Woken by a commit's notification; the second-long step only matters while
            // the listening connection is down, and keeps the wait from ever being blind.
            // A standby cannot listen, and shows a commit only once it has replayed it:
            // while the primary has an event the standby does not show yet, the standby
            // is looked at every few milliseconds (for as long as it is fresh enough to
            // be read at all).
            // Once the primary has one, it keeps it: asked until then, and a primary that
            // cannot answer only leaves the pace at the fallback.
            primary_has_one = primary_has_one
                || (self.reads_replica() && self.call(exists).await.unwrap_or(false));
            let step = if primary_has_one && self.reads_replica() {
                REPLAY_STEP
            } else {
                NOTIFY_FALLBACK
            };
            let wake = (tokio::time::Instant::now() + step).min(deadline);
            match tokio::time::timeout_at(wake, notified.changed()).await {
                Ok(Ok(())) if self.reads_replica() => {}
                // Heard of a commit, or nothing more will be heard: let the caller read.
                Ok(_) => return Ok(()),
                Err(_) if tokio::time::Instant::now() >= deadline => return Ok(()),
                Err(_) => {}
            }
        }
    }
}

/// Listens for `crm_events` notifications on a connection of its own, reconnecting when
/// it drops, until no store handle is left to hear them.
pub(crate) async fn listen(
    config: tokio_postgres::Config,
    timeline: Timeline,
    schema: String,
    heard: watch::Sender<u64>,
) {
    let mut backoff = Duration::from_millis(100);
    while !heard.is_closed() {
        match primary::connect(&config, &timeline).await {
            Ok(Connected {
                client,
                task,
                notifications: mut received,
            }) => {
                if client.batch_execute("LISTEN crm_events").await.is_ok() {
                    backoff = Duration::from_millis(100);
                    // Commits made while no one listened: let waiters look once.
                    heard.send_modify(|count| *count += 1);
                    loop {
                        let payload = tokio::select! {
                            payload = received.recv() => payload,
                            () = heard.closed() => None,
                        };
                        match payload {
                            Some(payload) if payload == schema => {
                                heard.send_modify(|count| *count += 1);
                            }
                            Some(_) => {}
                            None => break,
                        }
                    }
                }
                drop(client);
                task.abort();
            }
            Err(error) => tracing::debug!(%error, "event listener cannot connect yet"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How often a feed waiter looks for itself while no notification comes.
const NOTIFY_FALLBACK: Duration = Duration::from_secs(1);

/// How often a feed waiter reading a standby looks again once a commit was heard of.
const REPLAY_STEP: Duration = Duration::from_millis(5);

/// A feed position as the database counts it.
fn position(cursor: Option<EventCursor>) -> i64 {
    i64::try_from(cursor.map_or(0, |cursor| cursor.0)).unwrap_or(i64::MAX)
}

/// Rows whose first column is the event number, paired with it.
fn numbered(rows: &[tokio_postgres::Row]) -> Result<Vec<(u64, &tokio_postgres::Row)>, StoreError> {
    rows.iter()
        .map(|row| {
            let seq: i64 = row.try_get("seq").map_err(unavailable)?;
            Ok((u64::try_from(seq).map_err(unavailable)?, row))
        })
        .collect()
}

fn envelopes(rows: &[&tokio_postgres::Row]) -> Result<Vec<EventEnvelope>, StoreError> {
    rows.iter()
        .map(|row| {
            let envelope: serde_json::Value = row.try_get("envelope").map_err(unavailable)?;
            serde_json::from_value(envelope).map_err(unavailable)
        })
        .collect()
}
