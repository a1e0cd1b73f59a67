//! The shared store suite against PostgreSQL, each check in a fresh schema.

use std::sync::{Arc, Mutex};

use crm_adapters_pg::testing::{database_url, drop_schema, fresh_store};
use crm_ports::Store;

#[tokio::test]
async fn the_postgres_store_passes_the_conformance_suite() {
    let Some(url) = database_url("the_postgres_store_passes_the_conformance_suite") else {
        return;
    };
    let schemas = Arc::new(Mutex::new(Vec::new()));
    crm_ports::conformance::run_all(|| {
        let url = url.clone();
        let schemas = schemas.clone();
        async move {
            let (store, options) = fresh_store(&url, "conformance").await;
            schemas.lock().unwrap().push(options.schema().to_owned());
            Arc::new(store) as Arc<dyn Store>
        }
    })
    .await;
    let schemas = schemas.lock().unwrap().clone();
    for schema in schemas {
        drop_schema(&url, &schema).await;
    }
}
