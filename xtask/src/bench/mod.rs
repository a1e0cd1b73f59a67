//! `cargo xtask bench <scenario> [flags]`: throughput, latency and footprint of the
//! release binary, measured through HTTP like a client would.
//!
//! - `table` (the default): the figures the team tracks, in one table (see `table.rs`);
//! - `api`: creates/s and latency, then the drain rate (see `api.rs`);
//! - `feed`: how fast one consumer reads the event feed, and how soon a long-polling
//!   consumer sees an event after it commits;
//! - `queue`: claim + ack throughput with concurrent consumers, one of which dies holding
//!   leases;
//! - `footprint`: resident memory and restart time of the file store once many
//!   follow-ups have been created, drained, acknowledged and passed retention;
//! - `policy`: paced tenants beside an unlimited one, a small tenant behind a big one,
//!   and the drain's latency with a million follow-ups held.
//! - `limits`: the drain's rate with every limit of SPEC §10 set but none binding, beside
//!   none set, and a drain's latency with a thousand and a million sends in the ledger.
//!
//! - `bulk`: bulk creates (batches of 1,000 from 4 clients) beside single creates and,
//!   on PostgreSQL, pgbench's single-row INSERT rate; resident memory per follow-up
//!   stored either way (see `bulk.rs`).
//! - `receipts`: delivery receipts applied per second (a `delivered` and a `read` for each
//!   of N accepted messages, in batches of 1,000 from 4 clients), and each batch's latency.
//!
//! Every scenario prints `RESULT {json}` lines. Numbers come from this machine only;
//! compare runs made on the same one.

mod api;
mod bulk;
mod limits;
mod pipeline;
mod policy;
mod table;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::server::{Server, build};

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let (scenario, flags) = match args.first() {
        Some(first) if !first.starts_with("--") => (first.as_str(), &args[1..]),
        _ => ("table", args),
    };
    let flags = Flags::parse(flags)?;
    match scenario {
        "table" => table::table(&flags).await,
        "api" => api::run(&flags).await,
        "feed" => pipeline::feed(&flags).await,
        "queue" => pipeline::queue(&flags).await,
        "footprint" => pipeline::footprint(&flags).await,
        "policy" => policy::policy(&flags).await,
        "limits" => limits::limits(&flags).await,
        "bulk" => bulk::bulk(&flags).await,
        "receipts" => pipeline::receipts(&flags).await,
        other => bail!(
            "unknown scenario {other:?} (table, api, feed, queue, footprint, policy, limits, \
             bulk or receipts)"
        ),
    }
}

/// `--name value` pairs.
pub struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let mut pairs = Vec::new();
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let name = flag
                .strip_prefix("--")
                .with_context(|| format!("{flag} is not a flag"))?;
            let value = args
                .next()
                .with_context(|| format!("{flag} needs a value"))?;
            pairs.push((name.to_owned(), value.clone()));
        }
        Ok(Self(pairs))
    }

    /// The value of `--name`, parsed, or `default`.
    pub fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.iter().rev().find(|(flag, _)| flag == name) {
            None => Ok(default),
            Some((_, value)) => value
                .parse()
                .map_err(|error| anyhow::anyhow!("--{name} {value}: {error}")),
        }
    }

    /// Fails on a flag that is not in `known`.
    pub fn only(&self, known: &[&str]) -> anyhow::Result<()> {
        match self
            .0
            .iter()
            .find(|(flag, _)| !known.contains(&flag.as_str()))
        {
            Some((flag, _)) => bail!("unknown flag --{flag} (known: {})", known.join(", ")),
            None => Ok(()),
        }
    }
}

/// Where a bench server keeps its data: a fresh data dir or a fresh PostgreSQL schema,
/// removed by `remove`.
pub enum Target {
    File(std::path::PathBuf),
    Postgres { url: String, schema: String },
}

impl Target {
    pub fn new(backend: &str) -> anyhow::Result<Self> {
        let name = format!("bench_{}", Uuid::new_v4().simple());
        Ok(match backend {
            "file" => Target::File(std::env::temp_dir().join(name)),
            "postgres" => Target::Postgres {
                url: crate::database_url()?,
                schema: name,
            },
            other => bail!("unknown backend {other}"),
        })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Target::File(_) => "file",
            Target::Postgres { .. } => "postgres",
        }
    }

    /// The flags that put a server on this target, then `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = match self {
            Target::File(dir) => vec!["--data-dir".into(), dir.display().to_string()],
            Target::Postgres { url, schema } => vec![
                "--backend".into(),
                "postgres".into(),
                "--database-url".into(),
                url.clone(),
                "--pg-schema".into(),
                schema.clone(),
            ],
        };
        args.extend(extra.iter().map(|arg| (*arg).to_owned()));
        args
    }

    /// Builds the release binary and starts it on this target.
    pub async fn start(&self, extra: &[&str]) -> anyhow::Result<Server> {
        self.start_built(&build(true)?, extra).await
    }

    /// Starts `binary` on this target.
    pub async fn start_built(
        &self,
        binary: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Server> {
        let args = self.args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start(binary, &args).await
    }

    /// Lets the database catch up with a load as autovacuum would in time (dead rows
    /// removed, statistics taken), so that what is measured next is the steady cost and
    /// not the clean-up of the load. The file store's own clean-up, a compaction, is
    /// waited for with `Server::settle`.
    pub async fn settle_database(&self) -> anyhow::Result<()> {
        if let Target::Postgres { url, schema } = self {
            let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            let tables = db
                .query(
                    "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
                     WHERE schemaname = $1",
                    &[schema],
                )
                .await?;
            for table in tables {
                let name: String = table.get(0);
                db.batch_execute(&format!("VACUUM ANALYZE {name}")).await?;
            }
        }
        Ok(())
    }

    pub async fn remove(&self) -> anyhow::Result<()> {
        match self {
            Target::File(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Target::Postgres { url, schema } => {
                let (db, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                db.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await?;
            }
        }
        Ok(())
    }
}

/// The database's own ceiling: single-row INSERTs from `clients` pgbench clients for
/// `seconds` into a table shaped like a follow-up row, in a scratch schema; rows/s.
pub async fn pgbench_tps(url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
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
            &clients.to_string(),
            "-T",
            &seconds.to_string(),
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
    text.lines()
        .find_map(|line| line.strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .context("pgbench printed no tps line")
}

/// Prints one result line.
pub fn result(fields: Value) {
    println!("RESULT {fields}");
}

/// The `p` quantile of sorted `values`, in milliseconds.
pub fn quantile_ms(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    let value = sorted.get(index).copied().unwrap_or_default();
    (value.as_secs_f64() * 100_000.0).round() / 100.0
}

pub fn follow_up_body(tenant: &str, schedule_at: &str) -> Value {
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

/// Latencies of one load run, plus failures.
pub struct Load {
    pub latencies: Vec<Duration>,
    pub failures: u64,
    pub elapsed: Duration,
}

impl Load {
    fn percentile(&self, p: f64) -> f64 {
        quantile_ms(&self.latencies, p)
    }

    pub fn report(&self, label: &str) {
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
pub async fn create_load(
    base: &str,
    clients: usize,
    count: Option<u64>,
    until: Option<Instant>,
    schedule_at: &'static str,
) -> anyhow::Result<Load> {
    let body: Body = Arc::new(move |_| follow_up_body("tenant_bench", schedule_at));
    create_with(base, clients, count, until, body).await
}

/// Makes the create body of the `n`th follow-up.
pub type Body = Arc<dyn Fn(u64) -> Value + Send + Sync>;

/// `clients` concurrent loops creating follow-ups made by `body` until `count` are sent
/// or `until` passes.
pub async fn create_with(
    base: &str,
    clients: usize,
    count: Option<u64>,
    until: Option<Instant>,
    body: Body,
) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, issued, url, make) = (
            client.clone(),
            issued.clone(),
            format!("{base}/v1/crm/followups"),
            Arc::clone(&body),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if count.is_some_and(|count| n >= count)
                    || until.is_some_and(|until| Instant::now() >= until)
                {
                    return (latencies, failures);
                }
                let body = make(n);
                let sent = Instant::now();
                match client.post(&url).json(&body).send().await {
                    Ok(response) if response.status().is_success() => {
                        latencies.push(sent.elapsed());
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
pub async fn drain_all(base: &str) -> anyhow::Result<(u64, Duration)> {
    drain_all_with(base, 4).await
}

/// Drains with `loops` concurrent loops (limit 100) until nothing is due; returns how
/// many were sent and how long it took.
pub async fn drain_all_with(base: &str, loops: usize) -> anyhow::Result<(u64, Duration)> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..loops {
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
