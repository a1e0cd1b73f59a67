//! Running one statement: prepared once per connection, its rows read, and whatever the
//! driver reports turned into `StoreError::Unavailable`.
//!
//! These are the only places that prepare a cached statement and map the driver's
//! errors, so a call site names the statement and its parameters and nothing else. They
//! run on whatever client they are given (a pooled connection or a transaction) and
//! bound nothing themselves: the caller runs them inside `PgStore::call`.

use crm_ports::StoreError;
use deadpool_postgres::GenericClient;
use tokio_postgres::types::ToSql;

use crate::rows;
use crate::store::unavailable;

/// `query` prepared on `client`, once per connection: the pool keeps prepared statements
/// with the connection, so later calls skip the round trip.
pub(crate) async fn prepared(
    client: &impl GenericClient,
    query: &str,
) -> Result<tokio_postgres::Statement, StoreError> {
    client.prepare_cached(query).await.map_err(unavailable)
}

/// The rows of one statement, as the driver returns them.
pub(crate) async fn query_rows(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let statement = prepared(client, query).await?;
    client.query(&statement, params).await.map_err(unavailable)
}

/// The one row of a statement that always returns exactly one.
pub(crate) async fn query_row(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<tokio_postgres::Row, StoreError> {
    let statement = prepared(client, query).await?;
    client
        .query_one(&statement, params)
        .await
        .map_err(unavailable)
}

/// The first column of the one row of a statement that always returns exactly one.
pub(crate) async fn query_value<T>(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<T, StoreError>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let row = query_row(client, query, params).await?;
    row.try_get(0).map_err(unavailable)
}

/// The record of the row a statement returns, if it returns one.
pub(crate) async fn one<T>(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
    map: fn(&tokio_postgres::Row) -> Result<T, rows::RowError>,
) -> Result<Option<T>, StoreError> {
    let statement = prepared(client, query).await?;
    let row = client
        .query_opt(&statement, params)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(map).transpose().map_err(unavailable)
}

/// The records of every row a statement returns.
pub(crate) async fn all<T>(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
    map: fn(&tokio_postgres::Row) -> Result<T, rows::RowError>,
) -> Result<Vec<T>, StoreError> {
    query_rows(client, query, params)
        .await?
        .iter()
        .map(map)
        .collect::<Result<_, _>>()
        .map_err(unavailable)
}

/// Runs one write statement that ends in `SELECT count(*) FROM changed`.
pub(crate) async fn changed_rows(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<i64, StoreError> {
    query_value(client, query, params).await
}

/// Runs a write statement that returns no rows.
pub(crate) async fn changed_rows_of(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = prepared(client, query).await?;
    client
        .execute(&statement, params)
        .await
        .map_err(unavailable)
}
