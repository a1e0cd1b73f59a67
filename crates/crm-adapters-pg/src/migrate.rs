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
    // A migration may legitimately take longer than a request, and waiting for another
    // replica's migration is expected: no timeouts on this connection.
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .map_err(PgError::Migrate)?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(PgError::Migrate)?;
    // Only create a missing schema, under the lock: a role without CREATE on the
    // database can still run in a schema an administrator made for it.
    let exists: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
            &[&options.schema()],
        )
        .await
        .map_err(PgError::Migrate)?
        .get(0);
    if !exists {
        client
            .batch_execute(&format!("CREATE SCHEMA \"{}\"", options.schema()))
            .await
            .map_err(PgError::Migrate)?;
    }
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
