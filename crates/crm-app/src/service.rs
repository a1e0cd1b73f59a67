//! Create, transition, schedule, list and trace.

use std::collections::HashMap;
use std::sync::Arc;

use crm_contracts::{Contract, Contracts};
use crm_domain::answers::ProviderAnswers;
use crm_domain::campaign::{self, Advance, Advanced, Campaign, CampaignState, NewCampaign};
use crm_domain::event::{DomainEvent, EventContext, EventEnvelope};
use crm_domain::follow_up::{FollowUp, FollowUpStatus, NewFollowUp};
use crm_domain::ids::{CampaignId, CorrelationId, EventId, FollowUpId, TenantId};
use crm_domain::metadata;
use crm_domain::page::{MAX_LIMIT, Page};
use crm_domain::timestamp::Timestamp;
use crm_domain::workflow::Workflow;
use crm_ports::{
    CampaignQuery, Created, EventPage, FeedPage, FeedQuery, FollowUpQuery, Scheduled, Store,
    StoreError, TraceQuery,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::error::{AppError, MetadataOf};
use crate::metrics as names;

/// The channel of a follow-up that names none.
const DEFAULT_CHANNEL: &str = "whatsapp";

/// The longest a feed reader waits for a new event in one call.
pub const MAX_FEED_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How many times a transition is decided again when another writer got there first.
const STALE_RETRIES: usize = 16;

/// The current instant, as every use case sees it.
pub fn now() -> Timestamp {
    Timestamp::from_datetime(time::OffsetDateTime::now_utc())
}

/// The use cases, composed over one store.
#[derive(Clone)]
pub struct Crm {
    pub(crate) store: Arc<dyn Store>,
    /// Where lists, single reads, traces and the feed are read: `store`, or a view of it
    /// that may be behind by a bounded time (a read replica).
    pub(crate) reads: Arc<dyn Store>,
    pub(crate) contracts: Arc<Contracts>,
    /// The rate of tenants without a policy of their own.
    pub(crate) default_send_rate: Option<u32>,
    pub(crate) workflow: Arc<Workflow>,
    /// What the provider's error codes mean (the table of answers).
    pub(crate) answers: Arc<ProviderAnswers>,
    /// Set once the service is stopping: waiting feed reads answer at once.
    stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl std::fmt::Debug for Crm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crm")
            .field("backend", &self.store.backend())
            .field("workflow", &self.workflow.name())
            .finish_non_exhaustive()
    }
}

/// The `status` word of a create or update reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStatus {
    Created,
    Idempotent,
    Updated,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Idempotent => "idempotent",
            Self::Updated => "updated",
        }
    }
}

/// The result of a create or update: the stored record and what was emitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome<T> {
    pub status: CommandStatus,
    pub record: T,
    pub correlation_id: CorrelationId,
    /// The event this call emitted, or `None` when it changed nothing.
    pub lifecycle_event_name: Option<&'static str>,
}

/// Create a campaign. An id left out is generated.
#[derive(Debug, Clone, PartialEq)]
pub struct StartCampaign {
    pub correlation_id: Option<CorrelationId>,
    pub campaign_id: Option<CampaignId>,
    pub tenant_id: TenantId,
    pub external_key: Option<String>,
    pub name: String,
    pub channel: String,
    pub audience_segment: Option<String>,
    /// `None`: the workflow's initial state (`draft`).
    pub state: Option<CampaignState>,
    pub scheduled_at: Option<Timestamp>,
    pub metadata: Map<String, Value>,
}

/// Move a campaign to another state.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvanceCampaign {
    pub tenant_id: TenantId,
    pub campaign_id: CampaignId,
    pub correlation_id: Option<CorrelationId>,
    pub advance: Advance,
}

/// Schedule a follow-up. An id left out is generated.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleFollowUp {
    pub correlation_id: Option<CorrelationId>,
    pub followup_id: Option<FollowUpId>,
    pub tenant_id: TenantId,
    pub campaign_id: Option<CampaignId>,
    pub external_key: Option<String>,
    pub lead_id: Option<Uuid>,
    pub customer_id: Option<Uuid>,
    pub phone_e164: String,
    pub message: String,
    pub schedule_at: Timestamp,
    /// `None`: `whatsapp`, the only channel of this slice.
    pub channel: Option<String>,
    /// `None`: `pending`.
    pub status: Option<FollowUpStatus>,
    pub metadata: Map<String, Value>,
    /// The recipient's IANA time zone; `None`: the tenant's.
    pub time_zone: Option<String>,
    /// The business phone number that sends it; `None`: none named.
    pub sender: Option<String>,
}

impl Crm {
    pub fn new(
        store: Arc<dyn Store>,
        contracts: Arc<Contracts>,
        workflow: Arc<Workflow>,
        answers: Arc<ProviderAnswers>,
    ) -> Self {
        Self {
            reads: store.clone(),
            store,
            contracts,
            workflow,
            answers,
            default_send_rate: None,
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// The service is stopping: feed reads waiting for an event answer at once with what
    /// they have, so that no long-poll holds a shutdown.
    pub fn begin_stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Paces every tenant without a sending policy of its own to `rate` follow-ups per
    /// second (`None`: no limit).
    pub fn with_default_send_rate(mut self, rate: Option<u32>) -> Self {
        self.default_send_rate = rate;
        self
    }

    /// Lists, single reads, traces and the feed come from `reads` (the use cases that
    /// change records still read what they change from the store).
    pub fn with_reads(mut self, reads: Arc<dyn Store>) -> Self {
        self.reads = reads;
        self
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn contracts(&self) -> &Contracts {
        &self.contracts
    }

    #[tracing::instrument(name = "create_campaign", skip_all, fields(tenant_id = %command.tenant_id))]
    pub async fn create_campaign(
        &self,
        command: StartCampaign,
    ) -> Result<Outcome<Campaign>, AppError> {
        metadata::check(&command.metadata).map_err(|error| AppError::MetadataTooLarge {
            of: MetadataOf::Campaign,
            error,
        })?;
        let correlation_id = command.correlation_id.unwrap_or_else(new_correlation_id);
        let now = now();
        let new = NewCampaign {
            campaign_id: command
                .campaign_id
                .unwrap_or_else(|| CampaignId::new(Uuid::new_v4())),
            tenant_id: command.tenant_id,
            external_key: command.external_key,
            name: command.name,
            channel: command.channel,
            audience_segment: command.audience_segment,
            state: command.state.unwrap_or_else(|| self.initial_state()),
            scheduled_at: command.scheduled_at,
            metadata: command.metadata,
        };
        let (campaign, event) = Campaign::create(new, now);
        let events = [self.envelope(
            &event,
            &campaign.tenant_id,
            correlation_id,
            &new_trace_id(),
            now,
        )?];
        let created = self.store.create_campaign(&campaign, &events).await?;
        if let Created::Created(_) = created {
            metrics::counter!(names::CAMPAIGNS_CREATED).increment(1);
        }
        Ok(created_outcome(created, correlation_id, event.name()))
    }

    #[tracing::instrument(name = "advance_campaign", skip_all, fields(tenant_id = %command.tenant_id, campaign_id = %command.campaign_id))]
    pub async fn advance_campaign(
        &self,
        command: AdvanceCampaign,
    ) -> Result<Outcome<Campaign>, AppError> {
        let correlation_id = command.correlation_id.unwrap_or_else(new_correlation_id);
        let trace_id = new_trace_id();
        for _ in 0..STALE_RETRIES {
            let current = self
                .store
                .campaign(&command.tenant_id, command.campaign_id)
                .await?
                .ok_or(AppError::NotFound)?;
            let now = now();
            let decision =
                campaign::advance(&current, command.advance.clone(), &self.workflow, now)?;
            let (moved, event) = match decision {
                Advanced::Unchanged => {
                    return Ok(Outcome {
                        status: CommandStatus::Idempotent,
                        record: current,
                        correlation_id,
                        lifecycle_event_name: None,
                    });
                }
                Advanced::Moved(moved, event) => (*moved, *event),
            };
            let events =
                [self.envelope(&event, &moved.tenant_id, correlation_id, &trace_id, now)?];
            match self.store.update_campaign(&moved, &events).await {
                Ok(()) => {
                    // The event's payload carries the reason code too.
                    tracing::info!(
                        campaign_id = %moved.campaign_id,
                        from = %current.state,
                        to = %moved.state,
                        reason_code = command.advance.reason_code.as_deref(),
                        "campaign transitioned"
                    );
                    metrics::counter!(names::CAMPAIGNS_TRANSITIONED, "to_state" => moved.state.as_str())
                        .increment(1);
                    return Ok(Outcome {
                        status: CommandStatus::Updated,
                        record: moved,
                        correlation_id,
                        lifecycle_event_name: Some(event.name()),
                    });
                }
                Err(StoreError::Stale { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(AppError::Unavailable(StoreError::Stale {
            campaign_id: command.campaign_id,
        }))
    }

    /// Schedules one follow-up: `schedule_follow_ups` of one.
    pub async fn schedule_follow_up(
        &self,
        command: ScheduleFollowUp,
    ) -> Result<Outcome<FollowUp>, AppError> {
        let mut outcomes = self.schedule_follow_ups(vec![command]).await?;
        outcomes.pop().unwrap_or_else(|| {
            Err(AppError::Unavailable(StoreError::unavailable(
                "no outcome for the follow-up",
            )))
        })
    }

    /// Schedules follow-ups, each exactly as if it came alone and in this order: the same
    /// checks, record and event, idempotent the same way. One that fails a check is that
    /// command's error and stops none of the others; every one created is durable when
    /// this returns. Returns one outcome per command, in order.
    ///
    /// # Errors
    /// `Unavailable`: the outcome of every command is unknown, and scheduling them again
    /// is safe.
    #[tracing::instrument(name = "schedule_follow_ups", skip_all, fields(count = commands.len()))]
    pub async fn schedule_follow_ups(
        &self,
        commands: Vec<ScheduleFollowUp>,
    ) -> Result<Vec<Result<Outcome<FollowUp>, AppError>>, AppError> {
        let now = now();
        let mut campaigns = KnownCampaigns::default();
        let mut checked = Vec::with_capacity(commands.len());
        for command in commands {
            match self.prepare_follow_up(command, now, &mut campaigns).await {
                Err(error @ (AppError::Unavailable(_) | AppError::Internal { .. })) => {
                    return Err(error);
                }
                other => checked.push(other),
            }
        }
        // The ones that passed go to the store together; each keeps its place.
        let mut items = Vec::with_capacity(checked.len());
        let checked: Vec<Result<&'static str, AppError>> = checked
            .into_iter()
            .map(|item| {
                item.map(|(item, event_name)| {
                    items.push(item);
                    event_name
                })
            })
            .collect();
        let mut stored = self.store.create_follow_ups(&items).await?.into_iter();
        let outcomes: Vec<Result<Outcome<FollowUp>, AppError>> = checked
            .into_iter()
            .map(|event_name| {
                let event_name = event_name?;
                let created = stored.next().unwrap_or_else(|| {
                    Err(StoreError::unavailable("the store answered fewer items"))
                })?;
                // An idempotent repeat answers with the stored follow-up's own
                // correlation, the one its events are traced under.
                let correlation_id = created.record().correlation_id;
                Ok(created_outcome(created, correlation_id, event_name))
            })
            .collect();
        let created = outcomes
            .iter()
            .filter(|outcome| matches!(outcome, Ok(o) if o.status == CommandStatus::Created))
            .count();
        metrics::counter!(names::FOLLOW_UPS_SCHEDULED).increment(created as u64);
        Ok(outcomes)
    }

    /// Checks one command and builds its record and event; the campaigns it names are
    /// looked up once per call of `schedule_follow_ups`.
    async fn prepare_follow_up(
        &self,
        command: ScheduleFollowUp,
        now: Timestamp,
        campaigns: &mut KnownCampaigns,
    ) -> Result<(Scheduled, &'static str), AppError> {
        metadata::check(&command.metadata).map_err(|error| AppError::MetadataTooLarge {
            of: MetadataOf::FollowUp,
            error,
        })?;
        if let Some(campaign_id) = command.campaign_id {
            campaigns
                .check(&*self.store, &command.tenant_id, campaign_id)
                .await?;
        }
        let correlation_id = command.correlation_id.unwrap_or_else(new_correlation_id);
        let new = NewFollowUp {
            followup_id: command
                .followup_id
                .unwrap_or_else(|| FollowUpId::new(Uuid::new_v4())),
            tenant_id: command.tenant_id,
            campaign_id: command.campaign_id,
            external_key: command.external_key,
            lead_id: command.lead_id,
            customer_id: command.customer_id,
            phone_e164: command.phone_e164,
            message: command.message,
            schedule_at: command.schedule_at,
            channel: command
                .channel
                .unwrap_or_else(|| DEFAULT_CHANNEL.to_owned()),
            status: command.status.unwrap_or(FollowUpStatus::Pending),
            metadata: command.metadata,
            correlation_id,
            trace_id: new_trace_id(),
            time_zone: command.time_zone,
            sender: command.sender,
        };
        let (follow_up, event) = FollowUp::schedule(new, now);
        let events = vec![self.follow_up_envelope(&follow_up, &event, now)?];
        Ok((Scheduled { follow_up, events }, event.name()))
    }

    /// One page; a limit above `MAX_LIMIT` is served as `MAX_LIMIT`.
    #[tracing::instrument(name = "list_campaigns", skip_all, fields(tenant_id = %query.tenant_id))]
    pub async fn list_campaigns(&self, query: &CampaignQuery) -> Result<Page<Campaign>, AppError> {
        let query = CampaignQuery {
            limit: query.limit.clamp(1, MAX_LIMIT),
            ..query.clone()
        };
        Ok(self.reads.list_campaigns(&query).await?)
    }

    /// One page; a limit above `MAX_LIMIT` is served as `MAX_LIMIT`.
    #[tracing::instrument(name = "list_follow_ups", skip_all, fields(tenant_id = %query.tenant_id))]
    pub async fn list_follow_ups(&self, query: &FollowUpQuery) -> Result<Page<FollowUp>, AppError> {
        let query = FollowUpQuery {
            limit: query.limit.clamp(1, MAX_LIMIT),
            ..query.clone()
        };
        Ok(self.reads.list_follow_ups(&query).await?)
    }

    /// The workflow's initial state when it names one the campaign has, else `draft`.
    fn initial_state(&self) -> CampaignState {
        self.workflow
            .initial_state()
            .and_then(|state| state.parse().ok())
            .unwrap_or(CampaignState::Draft)
    }

    /// One page of the events of one correlation, oldest first; only one tenant's when
    /// the query names one. A limit above `MAX_LIMIT` is served as `MAX_LIMIT`.
    #[tracing::instrument(name = "trace", skip_all, fields(correlation_id = %query.correlation_id))]
    pub async fn trace(&self, query: &TraceQuery) -> Result<EventPage, AppError> {
        let query = TraceQuery {
            limit: query.limit.clamp(1, MAX_LIMIT),
            ..query.clone()
        };
        Ok(self.reads.events_by_correlation(&query).await?)
    }

    /// One page of the event feed; when it is empty, waits up to `wait` for an event to
    /// commit (on a signal from the writers, never polling in a loop) and reads again.
    /// Once the service is stopping, an empty page is answered at once.
    pub async fn read_feed(
        &self,
        query: &FeedQuery,
        wait: std::time::Duration,
    ) -> Result<FeedPage, AppError> {
        let mut query = FeedQuery {
            limit: query.limit.clamp(1, MAX_LIMIT),
            ..query.clone()
        };
        let deadline = tokio::time::Instant::now() + wait.min(MAX_FEED_WAIT);
        let mut stopping = self.stopping.subscribe();
        loop {
            let page = self.reads.read_feed(&query).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !page.items.is_empty() || left.is_zero() || *stopping.borrow_and_update() {
                return Ok(page);
            }
            let _waiting = names::FeedWaiting::start();
            tokio::select! {
                waited = self.reads.wait_for_events(page.next, left) => waited?,
                _ = stopping.wait_for(|stopping| *stopping) => return Ok(page),
            }
            query.after = Some(page.next);
        }
    }

    /// Wraps a follow-up's event in its envelope, in the follow-up's correlation and trace.
    pub(crate) fn follow_up_envelope(
        &self,
        follow_up: &FollowUp,
        event: &DomainEvent,
        now: Timestamp,
    ) -> Result<EventEnvelope, AppError> {
        self.envelope(
            event,
            &follow_up.tenant_id,
            follow_up.correlation_id,
            &follow_up.trace_id,
            now,
        )
    }

    /// Wraps a domain event in its envelope and checks it against the event contract.
    pub(crate) fn envelope(
        &self,
        event: &DomainEvent,
        tenant_id: &TenantId,
        correlation_id: CorrelationId,
        trace_id: &str,
        now: Timestamp,
    ) -> Result<EventEnvelope, AppError> {
        let envelope = EventEnvelope::new(
            event,
            EventContext {
                event_id: EventId::new(Uuid::new_v4()),
                tenant_id: tenant_id.clone(),
                correlation_id,
                causation_id: None,
                trace_id: trace_id.to_owned(),
                emitted_at: now,
            },
        );
        let json = serde_json::to_value(&envelope).expect("an envelope always serializes");
        self.contracts
            .validate(Contract::EventEnvelope, &json)
            .map_err(|violations| AppError::Internal {
                what: "event",
                violations,
            })?;
        Ok(envelope)
    }
}

/// Whether the campaigns named by the commands of one call belong to their tenants,
/// each looked up once. Campaigns are never deleted, so one seen here still exists when
/// the follow-ups naming it are written.
#[derive(Default)]
struct KnownCampaigns(HashMap<(TenantId, CampaignId), bool>);

impl KnownCampaigns {
    async fn check(
        &mut self,
        store: &dyn Store,
        tenant_id: &TenantId,
        campaign_id: CampaignId,
    ) -> Result<(), AppError> {
        let key = (tenant_id.clone(), campaign_id);
        let found = match self.0.get(&key) {
            Some(&found) => found,
            None => {
                let found = store.campaign(tenant_id, campaign_id).await?.is_some();
                self.0.insert(key, found);
                found
            }
        };
        if found {
            Ok(())
        } else {
            Err(AppError::CampaignNotFound)
        }
    }
}

fn created_outcome<T>(
    created: Created<T>,
    correlation_id: CorrelationId,
    event_name: &'static str,
) -> Outcome<T> {
    match created {
        Created::Created(record) => Outcome {
            status: CommandStatus::Created,
            record,
            correlation_id,
            lifecycle_event_name: Some(event_name),
        },
        Created::Existing(record) => Outcome {
            status: CommandStatus::Idempotent,
            record,
            correlation_id,
            lifecycle_event_name: None,
        },
    }
}

pub(crate) fn new_correlation_id() -> CorrelationId {
    CorrelationId::new(Uuid::new_v4())
}

/// A fresh trace id: 32 lowercase hex digits, as W3C trace context spells them.
pub(crate) fn new_trace_id() -> String {
    Uuid::new_v4().simple().to_string()
}
