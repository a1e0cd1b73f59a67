//! `PgStore`: the ports over a deadpool of tokio-postgres connections.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use crm_domain::campaign::{Campaign, CampaignState, CampaignStats};
use crm_domain::delivery::{AckStatus, QueueEntry};
use crm_domain::event::EventEnvelope;
use crm_domain::follow_up::{FollowUp, FollowUpStatus};
use crm_domain::ids::{CampaignId, FollowUpId, QueueItemId, TenantId};
use crm_domain::opt_out::OptOut;
use crm_domain::outbound::OutboundItem;
use crm_domain::page::EventCursor;
use crm_domain::page::{Cursor, Page};
use crm_domain::policy::SendingPolicy;
use crm_domain::timestamp::Timestamp;
use crm_ports::{
    AckRequest, Acker, CampaignQuery, CampaignStore, Created, DispatchDecision, Dispatcher,
    DrainOutcome, DueFollowUp, EventEmitter, EventPage, Expired, FeedPage, FeedQuery,
    FollowUpQuery, FollowUpStore, LeasedItem, Leaser, OptOutPage, OptOutQuery, OptOutStore,
    OutboundQueue, PolicyStore, SCAN_BUDGET, Store, StoreError, TraceQuery, bounded_page,
    decide_acks, decide_claims,
};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::batch::{self, CreateJob};
use crate::rows;
use crate::sql;
use crm_ports::drain::stats_changes;

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
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] tokio_postgres::Error),
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
        };
        options.pg_config()?;
        Ok(options)
    }

    pub fn schema(&self) -> &str {
        &self.schema
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
    schema: String,
    /// Counts the event commits this process heard of; started on first use.
    notifications: Arc<OnceLock<watch::Receiver<u64>>>,
    /// Where follow-up creates wait for their batch; started on first use.
    creates: Arc<OnceLock<mpsc::Sender<CreateJob>>>,
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
        let manager = Manager::from_config(
            options.pg_config()?,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| PgError::Pool(e.to_string()))?;
        Ok(Self {
            pool,
            timeout: options.timeout,
            config: options.pg_config()?,
            schema: options.schema().to_owned(),
            notifications: Arc::default(),
            creates: Arc::default(),
        })
    }

    /// The group-commit batcher of follow-up creates.
    fn creates(&self) -> &mpsc::Sender<CreateJob> {
        self.creates
            .get_or_init(|| batch::spawn(self.pool.clone(), self.timeout))
    }

    /// A receiver that changes whenever an event of this schema commits (in any process),
    /// and once after each (re)connection of the listener, when some may have gone unheard.
    fn notifications(&self) -> watch::Receiver<u64> {
        self.notifications
            .get_or_init(|| {
                let (sender, receiver) = watch::channel(0);
                tokio::spawn(listen(self.config.clone(), self.schema.clone(), sender));
                receiver
            })
            .clone()
    }

    /// Runs `work` on a pooled connection. Everything, from waiting for the connection to
    /// the last row, is bounded by the timeout, whatever the network does; a connection
    /// cut short mid-call is thrown away, never reused. A write cut short may still have
    /// committed: `Unavailable` then means "outcome unknown".
    async fn call<T>(
        &self,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        bounded(&self.pool, self.timeout, work, |error| error).await
    }

    fn timed_out(&self) -> StoreError {
        timed_out(self.timeout)
    }

    /// The record `by_id` finds for `id`, if `tenant_id` owns it (another tenant's is
    /// `None`, as an unknown one).
    async fn tenants<T: Send>(
        &self,
        tenant_id: &TenantId,
        by_id: &str,
        id: Uuid,
        map: fn(&tokio_postgres::Row) -> Result<T, rows::RowError>,
        owner: fn(&T) -> &TenantId,
    ) -> Result<Option<T>, StoreError> {
        let found = self
            .call(async |client| one(&*client, by_id, &[&id], map).await)
            .await?;
        Ok(found.filter(|record| owner(record) == tenant_id))
    }
}

/// Runs `work` on a connection of `pool`, everything bounded by `timeout`; a connection
/// cut short mid-call is thrown away, never reused. `failed` turns the store's own
/// errors (no connection, no answer in time) into `work`'s.
pub(crate) async fn bounded<T, E>(
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
    match tokio::time::timeout_at(deadline, work(&mut client)).await {
        Ok(result) => result,
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(failed(timed_out(timeout)))
        }
    }
}

pub(crate) fn timed_out(timeout: Duration) -> StoreError {
    unavailable(format!(
        "no answer from the database within {} ms",
        timeout.as_millis()
    ))
}

/// Events as the parallel arrays the write statements take.
#[derive(Default)]
pub(crate) struct EventColumns {
    ids: Vec<Uuid>,
    tenants: Vec<String>,
    names: Vec<String>,
    correlations: Vec<Uuid>,
    emitted: Vec<OffsetDateTime>,
    envelopes: Vec<serde_json::Value>,
}

impl EventColumns {
    pub(crate) fn new(events: &[EventEnvelope]) -> Result<Self, StoreError> {
        let mut columns = Self {
            ids: Vec::with_capacity(events.len()),
            tenants: Vec::with_capacity(events.len()),
            names: Vec::with_capacity(events.len()),
            correlations: Vec::with_capacity(events.len()),
            emitted: Vec::with_capacity(events.len()),
            envelopes: Vec::with_capacity(events.len()),
        };
        columns.extend(events)?;
        Ok(columns)
    }

    fn extend(&mut self, events: &[EventEnvelope]) -> Result<(), StoreError> {
        for event in events {
            self.ids.push(event.event_id.as_uuid());
            self.tenants.push(event.tenant_id.as_str().to_owned());
            self.names.push(event.name.clone());
            self.correlations.push(event.correlation_id.as_uuid());
            self.emitted.push(event.emitted_at.as_datetime());
            self.envelopes
                .push(serde_json::to_value(event).map_err(unavailable)?);
        }
        Ok(())
    }

    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.ids,
            &self.tenants,
            &self.names,
            &self.correlations,
            &self.emitted,
            &self.envelopes,
        ]
    }
}

/// Runs a write statement that returns no rows.
async fn changed_rows_of(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = prepared(client, query).await?;
    client
        .execute(&statement, params)
        .await
        .map_err(unavailable)
}

/// A drain batch's decisions as the parallel arrays of its three write statements.
#[derive(Default)]
struct Decided {
    ids: Vec<Uuid>,
    statuses: Vec<&'static str>,
    provider_message_ids: Vec<Option<String>>,
    error_codes: Vec<Option<String>>,
    error_messages: Vec<Option<String>>,
    updated_at: Vec<OffsetDateTime>,
    events: EventColumns,
    item_ids: Vec<Uuid>,
    item_tenants: Vec<String>,
    item_keys: Vec<String>,
    items: Vec<serde_json::Value>,
    item_created_at: Vec<OffsetDateTime>,
    item_follow_ups: Vec<Uuid>,
    item_max_attempts: Vec<i32>,
    item_backoffs: Vec<i32>,
    /// How the decided follow-ups move their campaigns' counts.
    stats: Vec<(CampaignId, CampaignStats)>,
}

impl Decided {
    /// Adds a decision about `due`; returns what the drain reports for it.
    fn add(
        &mut self,
        due: &DueFollowUp,
        decision: DispatchDecision,
    ) -> Result<DrainOutcome, StoreError> {
        let followup_id = due.follow_up.followup_id;
        let outcome = decision.outcome(followup_id);
        let (follow_up, item, events) = match decision {
            DispatchDecision::Send {
                follow_up,
                item,
                events,
            } => (follow_up, Some(item), events),
            DispatchDecision::Fail { follow_up, events } => (follow_up, None, events),
            DispatchDecision::Skip { .. } => return Ok(outcome),
        };
        self.stats
            .extend(stats_changes([(Some(&due.follow_up), &*follow_up)]));
        self.ids.push(followup_id.as_uuid());
        self.statuses.push(follow_up.status.as_str());
        self.provider_message_ids
            .push(follow_up.provider_message_id.clone());
        self.error_codes.push(follow_up.last_error_code.clone());
        self.error_messages
            .push(follow_up.last_error_message.clone());
        self.updated_at.push(follow_up.updated_at.as_datetime());
        self.events.extend(&events)?;
        if let Some(item) = item {
            self.item_ids.push(item.queue_item_id.as_uuid());
            self.item_tenants.push(item.tenant_id.as_str().to_owned());
            self.item_keys.push(item.idempotency_key.clone());
            self.items
                .push(serde_json::to_value(&*item).map_err(unavailable)?);
            self.item_created_at.push(item.created_at.as_datetime());
            self.item_follow_ups.push(followup_id.as_uuid());
            let policy = item.retry_policy;
            self.item_max_attempts
                .push(i32::try_from(policy.max_attempts).map_err(unavailable)?);
            self.item_backoffs
                .push(i32::try_from(policy.backoff_ms).map_err(unavailable)?);
        }
        Ok(outcome)
    }

    fn outcome_params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.ids,
            &self.statuses,
            &self.provider_message_ids,
            &self.error_codes,
            &self.error_messages,
            &self.updated_at,
        ]
    }

    fn outbound_params(&self) -> [&(dyn ToSql + Sync); 8] {
        [
            &self.item_ids,
            &self.item_tenants,
            &self.item_keys,
            &self.items,
            &self.item_created_at,
            &self.item_follow_ups,
            &self.item_max_attempts,
            &self.item_backoffs,
        ]
    }
}

/// How to find the stored record an idempotent create ran into.
struct Lookup<T> {
    by_id: &'static str,
    by_key: &'static str,
    map: fn(&tokio_postgres::Row) -> Result<T, rows::RowError>,
    tenant_of: fn(&T) -> &TenantId,
}

impl<T> Lookup<T> {
    /// The insert did nothing, so the id or the tenant's key is taken: by id first (an id
    /// of another tenant is a conflict), then by key.
    async fn repeated(
        &self,
        client: &impl GenericClient,
        id: Uuid,
        tenant_id: &TenantId,
        external_key: &Option<String>,
    ) -> Result<Created<T>, StoreError> {
        if let Some(existing) = one(client, self.by_id, &[&id], self.map).await? {
            if (self.tenant_of)(&existing) != tenant_id {
                return Err(StoreError::IdConflict { id });
            }
            return Ok(Created::Existing(existing));
        }
        let by_key = one(
            client,
            self.by_key,
            &[&tenant_id.as_str(), external_key],
            self.map,
        )
        .await?;
        by_key
            .map(Created::Existing)
            .ok_or_else(|| unavailable("an insert conflicted with a row that is gone"))
    }
}

/// Runs one write statement that ends in `SELECT count(*) FROM changed`.
async fn changed_rows(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<i64, StoreError> {
    query_value(client, query, params).await
}

fn campaign_params(campaign: &Campaign) -> Result<CampaignParams, StoreError> {
    Ok(CampaignParams {
        id: campaign.campaign_id.as_uuid(),
        metadata: serde_json::Value::Object(campaign.metadata.clone()),
        revision: i64::try_from(campaign.revision).map_err(unavailable)?,
    })
}

/// Owned values of a campaign's parameters that are not plain field borrows.
struct CampaignParams {
    id: Uuid,
    metadata: serde_json::Value,
    revision: i64,
}

/// `query` prepared on `client`, once per connection: the pool keeps prepared statements
/// with the connection, so later calls skip the round trip.
async fn prepared(
    client: &impl GenericClient,
    query: &str,
) -> Result<tokio_postgres::Statement, StoreError> {
    client.prepare_cached(query).await.map_err(unavailable)
}

/// The rows of one statement, as the driver returns them.
async fn query_rows(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, StoreError> {
    let statement = prepared(client, query).await?;
    client.query(&statement, params).await.map_err(unavailable)
}

/// The one row of a statement that always returns exactly one.
async fn query_row(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<tokio_postgres::Row, StoreError> {
    let statement = prepared(client, query).await?;
    client
        .query_one(&statement, params)
        .await
        .map_err(unavailable)
}

/// The first column of the one row of a statement that always returns exactly one.
async fn query_value<T>(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<T, StoreError>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    let row = query_row(client, query, params).await?;
    row.try_get(0).map_err(unavailable)
}

/// The record of the row a statement returns, if it returns one.
async fn one<T>(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
    map: fn(&tokio_postgres::Row) -> Result<T, rows::RowError>,
) -> Result<Option<T>, StoreError> {
    let statement = prepared(client, query).await?;
    let row = client
        .query_opt(&statement, params)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(map).transpose().map_err(unavailable)
}

/// The records of every row a statement returns.
async fn all<T>(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
    map: fn(&tokio_postgres::Row) -> Result<T, rows::RowError>,
) -> Result<Vec<T>, StoreError> {
    query_rows(client, query, params)
        .await?
        .iter()
        .map(map)
        .collect::<Result<_, _>>()
        .map_err(unavailable)
}

fn page<T>(items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> Cursor) -> Page<T> {
    let (items, next_cursor) = split_page(items, limit, cursor);
    Page { items, next_cursor }
}

/// The first `limit` of `items` (fetched one more than asked for), and where the next
/// page starts when there is one.
fn split_page<T, C>(
    mut items: Vec<T>,
    limit: usize,
    cursor: impl Fn(&T) -> C,
) -> (Vec<T>, Option<C>) {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(cursor) } else { None };
    (items, next)
}

/// One more than asked for, to know whether another page follows.
fn fetch_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1
}

#[async_trait]
impl CampaignStore for PgStore {
    async fn create_campaign(
        &self,
        campaign: &Campaign,
        events: &[EventEnvelope],
    ) -> Result<Created<Campaign>, StoreError> {
        let params = campaign_params(campaign)?;
        let events = EventColumns::new(events)?;
        let scheduled_at = campaign.scheduled_at.map(|t| t.as_datetime());
        let created_at = campaign.created_at.as_datetime();
        let updated_at = campaign.updated_at.as_datetime();
        let record: [&(dyn ToSql + Sync); 12] = [
            &params.id,
            &campaign.tenant_id.as_str(),
            &campaign.external_key,
            &campaign.name,
            &campaign.channel,
            &campaign.audience_segment,
            &campaign.state.as_str(),
            &scheduled_at,
            &params.metadata,
            &params.revision,
            &created_at,
            &updated_at,
        ];
        let all: Vec<_> = record.into_iter().chain(events.params()).collect();
        self.call(async |client| {
            if changed_rows(&*client, sql::CREATE_CAMPAIGN, &all).await? == 1 {
                return Ok(Created::Created(campaign.clone()));
            }
            let lookup = Lookup {
                by_id: sql::SELECT_CAMPAIGN_BY_ID,
                by_key: sql::SELECT_CAMPAIGN_BY_KEY,
                map: rows::campaign,
                tenant_of: |found: &Campaign| &found.tenant_id,
            };
            lookup
                .repeated(
                    &*client,
                    params.id,
                    &campaign.tenant_id,
                    &campaign.external_key,
                )
                .await
        })
        .await
    }

    async fn campaign(
        &self,
        tenant_id: &TenantId,
        campaign_id: CampaignId,
    ) -> Result<Option<Campaign>, StoreError> {
        self.tenants(
            tenant_id,
            sql::SELECT_CAMPAIGN_BY_ID,
            campaign_id.as_uuid(),
            rows::campaign,
            |campaign| &campaign.tenant_id,
        )
        .await
    }

    async fn update_campaign(
        &self,
        changed: &Campaign,
        events: &[EventEnvelope],
    ) -> Result<(), StoreError> {
        let params = campaign_params(changed)?;
        let events = EventColumns::new(events)?;
        let scheduled_at = changed.scheduled_at.map(|t| t.as_datetime());
        let updated_at = changed.updated_at.as_datetime();
        let record: [&(dyn ToSql + Sync); 11] = [
            &params.id,
            &changed.tenant_id.as_str(),
            &changed.external_key,
            &changed.name,
            &changed.channel,
            &changed.audience_segment,
            &changed.state.as_str(),
            &scheduled_at,
            &params.metadata,
            &params.revision,
            &updated_at,
        ];
        let all: Vec<_> = record.into_iter().chain(events.params()).collect();
        self.call(async |client| {
            if changed_rows(&*client, sql::UPDATE_CAMPAIGN, &all).await? == 1 {
                return Ok(());
            }
            // Nothing changed: another writer moved the revision, or the tenant has no
            // such campaign.
            let current = one(
                &*client,
                sql::SELECT_CAMPAIGN_BY_ID,
                &[&params.id],
                rows::campaign,
            )
            .await?;
            Err(match current {
                Some(current) if current.tenant_id == changed.tenant_id => StoreError::Stale {
                    campaign_id: changed.campaign_id,
                },
                _ => StoreError::NotFound {
                    campaign_id: changed.campaign_id,
                },
            })
        })
        .await
    }

    async fn list_campaigns(&self, query: &CampaignQuery) -> Result<Page<Campaign>, StoreError> {
        let (after_at, after_id) = keyset(query.after);
        let state = query.state.map(|s| s.as_str());
        let limit = fetch_limit(query.limit);
        let tenant = query.tenant_id.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tenant, &after_at, &after_id, &limit];
        let sql = match &state {
            None => sql::LIST_CAMPAIGNS,
            Some(state) => {
                params.push(state);
                sql::LIST_CAMPAIGNS_BY_STATE
            }
        };
        let items = self
            .call(async |client| all(&*client, sql, &params, rows::campaign).await)
            .await?;
        Ok(page(items, query.limit, |c| Cursor {
            created_at: c.created_at,
            id: c.campaign_id.as_uuid(),
        }))
    }

    async fn campaign_stats(&self, campaign_id: CampaignId) -> Result<CampaignStats, StoreError> {
        let found = self
            .call(async |client| {
                all(
                    &*client,
                    sql::CAMPAIGN_STATS,
                    &[&campaign_id.as_uuid()],
                    rows::campaign_stats,
                )
                .await
            })
            .await?;
        Ok(found.into_iter().next().unwrap_or_default())
    }
}

#[async_trait]
impl FollowUpStore for PgStore {
    async fn create_follow_up(
        &self,
        follow_up: &FollowUp,
        events: &[EventEnvelope],
    ) -> Result<Created<FollowUp>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || unavailable("the create batcher stopped");
        self.creates()
            .try_send(CreateJob {
                follow_up: follow_up.clone(),
                events: events.to_vec(),
                reply,
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => unavailable(format!(
                    "{} creates are already waiting for the database",
                    batch::MAX_WAITING
                )),
                mpsc::error::TrySendError::Closed(_) => stopped(),
            })?;
        // The batch before this one may still be committing: two bounds at most.
        let inserted = tokio::time::timeout(self.timeout * 2, answer)
            .await
            .map_err(|_| self.timed_out())?
            .map_err(|_| stopped())??;
        if inserted {
            return Ok(Created::Created(follow_up.clone()));
        }
        let lookup = Lookup {
            by_id: sql::SELECT_FOLLOW_UP_BY_ID,
            by_key: sql::SELECT_FOLLOW_UP_BY_KEY,
            map: rows::follow_up,
            tenant_of: |found: &FollowUp| &found.tenant_id,
        };
        let id = follow_up.followup_id.as_uuid();
        self.call(async |client| {
            lookup
                .repeated(&*client, id, &follow_up.tenant_id, &follow_up.external_key)
                .await
        })
        .await
    }

    async fn list_follow_ups(&self, query: &FollowUpQuery) -> Result<Page<FollowUp>, StoreError> {
        let (after_at, after_id) = keyset(query.after);
        let status = query.status.map(|s| s.as_str());
        let campaign = query.campaign_id.map(|c| c.as_uuid());
        let limit = fetch_limit(query.limit);
        let tenant = query.tenant_id.as_str();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&tenant, &after_at, &after_id, &limit];
        let sql = match (&campaign, &status) {
            (None, None) => sql::LIST_FOLLOW_UPS,
            (None, Some(status)) => {
                params.push(status);
                sql::LIST_FOLLOW_UPS_BY_STATUS
            }
            (Some(campaign), None) => {
                params.push(campaign);
                sql::LIST_FOLLOW_UPS_BY_CAMPAIGN
            }
            (Some(campaign), Some(status)) => {
                params.push(campaign);
                params.push(status);
                sql::LIST_FOLLOW_UPS_BY_CAMPAIGN_AND_STATUS
            }
        };
        let items = self
            .call(async |client| all(&*client, sql, &params, rows::follow_up).await)
            .await?;
        Ok(page(items, query.limit, |f| Cursor {
            created_at: f.created_at,
            id: f.followup_id.as_uuid(),
        }))
    }

    async fn drain(
        &self,
        now: Timestamp,
        limit: usize,
        dispatcher: &dyn Dispatcher,
    ) -> Result<Vec<DrainOutcome>, StoreError> {
        let batch = fetch_limit(limit).saturating_sub(1);
        // Deep enough that a few drains running at once each fill their batch.
        let depth = batch.saturating_mul(CLAIM_DEPTH);
        self.call(async |client| {
            let transaction = client.transaction().await.map_err(unavailable)?;
            let lanes = all(&transaction, sql::LANES, &[], rows::lane_state).await?;
            let plan = dispatcher.plan(&lanes);
            // Paced tenants this drain holds: each takes from a tenant's window after the
            // one before it committed. One held by another drain gets nothing from this
            // one (waiting would make every drain queue behind the paced tenants).
            let mut paced: Vec<&str> = Vec::new();
            if !plan.paced.is_empty() {
                let tenants: Vec<&str> = plan.paced.iter().map(|(t, _)| t.as_str()).collect();
                let held = transaction
                    .query(sql::TRY_LOCK_TENANTS, &[&tenants])
                    .await
                    .map_err(unavailable)?
                    .iter()
                    .map(|row| row.try_get::<_, String>(0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(unavailable)?;
                paced = tenants
                    .into_iter()
                    .filter(|t| held.iter().any(|h| h == t))
                    .collect();
            }
            let mut used = HashMap::new();
            if !paced.is_empty() {
                let window_start = plan.window_start.map(|at| at.as_datetime());
                for row in transaction
                    .query(sql::SENT_SINCE, &[&paced, &window_start])
                    .await
                    .map_err(unavailable)?
                {
                    let tenant: String = row.try_get(0).map_err(unavailable)?;
                    let sent: i64 = row.try_get(1).map_err(unavailable)?;
                    used.insert(
                        TenantId::parse(tenant).ok_or_else(|| unavailable("an empty tenant"))?,
                        u64::try_from(sent).unwrap_or(0),
                    );
                }
            }
            let mut caps = plan.caps(&used);
            for (tenant, cap) in caps.iter_mut() {
                if !paced.contains(&tenant.as_str()) {
                    *cap = 0;
                }
            }
            let lane_tenants: Vec<&str> = plan.open.iter().map(|l| l.tenant_id.as_str()).collect();
            let lane_campaigns: Vec<Uuid> = plan
                .open
                .iter()
                .map(|l| l.campaign_id.map_or(Uuid::nil(), |id| id.as_uuid()))
                .collect();
            let lane_zones: Vec<&str> = plan
                .open
                .iter()
                .map(|l| l.time_zone.as_deref().unwrap_or(""))
                .collect();
            let cap_tenants: Vec<&str> = caps.keys().map(TenantId::as_str).collect();
            let cap_counts: Vec<i64> = caps
                .values()
                .map(|cap| i64::try_from(*cap).unwrap_or(i64::MAX))
                .collect();
            let claim: [&(dyn ToSql + Sync); 8] = [
                &lane_tenants,
                &lane_campaigns,
                &lane_zones,
                &cap_tenants,
                &cap_counts,
                &now.as_datetime(),
                &depth,
                &batch,
            ];
            let locked: Vec<Uuid> = query_rows(&transaction, sql::CLAIM_DUE, &claim)
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            let claimed = if locked.is_empty() {
                Vec::new()
            } else {
                query_rows(&transaction, sql::CLAIMED, &[&locked]).await?
            };
            let mut outcomes = Vec::with_capacity(claimed.len());
            let mut decided = Decided::default();
            let mut claims: HashMap<&str, i32> = HashMap::new();
            for row in &claimed {
                let campaign_state: Option<String> =
                    row.try_get("campaign_state").map_err(unavailable)?;
                let due = DueFollowUp {
                    follow_up: rows::follow_up(row).map_err(unavailable)?,
                    campaign_state: campaign_state
                        .map(|state| state.parse())
                        .transpose()
                        .map_err(unavailable)?,
                    recipient_opted_out: row.try_get("recipient_opted_out").map_err(unavailable)?,
                };
                let decision = dispatcher.decide(&due);
                // A paced tenant's window counts what is sent.
                if let DispatchDecision::Send { .. } = decision
                    && let Some(tenant) = paced
                        .iter()
                        .find(|t| **t == due.follow_up.tenant_id.as_str())
                {
                    *claims.entry(tenant).or_default() += 1;
                }
                outcomes.push(decided.add(&due, decision)?);
            }
            // The whole batch is a few statements, committed with the claim or not at all,
            // sent together (one round trip) and run by the server in the order written:
            // prepared beforehand, each goes out when first polled, and a biased
            // `try_join!` polls them in order. Every writer takes the event lock before it
            // moves a campaign's counts, so none waits on the other in turn.
            if !decided.ids.is_empty() {
                for query in [
                    sql::RECORD_OUTCOMES,
                    sql::ENQUEUE_OUTBOUND,
                    sql::INSERT_EVENTS,
                    sql::ADD_STATS,
                ] {
                    prepared(&transaction, query).await?;
                }
                let outcome_params = decided.outcome_params();
                let outbound_params = decided.outbound_params();
                let event_params = decided.events.params();
                tokio::try_join!(
                    biased;
                    changed_rows_of(&transaction, sql::RECORD_OUTCOMES, &outcome_params),
                    changed_rows_of(&transaction, sql::ENQUEUE_OUTBOUND, &outbound_params),
                    changed_rows_of(&transaction, sql::INSERT_EVENTS, &event_params),
                    add_stats(&transaction, &decided.stats),
                )?;
            }
            if !claims.is_empty() {
                let tenants: Vec<&str> = claims.keys().copied().collect();
                let counts: Vec<i32> = claims.values().copied().collect();
                let at = vec![now.as_datetime(); tenants.len()];
                let forget_before = plan.window_start.unwrap_or(now).as_datetime();
                changed_rows_of(
                    &transaction,
                    sql::RECORD_SENDS,
                    &[&tenants, &at, &counts, &forget_before],
                )
                .await?;
            }
            transaction.commit().await.map_err(unavailable)?;
            Ok(outcomes)
        })
        .await
    }

    async fn follow_up(
        &self,
        tenant_id: &TenantId,
        followup_id: FollowUpId,
    ) -> Result<Option<FollowUp>, StoreError> {
        self.tenants(
            tenant_id,
            sql::SELECT_FOLLOW_UP_BY_ID,
            followup_id.as_uuid(),
            rows::follow_up,
            |follow_up| &follow_up.tenant_id,
        )
        .await
    }

    async fn save_follow_up(
        &self,
        follow_up: &FollowUp,
        expected: FollowUpStatus,
        events: &[EventEnvelope],
    ) -> Result<bool, StoreError> {
        let events = EventColumns::new(events)?;
        let id = follow_up.followup_id.as_uuid();
        let delivery = follow_up.delivery.as_ref().map(rows::delivery_json);
        let updated_at = follow_up.updated_at.as_datetime();
        // The change from the status it is saved from, delivery as it stands: a save
        // never changes what the sender reported.
        let mut before = follow_up.clone();
        before.status = expected;
        let change = CampaignStats::change(Some(&before), follow_up)
            .counts()
            .to_vec();
        let tenant = follow_up.tenant_id.as_str();
        let record: [&(dyn ToSql + Sync); 9] = [
            &id,
            &expected.as_str(),
            &follow_up.status.as_str(),
            &follow_up.provider_message_id,
            &follow_up.last_error_code,
            &follow_up.last_error_message,
            &delivery,
            &updated_at,
            &change,
        ];
        let all: Vec<_> = record
            .into_iter()
            .chain(events.params())
            .chain([&tenant as &(dyn ToSql + Sync)])
            .collect();
        self.call(async |client| Ok(changed_rows(&*client, sql::SAVE_FOLLOW_UP, &all).await? == 1))
            .await
    }

    async fn count_due(&self, now: Timestamp, held: &[CampaignState]) -> Result<u64, StoreError> {
        let held: Vec<&str> = held.iter().map(|state| state.as_str()).collect();
        let cap = i64::try_from(COUNT_DUE_CAP).unwrap_or(i64::MAX);
        let params: [&(dyn ToSql + Sync); 3] = [&held, &now.as_datetime(), &cap];
        let count: i64 = self
            .call(async |client| query_value(&*client, sql::COUNT_DUE, &params).await)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

/// The keyset a page starts after: `after`, or before every record (a year no record
/// has).
fn keyset(after: Option<Cursor>) -> (OffsetDateTime, Uuid) {
    match after {
        Some(cursor) => (cursor.created_at.as_datetime(), cursor.id),
        None => (
            time::Date::from_calendar_date(-1, time::Month::January, 1)
                .expect("a valid date")
                .midnight()
                .assume_utc(),
            Uuid::nil(),
        ),
    }
}

/// How many times a batch a claim looks at, so that concurrent drains skipping each
/// other's locked rows still fill their batches.
const CLAIM_DEPTH: i64 = 4;

/// `count_due` stops counting here: the gauge says "at least this many".
pub const COUNT_DUE_CAP: usize = 10_000;

#[async_trait]
impl PolicyStore for PgStore {
    async fn sending_policy(
        &self,
        tenant_id: &TenantId,
    ) -> Result<Option<SendingPolicy>, StoreError> {
        let found = self
            .call(async |client| {
                all(
                    &*client,
                    sql::SELECT_POLICY,
                    &[&tenant_id.as_str()],
                    rows::policy,
                )
                .await
            })
            .await?;
        Ok(found.into_iter().next())
    }

    async fn put_sending_policy(
        &self,
        tenant_id: &TenantId,
        policy: &SendingPolicy,
    ) -> Result<(), StoreError> {
        let rate = policy
            .max_per_second
            .map(|rate| i32::try_from(rate).map_err(unavailable))
            .transpose()?;
        let quiet = policy.quiet_hours.as_ref();
        let start = quiet.map(|q| q.start.to_string());
        let end = quiet.map(|q| q.end.to_string());
        let zone = quiet.map(|q| q.time_zone.as_str());
        let now = crm_domain::timestamp::Timestamp::from_datetime(OffsetDateTime::now_utc());
        let params: [&(dyn ToSql + Sync); 6] = [
            &tenant_id.as_str(),
            &rate,
            &start,
            &end,
            &zone,
            &now.as_datetime(),
        ];
        self.call(async |client| {
            changed_rows_of(&*client, sql::PUT_POLICY, &params).await?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl EventEmitter for PgStore {
    async fn events_by_correlation(&self, query: &TraceQuery) -> Result<EventPage, StoreError> {
        let after = position(query.after);
        // Enough rows to find out whether another page follows, or, for one tenant's
        // events, to pass over the most others one call may.
        let wanted = match query.tenant_id {
            None => query.limit,
            Some(_) => SCAN_BUDGET,
        };
        let fetch = fetch_limit(wanted);
        let params: [&(dyn ToSql + Sync); 3] = [&query.correlation_id.as_uuid(), &after, &fetch];
        let rows = self
            .call(async |client| query_rows(&*client, sql::EVENTS_BY_CORRELATION, &params).await)
            .await?;
        let scan = bounded_page(
            numbered(&rows)?,
            |row| {
                query.tenant_id.as_ref().is_none_or(|tenant| {
                    row.try_get::<_, &str>("tenant_id").ok() == Some(tenant.as_str())
                })
            },
            query.limit,
        );
        Ok(EventPage {
            next: scan.next(),
            items: envelopes(&scan.items)?,
        })
    }

    async fn read_feed(&self, query: &FeedQuery) -> Result<FeedPage, StoreError> {
        let (bounds, rows) = self
            .call(async |client| {
                let bounds = query_row(&*client, sql::FEED_BOUNDS, &[]).await?;
                let deleted_through: i64 = bounds.try_get(0).map_err(unavailable)?;
                let last_issued: i64 = bounds.try_get(1).map_err(unavailable)?;
                let start = query
                    .after
                    .map_or(deleted_through, |cursor| position(Some(cursor)));
                if start > last_issued {
                    return Err(StoreError::CursorNotIssued);
                }
                if start < deleted_through {
                    return Err(StoreError::CursorExpired {
                        oldest: EventCursor(u64::try_from(deleted_through).unwrap_or(0)),
                    });
                }
                // One tenant's events come from its own index; otherwise the log is read in
                // order, passing over at most a budget of events that do not match.
                let fetch = fetch_limit(if query.name_prefix.is_some() {
                    SCAN_BUDGET
                } else {
                    query.limit
                });
                let rows = match &query.tenant_id {
                    Some(tenant) => {
                        let params: [&(dyn ToSql + Sync); 3] = [&start, &fetch, &tenant.as_str()];
                        query_rows(&*client, sql::FEED_OF_TENANT, &params).await?
                    }
                    None => query_rows(&*client, sql::FEED, &[&start, &fetch]).await?,
                };
                Ok((start, rows))
            })
            .await?;
        let start = EventCursor(u64::try_from(bounds).unwrap_or(0));
        let scan = bounded_page(
            numbered(&rows)?,
            |row| {
                query.name_prefix.as_deref().is_none_or(|prefix| {
                    row.try_get::<_, &str>("name")
                        .is_ok_and(|name| name.starts_with(prefix))
                })
            },
            query.limit,
        );
        Ok(FeedPage {
            next: scan.last.unwrap_or(start),
            items: envelopes(&scan.items)?,
        })
    }

    async fn wait_for_events(&self, after: EventCursor, wait: Duration) -> Result<(), StoreError> {
        let mut notified = self.notifications();
        notified.borrow_and_update();
        let deadline = tokio::time::Instant::now() + wait;
        let after = position(Some(after));
        loop {
            let exists: bool = self
                .call(async |client| query_value(&*client, sql::EVENT_AFTER, &[&after]).await)
                .await?;
            if exists {
                return Ok(());
            }
            // Woken by a commit's notification; the second-long step only matters while
            // the listening connection is down, and keeps the wait from ever being blind.
            let step = (tokio::time::Instant::now() + NOTIFY_FALLBACK).min(deadline);
            match tokio::time::timeout_at(step, notified.changed()).await {
                Ok(_) => return Ok(()),
                Err(_) if tokio::time::Instant::now() >= deadline => return Ok(()),
                Err(_) => {}
            }
        }
    }
}

/// Listens for `crm_events` notifications on a connection of its own, reconnecting when
/// it drops, until no store handle is left to hear them.
async fn listen(config: tokio_postgres::Config, schema: String, heard: watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    while !heard.is_closed() {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (notices, mut received) = tokio::sync::mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    while let Some(message) =
                        std::future::poll_fn(|cx| connection.poll_message(cx)).await
                    {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(notification)) => {
                                if notices.send(notification.payload().to_owned()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                });
                if client.batch_execute("LISTEN crm_events").await.is_ok() {
                    backoff = Duration::from_millis(100);
                    // Commits made while no one listened: let waiters look once.
                    heard.send_modify(|count| *count += 1);
                    loop {
                        let payload = tokio::select! {
                            payload = received.recv() => payload,
                            () = heard.closed() => None,
                        };
                        match payload {
                            Some(payload) if payload == schema => {
                                heard.send_modify(|count| *count += 1);
                            }
                            Some(_) => {}
                            None => break,
                        }
                    }
                }
                driver.abort();
            }
            Err(error) => tracing::debug!(%error, "event listener cannot connect yet"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// How often a feed waiter looks for itself while no notification comes.
const NOTIFY_FALLBACK: Duration = Duration::from_secs(1);

/// A feed position as the database counts it.
fn position(cursor: Option<EventCursor>) -> i64 {
    i64::try_from(cursor.map_or(0, |cursor| cursor.0)).unwrap_or(i64::MAX)
}

/// Rows whose first column is the event number, paired with it.
fn numbered(rows: &[tokio_postgres::Row]) -> Result<Vec<(u64, &tokio_postgres::Row)>, StoreError> {
    rows.iter()
        .map(|row| {
            let seq: i64 = row.try_get("seq").map_err(unavailable)?;
            Ok((u64::try_from(seq).map_err(unavailable)?, row))
        })
        .collect()
}

fn envelopes(rows: &[&tokio_postgres::Row]) -> Result<Vec<EventEnvelope>, StoreError> {
    rows.iter()
        .map(|row| {
            let envelope: serde_json::Value = row.try_get("envelope").map_err(unavailable)?;
            serde_json::from_value(envelope).map_err(unavailable)
        })
        .collect()
}

/// Queue entries as the parallel arrays of `UPDATE_ITEMS`.
#[derive(Default)]
struct ItemColumns {
    ids: Vec<Uuid>,
    statuses: Vec<&'static str>,
    attempts: Vec<i32>,
    available_at: Vec<Option<OffsetDateTime>>,
    lease_ids: Vec<Option<Uuid>>,
    lease_expires_at: Vec<Option<OffsetDateTime>>,
    last_ack_leases: Vec<Option<Uuid>>,
    last_ack_statuses: Vec<Option<&'static str>>,
    finished_at: Vec<Option<OffsetDateTime>>,
}

impl ItemColumns {
    fn new(entries: &[QueueEntry]) -> Result<Self, StoreError> {
        let mut columns = Self::default();
        for entry in entries {
            columns.ids.push(entry.queue_item_id.as_uuid());
            columns.statuses.push(entry.status.as_str());
            columns
                .attempts
                .push(i32::try_from(entry.attempt).map_err(unavailable)?);
            columns
                .available_at
                .push(entry.available_at.map(|at| at.as_datetime()));
            columns
                .lease_ids
                .push(entry.lease.map(|lease| lease.lease_id.0));
            columns
                .lease_expires_at
                .push(entry.lease.map(|lease| lease.expires_at.as_datetime()));
            columns
                .last_ack_leases
                .push(entry.last_ack.map(|ack| ack.lease_id.0));
            columns
                .last_ack_statuses
                .push(entry.last_ack.map(|ack| ack.status.as_str()));
            columns
                .finished_at
                .push(entry.finished_at.map(|at| at.as_datetime()));
        }
        Ok(columns)
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 9] {
        [
            &self.ids,
            &self.statuses,
            &self.attempts,
            &self.available_at,
            &self.lease_ids,
            &self.lease_expires_at,
            &self.last_ack_leases,
            &self.last_ack_statuses,
            &self.finished_at,
        ]
    }
}

/// Adds `changes` to the campaigns' counts (in campaign order, the order every writer
/// locks them in).
async fn add_stats(
    transaction: &deadpool_postgres::Transaction<'_>,
    changes: &[(CampaignId, CampaignStats)],
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    // One row per campaign: a statement may not move a row twice.
    let mut merged: std::collections::BTreeMap<CampaignId, CampaignStats> = Default::default();
    for (id, change) in changes {
        merged.entry(*id).or_default().add(change);
    }
    let changes: Vec<_> = merged.into_iter().collect();
    let ids: Vec<Uuid> = changes.iter().map(|(id, _)| id.as_uuid()).collect();
    let column = |index: usize| -> Vec<i64> {
        changes
            .iter()
            .map(|(_, change)| change.counts()[index])
            .collect()
    };
    let columns: [Vec<i64>; 6] = std::array::from_fn(column);
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&ids];
    params.extend(columns.iter().map(|c| c as &(dyn ToSql + Sync)));
    changed_rows_of(transaction, sql::ADD_STATS, &params).await?;
    Ok(())
}

/// Writes the items' new states, the follow-ups' deliveries, the opt-outs, then the
/// events and last the campaigns' counts, inside `transaction`.
async fn write_deliveries(
    transaction: &deadpool_postgres::Transaction<'_>,
    entries: &[QueueEntry],
    follow_ups: &[FollowUp],
    before: &HashMap<FollowUpId, FollowUp>,
    opt_outs: &[OptOut],
    events: &[EventEnvelope],
) -> Result<(), StoreError> {
    if !entries.is_empty() {
        let columns = ItemColumns::new(entries)?;
        changed_rows_of(transaction, sql::UPDATE_ITEMS, &columns.params()).await?;
    }
    if !follow_ups.is_empty() {
        let ids: Vec<Uuid> = follow_ups.iter().map(|f| f.followup_id.as_uuid()).collect();
        let deliveries: Vec<Option<serde_json::Value>> = follow_ups
            .iter()
            .map(|f| f.delivery.as_ref().map(rows::delivery_json))
            .collect();
        let updated_at: Vec<OffsetDateTime> = follow_ups
            .iter()
            .map(|f| f.updated_at.as_datetime())
            .collect();
        changed_rows_of(
            transaction,
            sql::RECORD_DELIVERIES,
            &[&ids, &deliveries, &updated_at],
        )
        .await?;
    }
    if !opt_outs.is_empty() {
        let tenants: Vec<&str> = opt_outs.iter().map(|o| o.tenant_id.as_str()).collect();
        let phones: Vec<&str> = opt_outs.iter().map(|o| o.phone_e164.as_str()).collect();
        let reasons: Vec<Option<&str>> = opt_outs.iter().map(|o| o.reason.as_deref()).collect();
        let created: Vec<OffsetDateTime> = opt_outs
            .iter()
            .map(|o| o.created_at.as_datetime())
            .collect();
        changed_rows_of(
            transaction,
            sql::ADD_OPT_OUTS,
            &[&tenants, &phones, &reasons, &created],
        )
        .await?;
    }
    if !events.is_empty() {
        let events = EventColumns::new(events)?;
        changed_rows_of(transaction, sql::INSERT_EVENTS, &events.params()).await?;
    }
    // After the event lock, as every writer does (see `drain`).
    let changes = stats_changes(
        follow_ups
            .iter()
            .map(|after| (before.get(&after.followup_id), after)),
    );
    add_stats(transaction, &changes).await
}

/// The follow-ups with these ids.
async fn follow_ups_by_id(
    client: &impl GenericClient,
    ids: &[FollowUpId],
) -> Result<HashMap<FollowUpId, FollowUp>, StoreError> {
    let ids: Vec<Uuid> = ids.iter().map(|id| id.as_uuid()).collect();
    let found = all(
        client,
        sql::SELECT_FOLLOW_UPS_BY_ID,
        &[&ids],
        rows::follow_up,
    )
    .await?;
    Ok(found.into_iter().map(|f| (f.followup_id, f)).collect())
}

#[async_trait]
impl OutboundQueue for PgStore {
    async fn claim(
        &self,
        now: Timestamp,
        limit: usize,
        leaser: &dyn Leaser,
    ) -> Result<Vec<LeasedItem>, StoreError> {
        let limit = fetch_limit(limit).saturating_sub(1);
        self.call(async |client| {
            let transaction = client.transaction().await.map_err(unavailable)?;
            let rows = query_rows(
                &transaction,
                sql::CLAIM_ITEMS,
                &[&now.as_datetime(), &limit],
            )
            .await?;
            let claimed = rows
                .iter()
                .map(|row| Ok((rows::queue_entry(row)?, row)))
                .collect::<Result<Vec<_>, rows::RowError>>()
                .map_err(unavailable)?;
            if claimed.is_empty() {
                transaction.commit().await.map_err(unavailable)?;
                return Ok(Vec::new());
            }
            // Only an item whose last lease ran out needs its follow-up, to record the
            // failure; usually none does.
            let running_out: Vec<FollowUpId> = claimed
                .iter()
                .filter(|(entry, _)| entry.runs_out_on_claim())
                .map(|(entry, _)| entry.followup_id)
                .collect();
            let follow_ups = if running_out.is_empty() {
                HashMap::new()
            } else {
                follow_ups_by_id(&transaction, &running_out).await?
            };
            let batch = decide_claims(
                claimed.iter().map(|(entry, _)| entry),
                |id| follow_ups.get(&id),
                leaser,
            );
            write_deliveries(
                &transaction,
                &batch.entries,
                &batch.follow_ups,
                &follow_ups,
                &[],
                &batch.events,
            )
            .await?;
            transaction.commit().await.map_err(unavailable)?;
            batch
                .entries
                .into_iter()
                .filter(|entry| batch.leased.contains(&entry.queue_item_id))
                .map(|entry| {
                    let row = claimed
                        .iter()
                        .find(|(claimed, _)| claimed.queue_item_id == entry.queue_item_id)
                        .map(|(_, row)| *row)
                        .expect("a leased entry was claimed");
                    Ok(LeasedItem {
                        entry,
                        item: rows::queued_item(row).map_err(unavailable)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn ack(
        &self,
        acks: &[AckRequest],
        acker: &dyn Acker,
    ) -> Result<Vec<AckStatus>, StoreError> {
        let ids: Vec<Uuid> = acks.iter().map(|ack| ack.queue_item_id.as_uuid()).collect();
        self.call(async |client| {
            let transaction = client.transaction().await.map_err(unavailable)?;
            let rows = query_rows(&transaction, sql::LOCK_ITEMS, &[&ids]).await?;
            let entries: HashMap<QueueItemId, QueueEntry> = rows
                .iter()
                .map(|row| rows::queue_entry(row).map(|entry| (entry.queue_item_id, entry)))
                .collect::<Result<_, _>>()
                .map_err(unavailable)?;
            let owners: Vec<FollowUpId> = entries.values().map(|e| e.followup_id).collect();
            let follow_ups = follow_ups_by_id(&transaction, &owners).await?;
            let batch = decide_acks(
                acks,
                acker,
                |id| entries.get(&id).cloned(),
                |id| follow_ups.get(&id).cloned(),
            );
            write_deliveries(
                &transaction,
                &batch.entries,
                &batch.follow_ups,
                &follow_ups,
                &batch.opt_outs,
                &batch.events,
            )
            .await?;
            transaction.commit().await.map_err(unavailable)?;
            Ok(batch.statuses)
        })
        .await
    }

    async fn queue_entry(&self, id: QueueItemId) -> Result<Option<QueueEntry>, StoreError> {
        self.call(async |client| {
            one(
                &*client,
                sql::SELECT_ITEM,
                &[&id.as_uuid()],
                rows::queue_entry,
            )
            .await
        })
        .await
    }

    async fn outbound_items(
        &self,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<OutboundItem>, StoreError> {
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .call(async |client| {
                query_rows(&*client, sql::OUTBOUND_ITEMS, &[&offset, &limit]).await
            })
            .await?;
        rows.iter()
            .map(|row| {
                let item: serde_json::Value = row.try_get(0).map_err(unavailable)?;
                serde_json::from_value(item).map_err(unavailable)
            })
            .collect()
    }
}

#[async_trait]
impl OptOutStore for PgStore {
    async fn add_opt_out(&self, opt_out: &OptOut) -> Result<Created<OptOut>, StoreError> {
        let created_at = opt_out.created_at.as_datetime();
        self.call(async |client| {
            let params: [&(dyn ToSql + Sync); 4] = [
                &opt_out.tenant_id.as_str(),
                &opt_out.phone_e164,
                &opt_out.reason,
                &created_at,
            ];
            if changed_rows_of(&*client, sql::ADD_OPT_OUT, &params).await? == 1 {
                return Ok(Created::Created(opt_out.clone()));
            }
            let existing = one(
                &*client,
                sql::SELECT_OPT_OUT,
                &[&opt_out.tenant_id.as_str(), &opt_out.phone_e164],
                rows::opt_out,
            )
            .await?;
            existing
                .map(Created::Existing)
                .ok_or_else(|| unavailable("an opt-out conflicted with a row that is gone"))
        })
        .await
    }

    async fn remove_opt_out(
        &self,
        tenant_id: &TenantId,
        phone_e164: &str,
    ) -> Result<bool, StoreError> {
        self.call(async |client| {
            let removed = changed_rows_of(
                &*client,
                sql::REMOVE_OPT_OUT,
                &[&tenant_id.as_str(), &phone_e164],
            )
            .await?;
            Ok(removed > 0)
        })
        .await
    }

    async fn opt_outs(&self, query: &OptOutQuery) -> Result<OptOutPage, StoreError> {
        let after = query.after.clone().unwrap_or_default();
        let fetch = fetch_limit(query.limit);
        let items = self
            .call(async |client| {
                all(
                    &*client,
                    sql::LIST_OPT_OUTS,
                    &[&query.tenant_id.as_str(), &after, &fetch],
                    rows::opt_out,
                )
                .await
            })
            .await?;
        let (items, next) = split_page(items, query.limit, |last| last.phone_e164.clone());
        Ok(OptOutPage { items, next })
    }
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

    async fn expire(&self, cutoff: Timestamp, batch: usize) -> Result<Expired, StoreError> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let cutoff = cutoff.as_datetime();
        // Two short statements, each its own transaction: no lock outlives one batch.
        let events: i64 = self
            .call(async |client| {
                query_value(&*client, sql::EXPIRE_EVENTS, &[&cutoff, &batch]).await
            })
            .await?;
        let items = self
            .call(async |client| {
                changed_rows_of(&*client, sql::EXPIRE_ITEMS, &[&cutoff, &batch]).await
            })
            .await?;
        Ok(Expired {
            events: u64::try_from(events).unwrap_or(0),
            outbound_items: items,
        })
    }
}
