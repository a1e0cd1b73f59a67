//! `cargo xtask bench` (or `bench table`): the figures the team tracks, in one table,
//! each measured in this run beside the database's own single-row rate.
//!
//! ```text
//! cargo xtask bench [table] [--seconds S] [--list-rows N] [--file-stored N]
//! ```
//! PostgreSQL figures need `CRM_DATABASE_URL` (a scratch schema is made and dropped).

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;

use super::{Flags, Target, create_load, drain_all, pgbench_tps, quantile_ms, result};

const CLIENTS: usize = 32;
const NOT_DUE: &str = "2999-01-01T00:00:00Z";
const DUE: &str = "2025-01-01T09:00:00Z";
/// How many follow-ups the drain figure drains (a queue that deep when it starts).
const DRAIN_DEPTH: u64 = 60_000;
/// Requests per list figure.
const LIST_REQUESTS: usize = 300;

struct Row {
    figure: String,
    value: String,
}

pub async fn table(flags: &Flags) -> anyhow::Result<()> {
    flags.only(&["seconds", "list-rows", "file-stored"])?;
    let seconds: u64 = flags.get("seconds", 20)?;
    let list_rows: u64 = flags.get("list-rows", 1_000_000)?;
    let file_stored: u64 = flags.get("file-stored", 100_000)?;
    let mut rows = Vec::new();
    match crate::database_url() {
        Ok(url) => postgres(&url, seconds, list_rows, &mut rows).await?,
        Err(_) => eprintln!("bench: CRM_DATABASE_URL is not set; PostgreSQL figures skipped"),
    }
    file(seconds, file_stored, &mut rows).await?;
    println!();
    println!("| figure | this run |");
    println!("|---|---|");
    for row in &rows {
        println!("| {} | {} |", row.figure, row.value);
    }
    Ok(())
}

async fn postgres(
    url: &str,
    seconds: u64,
    list_rows: u64,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let pgbench = pgbench_tps(url, CLIENTS, seconds).await?;
    let target = Target::new("postgres")?;
    let server = target.start(&[]).await?;
    let base = server.base.clone();

    let load = create_load(
        &base,
        CLIENTS,
        None,
        Some(Instant::now() + Duration::from_secs(seconds)),
        NOT_DUE,
    )
    .await?;
    ensure!(load.failures == 0, "{} creates failed", load.failures);
    let creates = load.latencies.len() as f64 / load.elapsed.as_secs_f64();
    rows.push(Row {
        figure: format!(
            "PostgreSQL follow-up creates/s ({CLIENTS} clients) vs pgbench single-row INSERT"
        ),
        value: format!(
            "{creates:.0} vs {pgbench:.0} ({:.2}×), p99 {} ms",
            creates / pgbench,
            quantile_ms(&load.latencies, 0.99)
        ),
    });

    let due = create_load(&base, CLIENTS, Some(DRAIN_DEPTH), None, DUE).await?;
    ensure!(due.failures == 0, "{} creates failed", due.failures);
    let (sent, elapsed) = drain_all(&base).await?;
    rows.push(Row {
        figure: format!("PostgreSQL drain, 4 concurrent HTTP drains of 100, {DRAIN_DEPTH} due"),
        value: format!("{:.0} follow-ups/s", sent as f64 / elapsed.as_secs_f64()),
    });

    let Target::Postgres { schema, .. } = &target else {
        unreachable!("a PostgreSQL target")
    };
    seed_lists(url, schema, list_rows).await?;
    let campaign = "00000000-0000-4000-8000-000000000001";
    for (name, path) in [
        (
            "no filter",
            "/v1/crm/followups?tenant_id=bench_lists&limit=100".to_owned(),
        ),
        (
            "status=pending",
            "/v1/crm/followups?tenant_id=bench_lists&limit=100&status=pending".to_owned(),
        ),
        (
            "campaign_id",
            format!("/v1/crm/followups?tenant_id=bench_lists&limit=100&campaign_id={campaign}"),
        ),
        (
            "campaign_id and status",
            format!(
                "/v1/crm/followups?tenant_id=bench_lists&limit=100&campaign_id={campaign}&status=pending"
            ),
        ),
        (
            "campaigns, state=running",
            "/v1/crm/campaigns?tenant_id=bench_lists&limit=100&state=running".to_owned(),
        ),
    ] {
        let latencies = list_latencies(&format!("{base}{path}")).await?;
        rows.push(Row {
            figure: format!("PostgreSQL list page of 100, {name}, {list_rows} follow-ups"),
            value: format!(
                "p50 {} ms, p99 {} ms",
                quantile_ms(&latencies, 0.5),
                quantile_ms(&latencies, 0.99)
            ),
        });
    }
    result(
        json!({"scenario": "table: PostgreSQL", "pgbench_tps": pgbench.round(),
                  "creates_per_second": creates.round()}),
    );
    drop(server);
    target.remove().await
}

/// `count` follow-ups of `bench_lists` (statuses in turn, a third in each of 3 campaigns)
/// and 3,000 campaigns, written straight into the schema: the figure is the read.
async fn seed_lists(url: &str, schema: &str, count: u64) -> anyhow::Result<()> {
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    db.batch_execute(&format!(
        "SET search_path TO \"{schema}\"; \
         INSERT INTO crm_campaigns (campaign_id, tenant_id, name, channel, state, metadata_json, \
         revision, created_at, updated_at) \
         SELECT ('00000000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid, 'bench_lists', \
                'campaign', 'whatsapp', (ARRAY['draft', 'running', 'paused'])[n % 3 + 1], '{{}}', 1, \
                now() - n * interval '1 minute', now() FROM generate_series(1, 3000) n; \
         INSERT INTO crm_followups (followup_id, tenant_id, campaign_id, phone_e164, message, \
         schedule_at, channel, status, metadata_json, correlation_id, trace_id, created_at, \
         updated_at) \
         SELECT gen_random_uuid(), 'bench_lists', ('00000000-0000-4000-8000-' \
                || lpad((n % 3 + 1)::text, 12, '0'))::uuid, '+5511944443333', 'hello', \
                '2999-01-01', 'whatsapp', (ARRAY['pending', 'sent', 'failed'])[n % 3 + 1], '{{}}', \
                gen_random_uuid(), 'abcdefgh', now() - n * interval '1 millisecond', now() \
         FROM generate_series(1, {count}) n; ANALYZE"
    ))
    .await
    .context("the list rows are seeded")?;
    Ok(())
}

/// `LIST_REQUESTS` reads of the first page, one at a time.
async fn list_latencies(url: &str) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(LIST_REQUESTS);
    for _ in 0..LIST_REQUESTS {
        let started = Instant::now();
        let response = client.get(url).send().await?;
        ensure!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        let _ = response.bytes().await?;
        latencies.push(started.elapsed());
    }
    latencies.sort_unstable();
    Ok(latencies)
}

async fn file(seconds: u64, stored: u64, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let target = Target::new("file")?;
    let server = target.start(&[]).await?;
    let preload = create_load(&server.base, CLIENTS, Some(stored), None, NOT_DUE).await?;
    ensure!(preload.failures == 0, "{} creates failed", preload.failures);
    let load = create_load(
        &server.base,
        CLIENTS,
        None,
        Some(Instant::now() + Duration::from_secs(seconds)),
        NOT_DUE,
    )
    .await?;
    ensure!(load.failures == 0, "{} creates failed", load.failures);
    rows.push(Row {
        figure: format!("file store creates, {stored} stored first (compactions running)"),
        value: format!(
            "{:.0}/s, p99 {} ms, max {} ms",
            load.latencies.len() as f64 / load.elapsed.as_secs_f64(),
            quantile_ms(&load.latencies, 0.99),
            quantile_ms(&load.latencies, 1.0)
        ),
    });
    drop(server);
    target.remove().await
}
