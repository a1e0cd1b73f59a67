//! What PostgreSQL must guarantee when many requests, drains and replicas race.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crm_adapters_pg::testing::{database_url, drop_schema, fresh_store};
use crm_adapters_pg::{PgOptions, PgStore};
use crm_domain::campaign::CampaignState;
use crm_domain::follow_up::FollowUpStatus;
use crm_ports::OutboundQueue;
use crm_ports::conformance::{
    AckWith, LeaseAt, SENT_AT, SendAll, accepted, at, create_campaign, envelope, feed_from,
    new_campaign, new_follow_up, tenant,
};
use crm_ports::{CampaignStore, Created, FollowUpStore, Scheduled, Store, StoreError};
use tokio::task::JoinHandle;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_identical_creates_make_exactly_one_campaign() {
    let Some(url) = database_url("twenty_concurrent_identical_creates_make_exactly_one_campaign")
    else {
        return;
    };
    let (store, options) = fresh_store(&url, "race_create").await;
    let store = Arc::new(store);
    let (campaign, events) = new_campaign(&tenant("tenant_a"), Some("same-key"), at(0));
    let outcomes = join_all((0..20).map(|_| {
        let (store, campaign, events) = (store.clone(), campaign.clone(), events.clone());
        tokio::spawn(async move { store.create_campaign(&campaign, &events).await })
    }))
    .await;
    let mut created = 0;
    for outcome in outcomes {
        match outcome.unwrap() {
            Ok(Created::Created(_)) => created += 1,
            Ok(Created::Existing(existing)) => assert_eq!(existing, campaign),
            Err(error) => panic!("a concurrent identical create failed: {error}"),
        }
    }
    assert_eq!(created, 1);
    drop_schema(&url, options.schema()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_decided_on_one_revision_let_exactly_one_win() {
    let Some(url) = database_url("concurrent_changes_decided_on_one_revision_let_exactly_one_win")
    else {
        return;
    };
    let (store, options) = fresh_store(&url, "race_update").await;
    let store = Arc::new(store);
    let tenant_id = tenant("tenant_a");
    let campaign = create_campaign(&*store, &tenant_id, at(0)).await;
    let targets = [
        CampaignState::Running,
        CampaignState::Canceled,
        CampaignState::Paused,
        CampaignState::Failed,
    ];
    let outcomes = join_all(targets.into_iter().map(|state| {
        let store = store.clone();
        let mut changed = campaign.clone();
        changed.state = state;
        changed.revision += 1;
        tokio::spawn(async move { (state, store.update_campaign(&changed, &[]).await) })
    }))
    .await;
    let mut winners = Vec::new();
    for outcome in outcomes {
        match outcome.unwrap() {
            (state, Ok(())) => winners.push(state),
            (_, Err(StoreError::Stale { .. })) => {}
            (_, Err(error)) => panic!("unexpected error: {error}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let stored = store
        .campaign(&tenant_id, campaign.campaign_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, winners[0]);
    assert_eq!(stored.revision, campaign.revision + 1);
    drop_schema(&url, options.schema()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_drainers_with_their_own_pools_dispatch_two_thousand_follow_ups_exactly_once() {
    let Some(url) = database_url("four_drainers_dispatch_exactly_once") else {
        return;
    };
    let (seed, options) = fresh_store(&url, "race_drain").await;
    let tenant_id = tenant("tenant_a");
    let writers = join_all((0..8).map(|writer| {
        let (seed, tenant_id) = (seed.clone(), tenant_id.clone());
        tokio::spawn(async move {
            for index in 0..250 {
                let (follow_up, events) =
                    new_follow_up(&tenant_id, None, None, at(writer * 1000 + index), at(0));
                seed.create_follow_up(&follow_up, &events).await.unwrap();
            }
        })
    }))
    .await;
    writers.into_iter().for_each(|joined| joined.unwrap());
    let held = crm_domain::follow_up::holding_states();
    assert_eq!(seed.count_due(at(100_000), &held).await.unwrap(), 2000);

    // Each drainer has a pool of its own, as separate replicas would.
    let drainers = join_all((0..4).map(|_| {
        let store = PgStore::new(&options).unwrap();
        tokio::spawn(async move {
            let dispatcher = SendAll::default();
            let mut dispatched = Vec::new();
            loop {
                let outcomes = store.drain(at(100_000), 25, &dispatcher).await.unwrap();
                if outcomes.is_empty() {
                    return dispatched;
                }
                dispatched.extend(outcomes.into_iter().map(|o| o.followup_id));
            }
        })
    }))
    .await;
    let mut seen = HashSet::new();
    let mut total = 0;
    for drainer in drainers {
        for id in drainer.unwrap() {
            total += 1;
            assert!(seen.insert(id), "follow-up {id} was dispatched twice");
        }
    }
    assert_eq!(total, 2000);

    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let schema = options.schema();
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT idempotency_key) FROM \"{schema}\".crm_outbound_items"
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2000, 2000));
    let row = client
        .query_one(
            &format!("SELECT count(*) FILTER (WHERE status = $1), count(*) FROM \"{schema}\".crm_followups"),
            &[&FollowUpStatus::Sent.as_str()],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (2000, 2000));
    drop_schema(&url, schema).await;
}

/// Creates, drains, cancels and acks of one campaign's follow-ups, all at once. Each
/// takes the event lock and moves the campaign's counts; were two of them to take those
/// in different orders, PostgreSQL would abort one as a deadlock, an error here. The
/// counts must then match the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_drains_cancels_and_acks_of_one_campaign_at_once_neither_deadlock_nor_miscount() {
    let Some(url) = database_url("creates_drains_cancels_and_acks_never_deadlock") else {
        return;
    };
    let (store, options) = fresh_store(&url, "race_locks").await;
    let store = Arc::new(store);
    let tenant_id = tenant("tenant_a");
    let campaign = create_campaign(&*store, &tenant_id, at(0))
        .await
        .campaign_id;
    let created: Arc<Mutex<Vec<crm_domain::follow_up::FollowUp>>> = Arc::default();
    let creating = Arc::new(AtomicBool::new(true));
    let draining = Arc::new(AtomicBool::new(true));
    type Task = JoinHandle<Result<u64, StoreError>>;

    let creators: Vec<Task> = (0..4)
        .map(|writer| {
            let (store, tenant_id, created) = (store.clone(), tenant_id.clone(), created.clone());
            tokio::spawn(async move {
                for index in 0..150 {
                    let (follow_up, events) = new_follow_up(
                        &tenant_id,
                        Some(campaign),
                        None,
                        at(writer * 1000 + index),
                        at(0),
                    );
                    store.create_follow_up(&follow_up, &events).await?;
                    created.lock().unwrap().push(follow_up);
                }
                Ok(150)
            })
        })
        .collect();
    let drainers: Vec<Task> = (0..2)
        .map(|_| {
            let (store, creating) = (store.clone(), creating.clone());
            tokio::spawn(async move {
                let mut drained = 0;
                loop {
                    let still_creating = creating.load(Ordering::SeqCst);
                    let outcomes = store.drain(at(SENT_AT), 20, &SendAll::default()).await?;
                    drained += outcomes.len() as u64;
                    if outcomes.is_empty() && !still_creating {
                        return Ok(drained);
                    }
                }
            })
        })
        .collect();
    let canceler: Task = {
        let (store, tenant_id) = (store.clone(), tenant_id.clone());
        let (created, creating) = (created.clone(), creating.clone());
        tokio::spawn(async move {
            let mut canceled = 0;
            loop {
                let still_creating = creating.load(Ordering::SeqCst);
                let next = created.lock().unwrap().pop();
                let Some(follow_up) = next else {
                    if !still_creating {
                        return Ok(canceled);
                    }
                    tokio::task::yield_now().await;
                    continue;
                };
                // Every third one, whether a drain has taken it yet or not.
                if follow_up.followup_id.as_uuid().as_u128() % 3 != 0 {
                    continue;
                }
                let Some(read) = store.follow_up(&tenant_id, follow_up.followup_id).await? else {
                    continue;
                };
                if let Ok(Some((changed, event))) = read.cancel(at(SENT_AT)) {
                    let event = envelope(&event, &tenant_id, read.correlation_id, at(SENT_AT));
                    if store
                        .save_follow_up(&changed, FollowUpStatus::Pending, &[event])
                        .await?
                    {
                        canceled += 1;
                    }
                }
            }
        })
    };
    let acker: Task = {
        let (store, draining) = (store.clone(), draining.clone());
        tokio::spawn(async move {
            let mut acked = 0;
            loop {
                let still_draining = draining.load(Ordering::SeqCst);
                let now = at(SENT_AT);
                let leased = store.claim(now, 20, &LeaseAt { now }).await?;
                if leased.is_empty() {
                    if !still_draining {
                        return Ok(acked);
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
                let acks: Vec<_> = leased.iter().map(accepted).collect();
                store.ack(&acks, &AckWith { now }).await?;
                acked += acks.len() as u64;
            }
        })
    };

    let results = |tasks: Vec<Result<Result<u64, StoreError>, tokio::task::JoinError>>| {
        tasks
            .into_iter()
            .map(|joined| match joined.expect("the task ran") {
                Ok(count) => count,
                Err(error) => panic!("a writer failed while others ran: {error}"),
            })
            .sum::<u64>()
    };
    let created_count = results(join_all(creators).await);
    creating.store(false, Ordering::SeqCst);
    let drained = results(join_all(drainers).await);
    draining.store(false, Ordering::SeqCst);
    let canceled = results(join_all([canceler]).await);
    let acked = results(join_all([acker]).await);
    assert_eq!(created_count, 600);
    assert_eq!(
        drained + canceled,
        600,
        "every follow-up was sent or canceled"
    );
    assert_eq!(acked, drained, "every item sent was acknowledged once");
    assert!(canceled > 0, "the cancels raced nothing");

    let stats = store.campaign_stats(campaign).await.unwrap();
    assert_eq!(
        (
            stats.pending,
            stats.sent,
            stats.failed,
            stats.delivery_accepted
        ),
        (0, drained as i64, canceled as i64, acked as i64),
        "the campaign's counts are not its follow-ups'"
    );
    drop_schema(&url, options.schema()).await;
}

#[tokio::test]
async fn a_database_that_cannot_be_reached_is_unavailable_quickly() {
    // A port nothing listens on: reserve one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = PgOptions::new(
        format!("postgres://postgres@127.0.0.1:{port}/test"),
        "public",
    )
    .unwrap();
    options.timeout = Duration::from_secs(1);
    let store = PgStore::new(&options).unwrap();
    let started = Instant::now();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
    let (campaign, events) = new_campaign(&tenant("tenant_a"), None, at(0));
    assert!(matches!(
        store.create_campaign(&campaign, &events).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Awaits spawned tasks; they already run concurrently, so awaiting in order is fine.
async fn join_all<T>(
    handles: impl IntoIterator<Item = JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await);
    }
    results
}

/// Bulk creates keep two batches in the database at once; callers repeating each other's
/// ids and keys at the same moment must still see each follow-up created once, with one
/// event, and no item may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulks_repeating_each_others_ids_at_once_create_each_follow_up_once_with_one_event() {
    let Some(url) = database_url(
        "bulks_repeating_each_others_ids_at_once_create_each_follow_up_once_with_one_event",
    ) else {
        return;
    };
    let (store, options) = fresh_store(&url, "race_bulks").await;
    let store = Arc::new(store);
    let tenant_id = tenant("tenant_a");
    // Four bulks of 1,000, half with external keys; every caller sends all four, each
    // starting from another one, so that the batches in flight hold each other's repeats.
    let bulks: Vec<Vec<Scheduled>> = (0..4)
        .map(|bulk| {
            (0..1_000)
                .map(|n| {
                    let key = format!("bulk-{bulk}-{n}");
                    let key = (n % 2 == 0).then_some(key.as_str());
                    let (follow_up, events) = new_follow_up(&tenant_id, None, key, at(0), at(0));
                    Scheduled { follow_up, events }
                })
                .collect()
        })
        .collect();
    let bulks = Arc::new(bulks);
    let callers = (0..6).map(|caller| {
        let (store, bulks) = (store.clone(), bulks.clone());
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for turn in 0..bulks.len() {
                let bulk = &bulks[(caller + turn) % bulks.len()];
                let results = store.create_follow_ups(bulk).await;
                let results = results.unwrap_or_else(|e| panic!("caller {caller}: {e}"));
                answers.extend(results);
            }
            answers
        })
    });
    let mut created = HashSet::new();
    let mut answered = 0;
    for answers in join_all(callers).await {
        for answer in answers.unwrap() {
            answered += 1;
            match answer {
                Ok(Created::Created(follow_up)) => {
                    assert!(created.insert(follow_up.followup_id), "created twice");
                }
                Ok(Created::Existing(_)) => {}
                Err(error) => panic!("an item failed: {error}"),
            }
        }
    }
    assert_eq!(answered, 6 * 4 * 1_000);
    let all: HashSet<_> = bulks
        .iter()
        .flatten()
        .map(|item| item.follow_up.followup_id)
        .collect();
    assert_eq!(created, all, "every follow-up created exactly once");
    let events = feed_from(&*store, None).await;
    let correlations: HashSet<_> = events.iter().map(|e| e.correlation_id).collect();
    assert_eq!(events.len(), all.len(), "one event per follow-up");
    assert_eq!(correlations.len(), all.len());
    drop_schema(&url, options.schema()).await;
}
