//! `PgStore`: the ports over a deadpool of tokio-postgres connections.

use std::time::Duration;

use async_trait::async_trait;
use crm_domain::campaign::Campaign;
use crm_domain::event::EventEnvelope;
use crm_domain::follow_up::FollowUp;
use crm_domain::ids::{CampaignId, FollowUpId, TenantId};
use crm_domain::outbound::OutboundItem;
use crm_domain::page::{Cursor, Page};
use crm_domain::timestamp::Timestamp;
use crm_ports::{
    CampaignQuery, CampaignStore, Created, DispatchDecision, Dispatcher, DrainOutcome, DrainStatus,
    DueFollowUp, EventEmitter, EventPage, FollowUpQuery, FollowUpStore, OutboundQueue, SCAN_BUDGET,
    Store, StoreError, TraceQuery, bounded_page,
};
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use time::OffsetDateTime;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::rows;
use crate::sql;

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
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish()
    }
}

fn unavailable(error: impl Into<crm_ports::BoxError>) -> StoreError {
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
        })
    }

    /// Runs `work` on a pooled connection. Everything, from waiting for the connection to
    /// the last row, is bounded by the timeout, whatever the network does; a connection
    /// cut short mid-call is thrown away, never reused. A write cut short may still have
    /// committed: `Unavailable` then means "outcome unknown".
    async fn call<T>(
        &self,
        work: impl AsyncFnOnce(&mut deadpool_postgres::Object) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut client = tokio::time::timeout_at(deadline, self.pool.get())
            .await
            .map_err(|_| self.timed_out())?
            .map_err(unavailable)?;
        match tokio::time::timeout_at(deadline, work(&mut client)).await {
            Ok(result) => result,
            Err(_) => {
                drop(deadpool_postgres::Object::take(client));
                Err(self.timed_out())
            }
        }
    }

    fn timed_out(&self) -> StoreError {
        unavailable(format!(
            "no answer from the database within {} ms",
            self.timeout.as_millis()
        ))
    }
}

/// Events as the parallel arrays the write statements take.
#[derive(Default)]
struct EventColumns {
    ids: Vec<Uuid>,
    tenants: Vec<String>,
    names: Vec<String>,
    correlations: Vec<Uuid>,
    emitted: Vec<OffsetDateTime>,
    envelopes: Vec<serde_json::Value>,
}

impl EventColumns {
    fn new(events: &[EventEnvelope]) -> Result<Self, StoreError> {
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

    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
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
    let statement = client.prepare_cached(query).await.map_err(unavailable)?;
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
}

impl Decided {
    fn add(
        &mut self,
        followup_id: FollowUpId,
        decision: DispatchDecision,
    ) -> Result<DrainOutcome, StoreError> {
        let (follow_up, item, events, status) = match decision {
            DispatchDecision::Send {
                follow_up,
                item,
                events,
            } => (follow_up, Some(item), events, DrainStatus::Sent),
            DispatchDecision::Fail { follow_up, events } => {
                (follow_up, None, events, DrainStatus::Failed)
            }
            DispatchDecision::Skip { reason } => {
                return Ok(DrainOutcome {
                    followup_id,
                    status: DrainStatus::Skipped,
                    reason: Some(reason),
                });
            }
        };
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
        }
        let reason = (status == DrainStatus::Failed)
            .then(|| follow_up.last_error_code.clone())
            .flatten();
        Ok(DrainOutcome {
            followup_id,
            status,
            reason,
        })
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

    fn outbound_params(&self) -> [&(dyn ToSql + Sync); 5] {
        [
            &self.item_ids,
            &self.item_tenants,
            &self.item_keys,
            &self.items,
            &self.item_created_at,
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
    let statement = client.prepare_cached(query).await.map_err(unavailable)?;
    let row = client
        .query_one(&statement, params)
        .await
        .map_err(unavailable)?;
    row.try_get(0).map_err(unavailable)
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

async fn one<T>(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
    map: fn(&tokio_postgres::Row) -> Result<T, rows::RowError>,
) -> Result<Option<T>, StoreError> {
    let statement = client.prepare_cached(query).await.map_err(unavailable)?;
    let row = client
        .query_opt(&statement, params)
        .await
        .map_err(unavailable)?;
    row.as_ref().map(map).transpose().map_err(unavailable)
}

async fn all<T>(
    client: &impl GenericClient,
    query: &str,
    params: &[&(dyn ToSql + Sync)],
    map: fn(&tokio_postgres::Row) -> Result<T, rows::RowError>,
) -> Result<Vec<T>, StoreError> {
    let statement = client.prepare_cached(query).await.map_err(unavailable)?;
    let rows = client
        .query(&statement, params)
        .await
        .map_err(unavailable)?;
    rows.iter()
        .map(map)
        .collect::<Result<_, _>>()
        .map_err(unavailable)
}

fn page<T>(mut items: Vec<T>, limit: usize, cursor: impl Fn(&T) -> Cursor) -> Page<T> {
    let more = items.len() > limit;
    items.truncate(limit);
    let next_cursor = if more { items.last().map(cursor) } else { None };
    Page { items, next_cursor }
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
        let found = self
            .call(async |client| {
                one(
                    &*client,
                    sql::SELECT_CAMPAIGN_BY_ID,
                    &[&campaign_id.as_uuid()],
                    rows::campaign,
                )
                .await
            })
            .await?;
        Ok(found.filter(|campaign| &campaign.tenant_id == tenant_id))
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
        let params: [&(dyn ToSql + Sync); 5] = [
            &query.tenant_id.as_str(),
            &query.state.map(|s| s.as_str()),
            &query.after.map(|c| c.created_at.as_datetime()),
            &query.after.map(|c| c.id),
            &fetch_limit(query.limit),
        ];
        let items = self
            .call(async |client| all(&*client, sql::LIST_CAMPAIGNS, &params, rows::campaign).await)
            .await?;
        Ok(page(items, query.limit, |c| Cursor {
            created_at: c.created_at,
            id: c.campaign_id.as_uuid(),
        }))
    }
}

#[async_trait]
impl FollowUpStore for PgStore {
    async fn create_follow_up(
        &self,
        follow_up: &FollowUp,
        events: &[EventEnvelope],
    ) -> Result<Created<FollowUp>, StoreError> {
        let id = follow_up.followup_id.as_uuid();
        let metadata = serde_json::Value::Object(follow_up.metadata.clone());
        let events = EventColumns::new(events)?;
        let campaign_id = follow_up.campaign_id.map(|c| c.as_uuid());
        let correlation_id = follow_up.correlation_id.as_uuid();
        let schedule_at = follow_up.schedule_at.as_datetime();
        let created_at = follow_up.created_at.as_datetime();
        let updated_at = follow_up.updated_at.as_datetime();
        let record: [&(dyn ToSql + Sync); 19] = [
            &id,
            &follow_up.tenant_id.as_str(),
            &campaign_id,
            &follow_up.external_key,
            &follow_up.lead_id,
            &follow_up.customer_id,
            &follow_up.phone_e164,
            &follow_up.message,
            &schedule_at,
            &follow_up.channel,
            &follow_up.status.as_str(),
            &follow_up.provider_message_id,
            &follow_up.last_error_code,
            &follow_up.last_error_message,
            &metadata,
            &correlation_id,
            &follow_up.trace_id,
            &created_at,
            &updated_at,
        ];
        let all: Vec<_> = record.into_iter().chain(events.params()).collect();
        self.call(async |client| {
            if changed_rows(&*client, sql::CREATE_FOLLOW_UP, &all).await? == 1 {
                return Ok(Created::Created(follow_up.clone()));
            }
            let lookup = Lookup {
                by_id: sql::SELECT_FOLLOW_UP_BY_ID,
                by_key: sql::SELECT_FOLLOW_UP_BY_KEY,
                map: rows::follow_up,
                tenant_of: |found: &FollowUp| &found.tenant_id,
            };
            lookup
                .repeated(&*client, id, &follow_up.tenant_id, &follow_up.external_key)
                .await
        })
        .await
    }

    async fn list_follow_ups(&self, query: &FollowUpQuery) -> Result<Page<FollowUp>, StoreError> {
        let params: [&(dyn ToSql + Sync); 6] = [
            &query.tenant_id.as_str(),
            &query.status.map(|s| s.as_str()),
            &query.campaign_id.map(|c| c.as_uuid()),
            &query.after.map(|c| c.created_at.as_datetime()),
            &query.after.map(|c| c.id),
            &fetch_limit(query.limit),
        ];
        let items = self
            .call(async |client| {
                all(&*client, sql::LIST_FOLLOW_UPS, &params, rows::follow_up).await
            })
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
        let held: Vec<&str> = dispatcher
            .held_states()
            .iter()
            .map(|state| state.as_str())
            .collect();
        let limit = fetch_limit(limit).saturating_sub(1);
        // Deep enough that a few drains running at once each fill their batch.
        let depth = limit.saturating_mul(CLAIM_DEPTH);
        self.call(async |client| {
            let transaction = client.transaction().await.map_err(unavailable)?;
            let claim = transaction
                .prepare_cached(sql::CLAIM_DUE)
                .await
                .map_err(unavailable)?;
            let claimed = transaction
                .query(&claim, &[&held, &now.as_datetime(), &limit, &depth])
                .await
                .map_err(unavailable)?;
            let mut outcomes = Vec::with_capacity(claimed.len());
            let mut decided = Decided::default();
            for row in &claimed {
                let campaign_state: Option<String> =
                    row.try_get("campaign_state").map_err(unavailable)?;
                let due = DueFollowUp {
                    follow_up: rows::follow_up(row).map_err(unavailable)?,
                    campaign_state: campaign_state
                        .map(|state| state.parse())
                        .transpose()
                        .map_err(unavailable)?,
                };
                outcomes.push(decided.add(due.follow_up.followup_id, dispatcher.decide(&due))?);
            }
            // The whole batch is three statements, committed with the claim or not at all.
            if !decided.ids.is_empty() {
                changed_rows_of(
                    &transaction,
                    sql::RECORD_OUTCOMES,
                    &decided.outcome_params(),
                )
                .await?;
                changed_rows_of(&transaction, sql::INSERT_EVENTS, &decided.events.params()).await?;
                changed_rows_of(
                    &transaction,
                    sql::ENQUEUE_OUTBOUND,
                    &decided.outbound_params(),
                )
                .await?;
            }
            transaction.commit().await.map_err(unavailable)?;
            Ok(outcomes)
        })
        .await
    }

    async fn count_due(&self, now: Timestamp) -> Result<u64, StoreError> {
        let held: Vec<&str> = crm_domain::follow_up::holding_states()
            .into_iter()
            .map(|state| state.as_str())
            .collect();
        let cap = i64::try_from(COUNT_DUE_CAP).unwrap_or(i64::MAX);
        self.call(async |client| {
            let statement = client
                .prepare_cached(sql::COUNT_DUE)
                .await
                .map_err(unavailable)?;
            let row = client
                .query_one(&statement, &[&held, &now.as_datetime(), &cap])
                .await
                .map_err(unavailable)?;
            let count: i64 = row.try_get(0).map_err(unavailable)?;
            Ok(u64::try_from(count).unwrap_or(0))
        })
        .await
    }
}

/// How many times a batch a claim looks at, so that concurrent drains skipping each
/// other's locked rows still fill their batches.
const CLAIM_DEPTH: i64 = 4;

/// `count_due` stops counting here: the gauge says "at least this many".
pub const COUNT_DUE_CAP: usize = 10_000;

#[async_trait]
impl EventEmitter for PgStore {
    async fn events_by_correlation(&self, query: &TraceQuery) -> Result<EventPage, StoreError> {
        let after = i64::try_from(query.after.map_or(0, |cursor| cursor.0)).unwrap_or(i64::MAX);
        // Enough rows to find out whether another page follows, or, for one tenant's
        // events, to pass over the most others one call may.
        let wanted = match query.tenant_id {
            None => query.limit,
            Some(_) => SCAN_BUDGET,
        };
        let fetch = fetch_limit(wanted);
        let rows = self
            .call(async |client| {
                let statement = client
                    .prepare_cached(sql::EVENTS_BY_CORRELATION)
                    .await
                    .map_err(unavailable)?;
                client
                    .query(
                        &statement,
                        &[&query.correlation_id.as_uuid(), &after, &fetch],
                    )
                    .await
                    .map_err(unavailable)
            })
            .await?;
        let mut scanned = Vec::with_capacity(rows.len());
        for row in &rows {
            let seq: i64 = row.try_get(0).map_err(unavailable)?;
            let tenant: String = row.try_get(1).map_err(unavailable)?;
            scanned.push((u64::try_from(seq).map_err(unavailable)?, (tenant, row)));
        }
        let (rows, next) = bounded_page(
            scanned,
            |(tenant, _)| {
                query
                    .tenant_id
                    .as_ref()
                    .is_none_or(|t| t.as_str() == tenant)
            },
            query.limit,
        );
        let items = rows
            .into_iter()
            .map(|(_, row)| {
                let envelope: serde_json::Value = row.try_get(2).map_err(unavailable)?;
                serde_json::from_value(envelope).map_err(unavailable)
            })
            .collect::<Result<_, _>>()?;
        Ok(EventPage { items, next })
    }
}

#[async_trait]
impl OutboundQueue for PgStore {
    async fn outbound_items(
        &self,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<OutboundItem>, StoreError> {
        let rows = self
            .call(async |client| {
                let statement = client
                    .prepare_cached(sql::OUTBOUND_ITEMS)
                    .await
                    .map_err(unavailable)?;
                client
                    .query(
                        &statement,
                        &[
                            &i64::try_from(offset).unwrap_or(i64::MAX),
                            &i64::try_from(limit).unwrap_or(i64::MAX),
                        ],
                    )
                    .await
                    .map_err(unavailable)
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
}
