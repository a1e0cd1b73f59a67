//! The behaviour every store adapter must show, as one suite shared by all adapters.
//!
//! Each `pub async fn` checks one behaviour against a fresh, empty store. An adapter
//! runs the whole suite with `run_all`, passing a function that opens a new store.
//! Backend quirks become parameters here, never copies of the suite.

use std::future::Future;
use std::sync::Mutex;

use crm_domain::campaign::{Campaign, CampaignState, NewCampaign};
use crm_domain::event::{DomainEvent, EventContext, EventEnvelope};
use crm_domain::follow_up::{FailureReason, FollowUp, FollowUpStatus, NewFollowUp};
use crm_domain::ids::{CampaignId, CorrelationId, EventId, FollowUpId, QueueItemId, TenantId};
use crm_domain::outbound::OutboundItem;
use crm_domain::timestamp::Timestamp;
use serde_json::Map;
use uuid::Uuid;

use crate::events::TraceQuery;
use crate::store::{
    CampaignQuery, Created, DispatchDecision, Dispatcher, DrainStatus, DueFollowUp, FollowUpQuery,
    Store, StoreError,
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
    follow_ups_list_per_tenant_and_filter_by_status_and_campaign,
    follow_ups_page_through_many_records,
    drain_claims_due_follow_ups_oldest_schedule_first,
    drain_commits_the_outbound_item_status_and_event_together,
    drained_follow_ups_are_not_due_again,
    a_paused_campaign_holds_its_follow_ups_without_blocking_others,
    failed_and_skipped_decisions_are_stored_as_decided,
    events_read_back_in_commit_order_per_correlation,
    a_trace_pages_in_commit_order_and_can_keep_to_one_tenant,
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

/// A fixed instant plus `millis`, so tests read as offsets.
pub fn at(millis: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_735_722_000_000 + millis).expect("a valid instant")
}

pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("a tenant name")
}

fn envelope(
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
    match store.create_follow_up(&follow_up, &events).await {
        Ok(Created::Created(stored)) => stored,
        other => panic!("create_follow_up: {other:?}"),
    }
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

/// Sends every follow-up it is offered and remembers the order it saw them in.
#[derive(Debug)]
pub struct SendAll {
    seen: Mutex<Vec<DueFollowUp>>,
    held: Vec<CampaignState>,
}

impl Default for SendAll {
    fn default() -> Self {
        Self {
            seen: Mutex::default(),
            held: crm_domain::follow_up::holding_states(),
        }
    }
}

impl Dispatcher for SendAll {
    fn held_states(&self) -> &[CampaignState] {
        &self.held
    }

    fn decide(&self, due: &DueFollowUp) -> DispatchDecision {
        self.seen.lock().unwrap().push(due.clone());
        let now = at(100_000);
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
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let query = FollowUpQuery {
            tenant_id: tenant_id.clone(),
            status: None,
            campaign_id: None,
            after,
            limit: 4,
        };
        let page = store.list_follow_ups(&query).await.unwrap();
        seen.extend(page.items.iter().map(|f| (f.created_at, f.followup_id)));
        match page.next_cursor {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
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
    assert_eq!(store.count_due(at(1_000)).await.unwrap(), 3);
    assert_eq!(
        store
            .drain(at(1_000), 10, &SendAll::default())
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(store.count_due(at(1_000)).await.unwrap(), 0);
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
    assert_eq!(store.count_due(at(1_000)).await.unwrap(), 1);
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
    let seen = dispatcher.seen.lock().unwrap();
    assert!(
        seen.iter()
            .all(|due| due.campaign_state == Some(CampaignState::Running))
    );
}

pub async fn failed_and_skipped_decisions_are_stored_as_decided(store: &dyn Store) {
    struct FailFirstSkipRest(Mutex<bool>);
    impl Dispatcher for FailFirstSkipRest {
        fn held_states(&self) -> &[CampaignState] {
            &[CampaignState::Paused]
        }

        fn decide(&self, due: &DueFollowUp) -> DispatchDecision {
            let mut failed_one = self.0.lock().unwrap();
            if *failed_one {
                return DispatchDecision::Skip {
                    reason: "not now".into(),
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
    assert_eq!(outcomes[1].reason.as_deref(), Some("not now"));
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
    assert_eq!(store.count_due(at(1_000)).await.unwrap(), 1);
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
