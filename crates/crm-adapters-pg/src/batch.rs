//! Group commit for follow-up creates.
//!
//! Creates that arrive together share one statement and one commit: a batcher task takes
//! every create waiting, inserts them with one multi-row `INSERT ... ON CONFLICT DO
//! NOTHING` (events, campaign counts and the event lock included), commits, and only then
//! answers each caller whether its own row went in. A caller whose row did not go in
//! looks up what holds its id or key, as a single create would. While one batch commits
//! the next one fills; when a full one is waiting, it goes in beside it ([`IN_FLIGHT`]),
//! on its own connection. Two creates of one id or one key never share a batch, so
//! "which row went in" is never ambiguous: the later one waits for the next batch. Two
//! batches in the database at once may repeat each other's ids or keys, as two replicas'
//! batches always could: the later insert waits for the earlier commit, then finds the
//! row. Each takes the event lock, so their events keep commit order. A batch the
//! database refuses for a reason other than reachability is retried one create at a
//! time, so one bad row fails only its own request.

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::time::Duration;

use crm_domain::campaign::CampaignStats;
use crm_domain::event::EventEnvelope;
use crm_domain::follow_up::FollowUp;
use crm_ports::StoreError;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::rows;
use crate::sql;
use crate::store::{bounded, unavailable};
use crate::write::EventColumns;

/// The most creates one statement carries: a bulk create of the most items the API
/// takes at once goes in one statement when it comes alone.
pub(crate) const MAX_BATCH: usize = 1_000;

/// The most creates that may wait for a batch (a few bulk creates' worth); past it a
/// create is refused at once (`503`) rather than queued behind a database that is not
/// keeping up.
pub(crate) const MAX_WAITING: usize = 16_384;

/// How many batches may be in the database at once. With one statement at a time, bulk
/// creates left the service and the database each waiting on the other (a third of the
/// machine idle); a second full batch overlaps one batch's commit with the next one's
/// inserts.
const IN_FLIGHT: usize = 2;

/// One create waiting for its batch; the answer is whether its row went in.
pub(crate) struct CreateJob {
    pub follow_up: FollowUp,
    pub events: Vec<EventEnvelope>,
    pub reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// Starts the batcher; it ends when every sender is gone.
pub(crate) fn spawn(pool: Pool, timeout: Duration) -> mpsc::Sender<CreateJob> {
    let (sender, receiver) = mpsc::channel(MAX_WAITING);
    tokio::spawn(run(pool, timeout, receiver));
    sender
}

async fn run(pool: Pool, timeout: Duration, mut jobs: mpsc::Receiver<CreateJob>) {
    let mut waiting: VecDeque<CreateJob> = VecDeque::new();
    // The batches in the database. The first is run by this task, as a lone batch of
    // single creates always was; a second one, full, is spawned, so that encoding its
    // thousand rows takes another thread.
    let mut in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send + '_>>> =
        FuturesUnordered::new();
    let mut open = true;
    loop {
        while let Ok(job) = jobs.try_recv() {
            waiting.push_back(job);
        }
        // A caller that gave up (its bound passed) was answered `503`, outcome unknown:
        // not writing its row is one of the outcomes it was promised.
        waiting.retain(|job| !job.reply.is_closed());
        // A second batch goes in only when a full one waits: small ones (single creates)
        // gather behind the commit instead, as fewer, larger statements cost less.
        let room =
            in_flight.is_empty() || (in_flight.len() < IN_FLIGHT && waiting.len() >= MAX_BATCH);
        if room {
            let batch = take_batch(&mut waiting);
            if !batch.is_empty() {
                if in_flight.is_empty() {
                    in_flight.push(Box::pin(commit(&pool, timeout, batch)));
                } else {
                    let pool = pool.clone();
                    let task = tokio::spawn(async move { commit(&pool, timeout, batch).await });
                    in_flight.push(Box::pin(async move {
                        // A batch that panicked dropped its replies: its callers hear `503`.
                        let _ = task.await;
                    }));
                }
                continue;
            }
        }
        if !open && waiting.is_empty() && in_flight.is_empty() {
            return;
        }
        tokio::select! {
            job = jobs.recv(), if open => match job {
                Some(job) => waiting.push_back(job),
                None => open = false,
            },
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            // Unreachable: with the channel closed and nothing in the database, the
            // waiting were taken above.
            else => {}
        }
    }
}

/// Inserts `batch` and answers each of its callers.
async fn commit(pool: &Pool, timeout: Duration, batch: Vec<CreateJob>) {
    match insert(pool, timeout, &batch).await {
        Ok(ids) => {
            for job in batch {
                let _ = job
                    .reply
                    .send(Ok(ids.contains(&job.follow_up.followup_id.as_uuid())));
            }
        }
        // Not the network: some row the database refuses. Alone, it fails alone.
        Err(Refused::Row(_)) if batch.len() > 1 => {
            for job in batch {
                let alone = insert(pool, timeout, std::slice::from_ref(&job))
                    .await
                    .map_err(Refused::into_store_error)
                    .map(|ids| ids.contains(&job.follow_up.followup_id.as_uuid()));
                let _ = job.reply.send(alone);
            }
        }
        Err(refused) => {
            let text = refused.into_store_error().to_string();
            for job in batch {
                let _ = job.reply.send(Err(StoreError::unavailable(text.clone())));
            }
        }
    }
}

/// Takes up to `MAX_BATCH` waiting creates, no two with one id or one tenant key; the
/// others stay waiting, in order.
fn take_batch(waiting: &mut VecDeque<CreateJob>) -> Vec<CreateJob> {
    let mut batch = Vec::new();
    let mut later = VecDeque::new();
    let mut ids = HashSet::new();
    let mut keys = HashSet::new();
    while let Some(job) = waiting.pop_front() {
        if batch.len() >= MAX_BATCH {
            later.push_back(job);
            continue;
        }
        let follow_up = &job.follow_up;
        let key = follow_up
            .external_key
            .clone()
            .map(|key| (follow_up.tenant_id.clone(), key));
        let repeats = ids.contains(&follow_up.followup_id)
            || key.as_ref().is_some_and(|key| keys.contains(key));
        if repeats {
            later.push_back(job);
            continue;
        }
        ids.insert(follow_up.followup_id);
        keys.extend(key);
        batch.push(job);
    }
    *waiting = later;
    batch
}

/// Why a batch did not go in.
enum Refused {
    /// The database could not be reached or did not answer: the outcome is unknown.
    Unreachable(StoreError),
    /// The database refused the statement (a row it will not take).
    Row(StoreError),
}

impl crate::store::Failure for Refused {
    fn store_error(&self) -> &StoreError {
        match self {
            Refused::Unreachable(error) | Refused::Row(error) => error,
        }
    }
}

impl Refused {
    fn into_store_error(self) -> StoreError {
        match self {
            Refused::Unreachable(error) | Refused::Row(error) => error,
        }
    }
}

/// Inserts `batch` in one statement and one commit, within `timeout`; the ids that went
/// in.
async fn insert(
    pool: &Pool,
    timeout: Duration,
    batch: &[CreateJob],
) -> Result<HashSet<Uuid>, Refused> {
    let columns = Columns::new(batch).map_err(Refused::Row)?;
    let work = async |client: &mut deadpool_postgres::Object| {
        let statement = client
            .prepare_cached(sql::CREATE_FOLLOW_UPS)
            .await
            .map_err(|e| Refused::Unreachable(unavailable(e)))?;
        let rows = client
            .query(&statement, &columns.params())
            .await
            .map_err(|error| {
                // Bad data or a broken constraint (classes 22 and 23) is some row the
                // database refuses; anything else (timeouts, deadlocks, shutdown) is the
                // database's state, and retrying rows one by one would only pile up.
                let refused_rows = error.code().is_some_and(|code| {
                    code.code().starts_with("22") || code.code().starts_with("23")
                });
                if refused_rows {
                    Refused::Row(unavailable(error))
                } else {
                    Refused::Unreachable(unavailable(error))
                }
            })?;
        rows.iter()
            .map(|row| row.try_get::<_, Uuid>(0))
            .collect::<Result<HashSet<Uuid>, _>>()
            .map_err(|e| Refused::Unreachable(unavailable(e)))
    };
    bounded(pool, timeout, work, Refused::Unreachable).await
}

/// A batch as the parallel arrays of `sql::CREATE_FOLLOW_UPS`.
pub(crate) struct Columns {
    ids: Vec<Uuid>,
    tenants: Vec<String>,
    campaigns: Vec<Option<Uuid>>,
    external_keys: Vec<Option<String>>,
    leads: Vec<Option<Uuid>>,
    customers: Vec<Option<Uuid>>,
    phones: Vec<String>,
    messages: Vec<String>,
    schedule_at: Vec<OffsetDateTime>,
    channels: Vec<String>,
    statuses: Vec<&'static str>,
    provider_ids: Vec<Option<String>>,
    error_codes: Vec<Option<String>>,
    error_messages: Vec<Option<String>>,
    metadata: Vec<serde_json::Value>,
    correlations: Vec<Uuid>,
    traces: Vec<String>,
    time_zones: Vec<Option<String>>,
    deliveries: Vec<Option<serde_json::Value>>,
    created_at: Vec<OffsetDateTime>,
    updated_at: Vec<OffsetDateTime>,
    counts: [Vec<i64>; 8],
    events: EventColumns,
    owners: Vec<Uuid>,
    senders: Vec<Option<String>>,
}

impl Columns {
    pub(crate) fn new(batch: &[CreateJob]) -> Result<Self, StoreError> {
        let follow_ups: Vec<&FollowUp> = batch.iter().map(|job| &job.follow_up).collect();
        let counts: Vec<[i64; 8]> = follow_ups
            .iter()
            .map(|f| CampaignStats::of(f).counts())
            .collect();
        let events: Vec<EventEnvelope> = batch.iter().flat_map(|job| job.events.clone()).collect();
        let owners = batch
            .iter()
            .flat_map(|job| {
                std::iter::repeat_n(job.follow_up.followup_id.as_uuid(), job.events.len())
            })
            .collect();
        Ok(Self {
            ids: follow_ups.iter().map(|f| f.followup_id.as_uuid()).collect(),
            tenants: follow_ups.iter().map(|f| f.tenant_id.to_string()).collect(),
            campaigns: follow_ups
                .iter()
                .map(|f| f.campaign_id.map(|c| c.as_uuid()))
                .collect(),
            external_keys: follow_ups.iter().map(|f| f.external_key.clone()).collect(),
            leads: follow_ups.iter().map(|f| f.lead_id).collect(),
            customers: follow_ups.iter().map(|f| f.customer_id).collect(),
            phones: follow_ups.iter().map(|f| f.phone_e164.clone()).collect(),
            messages: follow_ups.iter().map(|f| f.message.clone()).collect(),
            schedule_at: follow_ups
                .iter()
                .map(|f| f.schedule_at.as_datetime())
                .collect(),
            channels: follow_ups.iter().map(|f| f.channel.clone()).collect(),
            statuses: follow_ups.iter().map(|f| f.status.as_str()).collect(),
            provider_ids: follow_ups
                .iter()
                .map(|f| f.provider_message_id.clone())
                .collect(),
            error_codes: follow_ups
                .iter()
                .map(|f| f.last_error_code.clone())
                .collect(),
            error_messages: follow_ups
                .iter()
                .map(|f| f.last_error_message.clone())
                .collect(),
            metadata: follow_ups
                .iter()
                .map(|f| serde_json::Value::Object(f.metadata.clone()))
                .collect(),
            correlations: follow_ups
                .iter()
                .map(|f| f.correlation_id.as_uuid())
                .collect(),
            traces: follow_ups.iter().map(|f| f.trace_id.clone()).collect(),
            time_zones: follow_ups.iter().map(|f| f.time_zone.clone()).collect(),
            deliveries: follow_ups
                .iter()
                .map(|f| f.delivery.as_ref().map(rows::delivery_json))
                .collect(),
            created_at: follow_ups
                .iter()
                .map(|f| f.created_at.as_datetime())
                .collect(),
            updated_at: follow_ups
                .iter()
                .map(|f| f.updated_at.as_datetime())
                .collect(),
            counts: std::array::from_fn(|index| counts.iter().map(|c| c[index]).collect()),
            events: EventColumns::new(&events)?,
            owners,
            senders: follow_ups.iter().map(|f| f.sender.clone()).collect(),
        })
    }

    pub(crate) fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![
            &self.ids,
            &self.tenants,
            &self.campaigns,
            &self.external_keys,
            &self.leads,
            &self.customers,
            &self.phones,
            &self.messages,
            &self.schedule_at,
            &self.channels,
            &self.statuses,
            &self.provider_ids,
            &self.error_codes,
            &self.error_messages,
            &self.metadata,
            &self.correlations,
            &self.traces,
            &self.time_zones,
            &self.deliveries,
            &self.created_at,
            &self.updated_at,
        ];
        // `$22`..`$27`: the first six counts; the receipts' two came later, at the end.
        let (first, later) = self.counts.split_at(6);
        params.extend(first.iter().map(|c| c as &(dyn ToSql + Sync)));
        params.extend(self.events.params());
        params.push(&self.owners);
        params.push(&self.senders);
        params.extend(later.iter().map(|c| c as &(dyn ToSql + Sync)));
        params
    }
}
