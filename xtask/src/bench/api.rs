//! `cargo xtask bench api`: create throughput and latency, then the drain rate.
//!
//! ```text
//! cargo xtask bench api [--backend file|postgres] [--stored N] [--clients C] [--seconds S] [--drain D] [--wrk script.lua]
//! ```
//! Starts the release `crm-api` on a fresh data dir (or a fresh PostgreSQL schema of
//! `CRM_DATABASE_URL`), stores `N` follow-ups that are not due, then for `S` seconds keeps
//! `C` clients creating follow-ups (a unique body each, like the wrk scripts of the team)
//! and reports requests/s and latency percentiles. Then it stores `D` due follow-ups and
//! times draining them all with four concurrent drain loops. Numbers come from this
//! machine only; compare runs made on the same one.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use super::{Flags, Target, create_load, drain_all};

struct Options {
    backend: String,
    stored: u64,
    clients: usize,
    seconds: u64,
    drain: u64,
    /// A wrk Lua script (such as `xtask/wrk/create.lua`); when given, wrk measures the
    /// creates from outside this process.
    wrk_script: Option<String>,
}

fn parse(flags: &Flags) -> anyhow::Result<Options> {
    flags.only(&["backend", "stored", "clients", "seconds", "drain", "wrk"])?;
    Ok(Options {
        backend: flags.get("backend", "file".to_owned())?,
        stored: flags.get("stored", 1_000)?,
        clients: flags.get("clients", 32)?,
        seconds: flags.get("seconds", 20)?,
        drain: flags.get("drain", 5_000)?,
        wrk_script: flags
            .get("wrk", String::new())
            .map(|script| (!script.is_empty()).then_some(script))?,
    })
}

/// The database's own ceiling, printed as a result line.
async fn raw_insert_rate(url: &str, options: &Options) -> anyhow::Result<()> {
    let tps = super::pgbench_tps(url, options.clients, options.seconds).await?;
    println!(
        "RESULT {}",
        json!({"scenario": "pgbench single-row INSERT", "clients": options.clients, "tps": tps.round()})
    );
    Ok(())
}

/// Runs wrk with the given script; its last line is its own `RESULT {json}`.
fn wrk(base: &str, script: &str, options: &Options) -> anyhow::Result<()> {
    let status = std::process::Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{}", options.clients),
            &format!("-d{}s", options.seconds),
            "--latency",
            "-s",
            script,
            base,
        ])
        .env("BENCH_TENANT", "tenant_bench")
        .status()
        .context("cannot run wrk (apt-get install wrk)")?;
    if !status.success() {
        bail!("wrk failed with {status}");
    }
    Ok(())
}

pub async fn run(flags: &Flags) -> anyhow::Result<()> {
    let options = parse(flags)?;
    let target = Target::new(&options.backend)?;
    if options.backend == "postgres" {
        raw_insert_rate(&crate::database_url()?, &options).await?;
    }
    let server = target.start(&[]).await?;
    println!(
        "bench: {} backend, {} clients, {} s, {} stored first",
        options.backend, options.clients, options.seconds, options.stored
    );

    let preload = create_load(
        &server.base,
        options.clients,
        Some(options.stored),
        None,
        "2999-01-01T00:00:00Z",
    )
    .await?;
    if preload.failures > 0 {
        bail!("{} preload requests failed", preload.failures);
    }
    match &options.wrk_script {
        Some(script) => wrk(&server.base, script, &options)?,
        None => {
            let until = Instant::now() + Duration::from_secs(options.seconds);
            let not_due = "2999-01-01T00:00:00Z";
            let load =
                create_load(&server.base, options.clients, None, Some(until), not_due).await?;
            load.report(&format!(
                "create follow-ups, {} stored before",
                options.stored
            ));
        }
    }

    if options.drain > 0 {
        let due = create_load(
            &server.base,
            options.clients,
            Some(options.drain),
            None,
            "2025-01-01T09:00:00Z",
        )
        .await?;
        if due.failures > 0 {
            bail!("{} due follow-ups could not be created", due.failures);
        }
        let (sent, elapsed) = drain_all(&server.base).await?;
        println!(
            "RESULT {}",
            json!({"scenario": "drain with 4 concurrent loops of limit 100", "sent": sent,
                   "seconds": elapsed.as_secs_f64(), "per_second": (sent as f64 / elapsed.as_secs_f64()).round()})
        );
        // Due follow-ups created by a wrk script are drained too, so more is fine.
        if sent < options.drain {
            bail!("drained {sent} follow-ups, expected {}", options.drain);
        }
    }
    drop(server);
    target.remove().await
}
