//! Schema migrations: the versioned SQL files of `migrations/`, built into the binary.
//!
//! Replicas starting together serialize on a PostgreSQL advisory lock, so exactly one of
//! them applies a migration and the others find it applied.

use tokio_postgres::NoTls;

use crate::store::{PgError, PgOptions};

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Any constant works as long as every replica uses the same one.
const MIGRATION_LOCK: i64 = 0x0c4d_0002;

/// Creates the schema if needed and applies every pending migration.
pub async fn migrate(options: &PgOptions) -> Result<(), PgError> {
    let config = options.pg_config()?;
    let (mut client, connection) = config.connect(NoTls).await.map_err(PgError::Connect)?;
    let connection = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "migration connection closed");
        }
    });
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
            options.schema()
        ))
        .await
        .map_err(PgError::Migrate)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(PgError::Migrate)?;
    let applied = embedded::migrations::runner()
        .set_migration_table_name("crm_schema_history")
        .run_async(&mut client)
        .await;
    // Unlock even when a migration failed; closing the connection would too.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = applied.map_err(|error| PgError::Refinery(error.to_string()))?;
    unlocked.map_err(PgError::Migrate)?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, schema = options.schema(), "migration applied");
    }
    drop(client);
    let _ = connection.await;
    Ok(())
}
