//! The day partitions of the event log and of finished outbound items (migration V9):
//! made ahead of time, made on demand when a row finds none, dropped by retention.
//!
//! The rules themselves (names, bounds, which day may still be made, what dropping events
//! does to the feed) are the SQL functions `crm_day_partition` and `crm_drop_partitions`;
//! this file decides when to call them.

use crm_ports::StoreError;
use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;

use crate::sql;
use crate::statement::{changed_rows_of, query_value};
use crate::store::unavailable;

/// The event log, kept in day partitions.
pub(crate) const EVENTS: &str = "crm_events";
/// Finished outbound items, kept in day partitions.
pub(crate) const FINISHED_ITEMS: &str = "crm_outbound_done";
pub(crate) const PARTITIONED: [&str; 2] = [EVENTS, FINISHED_ITEMS];

/// How many days, from today, have their partitions made before a write needs them.
const DAYS_AHEAD: i32 = 3;

/// At most this many partitions of a table go in one retention pass: each is a quick
/// catalog change and a count of at most 100,000 rows, and the pass holds the table's
/// lock until it commits. A pass that drops some is followed by another soon after.
const DROPPED_PER_PASS: i32 = 4;

/// How long a retention pass waits for the lock that detaching takes (queries of the
/// table running at the time hold it off), before it gives up until the next pass:
/// requests queued behind the waiting pass wait at most this long.
const LOCK_WAIT: &str = "SET LOCAL lock_timeout = '1s'";

/// A row that found no partition for its day: the table and the key, as the database
/// wrote it.
#[derive(Debug)]
pub(crate) struct Missing {
    table: String,
    key: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} had no day partition for {}", self.table, self.key)
    }
}

/// The partition a statement found missing, when that is why it failed.
pub(crate) fn missing(error: &StoreError) -> Option<Missing> {
    let StoreError::Unavailable(error) = error else {
        return None;
    };
    let db = error
        .downcast_ref::<tokio_postgres::Error>()?
        .as_db_error()?;
    let table = db.table().filter(|table| PARTITIONED.contains(table))?;
    if db.code() != &SqlState::CHECK_VIOLATION {
        return None;
    }
    // "Partition key of the failing row contains (emitted_at) = (2026-12-06 10:00:00+00)."
    let key = db.detail()?.rsplit_once("= (")?.1.strip_suffix(").")?;
    Some(Missing {
        table: table.to_owned(),
        key: key.to_owned(),
    })
}

/// Makes the partition `missing` names, or refuses when its day is one retention has
/// dropped events of (the refusal says so).
pub(crate) async fn make(client: &impl GenericClient, missing: &Missing) -> Result<(), StoreError> {
    tracing::info!(table = %missing.table, key = %missing.key, "making a missing day partition");
    match query_value::<String>(client, sql::PARTITION_FOR, &[&missing.table, &missing.key]).await {
        Ok(_) => Ok(()),
        // The refusal's own words, not the driver's summary of them.
        Err(StoreError::Unavailable(error)) => Err(unavailable(
            match error
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(tokio_postgres::Error::as_db_error)
            {
                Some(db) => format!("{missing}: {}", db.message()),
                None => format!("{missing}: {error}"),
            },
        )),
        Err(other) => Err(other),
    }
}

/// Makes the missing partitions of today and the next days (`DAYS_AHEAD`), by the
/// database's clock: at start-up and on every retention pass, so rarely enough that the
/// statement is not kept prepared.
pub(crate) async fn make_ahead(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    make_days(client, None, DAYS_AHEAD).await
}

/// Makes the missing partitions of `days` days from the day of `from` (the database's
/// clock when `None`), of every partitioned table.
pub(crate) async fn make_days(
    client: &tokio_postgres::Client,
    from: Option<OffsetDateTime>,
    days: i32,
) -> Result<(), StoreError> {
    client
        .query_one(sql::MAKE_DAYS, &[&&PARTITIONED[..], &from, &days])
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Before a retention pass drops anything: the coming days' partitions, and the items a
/// replica of the release before finished in place in the queue, moved to their day.
pub(crate) async fn prepare(client: &deadpool_postgres::Object) -> Result<u64, StoreError> {
    make_ahead(client).await?;
    changed_rows_of(client, sql::MOVE_FINISHED_ITEMS, &[]).await
}

/// Drops the days of `table` (`EVENTS` or `FINISHED_ITEMS`) that end by `cutoff`, in a
/// transaction of its own; the rows they held.
pub(crate) async fn drop_days(
    client: &mut deadpool_postgres::Object,
    table: &str,
    cutoff: OffsetDateTime,
) -> Result<u64, StoreError> {
    let transaction = client.transaction().await.map_err(unavailable)?;
    transaction
        .batch_execute(LOCK_WAIT)
        .await
        .map_err(unavailable)?;
    let rows: i64 = query_value(
        &transaction,
        sql::DROP_PARTITIONS,
        &[&table, &cutoff, &DROPPED_PER_PASS],
    )
    .await?;
    transaction.commit().await.map_err(unavailable)?;
    Ok(u64::try_from(rows).unwrap_or(0))
}
