//! `cargo xtask bench bulk`: bulk creates beside single ones, in one run.
//!
//! ```text
//! cargo xtask bench bulk [--backend file|postgres] [--clients 4] [--batch 1000] [--seconds 15] [--stored 100000]
//! ```
//! On PostgreSQL it first measures the database's own single-row INSERT rate with
//! pgbench (`clients` clients). Then, on a fresh store each:
//! - single creates from 32 clients for `seconds`: follow-ups/s and latency;
//! - `clients` clients each sending batches of `batch` follow-ups for `seconds`:
//!   follow-ups/s and the latency of one batch;
//! - resident memory per stored follow-up after `stored` single creates and after the
//!   same number in batches (file store only: PostgreSQL keeps them in the database).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Flags, Load, Target, create_load, quantile_ms, result};
use crate::server::{Server, build};

const NOT_DUE: &str = "2999-01-01T00:00:00Z";
const SINGLE_CLIENTS: usize = 32;

struct Options {
    backend: String,
    clients: usize,
    batch: usize,
    seconds: u64,
    stored: u64,
}

pub async fn bulk(flags: &Flags) -> anyhow::Result<()> {
    flags.only(&["backend", "clients", "batch", "seconds", "stored"])?;
    let options = Options {
        backend: flags.get("backend", "file".to_owned())?,
        clients: flags.get("clients", 4)?,
        batch: flags.get("batch", 1_000)?,
        seconds: flags.get("seconds", 15)?,
        stored: flags.get("stored", 100_000)?,
    };
    let binary = build(true)?;
    let pgbench = if options.backend == "postgres" {
        let tps =
            super::pgbench_tps(&crate::database_url()?, options.clients, options.seconds).await?;
        result(
            json!({"scenario": "pgbench single-row INSERT", "clients": options.clients, "tps": tps.round()}),
        );
        Some(tps)
    } else {
        None
    };

    let single = on_fresh_store(&options, &binary, async |server| {
        let until = Instant::now() + Duration::from_secs(options.seconds);
        let load = create_load(&server.base, SINGLE_CLIENTS, None, Some(until), NOT_DUE).await?;
        load.report(&format!("single creates, {SINGLE_CLIENTS} clients"));
        Ok(load.latencies.len() as f64 / load.elapsed.as_secs_f64())
    })
    .await?;

    let bulk = on_fresh_store(&options, &binary, async |server| {
        let until = Instant::now() + Duration::from_secs(options.seconds);
        let load = batch_load(&server.base, &options, None, Some(until)).await?;
        Ok(report_batches(&load, &options))
    })
    .await?;
    let mut summary = json!({
        "scenario": "bulk creates",
        "backend": options.backend,
        "follow_ups_per_second": bulk.round(),
        "single_creates_per_second": single.round(),
        "bulk_over_single": (bulk / single * 100.0).round() / 100.0,
    });
    if let Some(tps) = pgbench {
        summary["pgbench_insert_tps"] = json!(tps.round());
        summary["bulk_over_pgbench"] = json!((bulk / tps * 100.0).round() / 100.0);
    }
    result(summary);

    if options.backend == "file" {
        footprint(&options, &binary).await?;
    }
    Ok(())
}

/// Runs `measure` against a server on a fresh store, then removes the store.
async fn on_fresh_store<T>(
    options: &Options,
    binary: &std::path::Path,
    measure: impl AsyncFnOnce(&Server) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let target = Target::new(&options.backend)?;
    let server = target.start_built(binary, &[]).await?;
    let measured = measure(&server).await;
    drop(server);
    target.remove().await?;
    measured
}

/// Resident memory per stored follow-up, `stored` of them created one by one and then
/// in batches, each on a fresh file store.
async fn footprint(options: &Options, binary: &std::path::Path) -> anyhow::Result<()> {
    let single = on_fresh_store(options, binary, async |server| {
        let empty = server.resident_bytes()?;
        let load = create_load(
            &server.base,
            SINGLE_CLIENTS,
            Some(options.stored),
            None,
            NOT_DUE,
        )
        .await?;
        if load.failures > 0 {
            bail!("{} single creates failed", load.failures);
        }
        settled_growth(server, empty).await
    })
    .await?;
    let batched = on_fresh_store(options, binary, async |server| {
        let empty = server.resident_bytes()?;
        let load = batch_load(&server.base, options, Some(options.stored), None).await?;
        if load.failures > 0 {
            bail!("{} batches failed", load.failures);
        }
        settled_growth(server, empty).await
    })
    .await?;
    let per = |bytes: u64| bytes as f64 / options.stored as f64;
    result(json!({
        "scenario": "resident memory per stored follow-up",
        "stored": options.stored,
        "single_bytes_per_follow_up": per(single).round(),
        "batched_bytes_per_follow_up": per(batched).round(),
    }));
    Ok(())
}

/// What the process grew by since `empty`, once it has gone quiet (the compaction of
/// what was written finished).
async fn settled_growth(server: &Server, empty: u64) -> anyhow::Result<u64> {
    server.settle(Duration::from_secs(60)).await?;
    Ok(server.resident_bytes()?.saturating_sub(empty))
}

fn report_batches(load: &Load, options: &Options) -> f64 {
    let per_second = (load.latencies.len() * options.batch) as f64 / load.elapsed.as_secs_f64();
    result(json!({
        "scenario": format!("batches of {} from {} clients", options.batch, options.clients),
        "batches": load.latencies.len(),
        "follow_ups_per_second": per_second.round(),
        "batch_p50_ms": quantile_ms(&load.latencies, 0.50),
        "batch_p99_ms": quantile_ms(&load.latencies, 0.99),
        "batch_max_ms": quantile_ms(&load.latencies, 1.0),
        "failed_batches": load.failures,
    }));
    per_second
}

/// `options.clients` loops each sending batches of new follow-ups until `count`
/// follow-ups are sent or `until` passes. A batch counts as failed unless every item of
/// it was created.
async fn batch_load(
    base: &str,
    options: &Options,
    count: Option<u64>,
    until: Option<Instant>,
) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.clients)
        .build()?;
    let issued = Arc::new(AtomicU64::new(0));
    let batch = options.batch;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.clients {
        let (client, issued, url) = (
            client.clone(),
            Arc::clone(&issued),
            format!("{base}/v1/crm/followups/batch"),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            loop {
                let n = issued.fetch_add(batch as u64, Ordering::Relaxed);
                if count.is_some_and(|count| n >= count)
                    || until.is_some_and(|until| Instant::now() >= until)
                {
                    return anyhow::Ok((latencies, failures));
                }
                let body = serde_json::to_vec(&batch_body(batch))?;
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await?;
                let ok = response.status().is_success();
                let reply: Value = response.json().await.context("a batch reply")?;
                if ok && reply["response"]["created_count"] == batch {
                    latencies.push(sent.elapsed());
                } else {
                    failures += 1;
                }
            }
        }));
    }
    let mut load = Load {
        latencies: Vec::new(),
        failures: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, failures) = task.await??;
        load.latencies.extend(latencies);
        load.failures += failures;
    }
    load.elapsed = started.elapsed();
    load.latencies.sort_unstable();
    Ok(load)
}

/// A batch of `size` new follow-ups, each shaped like the single create's.
fn batch_body(size: usize) -> Value {
    let items: Vec<Value> = (0..size)
        .map(|_| {
            let id = Uuid::new_v4();
            json!({
                "followup_id": id,
                "external_key": format!("fu-{id}"),
                "phone_e164": "+5511944443333",
                "message": "hello",
                "schedule_at": NOT_DUE,
                "channel": "whatsapp",
                "status": "pending",
            })
        })
        .collect();
    json!({"request": {
        "request_id": Uuid::new_v4(),
        "tenant_id": "tenant_bench",
        "source_module": "mod-02-whatsapp-crm",
        "followups": items,
    }})
}
