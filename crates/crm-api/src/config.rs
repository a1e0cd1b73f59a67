//! Configuration: one clap struct, flags with `CRM_*` environment fallbacks, turned into
//! typed `Settings`. `main` is the only place that reads the process environment.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Command line and environment of the `crm-api` binary. Every flag is global: it may
/// come before or after the subcommand, and each subcommand's `--help` lists it.
#[derive(Debug, Parser)]
#[command(
    name = "crm-api",
    version,
    about = "Multi-tenant WhatsApp CRM: campaigns, follow-ups and the worker drain"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on (host:port).
    #[arg(
        long,
        global = true,
        env = "CRM_BIND",
        default_value = "127.0.0.1:8080"
    )]
    pub bind: String,

    /// Storage backend.
    #[arg(
        long,
        global = true, env = "CRM_BACKEND", value_enum, default_value_t = Backend::File)]
    pub backend: Backend,

    /// Data dir of the file backend.
    #[arg(
        long,
        global = true,
        env = "CRM_DATA_DIR",
        default_value = ".runtime-data/crm-automation"
    )]
    pub data_dir: PathBuf,

    /// File backend: fold the journal into the snapshots once it holds this many bytes
    /// (and at least as many as the snapshots).
    #[arg(
        long,
        global = true, env = "CRM_FILE_COMPACT_AFTER_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub file_compact_after_bytes: u64,

    /// PostgreSQL URL of the postgres backend (falls back to DATABASE_URL).
    #[arg(long, global = true, env = "CRM_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<Secret>,

    /// PostgreSQL URL of a hot standby that lists, single reads, traces and the event feed
    /// may be read from (postgres backend only).
    #[arg(
        long,
        global = true,
        env = "CRM_READ_DATABASE_URL",
        hide_env_values = true
    )]
    pub read_database_url: Option<Secret>,

    /// A read replica lagging more than this many milliseconds is not read from until it
    /// catches up.
    #[arg(
        long,
        global = true,
        env = "CRM_READ_MAX_LAG_MS",
        default_value_t = 1_000
    )]
    pub read_max_lag_ms: u64,

    /// PostgreSQL schema holding the tables.
    #[arg(long, global = true, env = "CRM_PG_SCHEMA", default_value = "public")]
    pub pg_schema: String,

    /// Most database connections this process holds.
    #[arg(long, global = true, env = "CRM_PG_POOL_SIZE", default_value_t = 16)]
    pub pg_pool_size: usize,

    /// Bound, in milliseconds, on connecting to the database, waiting for a pooled
    /// connection and each statement: with the database down a request fails this fast.
    #[arg(
        long,
        global = true,
        env = "CRM_PG_TIMEOUT_MS",
        default_value_t = 3_000
    )]
    pub pg_timeout_ms: u64,

    /// How long start-up waits for an unreachable database before giving up, in ms.
    #[arg(
        long,
        global = true,
        env = "CRM_PG_STARTUP_WAIT_MS",
        default_value_t = 30_000
    )]
    pub pg_startup_wait_ms: u64,

    /// Bearer token required on /v1/* (none: loopback only).
    #[arg(long, global = true, env = "CRM_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<Secret>,

    /// Bearer token required on /internal/* (none: loopback only).
    #[arg(
        long,
        global = true,
        env = "CRM_INTERNAL_TOKEN",
        hide_env_values = true
    )]
    pub internal_token: Option<Secret>,

    /// Largest accepted request body, in bytes.
    #[arg(long, global = true, env = "CRM_BODY_LIMIT", default_value_t = 65_536)]
    pub body_limit: usize,

    /// Largest accepted body of a bulk create (POST /v1/crm/followups/batch), in bytes.
    #[arg(
        long,
        global = true,
        env = "CRM_BATCH_BODY_LIMIT",
        default_value_t = 4_194_304
    )]
    pub batch_body_limit: usize,

    /// Drain due follow-ups every N milliseconds in this process (0: off).
    #[arg(
        long,
        global = true,
        env = "CRM_WORKER_INTERVAL_MS",
        default_value_t = 0
    )]
    pub worker_interval_ms: u64,

    /// Follow-ups per second, at most, for each tenant without a sending policy of its own
    /// (1 to 100000; unset: no limit).
    #[arg(
        long,
        global = true, env = "CRM_DEFAULT_SEND_RATE", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub default_send_rate: Option<u32>,

    /// Events and finished outbound items older than this many hours are deleted
    /// (fractions allowed).
    #[arg(
        long,
        global = true,
        env = "CRM_RETENTION_HOURS",
        default_value_t = 168.0
    )]
    pub retention_hours: f64,

    /// Longest time, in ms, a client may take to send a whole request (head and body).
    #[arg(
        long,
        global = true,
        env = "CRM_REQUEST_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub request_timeout_ms: u64,

    /// Longest time, in ms, a graceful shutdown (SIGTERM) may take: in-flight requests,
    /// the worker's batch and the file store's final compaction. Every acknowledged write
    /// is durable already, so running out of time loses nothing.
    #[arg(
        long,
        global = true,
        env = "CRM_SHUTDOWN_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub shutdown_timeout_ms: u64,

    /// Log line format.
    #[arg(
        long,
        global = true, env = "CRM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Workflows file to use instead of the built-in copy of workflows/workflows.json.
    #[arg(long, global = true, env = "CRM_WORKFLOWS")]
    pub workflows: Option<PathBuf>,

    /// Table of provider answers (what each error code of an ack means) to use instead of
    /// the built-in copy of workflows/provider-answers.json.
    #[arg(long, global = true, env = "CRM_PROVIDER_ANSWERS")]
    pub provider_answers: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Serve HTTP (the default).
    Serve,
    /// Apply pending database migrations (postgres backend) and exit.
    Migrate,
    /// Adopt the data of the Node.js service (its data dir, or its tables) and exit; each
    /// record is checked first, and a single broken rule changes nothing.
    Adopt {
        /// Only check and report: change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Copy the file store's data dir to a new directory while it serves (or is stopped),
    /// and verify the copy by opening it; restoring is starting on the copy. PostgreSQL
    /// is backed up with PostgreSQL's own tools.
    Backup {
        /// The new directory to write the copy to.
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    File,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A value that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(Self(value.to_owned()))
    }
}

/// Where the records live.
#[derive(Debug, Clone)]
pub enum StoreKind {
    File(FileSettings),
    Postgres(PgSettings),
}

#[derive(Debug, Clone)]
pub struct FileSettings {
    pub dir: PathBuf,
    pub compact_after_bytes: u64,
}

impl FileSettings {
    /// Defaults of the flags around a data dir.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            compact_after_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PgSettings {
    pub url: Secret,
    /// A hot standby to read from, and the most it may lag.
    pub read_replica: Option<(Secret, Duration)>,
    pub schema: String,
    pub pool_size: usize,
    pub timeout: Duration,
    pub startup_wait: Duration,
}

impl PgSettings {
    /// Defaults of the flags around a URL and schema.
    pub fn new(url: Secret, schema: impl Into<String>) -> Self {
        Self {
            url,
            read_replica: None,
            schema: schema.into(),
            pool_size: 16,
            timeout: Duration::from_secs(3),
            startup_wait: Duration::from_secs(30),
        }
    }
}

/// Typed settings of one server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub bind: String,
    pub store: StoreKind,
    pub body_limit: usize,
    pub batch_body_limit: usize,
    /// `None`: the built-in workflows file.
    pub workflows: Option<PathBuf>,
    /// `None`: the built-in table of provider answers.
    pub provider_answers: Option<PathBuf>,
    pub api_token: Option<Secret>,
    pub internal_token: Option<Secret>,
    pub worker_interval: Option<Duration>,
    /// The rate of tenants without a sending policy; `None`: unlimited.
    pub default_send_rate: Option<u32>,
    pub retention: Duration,
    /// How often retention looks for expired records (not a flag: tests shorten it).
    pub retention_interval: Duration,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
}

impl Settings {
    /// Defaults of SPEC §7 around the given store, listening on a free loopback port.
    pub fn new(store: StoreKind) -> Self {
        Self {
            bind: "127.0.0.1:0".to_owned(),
            store,
            body_limit: 65_536,
            batch_body_limit: 4_194_304,
            workflows: None,
            provider_answers: None,
            api_token: None,
            internal_token: None,
            worker_interval: None,
            default_send_rate: None,
            retention: Duration::from_secs(168 * 3600),
            retention_interval: crm_app::worker::RETENTION_INTERVAL,
            request_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// A configuration that cannot work, said in one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--backend postgres needs --database-url (or CRM_DATABASE_URL / DATABASE_URL)")]
    MissingDatabaseUrl,
    #[error("--read-database-url reads a PostgreSQL replica; it needs --backend postgres")]
    ReplicaWithoutPostgres,
    #[error("{0} must be at least 1 byte")]
    ZeroBodyLimit(&'static str),
    #[error("{0} is empty; give a token or leave it unset")]
    EmptyToken(&'static str),
    #[error("--retention-hours must be a number of hours above zero, not {0}")]
    Retention(f64),
    #[error("{0} must be at least 1 ms")]
    ZeroTimeout(&'static str),
}

impl Cli {
    /// Turns flags into settings. `fallback_database_url` is `DATABASE_URL`, read by `main`.
    pub fn into_settings(
        self,
        fallback_database_url: Option<String>,
    ) -> Result<Settings, ConfigError> {
        let store = match self.backend {
            Backend::File if self.read_database_url.is_some() => {
                return Err(ConfigError::ReplicaWithoutPostgres);
            }
            Backend::File => StoreKind::File(FileSettings {
                dir: self.data_dir,
                compact_after_bytes: self.file_compact_after_bytes.max(1),
            }),
            Backend::Postgres => StoreKind::Postgres(PgSettings {
                url: self
                    .database_url
                    .or_else(|| fallback_database_url.map(Secret::new))
                    .ok_or(ConfigError::MissingDatabaseUrl)?,
                read_replica: self
                    .read_database_url
                    .map(|url| (url, Duration::from_millis(self.read_max_lag_ms))),
                schema: self.pg_schema,
                pool_size: self.pg_pool_size.max(1),
                timeout: Duration::from_millis(self.pg_timeout_ms.max(1)),
                startup_wait: Duration::from_millis(self.pg_startup_wait_ms),
            }),
        };
        for (flag, bytes) in [
            ("--body-limit", self.body_limit),
            ("--batch-body-limit", self.batch_body_limit),
        ] {
            if bytes == 0 {
                return Err(ConfigError::ZeroBodyLimit(flag));
            }
        }
        let retention = Duration::try_from_secs_f64(self.retention_hours * 3600.0)
            .ok()
            .filter(|retention| !retention.is_zero())
            .ok_or(ConfigError::Retention(self.retention_hours))?;
        for (flag, millis) in [
            ("--request-timeout-ms", self.request_timeout_ms),
            ("--shutdown-timeout-ms", self.shutdown_timeout_ms),
        ] {
            if millis == 0 {
                return Err(ConfigError::ZeroTimeout(flag));
            }
        }
        for (flag, token) in [
            ("--api-token", &self.api_token),
            ("--internal-token", &self.internal_token),
        ] {
            if token
                .as_ref()
                .is_some_and(|token| token.expose().trim().is_empty())
            {
                return Err(ConfigError::EmptyToken(flag));
            }
        }
        Ok(Settings {
            bind: self.bind,
            store,
            body_limit: self.body_limit,
            batch_body_limit: self.batch_body_limit,
            workflows: self.workflows,
            provider_answers: self.provider_answers,
            api_token: self.api_token,
            internal_token: self.internal_token,
            worker_interval: (self.worker_interval_ms > 0)
                .then(|| Duration::from_millis(self.worker_interval_ms)),
            default_send_rate: self.default_send_rate,
            retention,
            retention_interval: crm_app::worker::RETENTION_INTERVAL,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            shutdown_timeout: Duration::from_millis(self.shutdown_timeout_ms),
        })
    }
}

/// Resolves `host:port` to the first address, for the loopback check and binding.
pub fn resolve(bind: &str) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    bind.to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{bind} resolves to no address"),
        )
    })
}
