//! Wiring: load contracts and workflows, open the store, bind the listener.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context, bail};
use crm_adapters_file::{FileStore, FileStoreOptions};
use crm_adapters_pg::{PgError, PgOptions, PgStore};
use crm_app::Crm;
use crm_app::adoption::LegacyRules;
use crm_contracts::{Contract, Contracts, PROVIDER_ANSWERS_JSON, WORKFLOWS_JSON};
use crm_domain::answers::ProviderAnswers;
use crm_domain::campaign::CAMPAIGN_WORKFLOW;
use crm_domain::workflow::{Workflow, WorkflowSet};
use crm_ports::Store;
use tokio::sync::watch;

use crate::auth::Tokens;
use crate::config::{PgSettings, Secret, Settings, StoreKind, resolve};
use crate::error::Code;
use crate::extract::BodyLimit;
use crate::routes::OpenApiDocument;
use crate::{error, metrics, openapi, routes, telemetry};

/// A built server, bound and ready to run.
pub struct Application {
    port: u16,
    server: Server,
    crm: Crm,
    worker_interval: Option<Duration>,
    retention: Duration,
    retention_interval: Duration,
    shutdown_timeout: Duration,
    signals: StopSignals,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let contracts = Arc::new(Contracts::load().context("built-in contracts do not load")?);
        let workflow = load_workflow(&settings, &contracts)?;
        let answers = load_answers(&settings, &contracts)?;
        let address = resolve(&settings.bind)
            .with_context(|| format!("cannot use --bind {}", settings.bind))?;
        if !address.ip().is_loopback()
            && (settings.api_token.is_none() || settings.internal_token.is_none())
        {
            bail!(
                "refusing to listen on {address} without --api-token and --internal-token: \
                 anyone who can reach it could read and change every tenant's data; \
                 set both tokens or bind to 127.0.0.1"
            );
        }
        let (store, reads) = open_stores(&settings, LegacyRules::new(contracts.clone())).await?;
        // Before the listener serves its first request, so that a stop asked for as soon
        // as the service answers is a graceful one.
        let signals = StopSignals::install().context("cannot listen for SIGTERM")?;
        metrics::handle();
        let openapi = web::Data::new(OpenApiDocument(openapi::document(&contracts).to_string()));
        let crm = Crm::new(store, contracts, Arc::new(workflow), Arc::new(answers))
            .with_reads(reads)
            .with_default_send_rate(settings.default_send_rate);
        let listener =
            TcpListener::bind(address).with_context(|| format!("cannot listen on {address}"))?;
        let port = listener.local_addr()?.port();
        let shared = web::Data::new(crm.clone());
        let body_limit = web::Data::new(BodyLimit {
            bytes: settings.body_limit,
            batch_bytes: settings.batch_body_limit,
            timeout: settings.request_timeout,
        });
        let tokens = web::Data::new(Tokens {
            api: settings.api_token.clone(),
            internal: settings.internal_token.clone(),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .app_data(body_limit.clone())
                .app_data(tokens.clone())
                .app_data(openapi.clone())
                .wrap(from_fn(error::json_error_bodies))
                .wrap(from_fn(telemetry::log_request))
                .configure(routes::configure)
                .default_service(web::to(not_found))
        })
        .listen(listener)?
        // Signals are ours (see `run_until_stopped`), so the worker stops in step.
        .disable_signals()
        .client_request_timeout(settings.request_timeout)
        .shutdown_timeout(settings.shutdown_timeout.as_secs().max(1))
        .run();
        log_start(&settings, &format!("http://{}:{port}", address.ip()));
        Ok(Self {
            port,
            server,
            crm,
            worker_interval: settings.worker_interval,
            retention: settings.retention,
            retention_interval: settings.retention_interval,
            shutdown_timeout: settings.shutdown_timeout,
            signals,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or Ctrl-C: then stops accepting, finishes in-flight requests,
    /// the worker's batch in progress and the store's tidy-up, and returns, all within the
    /// shutdown timeout. A second signal ends the process at once. Running out of time
    /// loses nothing: every acknowledged write is durable already.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let (stop, stopped) = watch::channel(false);
        let worker = self.worker_interval.map(|interval| {
            tokio::spawn(crm_app::worker::run(
                self.crm.clone(),
                interval,
                stopped.clone(),
            ))
        });
        let retention = tokio::spawn(crm_app::worker::retain(
            self.crm.clone(),
            self.retention,
            self.retention_interval,
            stopped,
        ));
        let server = self.server.handle();
        let crm = self.crm.clone();
        let deadline = self.shutdown_timeout;
        let (signalled, first_signal) = tokio::sync::oneshot::channel();
        let mut signals = self.signals;
        tokio::spawn(async move {
            signals.next().await;
            tracing::info!(
                timeout_ms = deadline.as_millis() as u64,
                "shutdown requested: finishing in-flight requests"
            );
            let _ = signalled.send(Instant::now());
            crm.begin_stop();
            tokio::spawn(async move {
                signals.next().await;
                tracing::warn!("second shutdown signal: exiting at once");
                std::process::exit(1);
            });
            server.stop(true).await;
        });
        let served = self.server.await;
        let started = first_signal.await.unwrap_or_else(|_| Instant::now());
        let _ = stop.send(true);
        let crm = self.crm;
        let tidy_up = async move {
            if let Some(worker) = worker {
                let _ = worker.await;
            }
            let _ = retention.await;
            if let Err(error) = crm.store().flush().await {
                tracing::warn!(%error, "store flush at shutdown failed; nothing acknowledged is lost");
            }
        };
        let left = deadline.saturating_sub(started.elapsed());
        if tokio::time::timeout(left, tidy_up).await.is_err() {
            tracing::warn!("shutdown timeout reached; exiting, and nothing acknowledged is lost");
        }
        tracing::info!("stopped");
        served
    }
}

/// The start-up line: what runs, where its records are, where it listens, and which
/// limits are on (never a secret: a token is only said to be set).
fn log_start(settings: &Settings, address: &str) {
    let (backend, data_dir, schema, read_max_lag_ms) = match &settings.store {
        StoreKind::File(file) => ("file", Some(file.dir.display().to_string()), None, None),
        StoreKind::Postgres(pg) => (
            "postgres",
            None,
            Some(pg.schema.as_str()),
            pg.read_replica
                .as_ref()
                .map(|(_, lag)| lag.as_millis() as u64),
        ),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        backend,
        data_dir,
        pg_schema = schema,
        read_replica = read_max_lag_ms.is_some(),
        read_max_lag_ms,
        address,
        api_token = settings.api_token.is_some(),
        internal_token = settings.internal_token.is_some(),
        body_limit = settings.body_limit,
        batch_body_limit = settings.batch_body_limit,
        request_timeout_ms = settings.request_timeout.as_millis() as u64,
        default_send_rate = settings.default_send_rate,
        worker_interval_ms = settings
            .worker_interval
            .map(|interval| interval.as_millis() as u64),
        retention_hours = settings.retention.as_secs_f64() / 3600.0,
        "crm-api listening"
    );
}

/// SIGTERM and Ctrl-C, listened for from start-up on.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves on the next SIGTERM or Ctrl-C.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}

async fn not_found() -> HttpResponse {
    Code::NotFound.response()
}

/// A data file the service is driven by (workflows, the table of answers): the
/// operator's copy at `path` or the built-in `text`, JSON that meets `contract`.
/// Returns where it came from, for messages, and its text.
fn read_data_file(
    what: &str,
    path: Option<&std::path::Path>,
    built_in: (&str, &str),
    contract: Contract,
    contracts: &Contracts,
) -> anyhow::Result<(String, String)> {
    let (origin, text) = match path {
        Some(path) => (
            path.display().to_string(),
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {what} file {}", path.display()))?,
        ),
        None => (format!("built-in {}", built_in.0), built_in.1.to_owned()),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{what} file {origin} is not JSON"))?;
    if let Err(violations) = contracts.validate(contract, &json) {
        let first = &violations[0];
        bail!(
            "{what} file {origin} breaks contracts/{} at {:?}: {}",
            contract.file_name(),
            first.pointer,
            first.message
        );
    }
    Ok((origin, text))
}

fn load_workflow(settings: &Settings, contracts: &Contracts) -> anyhow::Result<Workflow> {
    let (origin, text) = read_data_file(
        "workflows",
        settings.workflows.as_deref(),
        ("workflows.json", WORKFLOWS_JSON),
        Contract::Workflows,
        contracts,
    )?;
    let set =
        WorkflowSet::parse(&text).with_context(|| format!("workflows file {origin} is refused"))?;
    let workflow = set
        .workflow(CAMPAIGN_WORKFLOW)
        .with_context(|| format!("workflows file {origin} is refused"))?;
    crm_domain::campaign::check_workflow(workflow)
        .with_context(|| format!("workflows file {origin} cannot drive campaigns"))?;
    Ok(workflow.clone())
}

/// The table of provider answers; a bad table stops start-up naming its file.
fn load_answers(settings: &Settings, contracts: &Contracts) -> anyhow::Result<ProviderAnswers> {
    let (origin, text) = read_data_file(
        "provider answers",
        settings.provider_answers.as_deref(),
        ("provider-answers.json", PROVIDER_ANSWERS_JSON),
        Contract::ProviderAnswers,
        contracts,
    )?;
    ProviderAnswers::parse(&text)
        .with_context(|| format!("provider answers file {origin} is refused"))
}

async fn open_store(settings: &Settings, rules: LegacyRules) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_stores(settings, rules).await?.0)
}

/// The store, and the one lists, single reads, traces and the feed are read from: the
/// same, or with `--read-database-url` a view of it that reads a replica.
async fn open_stores(
    settings: &Settings,
    rules: LegacyRules,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Store>)> {
    match &settings.store {
        StoreKind::File(file) => {
            let dir = file.dir.clone();
            let options = FileStoreOptions {
                compact_after_bytes: file.compact_after_bytes,
                retention: Some(settings.retention),
                shutdown_wait: settings.shutdown_timeout,
                legacy_rules: Some(Arc::new(rules)),
            };
            let store = tokio::task::spawn_blocking(move || FileStore::open(dir, options))
                .await
                .context("file store start-up panicked")??;
            let store: Arc<dyn Store> = Arc::new(store);
            Ok((store.clone(), store))
        }
        StoreKind::Postgres(settings) => {
            let options = pg_options(settings)?;
            migrate_when_reachable(&options, settings.startup_wait, &rules).await?;
            let store = PgStore::new(&options)?;
            let reads = match &settings.read_replica {
                None => store.clone(),
                Some((url, max_lag)) => {
                    let replica = pg_options_for(settings, url).context("--read-database-url")?;
                    store.reading_from(&replica, *max_lag)?
                }
            };
            Ok((Arc::new(store), Arc::new(reads)))
        }
    }
}

/// The rules records of the Node.js service must pass, from the built-in contracts.
fn legacy_rules() -> anyhow::Result<LegacyRules> {
    let contracts = Contracts::load().context("built-in contracts do not load")?;
    Ok(LegacyRules::new(Arc::new(contracts)))
}

/// `crm-api adopt [--check]`: what adopting the Node.js service's data would do, or does.
pub async fn adopt(settings: &Settings, check: bool) -> anyhow::Result<String> {
    let rules = legacy_rules()?;
    if !check {
        // Adopting is what start-up does; then the store is closed again.
        open_store(settings, rules).await?.flush().await?;
        return Ok("adopted (or nothing to adopt); the store is ready".to_owned());
    }
    let found = match &settings.store {
        StoreKind::File(file) => {
            let dir = file.dir.clone();
            tokio::task::spawn_blocking(move || FileStore::check_adoption(&dir, &rules))
                .await
                .context("the check panicked")??
        }
        StoreKind::Postgres(pg) => {
            crm_adapters_pg::check_adoption(&pg_options(pg)?, &rules).await?
        }
    };
    Ok(found.to_string())
}

/// `crm-api backup --to DIR`: a verified copy of the file store's data dir.
pub async fn backup(settings: &Settings, to: std::path::PathBuf) -> anyhow::Result<String> {
    match &settings.store {
        StoreKind::File(file) => {
            let from = file.dir.clone();
            let copied = tokio::task::spawn_blocking(move || {
                crm_adapters_file::backup(&from, &to).map(|report| (report, to))
            })
            .await
            .context("the backup panicked")??;
            let (report, to) = copied;
            Ok(format!("backed up to {}: {report}", to.display()))
        }
        StoreKind::Postgres(_) => bail!(
            "backup copies the file store; back PostgreSQL up with its own tools \
             (pg_dump, or pg_basebackup with WAL archiving for point-in-time recovery)"
        ),
    }
}

fn pg_options(settings: &PgSettings) -> anyhow::Result<PgOptions> {
    pg_options_for(settings, &settings.url)
}

/// The options of `settings` for the server at `url`.
fn pg_options_for(settings: &PgSettings, url: &Secret) -> anyhow::Result<PgOptions> {
    let mut options = PgOptions::new(url.expose(), &settings.schema)?;
    options.pool_size = settings.pool_size;
    options.timeout = settings.timeout;
    Ok(options)
}

/// Applies the migrations of the configured backend, for `crm-api migrate`.
pub async fn migrate(settings: &Settings) -> anyhow::Result<()> {
    match &settings.store {
        StoreKind::Postgres(pg) => {
            migrate_when_reachable(&pg_options(pg)?, pg.startup_wait, &legacy_rules()?).await
        }
        StoreKind::File(_) => {
            bail!("migrate applies to --backend postgres; the file store needs none")
        }
    }
}

/// Migrates, retrying while the database cannot be reached, for at most `wait`.
async fn migrate_when_reachable(
    options: &PgOptions,
    wait: Duration,
    rules: &LegacyRules,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        match crm_adapters_pg::migrate(options, Some(rules)).await {
            Ok(()) => return Ok(()),
            Err(PgError::Connect {
                cause,
                permanent: false,
            }) if Instant::now() < deadline => {
                tracing::warn!(%cause, "database not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(
                error @ PgError::Connect {
                    permanent: false, ..
                },
            ) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "database still unreachable after {} ms",
                    wait.as_millis()
                )));
            }
            Err(error) => return Err(error.into()),
        }
    }
}
