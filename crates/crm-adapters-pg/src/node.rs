//! Adopting the tables of the Node.js service this one replaces.
//!
//! That service created `crm_campaigns` and `crm_followups` itself: the same names, no
//! `revision`, nullable `correlation_id` / `trace_id`, no status check, indexes of its own
//! and no events or outbound tables. Under the migration lock, in one transaction that
//! also locks both tables against its writes, every row is read and checked by the
//! application's rules; one broken rule rolls everything back with a report. Otherwise
//! `adopt_node.sql` brings the tables to what the first migration makes, and the first
//! migration is then recorded as applied (by refinery, in its own transaction: a crash
//! in between is recognised at the next start by tables that have a `revision` column
//! but no recorded first migration).

use crm_ports::adoption::{AdoptionCheck, LegacyRecord, RecordRules, adopt};
use tokio_postgres::{Client, GenericClient};

use crate::store::PgError;

/// What the migrations found in the schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// No CRM tables, or this service's with their history: migrate as usual.
    Usual,
    /// The Node.js service's tables: adopt them first.
    Node,
    /// Tables adopted by a start that stopped before recording the first migration.
    AdoptedUnrecorded,
}

const ADOPT_NODE: &str = include_str!("adopt_node.sql");

pub(crate) async fn found(client: &impl GenericClient) -> Result<Found, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT \
               EXISTS (SELECT 1 FROM information_schema.tables \
                       WHERE table_schema = current_schema() AND table_name = 'crm_campaigns'), \
               EXISTS (SELECT 1 FROM information_schema.columns \
                       WHERE table_schema = current_schema() AND table_name = 'crm_campaigns' \
                         AND column_name = 'revision'), \
               EXISTS (SELECT 1 FROM information_schema.tables \
                       WHERE table_schema = current_schema() AND table_name = 'crm_schema_history')",
            &[],
        )
        .await?;
    let (campaigns, revision, history): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
    if !campaigns {
        return Ok(Found::Usual);
    }
    if !revision {
        return Ok(Found::Node);
    }
    let recorded = history
        && client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM crm_schema_history WHERE version = 1)",
                &[],
            )
            .await?
            .get::<_, bool>(0);
    Ok(if recorded {
        Found::Usual
    } else {
        Found::AdoptedUnrecorded
    })
}

/// Every row of both tables as the rules read them: the record's fields, `metadata`
/// for `metadata_json`, oldest first.
async fn records(
    client: &impl GenericClient,
) -> Result<(Vec<LegacyRecord>, Vec<LegacyRecord>), tokio_postgres::Error> {
    let mut tables = Vec::new();
    for (table, order) in [
        ("crm_campaigns", "created_at, campaign_id"),
        ("crm_followups", "created_at, followup_id"),
    ] {
        let rows = client
            .query(
                &format!(
                    "SELECT to_jsonb(t) - 'metadata_json' \
                            || jsonb_build_object('metadata', t.metadata_json) \
                     FROM {table} t ORDER BY {order}"
                ),
                &[],
            )
            .await?;
        tables.push(
            rows.iter()
                .enumerate()
                .map(|(index, row)| LegacyRecord {
                    origin: table.to_owned(),
                    index,
                    json: row.get(0),
                })
                .collect::<Vec<_>>(),
        );
    }
    let follow_ups = tables.pop().unwrap_or_default();
    let campaigns = tables.pop().unwrap_or_default();
    Ok((campaigns, follow_ups))
}

/// Checks every row and, when all pass, adopts the tables; on any broken rule nothing
/// changes.
pub(crate) async fn adopt_tables(
    client: &mut Client,
    rules: Option<&dyn RecordRules>,
) -> Result<(), PgError> {
    let Some(rules) = rules else {
        return Err(PgError::NodeTables);
    };
    let transaction = client.transaction().await.map_err(PgError::Migrate)?;
    // The Node.js service may still be running: its writes wait until this commits.
    transaction
        .batch_execute("LOCK TABLE crm_campaigns, crm_followups IN SHARE ROW EXCLUSIVE MODE")
        .await
        .map_err(PgError::Migrate)?;
    let (campaigns, follow_ups) = records(&transaction).await.map_err(PgError::Migrate)?;
    let adopted = adopt(&campaigns, &follow_ups, rules).map_err(PgError::Refused)?;
    transaction
        .batch_execute(ADOPT_NODE)
        .await
        .map_err(PgError::Migrate)?;
    transaction.commit().await.map_err(PgError::Migrate)?;
    tracing::info!(
        campaigns = adopted.campaigns.len(),
        follow_ups = adopted.follow_ups.len(),
        "the Node.js service's tables are adopted"
    );
    Ok(())
}

/// What adopting would do, changing nothing.
pub(crate) async fn check_tables(
    client: &mut Client,
    rules: &dyn RecordRules,
) -> Result<AdoptionCheck, PgError> {
    if found(&*client).await.map_err(PgError::Migrate)? != Found::Node {
        return Ok(AdoptionCheck::Nothing);
    }
    let transaction = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .map_err(PgError::Migrate)?;
    let (campaigns, follow_ups) = records(&transaction).await.map_err(PgError::Migrate)?;
    let adopted = adopt(&campaigns, &follow_ups, rules).map_err(PgError::Refused)?;
    Ok(AdoptionCheck::Adoptable {
        campaigns: adopted.campaigns.len(),
        follow_ups: adopted.follow_ups.len(),
    })
}
