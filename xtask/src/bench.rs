//! `cargo xtask bench`: throughput and latency of the release binary.
//!
//! ```text
//! cargo xtask bench [--backend file|postgres] [--stored N] [--clients C] [--seconds S] [--drain D]
//! ```
//! Starts the release `crm-api` on a fresh data dir (or a fresh PostgreSQL schema of
//! `CRM_DATABASE_URL`), stores `N` follow-ups that are not due, then for `S` seconds keeps
//! `C` clients creating follow-ups (a unique body each, like the wrk scripts of the team)
//! and reports requests/s and latency percentiles. Then it stores `D` due follow-ups and
//! times draining them all with four concurrent drain loops. Numbers come from this
//! machine only; compare runs made on the same one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::server::{Server, build};

struct Options {
    backend: String,
    stored: u64,
    clients: usize,
    seconds: u64,
    drain: u64,
    /// A wrk Lua script (the team's load scripts); when given, wrk measures the creates.
    wrk_script: Option<String>,
}

fn parse(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        backend: "file".to_owned(),
        stored: 1_000,
        clients: 32,
        seconds: 20,
        drain: 5_000,
        wrk_script: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--backend" => options.backend = value.clone(),
            "--stored" => options.stored = value.parse()?,
            "--clients" => options.clients = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--drain" => options.drain = value.parse()?,
            "--wrk" => options.wrk_script = Some(value.clone()),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(options)
}

fn follow_up_body(tenant: &str, schedule_at: &str) -> Value {
    let id = Uuid::new_v4();
    json!({"request": {
        "request_id": Uuid::new_v4(),
        "tenant_id": tenant,
        "source_module": "mod-02-whatsapp-crm",
        "followup": {
            "followup_id": id,
            "external_key": format!("fu-{id}"),
            "phone_e164": "+5511944443333",
            "message": "hello",
            "schedule_at": schedule_at,
            "channel": "whatsapp",
            "status": "pending",
        }
    }})
}

/// Latencies of one load run, in microseconds, plus failures.
struct Load {
    latencies: Vec<u64>,
    failures: u64,
    elapsed: Duration,
}

impl Load {
    fn percentile(&self, p: f64) -> f64 {
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(index).copied().unwrap_or(0) as f64 / 1000.0
    }

    fn report(&self, label: &str) {
        let rate = self.latencies.len() as f64 / self.elapsed.as_secs_f64();
        println!(
            "RESULT {}",
            json!({
                "scenario": label,
                "requests": self.latencies.len(),
                "rps": (rate * 10.0).round() / 10.0,
                "p50_ms": self.percentile(0.50),
                "p90_ms": self.percentile(0.90),
                "p99_ms": self.percentile(0.99),
                "max_ms": self.percentile(1.0),
                "non2xx": self.failures,
            })
        );
    }
}

/// `clients` concurrent loops creating follow-ups until `count` are sent or `until` passes.
async fn create_load(
    base: &str,
    clients: usize,
    count: Option<u64>,
    until: Option<Instant>,
    schedule_at: &'static str,
) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, issued, url) = (
            client.clone(),
            issued.clone(),
            format!("{base}/v1/crm/followups"),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            loop {
                if count.is_some_and(|count| issued.fetch_add(1, Ordering::Relaxed) >= count)
                    || until.is_some_and(|until| Instant::now() >= until)
                {
                    return (latencies, failures);
                }
                let body = follow_up_body("tenant_bench", schedule_at);
                let sent = Instant::now();
                match client.post(&url).json(&body).send().await {
                    Ok(response) if response.status().is_success() => {
                        latencies.push(sent.elapsed().as_micros() as u64);
                    }
                    _ => failures += 1,
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
        let (latencies, failures) = task.await?;
        load.latencies.extend(latencies);
        load.failures += failures;
    }
    load.elapsed = started.elapsed();
    load.latencies.sort_unstable();
    Ok(load)
}

/// Drains with four concurrent loops until nothing is due; returns how many were sent.
async fn drain_all(base: &str) -> anyhow::Result<(u64, Duration)> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url) = (
            client.clone(),
            format!("{base}/internal/worker/crm-followups/drain"),
        );
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let reply: Value = client
                    .post(&url)
                    .json(&json!({"limit": 100}))
                    .send()
                    .await?
                    .json()
                    .await?;
                let processed = reply["processed_count"].as_u64().context("drain reply")?;
                sent += reply["succeeded_count"].as_u64().unwrap_or(0);
                if processed == 0 {
                    return anyhow::Ok(sent);
                }
            }
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await??;
    }
    Ok((sent, started.elapsed()))
}

/// The database's own ceiling: single-row INSERTs from 32 pgbench clients into a
/// table shaped like a follow-up row, in a scratch schema.
async fn raw_insert_rate(url: &str, options: &Options) -> anyhow::Result<()> {
    let schema = format!("bench_raw_{}", Uuid::new_v4().simple());
    let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    db.batch_execute(&format!(
        "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".raw_insert (\
         id uuid PRIMARY KEY, tenant_id text NOT NULL, phone_e164 text NOT NULL, \
         message text NOT NULL, schedule_at timestamptz NOT NULL, metadata_json jsonb NOT NULL)"
    ))
    .await?;
    let script = std::env::temp_dir().join(format!("{schema}.sql"));
    std::fs::write(
        &script,
        format!(
            "INSERT INTO \"{schema}\".raw_insert VALUES (gen_random_uuid(), 'tenant_bench', \
             '+5511944443333', 'hello', now(), '{{}}');\n"
        ),
    )?;
    let output = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-j",
            "2",
            "-c",
            &options.clients.to_string(),
            "-T",
            &options.seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .context("cannot run pgbench (it comes with the PostgreSQL client)")?;
    let _ = std::fs::remove_file(&script);
    db.batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find(|line| line.starts_with("tps"))
        .context("pgbench printed no tps line")?;
    let latency = text
        .lines()
        .find(|line| line.starts_with("latency average"))
        .unwrap_or("");
    println!(
        "RESULT {}",
        json!({"scenario": "pgbench single-row INSERT", "clients": options.clients, "tps": tps, "latency": latency})
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

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let options = parse(args)?;
    let binary = build(true)?;
    let data_dir = std::env::temp_dir().join(format!("crm-bench-{}", Uuid::new_v4().simple()));
    let schema = format!("bench_{}", Uuid::new_v4().simple());
    let backend_args: Vec<String> = match options.backend.as_str() {
        "file" => vec!["--data-dir".into(), data_dir.display().to_string()],
        "postgres" => vec![
            "--backend".into(),
            "postgres".into(),
            "--database-url".into(),
            crate::database_url()?,
            "--pg-schema".into(),
            schema.clone(),
        ],
        other => bail!("unknown backend {other}"),
    };
    if options.backend == "postgres" {
        raw_insert_rate(&crate::database_url()?, &options).await?;
    }
    let args: Vec<&str> = backend_args.iter().map(String::as_str).collect();
    let server = Server::start(&binary, &args).await?;
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
    if options.backend == "file" {
        let _ = std::fs::remove_dir_all(&data_dir);
    } else {
        let (db, connection) =
            tokio_postgres::connect(&crate::database_url()?, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        db.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await?;
    }
    Ok(())
}
