//! `PgStore`: its options, the pool, the bound on every call, and the `Store` port
//! (backend, ping, retention).
//!
//! Every call, from waiting for a pooled connection to its last row, runs under one
//! client-side deadline (`call`); a call that cannot get a connection or runs out of time
//! is `StoreError::Unavailable`, and its connection is thrown away. Nothing here retries.
//! The other ports each have a file (`campaigns.rs`, `follow_ups.rs`, `drain.rs`,
//! `outbound.rs`, `feed.rs`, `opt_outs.rs`, `policies.rs`); this one runs none of their
//! statements.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use crm_ports::{Expired, Retention, Store, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, watch};

use crate::batch::{self, CreateJob};
use crate::feed;
use crate::partitions;
use crate::primary::{self, Connector, Timeline};
use crate::replica::Replica;
use crate::sql;
use crate::statement::changed_rows_of;

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    url: String,
    schema: String,
    /// Most connections this process holds.
    pub pool_size: usize,
    /// Bound on connecting, on waiting for a pooled connection and on each statement:
    /// with the database down a request fails after at most about this long.
    pub timeout: Duration,
    /// The newest timeline written to through these options (see `primary.rs`).
    timeline: Timeline,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.debug_struct("PgOptions")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why the store could not start.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("database URL is not valid: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("schema name {0:?} is not a plain identifier (letters, digits, underscores)")]
    Schema(String),
    /// The server could not be reached, or refused the connection. `permanent`: it
    /// answered and refused (no such database, wrong password), so waiting will not help.
    #[error("cannot connect to the database: {cause}")]
    Connect { cause: String, permanent: bool },
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    #[error("migration failed: {0}")]
    Migrate(#[source] tokio_postgres::Error),
    #[error("migration failed: {0}")]
    Refinery(String),
    #[error(
        "the schema holds the Node.js service's tables; they are adopted only with the rules \
         their records must pass (start crm-api, or run crm-api adopt --check)"
    )]
    NodeTables,
    #[error("the Node.js service's tables cannot be adopted, and nothing was changed; {0}")]
    Refused(crm_ports::adoption::AdoptionReport),
}

impl PgError {
    /// A failed connection, with its most telling cause (the server's own message when it
    /// answered, else the network's: refused, timed out, unknown host).
    pub fn connect(error: tokio_postgres::Error) -> Self {
        use tokio_postgres::error::SqlState;
        let permanent = error.code().is_some_and(|code| {
            [
                SqlState::INVALID_CATALOG_NAME,
                SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
                SqlState::INVALID_PASSWORD,
            ]
            .contains(code)
        });
        let cause = telling_cause(&error);
        Self::Connect { cause, permanent }
    }
}

/// The most telling cause of an error: the server's own message when it answered, else
/// the innermost cause (refused, timed out, unknown host).
pub(crate) fn telling_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error.to_string();
    let mut source = Some(error);
    while let Some(inner) = source {
        if let Some(db) = inner
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
        {
            return db.message().to_owned();
        }
        cause = inner.to_string();
        source = inner.source();
    }
    cause
}

impl PgOptions {
    pub fn new(url: impl Into<String>, schema: impl Into<String>) -> Result<Self, PgError> {
        let schema = schema.into();
        let plain = schema.len() <= 63
            && schema
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain {
            return Err(PgError::Schema(schema));
        }
        let options = Self {
            url: url.into(),
            schema,
            pool_size: 16,
            timeout: Duration::from_secs(3),
            timeline: Timeline::default(),
        };
        options.pg_config()?;
        Ok(options)
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A connection to the primary among the URL's hosts (see `primary.rs`), with the
    /// settings of `pg_config`.
    pub(crate) async fn connect(&self) -> Result<primary::Connected, PgError> {
        primary::connect(&self.pg_config()?, &self.timeline)
            .await
            .map_err(PgError::connect)
    }

    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config, PgError> {
        let mut config: tokio_postgres::Config = self.url.parse().map_err(PgError::Url)?;
        let millis = self.timeout.as_millis();
        // Ours come last, so they win over the same settings in the URL's `options`.
        // A transaction whose client went silent must not hold its row locks (claimed
        // follow-ups) for long: the server ends it.
        let options = format!(
            "{} -c search_path={} -c statement_timeout={millis} -c lock_timeout={millis} \
             -c idle_in_transaction_session_timeout={}",
            config.get_options().unwrap_or_default(),
            self.schema,
            millis.saturating_mul(2).max(1_000),
        );
        // A link that goes silent kills the connection instead of leaving it half-open:
        // unacknowledged data gives up after the timeout, idle links are probed.
        config
            .options(options.trim_start())
            .connect_timeout(self.timeout)
            .tcp_user_timeout(self.timeout.max(Duration::from_secs(1)))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(5))
            .keepalives_retries(3);
        if config.get_application_name().is_none() {
            config.application_name("crm-api");
        }
        Ok(config)
    }
}

/// The PostgreSQL store. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// The bound on every call, from asking for a connection to the last row.
    timeout: Duration,
    /// How the listening connection connects, and which schema's notifications count.
    config: tokio_postgres::Config,
    timeline: Timeline,
    schema: String,
    /// Counts the event commits this process heard of; started on first use.
    notifications: Arc<OnceLock<watch::Receiver<u64>>>,
    /// Where follow-up creates wait for their batch; started on first use.
    creates: Arc<OnceLock<mpsc::Sender<CreateJob>>>,
    /// The standby reads may go to (`reading_from`); none on the store writes go through.
    replica: Option<Arc<Replica>>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish()
    }
}

pub(crate) fn unavailable(error: impl Into<crm_ports::BoxError>) -> StoreError {
    StoreError::Unavailable(error.into())
}

impl PgStore {
    /// Builds the pool. Connections are made on demand, so this succeeds with the
    /// database down; `ping` tells whether it is reachable.
    pub fn new(options: &PgOptions) -> Result<Self, PgError> {
        let pool = pool(options, Connector::Primary(options.timeline.clone()))?;
        Ok(Self {
            pool,
            timeout: options.timeout,
            config: options.pg_config()?,
            timeline: options.timeline.clone(),
            schema: options.schema().to_owned(),
            notifications: Arc::default(),
            creates: Arc::default(),
            replica: None,
        })
    }

    /// This store, reading from the standby of `replica` while it lags `max_lag` at most
    /// (see `replica.rs`). Lists, single reads, traces and the feed go there; everything
    /// else stays on this store's primary.
    pub fn reading_from(&self, replica: &PgOptions, max_lag: Duration) -> Result<Self, PgError> {
        Ok(Self {
            replica: Some(Replica::start(replica, max_lag, self.pool.clone())?),
            ..self.clone()
        })
    }

    /// Whether this store reads from a replica when it can.
    pub(crate) fn has_replica(&self) -> bool {
        self.replica.is_some()
    }

    /// Whether reads go to a replica now.
    pub(crate) fn reads_replica(&self) -> bool {
        self.replica
            .as_ref()
            .is_some_and(|replica| replica.usable())
    }

    /// Runs a read on the replica while it is fresh, else (or when the replica fails the
    /// call, in the time left) on the primary: one bound for both, as for `call`.
    pub(crate) async fn read_call<T>(
        &self,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, StoreError> + Clone,
    ) -> Result<T, StoreError> {
        let Some(replica) = self.replica.as_ref().filter(|replica| replica.usable()) else {
            return self.call(work).await;
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        // The replica gets half of the bound, so that the primary has time left.
        match bounded(&replica.pool, self.timeout / 2, work.clone(), |error| error).await {
            Err(StoreError::Unavailable(error)) => {
                tracing::warn!(%error, "a read on the replica failed; it is set aside");
                replica.set_aside();
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(self.timed_out());
                }
                bounded(&self.pool, left, work, |error| error).await
            }
            done => done,
        }
    }

    /// The group-commit batcher of follow-up creates.
    pub(crate) fn creates(&self) -> &mpsc::Sender<CreateJob> {
        self.creates
            .get_or_init(|| batch::spawn(self.pool.clone(), self.timeout))
    }

    /// A receiver that changes whenever an event of this schema commits (in any process),
    /// and once after each (re)connection of the listener, when some may have gone unheard.
    pub(crate) fn notifications(&self) -> watch::Receiver<u64> {
        self.notifications
            .get_or_init(|| {
                let (sender, receiver) = watch::channel(0);
                tokio::spawn(feed::listen(
                    self.config.clone(),
                    self.timeline.clone(),
                    self.schema.clone(),
                    sender,
                ));
                receiver
            })
            .clone()
    }

    /// Runs `work` on a pooled connection. Everything, from waiting for the connection to
    /// the last row, is bounded by the timeout, whatever the network does; a connection
    /// cut short mid-call is thrown away, never reused. A write cut short may still have
    /// committed: `Unavailable` then means "outcome unknown".
    pub(crate) async fn call<T>(
        &self,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        bounded(&self.pool, self.timeout, work, |error| error).await
    }

    /// The bound on every call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn timed_out(&self) -> StoreError {
        timed_out(self.timeout)
    }
}

/// A pool of `options`' size and bounds, connecting through `connector`.
pub(crate) fn pool(options: &PgOptions, connector: Connector) -> Result<Pool, PgError> {
    let manager = Manager::from_connect(
        options.pg_config()?,
        connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.pool_size)
        .wait_timeout(Some(options.timeout))
        .create_timeout(Some(options.timeout))
        .recycle_timeout(Some(options.timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| PgError::Pool(e.to_string()))
}

/// Runs `work` on a connection of `pool`, everything bounded by `timeout`; a connection
/// cut short mid-call is thrown away, never reused. `failed` turns the store's own
/// errors (no connection, no answer in time) into `work`'s.
///
/// Work that failed because a row found no day partition (see `partitions.rs`) is not run
/// again (it may have decided things that must happen once): the partition is made, and
/// the failure says that a retry will find it.
pub(crate) async fn bounded<T, E: Failure>(
    pool: &Pool,
    timeout: Duration,
    work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, E>,
    failed: impl Fn(StoreError) -> E,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut client = tokio::time::timeout_at(deadline, pool.get())
        .await
        .map_err(|_| failed(timed_out(timeout)))?
        .map_err(|error| failed(unavailable(error)))?;
    let Ok(result) = tokio::time::timeout_at(deadline, work(&mut client)).await else {
        drop(deadpool_postgres::Object::take(client));
        return Err(failed(timed_out(timeout)));
    };
    let missing = match &result {
        Err(error) => partitions::missing(error.store_error()),
        Ok(_) => None,
    };
    let Some(missing) = missing else {
        return result;
    };
    match tokio::time::timeout_at(deadline, partitions::make(&client, &missing)).await {
        Ok(Ok(())) => Err(failed(unavailable(format!(
            "{missing}: it was made now, and the request may be retried"
        )))),
        Ok(Err(refused)) => Err(failed(refused)),
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(failed(timed_out(timeout)))
        }
    }
}

/// An error of work run by `bounded`, which looks into it for a missing partition.
pub(crate) trait Failure {
    fn store_error(&self) -> &StoreError;
}

impl Failure for StoreError {
    fn store_error(&self) -> &StoreError {
        self
    }
}

pub(crate) fn timed_out(timeout: Duration) -> StoreError {
    unavailable(format!(
        "no answer from the database within {} ms",
        timeout.as_millis()
    ))
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.call(async |client| {
            client.simple_query("SELECT 1").await.map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn expire(&self, retention: Retention, batch: usize) -> Result<Expired, StoreError> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let cutoff = retention.records_before.as_datetime();
        let ledger_before = retention.ledger_before.as_datetime();
        // Whole day partitions of events and finished items, the ledger row by row: each
        // step on its own, so that one held off (a long query on its table) stops no other.
        let prepared = self
            .call(async |client| partitions::prepare(client).await)
            .await;
        let events = self
            .call(async |client| partitions::drop_days(client, partitions::EVENTS, cutoff).await)
            .await;
        let outbound_items = self
            .call(async |client| {
                partitions::drop_days(client, partitions::FINISHED_ITEMS, cutoff).await
            })
            .await;
        let ledger_entries = self
            .call(async |client| {
                changed_rows_of(&*client, sql::EXPIRE_LEDGER, &[&ledger_before, &batch]).await
            })
            .await;
        let steps = [
            ("partitions ahead", prepared),
            ("events", events),
            ("finished outbound items", outbound_items),
            ("ledger", ledger_entries),
        ];
        // Every step failed: the database is out of reach, say so.
        if let [(_, Err(_)), (_, Err(_)), (_, Err(_)), (_, Err(_))] = &steps {
            let [(_, first), ..] = steps;
            return Err(first.expect_err("the first step failed"));
        }
        let [_, events, outbound_items, ledger_entries] = steps.map(|(what, result)| {
            result.unwrap_or_else(|error| {
                tracing::warn!(%error, what, "a retention step failed; the next pass tries again");
                0
            })
        });
        Ok(Expired {
            events,
            outbound_items,
            ledger_entries,
        })
    }
}
