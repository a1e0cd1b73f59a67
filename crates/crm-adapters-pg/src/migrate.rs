//! Schema migrations: the versioned SQL files of `migrations/`, built into the binary.
//!
//! Replicas starting together serialize on a PostgreSQL advisory lock, so exactly one of
//! them applies a migration and the others find it applied.

use crm_ports::adoption::{AdoptionCheck, RecordRules};
use tokio_postgres::Client;

use crate::node::{self, Found};
use crate::store::{PgError, PgOptions};

mod embedded {
    refinery::embed_migrations!("../../migrations");
}

/// Any constant works as long as every replica uses the same one.
const MIGRATION_LOCK: i64 = 0x0c4d_0002;

/// Creates the schema if needed and applies every pending migration, adopting the
/// Node.js service's tables first when the schema holds them (which needs `legacy_rules`).
pub async fn migrate(
    options: &PgOptions,
    legacy_rules: Option<&dyn RecordRules>,
) -> Result<(), PgError> {
    let (mut client, connection) = connect(options).await?;
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
    let applied = match adopt_if_node(&mut client, legacy_rules).await {
        Ok(()) => runner()
            .run_async(&mut client)
            .await
            .map_err(|error| PgError::Refinery(error.to_string())),
        Err(error) => Err(error),
    };
    // Unlock even when a migration failed; closing the connection would too.
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = applied?;
    unlocked.map_err(PgError::Migrate)?;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, schema = options.schema(), "migration applied");
    }
    // The coming days' partitions, before the first write needs them (retention passes
    // make them too, and a write that finds none makes its own).
    crate::partitions::make_ahead(&client)
        .await
        .map_err(|error| PgError::Refinery(error.to_string()))?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// Applies the migrations up to `version` only, as an earlier release left the schema:
/// for tests of a later migration over data.
pub async fn migrate_through(options: &PgOptions, version: i32) -> Result<(), PgError> {
    let (mut client, connection) = connect(options).await?;
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"",
            options.schema()
        ))
        .await
        .map_err(PgError::Migrate)?;
    runner()
        .set_target(refinery::Target::Version(version))
        .run_async(&mut client)
        .await
        .map_err(|error| PgError::Refinery(error.to_string()))?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

fn runner() -> refinery::Runner {
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name("crm_schema_history");
    runner
}

/// A connection for migrating: a migration may legitimately take longer than a request,
/// and waiting for another replica's migration is expected, so no timeouts on it.
async fn connect(options: &PgOptions) -> Result<(Client, tokio::task::JoinHandle<()>), PgError> {
    let connected = options.connect().await?;
    connected
        .client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .map_err(PgError::Migrate)?;
    Ok((connected.client, connected.task))
}

/// Adopts the Node.js service's tables when the schema holds them, and records the first
/// migration as applied for tables adopted (now or by a start that stopped short).
async fn adopt_if_node(
    client: &mut Client,
    legacy_rules: Option<&dyn RecordRules>,
) -> Result<(), PgError> {
    match node::found(&*client).await.map_err(PgError::Migrate)? {
        Found::Usual => return Ok(()),
        Found::Node => node::adopt_tables(client, legacy_rules).await?,
        Found::AdoptedUnrecorded => {}
    }
    runner()
        .set_target(refinery::Target::FakeVersion(1))
        .run_async(client)
        .await
        .map_err(|error| PgError::Refinery(error.to_string()))?;
    Ok(())
}

/// What adopting the schema's tables would do, changing nothing.
pub async fn check_adoption(
    options: &PgOptions,
    legacy_rules: &dyn RecordRules,
) -> Result<AdoptionCheck, PgError> {
    let (mut client, connection) = connect(options).await?;
    let checked = node::check_tables(&mut client, legacy_rules).await;
    drop(client);
    let _ = connection.await;
    checked
}
