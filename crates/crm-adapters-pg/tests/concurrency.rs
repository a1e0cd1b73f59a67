//! What PostgreSQL must guarantee when many requests, drains and replicas race.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crm_adapters_pg::testing::{database_url, drop_schema, fresh_store};
use crm_adapters_pg::{PgOptions, PgStore};
use crm_domain::campaign::CampaignState;
use crm_domain::follow_up::FollowUpStatus;
use crm_ports::conformance::{SendAll, at, create_campaign, new_campaign, new_follow_up, tenant};
use crm_ports::{CampaignStore, Created, FollowUpStore, Store, StoreError};
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
                "SELECT count(*), count(DISTINCT idempotency_key) FROM \"{schema}\".crm_outbound_queue"
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
