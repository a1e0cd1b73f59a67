//! Support for tests that need a real database: `CRM_TEST_DATABASE_URL` and a fresh
//! schema per test. Not used by the service itself.

use crate::{PgOptions, PgStore, migrate};

/// The test database URL, or `None` after saying the test is skipped. When `CI` is set a
/// missing URL is a failure: a skipped database test must never pass as green.
pub fn database_url(test: &str) -> Option<String> {
    match std::env::var("CRM_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!(
                "{test}: CRM_TEST_DATABASE_URL is not set, and CI requires the PostgreSQL tests to run"
            )
        }
        _ => {
            eprintln!("{test}: skipped, CRM_TEST_DATABASE_URL is not set");
            None
        }
    }
}

/// A schema name no other test uses.
pub fn fresh_schema(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A migrated store in a schema of its own.
pub async fn fresh_store(url: &str, prefix: &str) -> (PgStore, PgOptions) {
    let options = PgOptions::new(url, fresh_schema(prefix)).expect("valid test database options");
    migrate(&options)
        .await
        .expect("migrations apply to a fresh schema");
    (PgStore::new(&options).expect("pool builds"), options)
}

/// Drops a test schema and everything in it.
pub async fn drop_schema(url: &str, schema: &str) {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("test database reachable");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .await
        .expect("drop test schema");
}
