//! The behaviour every store adapter must show, as one suite shared by all adapters.
//!
//! Each `pub async fn` checks one behaviour against a fresh, empty store. An adapter
//! runs the whole suite with `run_all`, passing a function that opens a new store.
//! Backend quirks become parameters here, never copies of the suite.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Mutex;

use crm_domain::answers::ProviderAnswers;
use crm_domain::campaign::{Campaign, CampaignState, CampaignStats, NewCampaign, PauseCause};
use crm_domain::delivery::{
    self, AckStatus, Claimed, DeliveryStatus, LeaseId, QueueEntry, Report, Rules,
};
use crm_domain::event::{DomainEvent, EventContext, EventEnvelope};
use crm_domain::follow_up::{FailureReason, FollowUp, FollowUpStatus, NewFollowUp};
use crm_domain::ids::{CampaignId, CorrelationId, EventId, FollowUpId, QueueItemId, TenantId};
use crm_domain::opt_out::{OptOut, OptOutSource};
use crm_domain::outbound::OutboundItem;
use crm_domain::page::EventCursor;
use crm_domain::policy::SendingPolicy;
use crm_domain::receipt::{Receipt, ReceiptAnswer, ReceiptStatus};
use crm_domain::timestamp::Timestamp;
use crm_domain::workflow::{Workflow, WorkflowSet};
use serde_json::Map;
use uuid::Uuid;

use crate::LeasedItem;
use crate::drain::{
    DispatchDecision, Dispatcher, DrainPlan, DrainStatus, DueFollowUp, Lane, LaneState, Limited,
    Planner, SkipReason, UsageNeeds,
};
use crate::events::{FeedQuery, TraceQuery};
use crate::outbound::{
    AckDecision, AckRequest, Acker, LeaseDecision, Leaser, Pauser, ReceiptApplier, ReceiptDecision,
    ack_decision, receipt_decision,
};
use crate::store::{
    CampaignQuery, CreateResult, Created, FollowUpQuery, NewOptOut, OptOutQuery, Retention,
    Scheduled, Store, StoreError,
};

type Check = for<'a> fn(&'a dyn Store) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        /// Every check of the suite, by name.
        pub const CHECKS: &[(&str, Check)] = &[$((stringify!($name), |store| Box::pin($name(store)))),*];
    };
}

suite!(
    creating_a_campaign_stores_it_with_its_events,
    a_repeated_campaign_id_is_existing_and_unchanged,
    a_repeated_external_key_is_existing_and_writes_nothing,
    a_campaign_id_of_another_tenant_is_an_id_conflict,
    campaigns_are_invisible_to_other_tenants,
    an_update_saves_the_change_with_its_event,
    an_update_decided_on_a_stale_copy_is_refused,
    an_update_of_another_tenants_campaign_is_not_found,
    campaigns_list_oldest_first_and_page_without_gaps,
    campaigns_filter_by_state,
    a_repeated_follow_up_is_existing_by_id_and_by_external_key,
    a_follow_up_id_of_another_tenant_is_an_id_conflict,
    created_together_follow_ups_are_each_what_a_create_alone_would_be,
    follow_ups_created_together_are_all_stored_with_their_events_and_counts,
    follow_ups_list_per_tenant_and_filter_by_status_and_campaign,
    follow_ups_page_through_many_records,
    drain_claims_due_follow_ups_oldest_schedule_first,
    drain_commits_the_outbound_item_status_and_event_together,
    drained_follow_ups_are_not_due_again,
    a_paused_campaign_holds_its_follow_ups_without_blocking_others,
    a_drain_takes_tenants_in_turns,
    a_paced_tenant_gets_no_more_than_its_allowance_across_drains,
    the_ledger_answers_sends_by_tenant_sender_and_recipient_within_their_windows,
    a_sender_rate_holds_each_sender_to_its_own_allowance,
    the_daily_recipient_limit_counts_distinct_recipients_and_lets_counted_ones_through,
    a_recipient_waits_its_interval_and_gets_no_more_than_its_daily_cap,
    follow_ups_held_one_by_one_do_not_keep_those_behind_them_waiting,
    sending_facts_list_due_work_in_drain_order_with_the_ledgers_answers,
    closed_lanes_are_passed_over_and_lanes_come_with_their_policy_and_time_zone,
    each_due_follow_up_says_whether_its_recipient_opted_out,
    campaign_counts_follow_every_change_of_its_follow_ups,
    a_follow_up_is_saved_only_from_the_status_it_was_read_in,
    sending_policies_are_stored_per_tenant,
    failed_and_skipped_decisions_are_stored_as_decided,
    events_read_back_in_commit_order_per_correlation,
    a_trace_pages_in_commit_order_and_can_keep_to_one_tenant,
    the_feed_hands_out_every_event_once_in_commit_order,
    the_feed_continues_past_events_its_filters_pass_over,
    a_feed_cursor_past_every_event_is_not_issued,
    a_feed_waiter_wakes_when_an_event_commits,
    a_tenant_s_empty_page_moves_past_other_tenants_events,
    retention_removes_old_events_and_finished_items_and_expires_old_cursors,
    a_claim_leases_each_ready_item_once_until_its_lease_expires,
    a_last_lease_that_runs_out_finishes_the_item_as_failed_with_its_event,
    an_accepted_ack_records_the_delivery_with_its_event_and_repeats_change_nothing,
    an_ack_under_a_lease_claimed_again_is_lease_lost_and_an_unknown_item_not_found,
    a_retryable_failure_makes_the_item_ready_after_its_backoff,
    an_ack_with_opt_out_adds_the_recipient_to_the_opt_out_list,
    a_pausing_code_pauses_the_running_campaign_once_in_the_acks_commit,
    a_pausing_code_leaves_a_campaign_that_is_not_running_alone,
    an_opt_out_code_adds_the_recipient_with_the_code_as_the_reason,
    a_finishing_code_ends_the_item_whatever_retryable_says,
    a_code_that_retries_tomorrow_holds_the_item_a_day,
    receipts_in_any_order_end_in_the_state_of_one_clean_pass,
    a_receipt_for_an_unknown_or_unaccepted_message_is_not_found_and_writes_nothing,
    a_provider_id_recorded_twice_matches_only_where_the_tenant_tells_them_apart,
    a_failed_receipt_with_a_pausing_code_pauses_the_campaign_once,
    the_failure_ratio_of_acks_and_receipts_pauses_the_campaign_once,
    failures_that_will_be_retried_do_not_count_toward_the_failure_ratio,
    opt_outs_are_added_once_listed_by_number_and_removed,
);

/// Runs every check, each against a store made by `open` (expected to be empty).
pub async fn run_all<F, Fut, S>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    S: std::ops::Deref<Target = dyn Store>,
{
    for (name, check) in CHECKS {
        let store = open().await;
        eprintln!("conformance: {name}");
        check(&*store).await;
    }
}

/// The campaign states that hold follow-ups, as the use case passes them.
fn held() -> Vec<CampaignState> {
    crm_domain::follow_up::holding_states()
}

/// A fixed instant plus `millis`, so tests read as offsets.
pub fn at(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_735_722_000_000 + millis).expect("a valid instant")
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("a tenant name")
}

/// `event` in an envelope of `tenant_id` and `correlation_id`, emitted at `now`.
pub fn envelope(
    event: &DomainEvent,
    tenant_id: &TenantId,
    correlation_id: CorrelationId,
    now: Timestamp,
) -> EventEnvelope {
    EventEnvelope::new(
        event,
        EventContext {
            event_id: EventId::new(Uuid::new_v4()),
            tenant_id: tenant_id.clone(),
            correlation_id,
            causation_id: None,
            trace_id: correlation_id.as_uuid().simple().to_string(),
            emitted_at: now,
        },
    )
}

/// `opt_out` with its event, under a correlation id of its own.
pub fn opting_out(opt_out: OptOut) -> NewOptOut {
    let event = envelope(
        &opt_out.added(OptOutSource::Api),
        &opt_out.tenant_id,
        CorrelationId::new(Uuid::new_v4()),
        opt_out.created_at,
    );
    NewOptOut { opt_out, event }
}

/// The event of `phone` leaving `tenant_id`'s opt-out list, under `correlation_id`.
pub fn opt_out_removal(
    tenant_id: &TenantId,
    phone: &str,
    correlation_id: CorrelationId,
) -> EventEnvelope {
    envelope(
        &crm_domain::opt_out::removed(phone, OptOutSource::Api),
        tenant_id,
        correlation_id,
        at(0),
    )
}

/// A new draft campaign and its created event, not yet stored.
pub fn new_campaign(
    tenant_id: &TenantId,
    external_key: Option<&str>,
    now: Timestamp,
) -> (Campaign, Vec<EventEnvelope>) {
    let (campaign, event) = Campaign::create(
        NewCampaign {
            campaign_id: CampaignId::new(Uuid::new_v4()),
            tenant_id: tenant_id.clone(),
            external_key: external_key.map(str::to_owned),
            name: "Conformance campaign".into(),
            channel: "whatsapp".into(),
            audience_segment: Some("all".into()),
            state: CampaignState::Draft,
            scheduled_at: None,
            metadata: Map::new(),
        },
        now,
    );
    let events = vec![envelope(
        &event,
        tenant_id,
        CorrelationId::new(Uuid::new_v4()),
        now,
    )];
    (campaign, events)
}

/// A new pending follow-up and its scheduled event, not yet stored.
pub fn new_follow_up(
    tenant_id: &TenantId,
    campaign_id: Option<CampaignId>,
    external_key: Option<&str>,
    schedule_at: Timestamp,
    now: Timestamp,
) -> (FollowUp, Vec<EventEnvelope>) {
    let correlation_id = CorrelationId::new(Uuid::new_v4());
    let (follow_up, event) = FollowUp::schedule(
        NewFollowUp {
            followup_id: FollowUpId::new(Uuid::new_v4()),
            tenant_id: tenant_id.clone(),
            campaign_id,
            external_key: external_key.map(str::to_owned),
            lead_id: None,
            customer_id: None,
            phone_e164: "+5511999998888".into(),
            message: "hello".into(),
            schedule_at,
            channel: "whatsapp".into(),
            status: FollowUpStatus::Pending,
            metadata: Map::new(),
            correlation_id,
            trace_id: correlation_id.as_uuid().simple().to_string(),
            time_zone: None,
            sender: None,
        },
        now,
    );
    let events = vec![envelope(&event, tenant_id, correlation_id, now)];
    (follow_up, events)
}

/// Stores a new campaign and returns it.
pub async fn create_campaign(store: &dyn Store, tenant_id: &TenantId, now: Timestamp) -> Campaign {
    let (campaign, events) = new_campaign(tenant_id, None, now);
    match store.create_campaign(&campaign, &events).await {
        Ok(Created::Created(stored)) => stored,
        other => panic!("create_campaign: {other:?}"),
    }
}

/// Stores a new follow-up due at `schedule_at` and returns it.
pub async fn schedule(
    store: &dyn Store,
    tenant_id: &TenantId,
    campaign_id: Option<CampaignId>,
    schedule_at: Timestamp,
) -> FollowUp {
    let (follow_up, events) = new_follow_up(tenant_id, campaign_id, None, schedule_at, at(0));
    created(store, &follow_up, &events).await
}

async fn created(store: &dyn Store, follow_up: &FollowUp, events: &[EventEnvelope]) -> FollowUp {
    match store.create_follow_up(follow_up, events).await {
        Ok(Created::Created(stored)) => stored,
        other => panic!("create_follow_up: {other:?}"),
    }
}

/// Schedules a follow-up for a recipient in `time_zone`.
pub async fn schedule_in(
    store: &dyn Store,
    tenant_id: &TenantId,
    time_zone: Option<&str>,
    schedule_at: Timestamp,
) -> FollowUp {
    let (mut follow_up, events) = new_follow_up(tenant_id, None, None, schedule_at, at(0));
    follow_up.time_zone = time_zone.map(str::to_owned);
    created(store, &follow_up, &events).await
}

/// Moves a stored campaign to `to`, bypassing the workflow.
pub async fn move_campaign(
    store: &dyn Store,
    campaign: &Campaign,
    to: CampaignState,
    now: Timestamp,
) -> Campaign {
    let mut moved = campaign.clone();
    moved.state = to;
    moved.revision += 1;
    moved.updated_at = now;
    let event = DomainEvent::CampaignStateChanged {
        campaign_id: campaign.campaign_id,
        from_state: campaign.state,
        to_state: to,
        reason_code: None,
    };
    let events = vec![envelope(
        &event,
        &campaign.tenant_id,
        CorrelationId::new(Uuid::new_v4()),
        now,
    )];
    store
        .update_campaign(&moved, &events)
        .await
        .expect("update_campaign");
    moved
}

/// Sends every follow-up it is offered, marked sent at its `now` (`at(SENT_AT)` unless
/// told otherwise), and remembers the order it saw them in. Its plan opens every lane but
/// those of held campaigns and those it was told to close, and limits the tenants it was
/// told to.
#[derive(Debug, Default)]
pub struct SendAll {
    seen: Mutex<Vec<DueFollowUp>>,
    lanes: Mutex<Vec<LaneState>>,
    closed: Vec<Lane>,
    limited: Vec<Limited>,
    now: Option<Timestamp>,
}

impl SendAll {
    /// Closes `lane` as quiet hours would.
    pub fn closing(mut self, lane: Lane) -> Self {
        self.closed.push(lane);
        self
    }

    /// Plans and sends at `now` (the drain's).
    pub fn at_time(mut self, now: Timestamp) -> Self {
        self.now = Some(now);
        self
    }

    /// Limits `tenant` by `policy`.
    pub fn limiting(mut self, tenant: &TenantId, policy: SendingPolicy) -> Self {
        let rate = policy.max_per_second;
        self.limited.push(Limited {
            tenant_id: tenant.clone(),
            needs: policy.needs(rate),
            policy,
            rate,
        });
        self
    }

    fn now(&self) -> Timestamp {
        self.now.unwrap_or_else(|| at(SENT_AT))
    }

    /// The lanes the store offered, sorted.
    pub fn lanes_offered(&self) -> Vec<LaneState> {
        let mut lanes = self.lanes.lock().unwrap().clone();
        lanes.sort_by(|a, b| a.lane.cmp(&b.lane));
        lanes
    }

    /// The follow-ups offered, in the order they were.
    pub fn seen(&self) -> Vec<DueFollowUp> {
        self.seen.lock().unwrap().clone()
    }
}

impl Planner for SendAll {
    fn plan(&self, lanes: &[LaneState]) -> DrainPlan {
        self.lanes.lock().unwrap().extend(lanes.iter().cloned());
        let held = crm_domain::follow_up::holding_states();
        DrainPlan {
            open: lanes
                .iter()
                .filter(|l| !l.campaign_state.is_some_and(|state| held.contains(&state)))
                .filter(|l| !self.closed.contains(&l.lane))
                .map(|l| l.lane.clone())
                .collect(),
            limited: self.limited.clone(),
            ..DrainPlan::new(self.now())
        }
    }
}

impl Dispatcher for SendAll {
    fn decide(&self, due: &DueFollowUp) -> DispatchDecision {
        self.seen.lock().unwrap().push(due.clone());
        let now = self.now();
        let item_id = QueueItemId::new(Uuid::new_v4());
        let (follow_up, event) = due.follow_up.mark_sent(item_id, now).expect("pending");
        let item = OutboundItem::for_follow_up(&follow_up, item_id, now);
        let events = vec![envelope(
            &event,
            &follow_up.tenant_id,
            follow_up.correlation_id,
            now,
        )];
        DispatchDecision::Send {
            follow_up: Box::new(follow_up),
            item: Box::new(item),
            events,
        }
    }
}

/// Every event of a correlation id, read two at a time so that paging is exercised too.
pub async fn events_of(store: &dyn Store, correlation_id: CorrelationId) -> Vec<EventEnvelope> {
    let mut events = Vec::new();
    let mut after = None;
    loop {
        let query = TraceQuery {
            correlation_id,
            tenant_id: None,
            after,
            limit: 2,
        };
        let page = store
            .events_by_correlation(&query)
            .await
            .expect("events_by_correlation");
        events.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return events,
        }
    }
}

/// Every follow-up of the tenant, through its pages of `limit`, in list order.
pub async fn paged_follow_ups(
    store: &dyn Store,
    tenant_id: &TenantId,
    limit: usize,
) -> Vec<FollowUp> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let query = FollowUpQuery {
            tenant_id: tenant_id.clone(),
            status: None,
            campaign_id: None,
            after,
            limit,
        };
        let page = store
            .list_follow_ups(&query)
            .await
            .expect("list_follow_ups");
        all.extend(page.items);
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => return all,
        }
    }
}

/// The tenant's first thousand follow-ups.
pub async fn all_follow_ups(store: &dyn Store, tenant_id: &TenantId) -> Vec<FollowUp> {
    let query = FollowUpQuery {
        tenant_id: tenant_id.clone(),
        status: None,
        campaign_id: None,
        after: None,
        limit: 1000,
    };
    store
        .list_follow_ups(&query)
        .await
        .expect("list_follow_ups")
        .items
}

pub async fn creating_a_campaign_stores_it_with_its_events(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let (campaign, events) = new_campaign(&tenant_id, Some("spring-sale"), at(0));
    let created = store.create_campaign(&campaign, &events).await.unwrap();
    assert_eq!(created, Created::Created(campaign.clone()));
    let read = store
        .campaign(&tenant_id, campaign.campaign_id)
        .await
        .unwrap();
    assert_eq!(read, Some(campaign));
    let stored_events = events_of(store, events[0].correlation_id).await;
    assert_eq!(stored_events, events);
}

pub async fn a_repeated_campaign_id_is_existing_and_unchanged(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let first = create_campaign(store, &tenant_id, at(0)).await;
    let (mut again, events) = new_campaign(&tenant_id, Some("other-key"), at(5));
    again.campaign_id = first.campaign_id;
    again.name = "Renamed".into();
    let outcome = store.create_campaign(&again, &events).await.unwrap();
    assert_eq!(outcome, Created::Existing(first));
    let written = events_of(store, events[0].correlation_id).await;
    assert!(written.is_empty(), "an idempotent repeat emits nothing");
}

pub async fn a_repeated_external_key_is_existing_and_writes_nothing(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let (first, events) = new_campaign(&tenant_id, Some("spring-sale"), at(0));
    store.create_campaign(&first, &events).await.unwrap();
    let (second, second_events) = new_campaign(&tenant_id, Some("spring-sale"), at(5));
    let outcome = store
        .create_campaign(&second, &second_events)
        .await
        .unwrap();
    assert_eq!(outcome, Created::Existing(first));
    assert_eq!(
        store
            .campaign(&tenant_id, second.campaign_id)
            .await
            .unwrap(),
        None
    );
    assert!(
        events_of(store, second_events[0].correlation_id)
            .await
            .is_empty()
    );
    // The same key under another tenant is another campaign.
    let (elsewhere, elsewhere_events) =
        new_campaign(&tenant("tenant_b"), Some("spring-sale"), at(6));
    let outcome = store
        .create_campaign(&elsewhere, &elsewhere_events)
        .await
        .unwrap();
    assert!(matches!(outcome, Created::Created(_)));
}

pub async fn a_campaign_id_of_another_tenant_is_an_id_conflict(store: &dyn Store) {
    let first = create_campaign(store, &tenant("tenant_a"), at(0)).await;
    let (mut intruder, events) = new_campaign(&tenant("tenant_b"), None, at(5));
    intruder.campaign_id = first.campaign_id;
    let outcome = store.create_campaign(&intruder, &events).await;
    assert!(
        matches!(outcome, Err(StoreError::IdConflict { id }) if id == first.campaign_id.as_uuid()),
        "{outcome:?}"
    );
    assert!(events_of(store, events[0].correlation_id).await.is_empty());
}

pub async fn campaigns_are_invisible_to_other_tenants(store: &dyn Store) {
    let mine = create_campaign(store, &tenant("tenant_a"), at(0)).await;
    let other = tenant("tenant_b");
    assert_eq!(
        store.campaign(&other, mine.campaign_id).await.unwrap(),
        None
    );
    let query = CampaignQuery {
        tenant_id: other,
        state: None,
        after: None,
        limit: 100,
    };
    assert!(store.list_campaigns(&query).await.unwrap().items.is_empty());
}

pub async fn an_update_saves_the_change_with_its_event(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let campaign = create_campaign(store, &tenant_id, at(0)).await;
    let mut moved = campaign.clone();
    moved.state = CampaignState::Scheduled;
    moved.revision += 1;
    moved.updated_at = at(10);
    let event = DomainEvent::CampaignStateChanged {
        campaign_id: campaign.campaign_id,
        from_state: campaign.state,
        to_state: moved.state,
        reason_code: None,
    };
    let events = vec![envelope(
        &event,
        &tenant_id,
        CorrelationId::new(Uuid::new_v4()),
        at(10),
    )];
    store.update_campaign(&moved, &events).await.unwrap();
    assert_eq!(
        store
            .campaign(&tenant_id, campaign.campaign_id)
            .await
            .unwrap(),
        Some(moved)
    );
    assert_eq!(events_of(store, events[0].correlation_id).await, events);
}

pub async fn an_update_decided_on_a_stale_copy_is_refused(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let campaign = create_campaign(store, &tenant_id, at(0)).await;
    let winner = move_campaign(store, &campaign, CampaignState::Scheduled, at(10)).await;
    let mut loser = campaign.clone();
    loser.state = CampaignState::Canceled;
    loser.revision += 1;
    let event = DomainEvent::CampaignStateChanged {
        campaign_id: campaign.campaign_id,
        from_state: campaign.state,
        to_state: loser.state,
        reason_code: None,
    };
    let events = vec![envelope(
        &event,
        &tenant_id,
        CorrelationId::new(Uuid::new_v4()),
        at(11),
    )];
    let outcome = store.update_campaign(&loser, &events).await;
    assert!(
        matches!(outcome, Err(StoreError::Stale { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        store
            .campaign(&tenant_id, campaign.campaign_id)
            .await
            .unwrap(),
        Some(winner)
    );
    assert!(
        events_of(store, events[0].correlation_id).await.is_empty(),
        "a refused change leaves no event"
    );
}

pub async fn an_update_of_another_tenants_campaign_is_not_found(store: &dyn Store) {
    let campaign = create_campaign(store, &tenant("tenant_a"), at(0)).await;
    let mut hijacked = campaign.clone();
    hijacked.tenant_id = tenant("tenant_b");
    hijacked.state = CampaignState::Scheduled;
    hijacked.revision += 1;
    let outcome = store.update_campaign(&hijacked, &[]).await;
    assert!(
        matches!(outcome, Err(StoreError::NotFound { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        store
            .campaign(&tenant("tenant_a"), campaign.campaign_id)
            .await
            .unwrap(),
        Some(campaign)
    );
}

pub async fn campaigns_list_oldest_first_and_page_without_gaps(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let mut created = Vec::new();
    // Several campaigns share a millisecond, so the id must break the tie.
    for index in 0..7 {
        created.push(create_campaign(store, &tenant_id, at(index / 3)).await);
    }
    created.sort_by_key(|c| (c.created_at, c.campaign_id));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let query = CampaignQuery {
            tenant_id: tenant_id.clone(),
            state: None,
            after,
            limit: 3,
        };
        let page = store.list_campaigns(&query).await.unwrap();
        assert!(page.items.len() <= 3);
        seen.extend(page.items);
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, created);
}

pub async fn campaigns_filter_by_state(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let draft = create_campaign(store, &tenant_id, at(0)).await;
    let other = create_campaign(store, &tenant_id, at(1)).await;
    let scheduled = move_campaign(store, &other, CampaignState::Scheduled, at(2)).await;
    for (state, expected) in [
        (CampaignState::Draft, &draft),
        (CampaignState::Scheduled, &scheduled),
    ] {
        let query = CampaignQuery {
            tenant_id: tenant_id.clone(),
            state: Some(state),
            after: None,
            limit: 100,
        };
        assert_eq!(
            store.list_campaigns(&query).await.unwrap().items,
            vec![expected.clone()]
        );
    }
}

pub async fn a_repeated_follow_up_is_existing_by_id_and_by_external_key(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let (first, events) = new_follow_up(&tenant_id, None, Some("fu-key"), at(0), at(0));
    store.create_follow_up(&first, &events).await.unwrap();
    let (mut by_id, by_id_events) = new_follow_up(&tenant_id, None, None, at(9), at(1));
    by_id.followup_id = first.followup_id;
    assert_eq!(
        store.create_follow_up(&by_id, &by_id_events).await.unwrap(),
        Created::Existing(first.clone())
    );
    let (by_key, by_key_events) = new_follow_up(&tenant_id, None, Some("fu-key"), at(9), at(1));
    assert_eq!(
        store
            .create_follow_up(&by_key, &by_key_events)
            .await
            .unwrap(),
        Created::Existing(first.clone())
    );
    assert_eq!(all_follow_ups(store, &tenant_id).await, vec![first]);
    for events in [by_id_events, by_key_events] {
        assert!(events_of(store, events[0].correlation_id).await.is_empty());
    }
}

pub async fn a_follow_up_id_of_another_tenant_is_an_id_conflict(store: &dyn Store) {
    let first = schedule(store, &tenant("tenant_a"), None, at(0)).await;
    let (mut intruder, events) = new_follow_up(&tenant("tenant_b"), None, None, at(0), at(1));
    intruder.followup_id = first.followup_id;
    let outcome = store.create_follow_up(&intruder, &events).await;
    assert!(
        matches!(outcome, Err(StoreError::IdConflict { .. })),
        "{outcome:?}"
    );
    assert!(all_follow_ups(store, &tenant("tenant_b")).await.is_empty());
}

pub async fn created_together_follow_ups_are_each_what_a_create_alone_would_be(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let stored_before = schedule(store, &tenant_id, None, at(0)).await;
    let foreign = schedule(store, &tenant("tenant_b"), None, at(0)).await;
    let item = |key: Option<&str>| {
        let (follow_up, events) = new_follow_up(&tenant_id, None, key, at(0), at(1));
        Scheduled { follow_up, events }
    };
    let first = item(Some("batch-key"));
    let mut same_id = item(None);
    same_id.follow_up.followup_id = first.follow_up.followup_id;
    let same_key = item(Some("batch-key"));
    let mut repeat = item(None);
    repeat.follow_up.followup_id = stored_before.followup_id;
    let mut intruder = item(None);
    intruder.follow_up.followup_id = foreign.followup_id;
    let last = item(None);
    let items = [
        first.clone(),
        same_id.clone(),
        same_key.clone(),
        repeat.clone(),
        intruder.clone(),
        last.clone(),
    ];

    let results = store.create_follow_ups(&items).await.unwrap();

    assert_eq!(results.len(), items.len());
    assert_eq!(
        results[0].as_ref().ok(),
        Some(&Created::Created(first.follow_up.clone()))
    );
    assert_eq!(
        results[1].as_ref().ok(),
        Some(&Created::Existing(first.follow_up.clone()))
    );
    assert_eq!(
        results[2].as_ref().ok(),
        Some(&Created::Existing(first.follow_up.clone()))
    );
    assert_eq!(
        results[3].as_ref().ok(),
        Some(&Created::Existing(stored_before.clone()))
    );
    assert!(
        matches!(results[4], Err(StoreError::IdConflict { .. })),
        "{:?}",
        results[4]
    );
    assert_eq!(
        results[5].as_ref().ok(),
        Some(&Created::Created(last.follow_up.clone()))
    );
    let mut stored = all_follow_ups(store, &tenant_id).await;
    stored.sort_by_key(|f| f.followup_id.as_uuid());
    let mut expected = vec![
        stored_before,
        first.follow_up.clone(),
        last.follow_up.clone(),
    ];
    expected.sort_by_key(|f| f.followup_id.as_uuid());
    assert_eq!(stored, expected);
    for repeated in [&same_id, &same_key, &repeat, &intruder] {
        assert!(
            events_of(store, repeated.events[0].correlation_id)
                .await
                .is_empty(),
            "a follow-up that was not created emits nothing"
        );
    }
    assert_eq!(
        all_follow_ups(store, &tenant("tenant_b")).await,
        vec![foreign]
    );
    assert!(store.create_follow_ups(&[]).await.unwrap().is_empty());
}

pub async fn follow_ups_created_together_are_all_stored_with_their_events_and_counts(
    store: &dyn Store,
) {
    let tenant_id = tenant("tenant_a");
    let campaign = create_campaign(store, &tenant_id, at(0)).await;
    // More than one statement's or one journal line's worth, in any store.
    let items: Vec<Scheduled> = (0..2_500)
        .map(|n| {
            let key = format!("bulk-{n}");
            let (follow_up, events) = new_follow_up(
                &tenant_id,
                Some(campaign.campaign_id),
                Some(&key),
                at(n),
                at(1),
            );
            Scheduled { follow_up, events }
        })
        .collect();

    // Whether every item was answered `outcome` with its own follow-up.
    let all_answered = |results: Vec<CreateResult>, outcome: fn(FollowUp) -> Created<FollowUp>| {
        results
            .iter()
            .zip(&items)
            .all(|(result, item)| result.as_ref().ok() == Some(&outcome(item.follow_up.clone())))
    };

    let results = store.create_follow_ups(&items).await.unwrap();

    assert!(all_answered(results, Created::Created));
    assert_eq!(
        paged_follow_ups(store, &tenant_id, 1000).await.len(),
        items.len()
    );
    assert_eq!(
        store.campaign_stats(campaign.campaign_id).await.unwrap(),
        CampaignStats {
            pending: 2_500,
            ..CampaignStats::default()
        }
    );
    for item in [&items[0], &items[1_234], &items[2_499]] {
        assert_eq!(
            events_of(store, item.events[0].correlation_id).await,
            item.events
        );
    }
    let again = store.create_follow_ups(&items).await.unwrap();
    assert!(all_answered(again, Created::Existing));
    assert_eq!(
        store
            .campaign_stats(campaign.campaign_id)
            .await
            .unwrap()
            .pending,
        2_500
    );
}

pub async fn follow_ups_list_per_tenant_and_filter_by_status_and_campaign(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let campaign = create_campaign(store, &tenant_id, at(0)).await;
    let loose = schedule(store, &tenant_id, None, at(0)).await;
    let tied = schedule(store, &tenant_id, Some(campaign.campaign_id), at(0)).await;
    schedule(store, &tenant("tenant_b"), None, at(0)).await;
    let query = |status, campaign_id| FollowUpQuery {
        tenant_id: tenant_id.clone(),
        status,
        campaign_id,
        after: None,
        limit: 100,
    };
    let mut both = vec![loose.clone(), tied.clone()];
    both.sort_by_key(|f| (f.created_at, f.followup_id));
    assert_eq!(
        store
            .list_follow_ups(&query(None, None))
            .await
            .unwrap()
            .items,
        both
    );
    assert_eq!(
        store
            .list_follow_ups(&query(None, Some(campaign.campaign_id)))
            .await
            .unwrap()
            .items,
        vec![tied]
    );
    assert_eq!(
        store
            .list_follow_ups(&query(Some(FollowUpStatus::Pending), None))
            .await
            .unwrap()
            .items
            .len(),
        2
    );
    assert!(
        store
            .list_follow_ups(&query(Some(FollowUpStatus::Sent), None))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

pub async fn follow_ups_page_through_many_records(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    for index in 0..25 {
        let (follow_up, events) = new_follow_up(&tenant_id, None, None, at(0), at(index / 4));
        store.create_follow_up(&follow_up, &events).await.unwrap();
    }
    let seen: Vec<_> = paged_follow_ups(store, &tenant_id, 4)
        .await
        .iter()
        .map(|f| (f.created_at, f.followup_id))
        .collect();
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen.len(), 25);
    assert_eq!(seen, sorted, "pages are ordered and never repeat an item");
}

pub async fn drain_claims_due_follow_ups_oldest_schedule_first(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let late = schedule(store, &tenant_id, None, at(300)).await;
    let early = schedule(store, &tenant_id, None, at(100)).await;
    let future = schedule(store, &tenant_id, None, at(900_000)).await;
    let middle = schedule(store, &tenant_id, None, at(200)).await;
    let dispatcher = SendAll::default();
    let outcomes = store.drain(at(1_000), 2, &dispatcher).await.unwrap();
    let ids: Vec<_> = outcomes.iter().map(|o| o.followup_id).collect();
    assert_eq!(ids, vec![early.followup_id, middle.followup_id]);
    let outcomes = store.drain(at(1_000), 10, &dispatcher).await.unwrap();
    let ids: Vec<_> = outcomes.iter().map(|o| o.followup_id).collect();
    assert_eq!(
        ids,
        vec![late.followup_id],
        "the future follow-up {} is not due",
        future.followup_id
    );
}

pub async fn drain_commits_the_outbound_item_status_and_event_together(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let follow_up = schedule(store, &tenant_id, None, at(0)).await;
    let outcomes = store
        .drain(at(1_000), 10, &SendAll::default())
        .await
        .unwrap();
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].status, DrainStatus::Sent);
    let stored = all_follow_ups(store, &tenant_id).await.remove(0);
    assert_eq!(stored.status, FollowUpStatus::Sent);
    let items = store.outbound_items(0, 100).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        Some(items[0].queue_item_id.to_string()),
        stored.provider_message_id
    );
    assert_eq!(
        items[0].idempotency_key,
        format!("followup:{}", follow_up.followup_id)
    );
    let names: Vec<_> = events_of(store, follow_up.correlation_id)
        .await
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["crm.followup.scheduled", "crm.followup.sent"]);
}

pub async fn drained_follow_ups_are_not_due_again(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    for _ in 0..3 {
        schedule(store, &tenant_id, None, at(0)).await;
    }
    assert_eq!(store.count_due(at(1_000), &held()).await.unwrap(), 3);
    assert_eq!(
        store
            .drain(at(1_000), 10, &SendAll::default())
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(store.count_due(at(1_000), &held()).await.unwrap(), 0);
    assert!(
        store
            .drain(at(1_000), 10, &SendAll::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.outbound_items(0, 100).await.unwrap().len(), 3);
    assert_eq!(store.outbound_items(2, 100).await.unwrap().len(), 1);
}

pub async fn a_paused_campaign_holds_its_follow_ups_without_blocking_others(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let campaign = create_campaign(store, &tenant_id, at(0)).await;
    let scheduled = move_campaign(store, &campaign, CampaignState::Scheduled, at(1)).await;
    let running = move_campaign(store, &scheduled, CampaignState::Running, at(2)).await;
    let paused = move_campaign(store, &running, CampaignState::Paused, at(3)).await;
    for _ in 0..3 {
        schedule(store, &tenant_id, Some(campaign.campaign_id), at(10)).await;
    }
    let free = schedule(store, &tenant_id, None, at(20)).await;
    assert_eq!(store.count_due(at(1_000), &held()).await.unwrap(), 1);
    let outcomes = store
        .drain(at(1_000), 1, &SendAll::default())
        .await
        .unwrap();
    assert_eq!(
        outcomes.iter().map(|o| o.followup_id).collect::<Vec<_>>(),
        vec![free.followup_id]
    );
    move_campaign(store, &paused, CampaignState::Running, at(4)).await;
    let dispatcher = SendAll::default();
    assert_eq!(
        store.drain(at(1_000), 10, &dispatcher).await.unwrap().len(),
        3
    );
    let seen = dispatcher.seen();
    assert!(
        seen.iter()
            .all(|due| due.campaign_state == Some(CampaignState::Running))
    );
}

pub async fn a_drain_takes_tenants_in_turns(store: &dyn Store) {
    let (big, small) = (tenant("tenant_big"), tenant("tenant_small"));
    for offset in 0..10 {
        schedule(store, &big, None, at(offset)).await;
    }
    for offset in 0..2 {
        schedule(store, &small, None, at(100 + offset)).await;
    }
    let dispatcher = SendAll::default();

    let outcomes = store.drain(at(1_000), 4, &dispatcher).await.unwrap();

    assert_eq!(outcomes.len(), 4);
    let tenants: Vec<String> = dispatcher
        .seen()
        .iter()
        .map(|due| due.follow_up.tenant_id.to_string())
        .collect();
    assert_eq!(
        tenants,
        ["tenant_big", "tenant_small", "tenant_big", "tenant_small"],
        "the older queue does not starve the newer tenant"
    );
}

pub async fn a_paced_tenant_gets_no_more_than_its_allowance_across_drains(store: &dyn Store) {
    let (paced, free) = (tenant("tenant_paced"), tenant("tenant_free"));
    for offset in 0..10 {
        schedule(store, &paced, None, at(offset)).await;
        schedule(store, &free, None, at(offset)).await;
    }
    // A rate of 3 over the second before each drain.
    let policy = SendingPolicy::new(Some(3), None).unwrap();
    let pacing = |now: i64| {
        SendAll::default()
            .at_time(at(now))
            .limiting(&paced, policy.clone())
    };
    let sent_to = |outcomes: &[crate::DrainOutcome], dispatcher: &SendAll, tenant: &TenantId| {
        assert!(outcomes.iter().all(|o| o.status == DrainStatus::Sent));
        dispatcher
            .seen()
            .iter()
            .filter(|due| &due.follow_up.tenant_id == tenant)
            .count()
    };

    let first = pacing(5_000);
    let outcomes = store.drain(at(5_000), 8, &first).await.unwrap();
    assert_eq!(sent_to(&outcomes, &first, &paced), 3);
    assert_eq!(
        sent_to(&outcomes, &first, &free),
        5,
        "the batch goes to others"
    );
    let again = pacing(5_500);
    let outcomes = store.drain(at(5_500), 8, &again).await.unwrap();
    assert_eq!(
        sent_to(&outcomes, &again, &paced),
        0,
        "the window is used up"
    );
    let later = pacing(6_001);
    let outcomes = store.drain(at(6_001), 8, &later).await.unwrap();
    assert_eq!(sent_to(&outcomes, &later, &paced), 3, "a new window");
}

/// Stores a follow-up to `phone` from `sender`, due at `schedule_at`.
pub async fn schedule_to(
    store: &dyn Store,
    tenant_id: &TenantId,
    phone: &str,
    sender: Option<&str>,
    schedule_at: Timestamp,
) -> FollowUp {
    let (mut follow_up, events) = new_follow_up(tenant_id, None, None, schedule_at, at(0));
    follow_up.phone_e164 = phone.to_owned();
    follow_up.sender = sender.map(str::to_owned);
    created(store, &follow_up, &events).await
}

/// Drains at `at(millis)` as `SendAll` limited by `policy` for `tenant_id`; returns the
/// follow-ups sent, in order.
async fn drain_limited(
    store: &dyn Store,
    tenant_id: &TenantId,
    policy: &SendingPolicy,
    millis: i64,
) -> Vec<FollowUp> {
    let dispatcher = SendAll::default()
        .at_time(at(millis))
        .limiting(tenant_id, policy.clone());
    store.drain(at(millis), 100, &dispatcher).await.unwrap();
    dispatcher
        .seen()
        .into_iter()
        .map(|due| due.follow_up)
        .collect()
}

/// Plans as a drain at `now` would, asking the ledger everything about one tenant.
struct AskEverything {
    tenant_id: TenantId,
    now: Timestamp,
}

impl Planner for AskEverything {
    fn plan(&self, lanes: &[LaneState]) -> DrainPlan {
        DrainPlan {
            open: lanes.iter().map(|l| l.lane.clone()).collect(),
            limited: vec![Limited {
                tenant_id: self.tenant_id.clone(),
                policy: SendingPolicy::default(),
                rate: None,
                needs: UsageNeeds {
                    sends: true,
                    recipients: true,
                    recipient_history: true,
                },
            }],
            ..DrainPlan::new(self.now)
        }
    }
}

async fn facts_at(
    store: &dyn Store,
    tenant_id: &TenantId,
    millis: i64,
) -> (DrainPlan, crate::drain::SendingFacts) {
    let planner = AskEverything {
        tenant_id: tenant_id.clone(),
        now: at(millis),
    };
    store
        .sending_facts(Some(tenant_id), at(millis), 1_000, &planner)
        .await
        .unwrap()
}

pub async fn the_ledger_answers_sends_by_tenant_sender_and_recipient_within_their_windows(
    store: &dyn Store,
) {
    use crm_domain::limits::DAY_MILLIS;
    let (tenant_id, other) = (tenant("tenant_a"), tenant("tenant_b"));
    let unlimited = SendingPolicy::default();
    schedule_to(store, &tenant_id, "+5511900000001", Some("pn-1"), at(0)).await;
    schedule_to(store, &tenant_id, "+5511900000002", Some("pn-1"), at(1)).await;
    schedule_to(store, &tenant_id, "+5511900000002", None, at(2)).await;
    schedule_to(store, &other, "+5511900000009", None, at(3)).await;
    assert_eq!(
        drain_limited(store, &tenant_id, &unlimited, 10_000)
            .await
            .len(),
        4
    );
    schedule_to(store, &tenant_id, "+5511900000003", Some("pn-2"), at(4)).await;
    assert_eq!(
        drain_limited(store, &tenant_id, &unlimited, 10_500)
            .await
            .len(),
        1
    );
    // Pending work to +2, so that its history is asked for.
    schedule_to(store, &tenant_id, "+5511900000002", None, at(5)).await;

    let (_, facts) = facts_at(store, &tenant_id, 11_000).await;
    let usage = &facts.usage[&tenant_id];
    assert_eq!(usage.sends, 1, "only the send of the last second");
    assert_eq!(usage.sender_sends.get(&Some("pn-2".to_owned())), Some(&1));
    assert_eq!(usage.sender_sends.get(&Some("pn-1".to_owned())), None);
    assert_eq!(usage.recipients, 3, "another tenant's recipient is its own");
    let two = facts.recipients[&(tenant_id.clone(), "+5511900000002".to_owned())];
    assert_eq!(two.sends, 2);
    assert_eq!(two.last_sent_at, Some(at(10_000)));
    assert_eq!(
        facts.next_release_at.get(&tenant_id),
        Some(&at(10_000 + DAY_MILLIS))
    );

    // A day later the first sends are out of every window; then the last one is too.
    let (_, facts) = facts_at(store, &tenant_id, 10_001 + DAY_MILLIS).await;
    assert_eq!(facts.usage[&tenant_id].recipients, 1);
    assert_eq!(
        facts
            .recipients
            .get(&(tenant_id.clone(), "+5511900000002".to_owned()))
            .copied()
            .unwrap_or_default(),
        crm_domain::limits::RecipientUsage::default(),
        "no send to +2 in this day"
    );
    let (_, facts) = facts_at(store, &tenant_id, 10_500 + 2 * DAY_MILLIS).await;
    assert_eq!(facts.usage[&tenant_id].recipients, 0);
    assert_eq!(facts.next_release_at.get(&tenant_id), None);
}

pub async fn a_sender_rate_holds_each_sender_to_its_own_allowance(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let policy = SendingPolicy {
        max_per_second_per_sender: Some(2),
        ..SendingPolicy::default()
    };
    for (offset, sender) in [Some("pn-1"), Some("pn-2")]
        .into_iter()
        .flat_map(|sender| [sender; 3])
        .chain([None])
        .enumerate()
    {
        let phone = format!("+55119000000{offset:02}");
        schedule_to(store, &tenant_id, &phone, sender, at(offset as i64)).await;
    }
    let senders = |sent: &[FollowUp]| -> Vec<Option<String>> {
        let mut senders: Vec<_> = sent.iter().map(|f| f.sender.clone()).collect();
        senders.sort();
        senders
    };
    let first = drain_limited(store, &tenant_id, &policy, 10_000).await;
    assert_eq!(
        senders(&first),
        [
            None,
            Some("pn-1".into()),
            Some("pn-1".into()),
            Some("pn-2".into()),
            Some("pn-2".into())
        ]
    );
    assert!(
        drain_limited(store, &tenant_id, &policy, 10_500)
            .await
            .is_empty()
    );
    let later = drain_limited(store, &tenant_id, &policy, 11_001).await;
    assert_eq!(senders(&later), [Some("pn-1".into()), Some("pn-2".into())]);
}

pub async fn the_daily_recipient_limit_counts_distinct_recipients_and_lets_counted_ones_through(
    store: &dyn Store,
) {
    use crm_domain::limits::DAY_MILLIS;
    let tenant_id = tenant("tenant_a");
    let policy = SendingPolicy {
        daily_recipient_limit: Some(2),
        ..SendingPolicy::default()
    };
    for (offset, phone) in ["+5511900000001", "+5511900000002", "+5511900000003"]
        .into_iter()
        .enumerate()
    {
        schedule_to(store, &tenant_id, phone, None, at(offset as i64)).await;
    }
    let phones =
        |sent: Vec<FollowUp>| -> Vec<String> { sent.into_iter().map(|f| f.phone_e164).collect() };
    assert_eq!(
        phones(drain_limited(store, &tenant_id, &policy, 10_000).await),
        ["+5511900000001", "+5511900000002"],
        "+3 waits: the budget is spent"
    );
    schedule_to(store, &tenant_id, "+5511900000001", None, at(10)).await;
    assert_eq!(
        phones(drain_limited(store, &tenant_id, &policy, 20_000).await),
        ["+5511900000001"],
        "a recipient counted already goes out; +3 still waits"
    );
    assert_eq!(
        phones(drain_limited(store, &tenant_id, &policy, 10_001 + DAY_MILLIS).await),
        ["+5511900000003"],
        "+2 left the day, so +3 takes its place"
    );
}

pub async fn a_recipient_waits_its_interval_and_gets_no_more_than_its_daily_cap(store: &dyn Store) {
    use crm_domain::limits::DAY_MILLIS;
    let tenant_id = tenant("tenant_a");
    let policy = SendingPolicy {
        recipient_min_interval_ms: Some(6_000),
        recipient_daily_cap: Some(2),
        ..SendingPolicy::default()
    };
    for offset in 0..4 {
        schedule_to(store, &tenant_id, "+5511900000001", None, at(offset)).await;
    }
    schedule_to(store, &tenant_id, "+5511900000002", None, at(9)).await;
    let count =
        |sent: Vec<FollowUp>, phone: &str| sent.iter().filter(|f| f.phone_e164 == phone).count();
    let first = drain_limited(store, &tenant_id, &policy, 10_000).await;
    assert_eq!(
        count(first.clone(), "+5511900000001"),
        1,
        "one, then the interval"
    );
    assert_eq!(
        count(first, "+5511900000002"),
        1,
        "another recipient is not held"
    );
    for (millis, sent, why) in [
        (15_999, 0, "within the interval"),
        (16_000, 1, "the interval passed"),
        (30_000, 0, "the cap of two is reached"),
        (10_001 + DAY_MILLIS, 1, "the first send left the day"),
    ] {
        let sent_now = drain_limited(store, &tenant_id, &policy, millis).await;
        assert_eq!(count(sent_now, "+5511900000001"), sent, "{why}");
    }
}

pub async fn follow_ups_held_one_by_one_do_not_keep_those_behind_them_waiting(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let policy = SendingPolicy {
        recipient_min_interval_ms: Some(60_000),
        ..SendingPolicy::default()
    };
    // Far more follow-ups to one recipient than a batch looks at, then one to another.
    let mut bodies = Vec::new();
    for offset in 0..300 {
        let (mut follow_up, events) = new_follow_up(&tenant_id, None, None, at(offset), at(0));
        follow_up.phone_e164 = "+5511900000001".to_owned();
        bodies.push((follow_up, events));
    }
    for (follow_up, events) in &bodies {
        created(store, follow_up, events).await;
    }
    let behind = schedule_to(store, &tenant_id, "+5511900000002", None, at(1_000)).await;
    let dispatcher = SendAll::default()
        .at_time(at(10_000))
        .limiting(&tenant_id, policy.clone());
    store.drain(at(10_000), 10, &dispatcher).await.unwrap();
    let sent: Vec<FollowUpId> = dispatcher
        .seen()
        .iter()
        .map(|due| due.follow_up.followup_id)
        .collect();
    assert_eq!(sent.len(), 2, "one to each recipient: {sent:?}");
    assert!(
        sent.contains(&behind.followup_id),
        "the one behind goes too"
    );
}

pub async fn sending_facts_list_due_work_in_drain_order_with_the_ledgers_answers(
    store: &dyn Store,
) {
    let (tenant_id, other) = (tenant("tenant_a"), tenant("tenant_b"));
    let campaign = create_campaign(store, &tenant_id, at(0)).await;
    let later = schedule_to(store, &tenant_id, "+5511900000002", Some("pn-1"), at(20)).await;
    let sooner = schedule(store, &tenant_id, Some(campaign.campaign_id), at(10)).await;
    schedule(store, &tenant_id, None, at(5_000_000)).await;
    schedule(store, &other, None, at(0)).await;

    let planner = AskEverything {
        tenant_id: tenant_id.clone(),
        now: at(1_000),
    };
    let (plan, facts) = store
        .sending_facts(Some(&tenant_id), at(1_000), 1, &planner)
        .await
        .unwrap();
    assert_eq!(plan.limited.len(), 1);
    let ids: Vec<FollowUpId> = facts.due.iter().map(|d| d.candidate.followup_id).collect();
    assert_eq!(ids, [sooner.followup_id], "oldest first, at most the cap");
    assert_eq!(facts.truncated, std::slice::from_ref(&tenant_id));
    assert!(facts.lanes.iter().all(|l| l.lane.tenant_id == tenant_id));
    assert_eq!(
        facts.lanes.len(),
        2,
        "the campaign's lane and the one of none"
    );

    let (_, facts) = store
        .sending_facts(Some(&tenant_id), at(1_000), 10, &planner)
        .await
        .unwrap();
    let due: Vec<_> = facts
        .due
        .iter()
        .map(|d| {
            (
                d.candidate.followup_id,
                d.candidate.sender.clone(),
                d.lane.campaign_id,
            )
        })
        .collect();
    assert_eq!(
        due,
        [
            (sooner.followup_id, None, Some(campaign.campaign_id)),
            (later.followup_id, Some("pn-1".to_owned()), None)
        ]
    );
    assert!(facts.truncated.is_empty());
    let (_, everyone) = store
        .sending_facts(None, at(1_000), 10, &planner)
        .await
        .unwrap();
    assert_eq!(everyone.due.len(), 3, "every tenant's due work");
}

pub async fn closed_lanes_are_passed_over_and_lanes_come_with_their_policy_and_time_zone(
    store: &dyn Store,
) {
    let tenant_id = tenant("tenant_a");
    let policy = crm_domain::policy::SendingPolicy::new(Some(80), None).unwrap();
    store.put_sending_policy(&tenant_id, &policy).await.unwrap();
    let tokyo = schedule_in(store, &tenant_id, Some("Asia/Tokyo"), at(0)).await;
    let anywhere = schedule(store, &tenant_id, None, at(1)).await;
    let quiet_lane = Lane {
        tenant_id: tenant_id.clone(),
        campaign_id: None,
        time_zone: Some("Asia/Tokyo".to_owned()),
    };
    let dispatcher = SendAll::default().closing(quiet_lane.clone());

    let outcomes = store.drain(at(1_000), 10, &dispatcher).await.unwrap();

    let drained: Vec<_> = outcomes.iter().map(|o| o.followup_id).collect();
    assert_eq!(drained, [anywhere.followup_id]);
    let offered = dispatcher.lanes_offered();
    assert_eq!(
        offered
            .iter()
            .map(|l| (l.lane.clone(), l.policy.clone()))
            .collect::<Vec<_>>(),
        [
            (
                Lane {
                    time_zone: None,
                    ..quiet_lane.clone()
                },
                Some(policy.clone())
            ),
            (quiet_lane, Some(policy)),
        ]
    );
    let stored = all_follow_ups(store, &tenant_id).await;
    let held = stored
        .iter()
        .find(|f| f.followup_id == tokyo.followup_id)
        .unwrap();
    assert_eq!(held.status, FollowUpStatus::Pending, "held, not failed");
    assert_eq!(held.schedule_at, at(0), "and not rescheduled");
}

pub async fn each_due_follow_up_says_whether_its_recipient_opted_out(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let (mut opted, events) = new_follow_up(&tenant_id, None, None, at(0), at(0));
    opted.phone_e164 = "+5511911112222".to_owned();
    store.create_follow_up(&opted, &events).await.unwrap();
    let other = schedule(store, &tenant_id, None, at(1)).await;
    store
        .add_opt_out(&opting_out(OptOut {
            tenant_id: tenant_id.clone(),
            phone_e164: opted.phone_e164.clone(),
            reason: None,
            created_at: at(0),
        }))
        .await
        .unwrap();
    // Another tenant's opt-out of the same number is theirs alone.
    store
        .add_opt_out(&opting_out(OptOut {
            tenant_id: tenant("tenant_b"),
            phone_e164: other.phone_e164.clone(),
            reason: None,
            created_at: at(0),
        }))
        .await
        .unwrap();
    let dispatcher = SendAll::default();

    store.drain(at(1_000), 10, &dispatcher).await.unwrap();

    let flags: Vec<_> = dispatcher
        .seen()
        .iter()
        .map(|due| (due.follow_up.followup_id, due.recipient_opted_out))
        .collect();
    assert_eq!(
        flags,
        [(opted.followup_id, true), (other.followup_id, false)]
    );
}

pub async fn campaign_counts_follow_every_change_of_its_follow_ups(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let campaign = create_campaign(store, &tenant_id, at(0)).await;
    let mut follow_ups = Vec::new();
    for offset in 0..3 {
        follow_ups.push(schedule(store, &tenant_id, Some(campaign.campaign_id), at(offset)).await);
    }
    schedule(store, &tenant_id, None, at(5)).await;
    let stats = |pending, sent, failed, accepted| CampaignStats {
        pending,
        sent,
        failed,
        delivery_accepted: accepted,
        ..CampaignStats::default()
    };
    assert_eq!(
        store.campaign_stats(campaign.campaign_id).await.unwrap(),
        stats(3, 0, 0, 0)
    );

    store
        .drain(at(1_000), 2, &SendAll::default())
        .await
        .unwrap();
    assert_eq!(
        store.campaign_stats(campaign.campaign_id).await.unwrap(),
        stats(1, 2, 0, 0),
        "the drain took the tenant's two oldest, both the campaign's"
    );
    let leased = claim_at(store, 202_000, 10).await;
    let ours = leased
        .iter()
        .find(|l| l.entry.followup_id == follow_ups[0].followup_id)
        .unwrap();
    store
        .ack(&[accepted(ours)], &AckWith { now: at(203_000) })
        .await
        .unwrap();
    assert_eq!(
        store.campaign_stats(campaign.campaign_id).await.unwrap(),
        stats(1, 2, 0, 1)
    );
    let pending = store
        .follow_up(&tenant_id, follow_ups[2].followup_id)
        .await
        .unwrap()
        .unwrap();
    let (canceled, _) = pending.cancel(at(204_000)).unwrap().unwrap();
    assert!(
        store
            .save_follow_up(&canceled, FollowUpStatus::Pending, &[])
            .await
            .unwrap()
    );
    assert_eq!(
        store.campaign_stats(campaign.campaign_id).await.unwrap(),
        stats(0, 2, 1, 1)
    );
    let (other, _) = new_campaign(&tenant_id, None, at(0));
    assert_eq!(
        store.campaign_stats(other.campaign_id).await.unwrap(),
        CampaignStats::default()
    );
}

pub async fn a_follow_up_is_saved_only_from_the_status_it_was_read_in(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let follow_up = schedule(store, &tenant_id, None, at(0)).await;
    assert_eq!(
        store
            .follow_up(&tenant("tenant_b"), follow_up.followup_id)
            .await
            .unwrap(),
        None,
        "another tenant's is not found"
    );
    let read = store
        .follow_up(&tenant_id, follow_up.followup_id)
        .await
        .unwrap()
        .expect("found");
    assert_eq!(read, follow_up);
    store
        .drain(at(1_000), 10, &SendAll::default())
        .await
        .unwrap();

    let (canceled, event) = read.cancel(at(2_000)).unwrap().unwrap();
    let event = envelope(&event, &tenant_id, read.correlation_id, at(2_000));
    let saved = store
        .save_follow_up(&canceled, FollowUpStatus::Pending, &[event])
        .await
        .unwrap();

    assert!(!saved, "it was sent meanwhile");
    let stored = store
        .follow_up(&tenant_id, follow_up.followup_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.status, FollowUpStatus::Sent);
    assert_eq!(events_of(store, read.correlation_id).await.len(), 2);
}

pub async fn sending_policies_are_stored_per_tenant(store: &dyn Store) {
    use crm_domain::policy::{QuietHours, SendingPolicy, TimeOfDay, TimeZoneName};
    let (a, b) = (tenant("tenant_a"), tenant("tenant_b"));
    assert_eq!(store.sending_policy(&a).await.unwrap(), None);
    let night = QuietHours::new(
        TimeOfDay::parse("21:00").unwrap(),
        TimeOfDay::parse("08:00").unwrap(),
        TimeZoneName::parse("America/Sao_Paulo").unwrap(),
    )
    .unwrap();
    let first = SendingPolicy {
        auto_pause: Some(auto_pause(100, 0.125)),
        ..SendingPolicy::new(Some(50), Some(night)).unwrap()
    };
    let second = SendingPolicy::new(None, None).unwrap();

    store.put_sending_policy(&a, &first).await.unwrap();
    assert_eq!(store.sending_policy(&a).await.unwrap(), Some(first));
    store.put_sending_policy(&a, &second).await.unwrap();

    assert_eq!(store.sending_policy(&a).await.unwrap(), Some(second));
    assert_eq!(store.sending_policy(&b).await.unwrap(), None);

    assert!(store.remove_sending_policy(&a).await.unwrap());
    assert_eq!(store.sending_policy(&a).await.unwrap(), None);
    assert!(!store.remove_sending_policy(&a).await.unwrap(), "none left");
    assert!(!store.remove_sending_policy(&b).await.unwrap());
}

pub async fn failed_and_skipped_decisions_are_stored_as_decided(store: &dyn Store) {
    struct FailFirstSkipRest(Mutex<bool>);
    impl Planner for FailFirstSkipRest {
        fn plan(&self, lanes: &[LaneState]) -> DrainPlan {
            DrainPlan {
                open: lanes.iter().map(|l| l.lane.clone()).collect(),
                ..DrainPlan::new(at(500))
            }
        }
    }
    impl Dispatcher for FailFirstSkipRest {
        fn decide(&self, due: &DueFollowUp) -> DispatchDecision {
            let mut failed_one = self.0.lock().unwrap();
            if *failed_one {
                return DispatchDecision::Skip {
                    reason: SkipReason::CampaignPaused,
                };
            }
            *failed_one = true;
            let (follow_up, event) = due
                .follow_up
                .mark_failed(FailureReason::ProviderSendError, at(500))
                .unwrap();
            let events = vec![envelope(
                &event,
                &follow_up.tenant_id,
                follow_up.correlation_id,
                at(500),
            )];
            DispatchDecision::Fail {
                follow_up: Box::new(follow_up),
                events,
            }
        }
    }
    let tenant_id = tenant("tenant_a");
    let first = schedule(store, &tenant_id, None, at(1)).await;
    let second = schedule(store, &tenant_id, None, at(2)).await;
    let outcomes = store
        .drain(at(1_000), 10, &FailFirstSkipRest(Mutex::new(false)))
        .await
        .unwrap();
    let statuses: Vec<_> = outcomes.iter().map(|o| (o.followup_id, o.status)).collect();
    assert_eq!(
        statuses,
        vec![
            (first.followup_id, DrainStatus::Failed),
            (second.followup_id, DrainStatus::Skipped)
        ]
    );
    assert_eq!(outcomes[1].reason.as_deref(), Some("campaign_paused"));
    let stored = all_follow_ups(store, &tenant_id).await;
    let status_of = |id| stored.iter().find(|f| f.followup_id == id).unwrap();
    assert_eq!(status_of(first.followup_id).status, FollowUpStatus::Failed);
    assert_eq!(
        status_of(first.followup_id).last_error_code.as_deref(),
        Some("PROVIDER_SEND_ERROR")
    );
    assert_eq!(
        status_of(second.followup_id).status,
        FollowUpStatus::Pending
    );
    assert!(store.outbound_items(0, 10).await.unwrap().is_empty());
    assert_eq!(store.count_due(at(1_000), &held()).await.unwrap(), 1);
}

pub async fn events_read_back_in_commit_order_per_correlation(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let correlation_id = CorrelationId::new(Uuid::new_v4());
    let mut expected = Vec::new();
    for index in 0..5 {
        let (campaign, _) = new_campaign(&tenant_id, None, at(index));
        let event = DomainEvent::CampaignCreated {
            campaign_id: campaign.campaign_id,
            channel: "whatsapp".into(),
            state: campaign.state,
            scheduled_at: None,
        };
        let events = vec![envelope(&event, &tenant_id, correlation_id, at(index))];
        store.create_campaign(&campaign, &events).await.unwrap();
        expected.extend(events);
    }
    assert_eq!(events_of(store, correlation_id).await, expected);
    assert!(
        events_of(store, CorrelationId::new(Uuid::new_v4()))
            .await
            .is_empty()
    );
}

pub async fn a_trace_pages_in_commit_order_and_can_keep_to_one_tenant(store: &dyn Store) {
    let correlation_id = CorrelationId::new(Uuid::new_v4());
    let mut expected = Vec::new();
    // Correlation ids come from clients, so two tenants can share one.
    for (index, name) in ["tenant_a", "tenant_b", "tenant_a", "tenant_b", "tenant_a"]
        .into_iter()
        .enumerate()
    {
        let tenant_id = tenant(name);
        let (campaign, _) = new_campaign(&tenant_id, None, at(index as i64));
        let event = DomainEvent::CampaignCreated {
            campaign_id: campaign.campaign_id,
            channel: "whatsapp".into(),
            state: campaign.state,
            scheduled_at: None,
        };
        let events = vec![envelope(
            &event,
            &tenant_id,
            correlation_id,
            at(index as i64),
        )];
        store.create_campaign(&campaign, &events).await.unwrap();
        expected.extend(events);
    }
    assert_eq!(events_of(store, correlation_id).await, expected);
    let query = TraceQuery {
        correlation_id,
        tenant_id: Some(tenant("tenant_a")),
        after: None,
        limit: 100,
    };
    let page = store.events_by_correlation(&query).await.unwrap();
    let only_a: Vec<_> = expected
        .iter()
        .filter(|event| event.tenant_id == tenant("tenant_a"))
        .cloned()
        .collect();
    assert_eq!(page.items, only_a);
    assert_eq!(page.next, None);
    let first = store
        .events_by_correlation(&TraceQuery {
            limit: 1,
            ..query.clone()
        })
        .await
        .unwrap();
    assert_eq!(first.items, only_a[..1]);
    let rest = store
        .events_by_correlation(&TraceQuery {
            after: first.next,
            ..query
        })
        .await
        .unwrap();
    assert_eq!(rest.items, only_a[1..]);
}

/// Every event of the feed from `after`, following `next` until a page comes back empty.
pub async fn feed_from(store: &dyn Store, after: Option<EventCursor>) -> Vec<EventEnvelope> {
    let mut events = Vec::new();
    let mut after = after;
    loop {
        let query = FeedQuery {
            after,
            limit: 3,
            tenant_id: None,
            name_prefix: None,
        };
        let page = store.read_feed(&query).await.expect("read_feed");
        if page.items.is_empty() {
            return events;
        }
        events.extend(page.items);
        after = Some(page.next);
    }
}

/// The feed's position after every event stored so far.
pub async fn feed_end(store: &dyn Store) -> EventCursor {
    let mut after = None;
    loop {
        let query = FeedQuery {
            after,
            limit: 1000,
            tenant_id: None,
            name_prefix: None,
        };
        let page = store.read_feed(&query).await.expect("read_feed");
        if page.items.is_empty() {
            return page.next;
        }
        after = Some(page.next);
    }
}

pub async fn the_feed_hands_out_every_event_once_in_commit_order(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let mut expected = Vec::new();
    for index in 0..4 {
        let (campaign, events) = new_campaign(&tenant_id, None, at(index));
        store.create_campaign(&campaign, &events).await.unwrap();
        expected.extend(events);
        let (follow_up, events) = new_follow_up(&tenant_id, None, None, at(0), at(index));
        store.create_follow_up(&follow_up, &events).await.unwrap();
        expected.extend(events);
    }
    let fed = feed_from(store, None).await;
    assert_eq!(
        fed, expected,
        "every event once, in the order they committed"
    );
    let end = feed_end(store).await;
    let (campaign, events) = new_campaign(&tenant_id, None, at(9));
    store.create_campaign(&campaign, &events).await.unwrap();
    assert_eq!(
        feed_from(store, Some(end)).await,
        events,
        "only what came after"
    );
}

pub async fn the_feed_continues_past_events_its_filters_pass_over(store: &dyn Store) {
    let (a, b) = (tenant("tenant_a"), tenant("tenant_b"));
    let mut mine = Vec::new();
    for index in 0..5 {
        let (campaign, events) = new_campaign(&a, None, at(index));
        store.create_campaign(&campaign, &events).await.unwrap();
        let (follow_up, events) = new_follow_up(&b, None, None, at(0), at(index));
        store.create_follow_up(&follow_up, &events).await.unwrap();
        mine.extend(events);
    }
    let mut after = None;
    let mut seen = Vec::new();
    for _ in 0..20 {
        let query = FeedQuery {
            after,
            limit: 2,
            tenant_id: Some(b.clone()),
            name_prefix: Some("crm.followup.".into()),
        };
        let page = store.read_feed(&query).await.unwrap();
        assert!(page.items.len() <= 2);
        let done = page.items.is_empty() && Some(page.next) == after;
        seen.extend(page.items);
        if done {
            break;
        }
        after = Some(page.next);
    }
    assert_eq!(seen, mine);
    let none = FeedQuery {
        after: None,
        limit: 10,
        tenant_id: Some(a),
        name_prefix: Some("crm.followup.".into()),
    };
    let page = store.read_feed(&none).await.unwrap();
    assert!(page.items.is_empty());
    // The cursor moved past the events it looked at, so the next call starts after them.
    assert!(page.next.0 >= 9, "{:?}", page.next);
    let again = store
        .read_feed(&FeedQuery {
            after: Some(page.next),
            ..none
        })
        .await
        .unwrap();
    assert!(again.items.is_empty());
    assert!(again.next >= page.next);
}

pub async fn a_feed_cursor_past_every_event_is_not_issued(store: &dyn Store) {
    create_campaign(store, &tenant("tenant_a"), at(0)).await;
    let end = feed_end(store).await;
    let past = FeedQuery {
        after: Some(EventCursor(end.0 + 1_000_000)),
        limit: 10,
        tenant_id: None,
        name_prefix: None,
    };
    let outcome = store.read_feed(&past).await;
    assert!(
        matches!(outcome, Err(StoreError::CursorNotIssued)),
        "{outcome:?}"
    );
    let at_end = FeedQuery {
        after: Some(end),
        ..past
    };
    let page = store.read_feed(&at_end).await.unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.next, end);
}

pub async fn a_feed_waiter_wakes_when_an_event_commits(store: &dyn Store) {
    create_campaign(store, &tenant("tenant_a"), at(0)).await;
    let end = feed_end(store).await;
    // Nothing new: the wait ends by itself.
    store
        .wait_for_events(end, std::time::Duration::from_millis(50))
        .await
        .unwrap();
    let waiter = store.wait_for_events(end, std::time::Duration::from_secs(600));
    let writer = async {
        create_campaign(store, &tenant("tenant_a"), at(1)).await;
    };
    let woken = async {
        waiter.await.unwrap();
    };
    // The waiter must wake long before its own 600 s; the bound here only stops a
    // broken store from hanging the suite.
    let both = async { futures_join(writer, woken).await };
    assert!(
        tokio_timeout(std::time::Duration::from_secs(60), both).await,
        "the waiter did not wake when an event committed"
    );
    assert_eq!(feed_from(store, Some(end)).await.len(), 1);
}

pub async fn a_tenant_s_empty_page_moves_past_other_tenants_events(store: &dyn Store) {
    create_campaign(store, &tenant("tenant_a"), at(0)).await;
    let start = feed_end(store).await;
    create_campaign(store, &tenant("tenant_b"), at(1)).await;
    create_campaign(store, &tenant("tenant_b"), at(2)).await;
    let of_a = |after| FeedQuery {
        after: Some(after),
        limit: 10,
        tenant_id: Some(tenant("tenant_a")),
        name_prefix: None,
    };
    let page = store.read_feed(&of_a(start)).await.unwrap();
    assert!(page.items.is_empty());
    assert_eq!(
        page.next,
        feed_end(store).await,
        "the cursor passes the events of other tenants"
    );
    // So a reader waiting for tenant_a's next event is not woken by tenant_b's: three
    // waits in a row last at least two of their times (a store may wake a waiter once
    // for nothing, as when it starts listening; a slow machine only lengthens them).
    let began = std::time::Instant::now();
    let wait = std::time::Duration::from_millis(100);
    for _ in 0..3 {
        store.wait_for_events(page.next, wait).await.unwrap();
    }
    assert!(
        began.elapsed() >= 2 * wait,
        "woken by another tenant's events"
    );
    create_campaign(store, &tenant("tenant_a"), at(3)).await;
    let page = store.read_feed(&of_a(page.next)).await.unwrap();
    assert_eq!(page.items.len(), 1, "tenant_a's own event still comes");
}

async fn futures_join(a: impl Future<Output = ()>, b: impl Future<Output = ()>) {
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut a_done, mut b_done) = (false, false);
    std::future::poll_fn(|cx| {
        if !a_done {
            a_done = a.as_mut().poll(cx).is_ready();
        }
        if !b_done {
            b_done = b.as_mut().poll(cx).is_ready();
        }
        if a_done && b_done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// Whether `future` finished within `limit` (the suite runs on tokio).
async fn tokio_timeout(limit: std::time::Duration, future: impl Future<Output = ()>) -> bool {
    tokio::time::timeout(limit, future).await.is_ok()
}

pub async fn retention_removes_old_events_and_finished_items_and_expires_old_cursors(
    store: &dyn Store,
) {
    let tenant_id = tenant("tenant_a");
    // Two follow-ups sent long ago; one acked (finished), one still waiting for its ack.
    let done = schedule(store, &tenant_id, None, at(0)).await;
    let waiting = schedule(store, &tenant_id, None, at(0)).await;
    store
        .drain(at(1_000), 10, &SendAll::default())
        .await
        .unwrap();
    let leased = claim_at(store, 202_000, 10).await;
    let done_item = leased
        .iter()
        .find(|l| l.entry.followup_id == done.followup_id)
        .unwrap();
    let statuses = store
        .ack(&[accepted(done_item)], &AckWith { now: at(203_000) })
        .await
        .unwrap();
    assert_eq!(statuses, [AckStatus::Acked]);
    use crm_domain::limits::DAY_MILLIS;
    // Days apart: a store may keep records by whole days (PostgreSQL drops a day's
    // partition once the whole day is older than the retention).
    let recent = create_campaign(store, &tenant_id, at(3 * DAY_MILLIS)).await;
    assert!(feed_from(store, None).await.len() >= 6);

    let expired = store
        .expire(
            Retention {
                records_before: at(2 * DAY_MILLIS),
                ledger_before: at(0),
            },
            10_000,
        )
        .await
        .unwrap();
    assert!(expired.events >= 5, "{expired:?}");
    assert_eq!(expired.outbound_items, 1, "{expired:?}");
    // What is left: the recent event; both follow-ups and the unfinished item.
    let left = feed_from(store, None).await;
    assert_eq!(
        left.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["crm.campaign.created"]
    );
    assert_eq!(
        left[0].payload["campaign_id"],
        recent.campaign_id.to_string()
    );
    assert_eq!(all_follow_ups(store, &tenant_id).await.len(), 2);
    let waiting_item = leased
        .iter()
        .find(|l| l.entry.followup_id == waiting.followup_id)
        .unwrap();
    assert!(
        store
            .queue_entry(waiting_item.entry.queue_item_id)
            .await
            .unwrap()
            .is_some(),
        "an item still under lease is kept"
    );
    assert_eq!(
        store
            .queue_entry(done_item.entry.queue_item_id)
            .await
            .unwrap(),
        None
    );
    let from_start = FeedQuery {
        after: Some(EventCursor(0)),
        limit: 10,
        tenant_id: None,
        name_prefix: None,
    };
    match store.read_feed(&from_start).await {
        Err(StoreError::CursorExpired { oldest }) => {
            let resumed = store
                .read_feed(&FeedQuery {
                    after: Some(oldest),
                    ..from_start
                })
                .await
                .unwrap();
            assert_eq!(resumed.items, left);
        }
        other => panic!("a cursor older than retention must be expired: {other:?}"),
    }
}

/// Leases every item it is offered for 30 s from `now` (and finishes those whose last
/// lease ran out), as a claim at `now` would.
#[derive(Debug)]
pub struct LeaseAt {
    pub now: Timestamp,
}

/// How long `LeaseAt` leases for.
pub const LEASE_MILLIS: i64 = 30_000;

/// When `SendAll` hands follow-ups out: their outbound items are ready from then on.
pub const SENT_AT: i64 = 100_000;

impl Leaser for LeaseAt {
    fn lease(&self, entry: &QueueEntry, follow_up: Option<&FollowUp>) -> LeaseDecision {
        let now = self.now;
        let expires_at = Timestamp::from_unix_millis(now.unix_millis() + LEASE_MILLIS).unwrap();
        match delivery::claim(entry, follow_up, LeaseId(Uuid::new_v4()), expires_at, now) {
            Claimed::Leased(entry) => LeaseDecision::Lease(Box::new(entry)),
            Claimed::Expired {
                entry,
                follow_up,
                event,
            } => {
                let events = vec![envelope(
                    &event,
                    &follow_up.tenant_id,
                    follow_up.correlation_id,
                    now,
                )];
                LeaseDecision::Finish {
                    entry: Box::new(entry),
                    follow_up,
                    events,
                }
            }
        }
    }
}

/// Applies acks and receipts with the domain's rules at `now`, without jitter, with the
/// table of answers of SPEC §10 and the campaign workflow of `workflows.json`.
#[derive(Debug)]
pub struct AckWith {
    pub now: Timestamp,
}

/// The table of SPEC §10, inline so that these checks do not move with the data file.
const ANSWERS_JSON: &str = r#"{"version": "1", "provider": "whatsapp", "answers": [
  {"codes": ["131048", "132015", "132016"], "action": "pause_campaign"},
  {"codes": ["131050"], "action": "opt_out"},
  {"codes": ["131026", "130403"], "action": "finish"},
  {"codes": ["131049"], "action": "retry", "not_before": {"ms": 86400000}},
  {"codes": ["131056"], "action": "retry",
   "not_before": {"recipient_interval_default_ms": 6000, "growth": 4}},
  {"codes": ["130429"], "action": "retry"}]}"#;

const CAMPAIGN_WORKFLOW_JSON: &str = r#"{"version": "1", "module": "conformance",
  "workflows": {"campaign": {
  "states": ["draft", "scheduled", "running", "paused", "completed", "canceled", "failed"],
  "transitions": [{"from": "running", "to": "paused", "trigger": "pause_campaign"},
                  {"from": "paused", "to": "running", "trigger": "resume_campaign"}]}}}"#;

static ANSWERS: std::sync::LazyLock<ProviderAnswers> =
    std::sync::LazyLock::new(|| ProviderAnswers::parse(ANSWERS_JSON).expect("the table parses"));

static CAMPAIGN_WORKFLOW: std::sync::LazyLock<Workflow> = std::sync::LazyLock::new(|| {
    WorkflowSet::parse(CAMPAIGN_WORKFLOW_JSON)
        .expect("the workflow parses")
        .workflow(crm_domain::campaign::CAMPAIGN_WORKFLOW)
        .expect("it has the campaign workflow")
        .clone()
});

impl AckWith {
    /// Wraps an event in its envelope, in the follow-up's correlation as the service does.
    fn wrap(&self) -> impl Fn(&FollowUp, &DomainEvent) -> Result<EventEnvelope, Infallible> {
        let now = self.now;
        move |follow_up, event| {
            Ok(envelope(
                event,
                &follow_up.tenant_id,
                follow_up.correlation_id,
                now,
            ))
        }
    }
}

/// The decision of a wrapper that cannot refuse.
fn decided<T>(decision: Result<T, Infallible>) -> T {
    match decision {
        Ok(decision) => decision,
        Err(never) => match never {},
    }
}

impl Acker for AckWith {
    fn ack(&self, entry: &QueueEntry, follow_up: &FollowUp, request: &AckRequest) -> AckDecision {
        let rules = Rules {
            action: ANSWERS.action(request.report.error_code.as_deref()),
            recipient_interval_ms: None,
        };
        let acked = delivery::ack(
            entry,
            follow_up,
            request.lease_id,
            &request.report,
            rules,
            self.now,
            0.0,
        );
        decided(ack_decision(acked, self.now, self.wrap()))
    }

    fn may_pause(&self, request: &AckRequest) -> bool {
        !request.report.accepted
    }
}

impl Pauser for AckWith {
    fn pause(
        &self,
        campaign: &Campaign,
        follow_up: &FollowUp,
        cause: &PauseCause,
    ) -> Option<(Campaign, EventEnvelope)> {
        pause_at(self.now, campaign, follow_up, cause)
    }
}

/// `campaign` paused at `now` for `cause`, its event in `follow_up`'s correlation.
fn pause_at(
    now: Timestamp,
    campaign: &Campaign,
    follow_up: &FollowUp,
    cause: &PauseCause,
) -> Option<(Campaign, EventEnvelope)> {
    let (paused, event) =
        crm_domain::campaign::auto_pause(campaign, cause, &CAMPAIGN_WORKFLOW, now)?;
    let event = envelope(&event, &paused.tenant_id, follow_up.correlation_id, now);
    Some((paused, event))
}

impl ReceiptApplier for AckWith {
    fn receive(&self, follow_up: &FollowUp, receipt: &Receipt) -> ReceiptDecision {
        let action = ANSWERS.action(receipt.error_code.as_deref());
        let received = crm_domain::receipt::receive(follow_up, receipt, action, self.now);
        decided(receipt_decision(received, self.now, self.wrap()))
    }

    fn may_pause(&self, receipt: &Receipt) -> bool {
        receipt.status == ReceiptStatus::Failed
    }
}

fn report(accepted: bool, retryable: bool, opt_out: bool) -> Report {
    Report {
        accepted,
        provider_message_id: accepted.then(|| "wamid.conformance".to_owned()),
        error_code: (!accepted).then(|| "PROVIDER_DOWN".to_owned()),
        error_message: None,
        retryable,
        opt_out,
    }
}

/// An ack of `leased` reporting that the provider accepted it.
pub fn accepted(leased: &LeasedItem) -> AckRequest {
    AckRequest {
        queue_item_id: leased.entry.queue_item_id,
        lease_id: leased
            .entry
            .lease
            .expect("a leased item has a lease")
            .lease_id,
        report: report(true, false, false),
    }
}

/// Claims with `LeaseAt` at `at(millis)`.
pub async fn claim_at(store: &dyn Store, millis: i64, limit: usize) -> Vec<LeasedItem> {
    store
        .claim(at(millis), limit, &LeaseAt { now: at(millis) })
        .await
        .expect("claim")
}

/// Schedules `count` follow-ups due at `at(0)` and drains them all.
async fn sent(store: &dyn Store, tenant_id: &TenantId, count: usize) -> Vec<FollowUp> {
    let mut follow_ups = Vec::new();
    for _ in 0..count {
        follow_ups.push(schedule(store, tenant_id, None, at(0)).await);
    }
    store
        .drain(at(1_000), count.max(1), &SendAll::default())
        .await
        .unwrap();
    follow_ups
}

pub async fn a_claim_leases_each_ready_item_once_until_its_lease_expires(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let follow_ups = sent(store, &tenant_id, 3).await;
    let first = claim_at(store, 202_000, 2).await;
    assert_eq!(first.len(), 2, "oldest first, up to the limit");
    let second = claim_at(store, 202_000, 10).await;
    assert_eq!(second.len(), 1, "a leased item is not handed out again");
    let mut ids: Vec<_> = first
        .iter()
        .chain(&second)
        .map(|l| l.entry.followup_id)
        .collect();
    ids.sort();
    let mut expected: Vec<_> = follow_ups.iter().map(|f| f.followup_id).collect();
    expected.sort();
    assert_eq!(ids, expected);
    for leased in first.iter().chain(&second) {
        assert_eq!(leased.entry.attempt, 1);
        assert_eq!(leased.item.queue_item_id, leased.entry.queue_item_id);
    }
    assert!(claim_at(store, 202_000, 10).await.is_empty());
    // The leases run out 30 s after the claim.
    let again = claim_at(store, 240_000, 10).await;
    assert_eq!(again.len(), 3, "expired leases come back");
    assert!(again.iter().all(|l| l.entry.attempt == 2));
}

pub async fn a_last_lease_that_runs_out_finishes_the_item_as_failed_with_its_event(
    store: &dyn Store,
) {
    let tenant_id = tenant("tenant_a");
    let follow_ups = sent(store, &tenant_id, 2).await;
    // Three attempts (the default policy), each lease left to run out 30 s later.
    for (attempt, millis) in [(1, 202_000), (2, 240_000), (3, 280_000)] {
        let leased = claim_at(store, millis, 10).await;
        assert_eq!(leased.len(), 2);
        assert!(leased.iter().all(|l| l.entry.attempt == attempt));
    }

    let after_last = claim_at(store, 320_000, 10).await;

    assert!(after_last.is_empty(), "no attempt is left");
    for follow_up in &follow_ups {
        let stored = all_follow_ups(store, &tenant_id)
            .await
            .into_iter()
            .find(|f| f.followup_id == follow_up.followup_id)
            .expect("the follow-up");
        let delivery = stored.delivery.expect("the failure is recorded");
        assert_eq!(delivery.status, DeliveryStatus::Failed);
        assert_eq!(delivery.attempts, 3);
        assert_eq!(
            delivery.error_code.as_deref(),
            Some(crm_domain::delivery::LEASE_EXPIRED)
        );
        let names: Vec<_> = events_of(store, follow_up.correlation_id)
            .await
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(
            names.last().map(String::as_str),
            Some("crm.followup.delivery.failed")
        );
    }
    assert!(
        claim_at(store, 900_000, 10).await.is_empty(),
        "finished for good"
    );
}

pub async fn an_accepted_ack_records_the_delivery_with_its_event_and_repeats_change_nothing(
    store: &dyn Store,
) {
    let tenant_id = tenant("tenant_a");
    let follow_up = sent(store, &tenant_id, 1).await.remove(0);
    let leased = claim_at(store, 202_000, 10).await;
    let ack = accepted(&leased[0]);
    let acker = AckWith { now: at(203_000) };
    assert_eq!(
        store.ack(std::slice::from_ref(&ack), &acker).await.unwrap(),
        [AckStatus::Acked]
    );
    let stored = all_follow_ups(store, &tenant_id).await.remove(0);
    let delivery = stored.delivery.clone().expect("the delivery is recorded");
    assert_eq!(delivery.status, DeliveryStatus::Accepted);
    assert_eq!(
        delivery.provider_message_id.as_deref(),
        Some("wamid.conformance")
    );
    let names: Vec<_> = events_of(store, follow_up.correlation_id)
        .await
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        [
            "crm.followup.scheduled",
            "crm.followup.sent",
            "crm.followup.delivery.accepted"
        ]
    );
    // Repeats, alone and twice in one batch: the same answer, nothing written.
    let statuses = store
        .ack(&[ack.clone(), ack.clone()], &AckWith { now: at(204_000) })
        .await
        .unwrap();
    assert_eq!(statuses, [AckStatus::Acked, AckStatus::Acked]);
    assert_eq!(all_follow_ups(store, &tenant_id).await.remove(0), stored);
    assert_eq!(events_of(store, follow_up.correlation_id).await.len(), 3);
    assert!(claim_at(store, 300_000, 10).await.is_empty());
}

pub async fn an_ack_under_a_lease_claimed_again_is_lease_lost_and_an_unknown_item_not_found(
    store: &dyn Store,
) {
    let tenant_id = tenant("tenant_a");
    sent(store, &tenant_id, 1).await;
    let first = claim_at(store, 202_000, 1).await;
    let second = claim_at(store, 240_000, 1).await;
    assert_eq!(second[0].entry.attempt, 2);
    let unknown = AckRequest {
        queue_item_id: QueueItemId::new(Uuid::new_v4()),
        ..accepted(&first[0])
    };
    let statuses = store
        .ack(
            &[accepted(&first[0]), unknown],
            &AckWith { now: at(241_000) },
        )
        .await
        .unwrap();
    assert_eq!(statuses, [AckStatus::LeaseLost, AckStatus::NotFound]);
    assert_eq!(all_follow_ups(store, &tenant_id).await[0].delivery, None);
    let current = store
        .ack(&[accepted(&second[0])], &AckWith { now: at(241_000) })
        .await
        .unwrap();
    assert_eq!(current, [AckStatus::Acked]);
}

pub async fn a_retryable_failure_makes_the_item_ready_after_its_backoff(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    sent(store, &tenant_id, 1).await;
    let leased = claim_at(store, 202_000, 1).await;
    let failed = AckRequest {
        report: report(false, true, false),
        ..accepted(&leased[0])
    };
    let statuses = store
        .ack(&[failed], &AckWith { now: at(203_000) })
        .await
        .unwrap();
    assert_eq!(statuses, [AckStatus::RetryScheduled]);
    let stored = all_follow_ups(store, &tenant_id).await.remove(0);
    assert_eq!(
        stored.delivery.as_ref().map(|d| d.status),
        Some(DeliveryStatus::Retrying)
    );
    // backoff_ms 500 × 2^0 after the ack.
    assert!(claim_at(store, 203_499, 1).await.is_empty());
    let retried = claim_at(store, 203_500, 1).await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].entry.attempt, 2);
    // A transient failure is `retrying`, never `failed`: one `failed` per item at most.
    let delivery = events_named(store, &stored, "crm.followup.delivery.").await;
    assert_eq!(delivery.len(), 1);
    assert_eq!(delivery[0].name, "crm.followup.delivery.retrying");
}

pub async fn an_ack_with_opt_out_adds_the_recipient_to_the_opt_out_list(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    // Two follow-ups to one number: the second opt-out finds it on the list already.
    let follow_ups = sent(store, &tenant_id, 2).await;
    assert_eq!(follow_ups[0].phone_e164, follow_ups[1].phone_e164);
    let leased = claim_at(store, 202_000, 2).await;
    for lease in &leased {
        let opted_out = AckRequest {
            report: report(false, false, true),
            ..accepted(lease)
        };
        store
            .ack(&[opted_out], &AckWith { now: at(203_000) })
            .await
            .unwrap();
    }
    let page = store
        .opt_outs(&OptOutQuery {
            tenant_id: tenant_id.clone(),
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|o| o.phone_e164.as_str())
            .collect::<Vec<_>>(),
        [follow_ups[0].phone_e164.as_str()]
    );
    let mut added = Vec::new();
    for follow_up in &follow_ups {
        added.extend(
            events_of(store, follow_up.correlation_id)
                .await
                .into_iter()
                .filter(|event| event.name == "crm.optout.added"),
        );
    }
    assert_eq!(added.len(), 1, "one number added, one event: {added:?}");
    assert_eq!(
        added[0].payload["phone_e164"],
        follow_ups[0].phone_e164.as_str()
    );
    assert_eq!(added[0].payload["source"], "ack");
}

/// A running campaign of `tenant_id` with `count` follow-ups handed out, each leased.
async fn leased_in_running_campaign(
    store: &dyn Store,
    tenant_id: &TenantId,
    count: usize,
) -> (Campaign, Vec<FollowUp>, Vec<LeasedItem>) {
    let campaign = create_campaign(store, tenant_id, at(0)).await;
    let campaign = move_campaign(store, &campaign, CampaignState::Running, at(1)).await;
    let mut follow_ups = Vec::new();
    for _ in 0..count {
        follow_ups.push(schedule(store, tenant_id, Some(campaign.campaign_id), at(0)).await);
    }
    store
        .drain(at(1_000), count, &SendAll::default())
        .await
        .unwrap();
    let leased = claim_at(store, 202_000, count).await;
    assert_eq!(leased.len(), count);
    (campaign, follow_ups, leased)
}

/// An ack of `leased` reporting a failure with `code`.
fn failed_with(leased: &LeasedItem, code: &str, retryable: bool) -> AckRequest {
    AckRequest {
        report: Report {
            error_code: Some(code.to_owned()),
            ..report(false, retryable, false)
        },
        ..accepted(leased)
    }
}

/// One follow-up of a running campaign of `tenant_a`, leased and answered with a failure
/// carrying `code` at 203 s: the follow-up and the ack's status.
async fn answered(store: &dyn Store, code: &str, retryable: bool) -> (FollowUp, AckStatus) {
    let tenant_id = tenant("tenant_a");
    let (_, mut follow_ups, leased) = leased_in_running_campaign(store, &tenant_id, 1).await;
    let statuses = store
        .ack(
            &[failed_with(&leased[0], code, retryable)],
            &AckWith { now: at(203_000) },
        )
        .await
        .unwrap();
    (follow_ups.remove(0), statuses[0])
}

/// The events under `follow_up`'s correlation whose names start with `prefix`.
async fn events_named(store: &dyn Store, follow_up: &FollowUp, prefix: &str) -> Vec<EventEnvelope> {
    events_of(store, follow_up.correlation_id)
        .await
        .into_iter()
        .filter(|event| event.name.starts_with(prefix))
        .collect()
}

/// The campaign's state changes stored under the correlations of `follow_ups`.
async fn state_changes(store: &dyn Store, follow_ups: &[FollowUp]) -> Vec<EventEnvelope> {
    let mut changes = Vec::new();
    for follow_up in follow_ups {
        changes.extend(events_named(store, follow_up, "crm.campaign.state.changed").await);
    }
    changes
}

pub async fn a_pausing_code_pauses_the_running_campaign_once_in_the_acks_commit(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let (campaign, follow_ups, leased) = leased_in_running_campaign(store, &tenant_id, 3).await;
    // Two pausing answers in one batch, a third in the next: one pause.
    let acker = AckWith { now: at(203_000) };
    let statuses = store
        .ack(
            &[
                failed_with(&leased[0], "131048", true),
                failed_with(&leased[1], "132015", false),
            ],
            &acker,
        )
        .await
        .unwrap();
    assert_eq!(statuses, [AckStatus::Acked, AckStatus::Acked]);
    let statuses = store
        .ack(&[failed_with(&leased[2], "132016", true)], &acker)
        .await
        .unwrap();
    assert_eq!(statuses, [AckStatus::Acked]);
    let paused = store
        .campaign(&tenant_id, campaign.campaign_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(paused.state, CampaignState::Paused);
    assert_eq!(paused.revision, campaign.revision + 1);
    assert_eq!(paused.metadata["auto_pause"]["cause"], "error_code");
    assert_eq!(paused.metadata["auto_pause"]["error_code"], "131048");
    let changes = state_changes(store, &follow_ups).await;
    assert_eq!(changes.len(), 1, "one pause, one event: {changes:?}");
    assert_eq!(changes[0].payload["from_state"], "running");
    assert_eq!(changes[0].payload["to_state"], "paused");
    assert_eq!(changes[0].payload["reason_code"], "auto_pause");
    // Every item is done, failed for good, with no retry: a pausing code ends it.
    for follow_up in all_follow_ups(store, &tenant_id).await {
        assert_eq!(follow_up.delivery.unwrap().status, DeliveryStatus::Failed);
    }
    let stats = store.campaign_stats(campaign.campaign_id).await.unwrap();
    assert_eq!((stats.delivery_failed, stats.delivery_retrying), (3, 0));
    assert!(claim_at(store, 900_000, 10).await.is_empty());
}

pub async fn a_pausing_code_leaves_a_campaign_that_is_not_running_alone(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let (campaign, follow_ups, leased) = leased_in_running_campaign(store, &tenant_id, 1).await;
    let stopped = move_campaign(store, &campaign, CampaignState::Paused, at(2)).await;
    let stopped = move_campaign(store, &stopped, CampaignState::Canceled, at(3)).await;
    let statuses = store
        .ack(
            &[failed_with(&leased[0], "131048", true)],
            &AckWith { now: at(203_000) },
        )
        .await
        .unwrap();
    assert_eq!(statuses, [AckStatus::Acked]);
    let stored = store
        .campaign(&tenant_id, campaign.campaign_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored, stopped);
    assert_eq!(state_changes(store, &follow_ups).await, []);
}

pub async fn an_opt_out_code_adds_the_recipient_with_the_code_as_the_reason(store: &dyn Store) {
    let (follow_up, status) = answered(store, "131050", true).await;
    assert_eq!(status, AckStatus::Acked);
    let page = store
        .opt_outs(&OptOutQuery {
            tenant_id: follow_up.tenant_id.clone(),
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].phone_e164, follow_up.phone_e164);
    assert_eq!(page.items[0].reason.as_deref(), Some("provider:131050"));
    let added = events_named(store, &follow_up, "crm.optout.added").await;
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].payload["source"], "provider");
    assert_eq!(added[0].payload["reason"], "provider:131050");
    assert!(
        claim_at(store, 900_000, 10).await.is_empty(),
        "done, not retried"
    );
}

pub async fn a_finishing_code_ends_the_item_whatever_retryable_says(store: &dyn Store) {
    let (follow_up, status) = answered(store, "131026", true).await;
    assert_eq!(status, AckStatus::Acked);
    let delivery = events_named(store, &follow_up, "crm.followup.delivery.").await;
    assert_eq!(delivery.len(), 1);
    assert_eq!(delivery[0].name, "crm.followup.delivery.failed");
    assert!(claim_at(store, 900_000, 10).await.is_empty());
}

pub async fn a_code_that_retries_tomorrow_holds_the_item_a_day(store: &dyn Store) {
    // The sender says "not retryable"; the table says "tomorrow".
    let (follow_up, status) = answered(store, "131049", false).await;
    assert_eq!(status, AckStatus::RetryScheduled);
    let day = 86_400_000;
    assert!(claim_at(store, 203_000 + day - 1, 1).await.is_empty());
    let retrying = events_named(store, &follow_up, "crm.followup.delivery.").await;
    assert_eq!(retrying.len(), 1, "{retrying:?}");
    assert_eq!(retrying[0].name, "crm.followup.delivery.retrying");
    assert_eq!(
        retrying[0].payload["retry_at"],
        serde_json::json!(at(203_000 + day))
    );
    assert_eq!(claim_at(store, 203_000 + day, 1).await.len(), 1);
}

/// `count` follow-ups of a running campaign of `tenant_id`, each accepted by the provider
/// as `wamid.<prefix>.<n>`.
async fn accepted_in_running_campaign(
    store: &dyn Store,
    tenant_id: &TenantId,
    prefix: &str,
    count: usize,
) -> (Campaign, Vec<FollowUp>) {
    let (campaign, _, leased) = leased_in_running_campaign(store, tenant_id, count).await;
    let acks: Vec<AckRequest> = leased
        .iter()
        .enumerate()
        .map(|(n, lease)| {
            let mut ack = accepted(lease);
            ack.report.provider_message_id = Some(format!("wamid.{prefix}.{n}"));
            ack
        })
        .collect();
    let statuses = store
        .ack(&acks, &AckWith { now: at(203_000) })
        .await
        .unwrap();
    assert!(
        statuses.iter().all(|s| *s == AckStatus::Acked),
        "{statuses:?}"
    );
    // In the order of the acks: the follow-up each lease was for.
    let stored = all_follow_ups(store, tenant_id).await;
    let follow_ups = leased
        .iter()
        .map(|lease| {
            stored
                .iter()
                .find(|f| {
                    f.provider_message_id.as_deref() == Some(&lease.entry.queue_item_id.to_string())
                })
                .expect("the leased follow-up")
                .clone()
        })
        .collect();
    (campaign, follow_ups)
}

fn receipt_of(wamid: &str, status: ReceiptStatus, millis: i64) -> Receipt {
    Receipt {
        provider_message_id: wamid.to_owned(),
        tenant_id: None,
        status,
        at: at(millis),
        error_code: (status == ReceiptStatus::Failed).then(|| "131026".to_owned()),
        error_message: None,
    }
}

async fn receive_at(store: &dyn Store, receipts: &[Receipt]) -> Vec<ReceiptAnswer> {
    store
        .apply_receipts(receipts, &AckWith { now: at(300_000) })
        .await
        .expect("apply_receipts")
}

pub async fn receipts_in_any_order_end_in_the_state_of_one_clean_pass(store: &dyn Store) {
    use ReceiptStatus::{Delivered, Failed, Read};
    let tenant_id = tenant("tenant_a");
    let (campaign, follow_ups) = accepted_in_running_campaign(store, &tenant_id, "order", 3).await;
    let answers = receive_at(
        store,
        &[
            receipt_of("wamid.order.0", Read, 250_000),
            receipt_of("wamid.order.0", Delivered, 240_000),
            receipt_of("wamid.order.1", Delivered, 240_000),
            receipt_of("wamid.order.2", Failed, 240_000),
        ],
    )
    .await;
    use ReceiptAnswer::{Applied, Duplicate, Stale};
    assert_eq!(answers, [Applied, Stale, Applied, Applied]);
    // The same again, in another order: nothing moves.
    let again = receive_at(
        store,
        &[
            receipt_of("wamid.order.2", Failed, 240_000),
            receipt_of("wamid.order.1", Delivered, 240_000),
            receipt_of("wamid.order.0", Read, 250_000),
            receipt_of("wamid.order.1", Read, 260_000),
        ],
    )
    .await;
    assert_eq!(again, [Duplicate, Duplicate, Duplicate, Applied]);
    let stats = store.campaign_stats(campaign.campaign_id).await.unwrap();
    assert_eq!(
        (
            stats.delivery_accepted,
            stats.delivery_delivered,
            stats.delivery_read,
            stats.delivery_failed
        ),
        (0, 0, 2, 1)
    );
    let stored = all_follow_ups(store, &tenant_id).await;
    let delivery_of = |follow_up: &FollowUp| {
        stored
            .iter()
            .find(|f| f.followup_id == follow_up.followup_id)
            .and_then(|f| f.delivery.clone())
            .expect("a delivery")
    };
    let first = delivery_of(&follow_ups[0]);
    assert_eq!(first.status, DeliveryStatus::Read);
    assert_eq!(first.receipts.read_at, Some(at(250_000)));
    assert_eq!(first.receipts.delivered_at, Some(at(250_000)));
    let failed = delivery_of(&follow_ups[2]);
    assert_eq!(failed.status, DeliveryStatus::Failed);
    assert_eq!(failed.receipts.failed_at, Some(at(240_000)));
    // One event per applied receipt: read alone for the first, delivered and read for
    // the second, failed for the third.
    let names = async |follow_up: &FollowUp| -> Vec<String> {
        events_named(store, follow_up, "crm.followup.delivery.")
            .await
            .into_iter()
            .map(|event| event.name)
            .collect()
    };
    assert_eq!(
        names(&follow_ups[0]).await,
        [
            "crm.followup.delivery.accepted",
            "crm.followup.delivery.read"
        ]
    );
    assert_eq!(
        names(&follow_ups[1]).await,
        [
            "crm.followup.delivery.accepted",
            "crm.followup.delivery.delivered",
            "crm.followup.delivery.read"
        ]
    );
    assert_eq!(
        names(&follow_ups[2]).await,
        [
            "crm.followup.delivery.accepted",
            "crm.followup.delivery.failed"
        ]
    );
    assert!(
        claim_at(store, 900_000, 10).await.is_empty(),
        "nothing resent"
    );
}

pub async fn a_receipt_for_an_unknown_or_unaccepted_message_is_not_found_and_writes_nothing(
    store: &dyn Store,
) {
    let tenant_id = tenant("tenant_a");
    let (_, follow_ups) = accepted_in_running_campaign(store, &tenant_id, "known", 1).await;
    // A failed ack that carried a provider id: the provider never accepted the message.
    let (refused, _) = answered(store, "131026", false).await;
    let refused_id = refused
        .delivery
        .and_then(|d| d.provider_message_id)
        .unwrap_or_else(|| "wamid.conformance".into());
    let mut other_tenant = receipt_of("wamid.known.0", ReceiptStatus::Delivered, 240_000);
    other_tenant.tenant_id = Some(tenant("tenant_b"));
    let before = all_follow_ups(store, &tenant_id).await;
    let answers = receive_at(
        store,
        &[
            receipt_of("wamid.unknown", ReceiptStatus::Delivered, 240_000),
            receipt_of(&refused_id, ReceiptStatus::Delivered, 240_000),
            other_tenant,
        ],
    )
    .await;
    assert_eq!(answers, [ReceiptAnswer::NotFound; 3]);
    assert_eq!(all_follow_ups(store, &tenant_id).await, before);
    assert_eq!(
        events_named(store, &follow_ups[0], "crm.followup.delivery.")
            .await
            .len(),
        1,
        "the acceptance alone"
    );
}

pub async fn a_provider_id_recorded_twice_matches_only_where_the_tenant_tells_them_apart(
    store: &dyn Store,
) {
    let (a, b) = (tenant("tenant_a"), tenant("tenant_b"));
    let (_, ours) = accepted_in_running_campaign(store, &a, "same", 1).await;
    let (_, theirs) = accepted_in_running_campaign(store, &b, "same", 1).await;
    let ambiguous = receipt_of("wamid.same.0", ReceiptStatus::Delivered, 240_000);
    assert_eq!(
        receive_at(store, std::slice::from_ref(&ambiguous)).await,
        [ReceiptAnswer::NotFound]
    );
    let scoped = Receipt {
        tenant_id: Some(a.clone()),
        ..ambiguous
    };
    assert_eq!(receive_at(store, &[scoped]).await, [ReceiptAnswer::Applied]);
    let status = |tenant: &TenantId, follow_up: &FollowUp| {
        let (tenant, id) = (tenant.clone(), follow_up.followup_id);
        async move {
            store
                .follow_up(&tenant, id)
                .await
                .unwrap()
                .and_then(|f| f.delivery)
                .map(|d| d.status)
        }
    };
    assert_eq!(status(&a, &ours[0]).await, Some(DeliveryStatus::Delivered));
    assert_eq!(status(&b, &theirs[0]).await, Some(DeliveryStatus::Accepted));
}

pub async fn a_failed_receipt_with_a_pausing_code_pauses_the_campaign_once(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let (campaign, follow_ups) = accepted_in_running_campaign(store, &tenant_id, "spam", 2).await;
    let spam = |wamid: &str| Receipt {
        error_code: Some("131048".into()),
        ..receipt_of(wamid, ReceiptStatus::Failed, 240_000)
    };
    let answers = receive_at(store, &[spam("wamid.spam.0"), spam("wamid.spam.1")]).await;
    assert_eq!(answers, [ReceiptAnswer::Applied; 2]);
    let paused = store
        .campaign(&tenant_id, campaign.campaign_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(paused.state, CampaignState::Paused);
    assert_eq!(paused.revision, campaign.revision + 1);
    let changes = state_changes(store, &follow_ups).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].payload["reason_code"], "auto_pause");
    let stats = store.campaign_stats(campaign.campaign_id).await.unwrap();
    assert_eq!((stats.delivery_accepted, stats.delivery_failed), (0, 2));
}

fn auto_pause(window: u32, ratio: f64) -> crm_domain::policy::AutoPause {
    use crm_domain::policy::{AutoPause, FailureRatio};
    AutoPause::new(window, FailureRatio::new(ratio).unwrap()).unwrap()
}

/// Puts a policy on `tenant_id` that pauses past `ratio` of the last `window` deliveries.
async fn pause_past(store: &dyn Store, tenant_id: &TenantId, window: u32, ratio: f64) {
    let policy = SendingPolicy {
        auto_pause: Some(auto_pause(window, ratio)),
        ..SendingPolicy::default()
    };
    store.put_sending_policy(tenant_id, &policy).await.unwrap();
}

async fn campaign_now(store: &dyn Store, campaign: &Campaign) -> Campaign {
    store
        .campaign(&campaign.tenant_id, campaign.campaign_id)
        .await
        .unwrap()
        .unwrap()
}

pub async fn the_failure_ratio_of_acks_and_receipts_pauses_the_campaign_once(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    // More than 20 % of the last 10 finished deliveries: a third failure among 10.
    pause_past(store, &tenant_id, 10, 0.2).await;
    let (campaign, follow_ups) = accepted_in_running_campaign(store, &tenant_id, "ratio", 12).await;
    let failed = |n: usize| receipt_of(&format!("wamid.ratio.{n}"), ReceiptStatus::Failed, 240_000);
    // Two messages accepted and then failed by their receipts: 2 of the last 10.
    assert_eq!(
        receive_at(store, &[failed(0), failed(1)]).await,
        [ReceiptAnswer::Applied; 2]
    );
    assert_eq!(campaign_now(store, &campaign).await, campaign);
    // Delivered and read receipts are no failures.
    let delivered = receipt_of("wamid.ratio.3", ReceiptStatus::Delivered, 240_000);
    receive_at(store, &[delivered]).await;
    assert_eq!(
        campaign_now(store, &campaign).await.state,
        CampaignState::Running
    );
    // The third failure (repeated in its batch), then a fourth: one pause.
    assert_eq!(
        receive_at(store, &[failed(2), failed(2)]).await,
        [ReceiptAnswer::Applied, ReceiptAnswer::Duplicate]
    );
    receive_at(store, &[failed(4)]).await;
    let paused = campaign_now(store, &campaign).await;
    assert_eq!(paused.state, CampaignState::Paused);
    assert_eq!(paused.revision, campaign.revision + 1);
    let note = &paused.metadata["auto_pause"];
    assert_eq!(note["cause"], "failure_ratio");
    assert_eq!(
        (note["failures"].as_u64(), note["window"].as_u64()),
        (Some(3), Some(10))
    );
    assert_eq!(note["max_failure_ratio"], 0.2);
    assert_eq!(note["followup_id"], follow_ups[2].followup_id.to_string());
    let changes = state_changes(store, &follow_ups).await;
    assert_eq!(changes.len(), 1, "one pause, one event: {changes:?}");
    assert_eq!(changes[0].payload["reason_code"], "auto_pause");
    // A person resumes it; the window still holds 4 failures of 10, so the next failure
    // pauses it again, this time by an ack.
    let resumed = move_campaign(store, &paused, CampaignState::Running, at(400_000)).await;
    schedule(store, &tenant_id, Some(campaign.campaign_id), at(0)).await;
    store
        .drain(at(401_000), 10, &SendAll::default())
        .await
        .unwrap();
    let ours = claim_at(store, 602_000, 10).await;
    assert_eq!(ours.len(), 1);
    let acks = [failed_with(&ours[0], "PROVIDER_DOWN", false)];
    let statuses = store
        .ack(&acks, &AckWith { now: at(603_000) })
        .await
        .unwrap();
    assert_eq!(statuses, [AckStatus::Acked]);
    let again = campaign_now(store, &campaign).await;
    assert_eq!(again.state, CampaignState::Paused);
    assert_eq!(again.revision, resumed.revision + 1);
    assert_eq!(again.metadata["auto_pause"]["failures"], 5);
}

pub async fn failures_that_will_be_retried_do_not_count_toward_the_failure_ratio(
    store: &dyn Store,
) {
    let tenant_id = tenant("tenant_a");
    // At 0 the first finished failure pauses.
    pause_past(store, &tenant_id, 10, 0.0).await;
    let (campaign, _, leased) = leased_in_running_campaign(store, &tenant_id, 2).await;
    let acker = AckWith { now: at(203_000) };
    let retried = [failed_with(&leased[0], "PROVIDER_DOWN", true)];
    assert_eq!(
        store.ack(&retried, &acker).await.unwrap(),
        [AckStatus::RetryScheduled]
    );
    assert_eq!(campaign_now(store, &campaign).await, campaign);
    let final_failure = [failed_with(&leased[1], "PROVIDER_DOWN", false)];
    assert_eq!(
        store.ack(&final_failure, &acker).await.unwrap(),
        [AckStatus::Acked]
    );
    assert_eq!(
        campaign_now(store, &campaign).await.state,
        CampaignState::Paused
    );
}

pub async fn opt_outs_are_added_once_listed_by_number_and_removed(store: &dyn Store) {
    let tenant_id = tenant("tenant_a");
    let opt_out = |phone: &str, at_millis| OptOut {
        tenant_id: tenant_id.clone(),
        phone_e164: phone.to_owned(),
        reason: None,
        created_at: at(at_millis),
    };
    let first = opting_out(opt_out("+5511999990002", 0));
    assert_eq!(
        store.add_opt_out(&first).await.unwrap(),
        Created::Created(first.opt_out.clone())
    );
    let again = opting_out(opt_out("+5511999990002", 5));
    assert_eq!(
        store.add_opt_out(&again).await.unwrap(),
        Created::Existing(first.opt_out.clone()),
        "the first one is kept"
    );
    assert_eq!(
        events_of(store, first.event.correlation_id).await,
        std::slice::from_ref(&first.event)
    );
    assert_eq!(
        events_of(store, again.event.correlation_id).await,
        [],
        "a repeat that changes nothing stores nothing"
    );
    store
        .add_opt_out(&opting_out(opt_out("+5511999990001", 1)))
        .await
        .unwrap();
    store
        .add_opt_out(&opting_out(opt_out("+5511999990003", 2)))
        .await
        .unwrap();
    let elsewhere = OptOut {
        tenant_id: tenant("tenant_b"),
        ..opt_out("+5511999990009", 3)
    };
    store.add_opt_out(&opting_out(elsewhere)).await.unwrap();
    let query = |after: Option<&str>| OptOutQuery {
        tenant_id: tenant_id.clone(),
        after: after.map(str::to_owned),
        limit: 2,
    };
    let page = store.opt_outs(&query(None)).await.unwrap();
    let phones: Vec<_> = page.items.iter().map(|o| o.phone_e164.as_str()).collect();
    assert_eq!(phones, ["+5511999990001", "+5511999990002"]);
    let rest = store.opt_outs(&query(page.next.as_deref())).await.unwrap();
    let phones: Vec<_> = rest.items.iter().map(|o| o.phone_e164.as_str()).collect();
    assert_eq!(phones, ["+5511999990003"]);
    assert_eq!(rest.next, None);
    let (removal, repeat) = (
        CorrelationId::new(Uuid::new_v4()),
        CorrelationId::new(Uuid::new_v4()),
    );
    assert!(
        store
            .remove_opt_out(
                &tenant_id,
                "+5511999990002",
                &opt_out_removal(&tenant_id, "+5511999990002", removal)
            )
            .await
            .unwrap()
    );
    assert!(
        !store
            .remove_opt_out(
                &tenant_id,
                "+5511999990002",
                &opt_out_removal(&tenant_id, "+5511999990002", repeat)
            )
            .await
            .unwrap()
    );
    let removed = events_of(store, removal).await;
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].name, "crm.optout.removed");
    assert_eq!(
        events_of(store, repeat).await,
        [],
        "nothing removed, nothing stored"
    );
    assert_eq!(store.opt_outs(&query(None)).await.unwrap().items.len(), 2);
}
