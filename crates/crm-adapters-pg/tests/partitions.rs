//! Day partitions of PostgreSQL (migration V9): retention drops whole days and the feed
//! goes on across the boundary; a missing day is made on demand; a day retention dropped
//! is never reopened; finished items leave the queue; an unpartitioned database of an
//! earlier release is migrated with its data.

use crm_adapters_pg::testing::{connect, database_url, drop_schema, fresh_schema, fresh_store};
use crm_adapters_pg::{PgOptions, PgStore, migrate, migrate_through};
use crm_domain::delivery::AckStatus;
use crm_domain::event::EventEnvelope;
use crm_domain::limits::DAY_MILLIS;
use crm_domain::page::EventCursor;
use crm_domain::timestamp::Timestamp;
use crm_ports::conformance::{
    AckWith, SendAll, accepted, at, claim_at, create_campaign, feed_from, new_campaign, schedule,
    tenant,
};
use crm_ports::{
    CampaignStore, EventEmitter, FeedQuery, FollowUpStore, OutboundQueue, Retention, Store,
    StoreError,
};

/// `millis` into day `day` (UTC) of the conformance clock, whose day 0 is 2025-01-01.
fn on_day(day: i64, millis: i64) -> Timestamp {
    // `at(0)` is 09:00 on day 0.
    at(day * DAY_MILLIS - 9 * 3_600_000 + millis)
}

/// The feed from its start, each event with the cursor that follows it.
async fn feed_with_cursors(store: &PgStore) -> Vec<(EventCursor, EventEnvelope)> {
    let mut events = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .read_feed(&FeedQuery {
                after,
                limit: 1,
                tenant_id: None,
                name_prefix: None,
            })
            .await
            .expect("the feed reads");
        let Some(event) = page.items.into_iter().next() else {
            return events;
        };
        events.push((page.next, event));
        after = Some(page.next);
    }
}

/// The day partitions of `table`, oldest first.
async fn days_of(options: &PgOptions, table: &str) -> Vec<String> {
    connect(options)
        .await
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = to_regclass($1) ORDER BY 1",
            &[&table],
        )
        .await
        .expect("partitions listed")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// Retention passes at `before` until one finds nothing more (a pass drops a few days at
/// most); what they removed, together.
async fn expire_before(store: &PgStore, before: Timestamp) -> crm_ports::Expired {
    let mut total = crm_ports::Expired::default();
    // The test schemas hold ten days of 2025 and three of today: four passes drop them all.
    for _ in 0..4 {
        let expired = store
            .expire(
                Retention {
                    records_before: before,
                    ledger_before: at(0),
                },
                1_000,
            )
            .await
            .expect("retention runs");
        total.events += expired.events;
        total.outbound_items += expired.outbound_items;
        total.ledger_entries += expired.ledger_entries;
    }
    total
}

/// Where the feed starts, as a read after `cursor` is told; a read that is not told its
/// cursor expired fails the test.
async fn expired_from(store: &PgStore, cursor: EventCursor) -> EventCursor {
    match store
        .read_feed(&FeedQuery {
            after: Some(cursor),
            limit: 10,
            tenant_id: None,
            name_prefix: None,
        })
        .await
    {
        Err(StoreError::CursorExpired { oldest }) => oldest,
        other => panic!("a cursor before a dropped event must be expired: {other:?}"),
    }
}

/// Finishes the oldest `count` items at `at` as the release before partitions did: in
/// place, in the queue.
async fn finish_in_place(client: &tokio_postgres::Client, at: Timestamp, count: i64) {
    client
        .execute(
            "UPDATE crm_outbound_queue SET status = 'done', available_at = NULL, \
             finished_at = $1 \
             WHERE seq IN (SELECT seq FROM crm_outbound_queue ORDER BY seq LIMIT $2)",
            &[&at.as_datetime(), &count],
        )
        .await
        .expect("items finished in place");
}

fn names(events: &[EventEnvelope]) -> Vec<String> {
    events
        .iter()
        .map(|event| event.payload["campaign_id"].to_string())
        .collect()
}

/// The one number `sql` (a `count(*)`) answers.
async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn retention_drops_whole_days_and_the_feed_resumes_across_the_boundary() {
    let Some(url) = database_url("retention_drops_whole_days") else {
        return;
    };
    let (store, options) = fresh_store(&url, "partition_retention").await;
    let tenant_id = tenant("tenant_a");
    for (day, millis) in [(0, 36_000_000), (1, DAY_MILLIS - 1), (2, 0), (3, 1)] {
        create_campaign(&store, &tenant_id, on_day(day, millis)).await;
    }
    let before = feed_with_cursors(&store).await;
    assert_eq!(before.len(), 4);

    // Days 0 and 1 end by the start of day 2: both go, whole; day 2 starts at the cutoff.
    let expired = expire_before(&store, on_day(2, 0)).await;
    assert_eq!(expired.events, 2, "{expired:?}");
    let days = days_of(&options, "crm_events").await;
    assert!(
        !days.contains(&"crm_events_p20250101".to_owned())
            && !days.contains(&"crm_events_p20250102".to_owned())
            && days.contains(&"crm_events_p20250103".to_owned()),
        "{days:?}"
    );

    // A consumer that read through day 1 goes on with day 2: nothing skipped, nothing twice.
    let (last_of_day_1, _) = before[1];
    let rest: Vec<EventEnvelope> = before[2..].iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(
        names(&feed_from(&store, Some(last_of_day_1)).await),
        names(&rest)
    );
    assert_eq!(names(&feed_from(&store, None).await), names(&rest));
    // One that stopped inside day 0 is told where the retained feed starts.
    let (inside_day_0, _) = before[0];
    let oldest = expired_from(&store, inside_day_0).await;
    assert_eq!(oldest, last_of_day_1);
    // What is left is the live rows of the days kept.
    let left = count(&connect(&options).await, "SELECT count(*) FROM crm_events").await;
    assert_eq!(left, 2);
    drop_schema(&url, options.schema()).await;
}

#[tokio::test]
async fn an_event_committed_after_a_later_day_s_event_expires_with_its_own_day_never_silently() {
    let Some(url) = database_url("an_event_committed_after") else {
        return;
    };
    let (store, options) = fresh_store(&url, "partition_order").await;
    let tenant_id = tenant("tenant_a");
    // Two replicas' clocks disagree around midnight: the event numbered first was emitted
    // just after it, the one numbered second just before it.
    create_campaign(&store, &tenant_id, on_day(5, 1)).await;
    create_campaign(&store, &tenant_id, on_day(4, DAY_MILLIS - 1)).await;
    let before = feed_with_cursors(&store).await;
    assert_eq!(before.len(), 2, "the feed is in number order, across days");

    expire_before(&store, on_day(5, 0)).await;
    // The day of the second event went, so the feed starts after it; the first event is
    // past the start, and a consumer before it is told so, not skipped past it.
    assert!(feed_from(&store, None).await.is_empty());
    let oldest = expired_from(&store, EventCursor(0)).await;
    assert_eq!(oldest, before[1].0);
    drop_schema(&url, options.schema()).await;
}

#[tokio::test]
async fn a_write_for_a_day_without_partition_is_refused_once_and_the_day_is_made() {
    let Some(url) = database_url("a_write_for_a_day_without") else {
        return;
    };
    let (store, options) = fresh_store(&url, "partition_missing").await;
    let tenant_id = tenant("tenant_a");
    let (campaign, events) = new_campaign(&tenant_id, None, on_day(40, 0));
    match store.create_campaign(&campaign, &events).await {
        Err(StoreError::Unavailable(error)) => {
            assert!(error.to_string().contains("made now"), "{error}");
        }
        other => panic!("the first write finds no partition: {other:?}"),
    }
    assert!(
        store
            .campaign(&tenant_id, campaign.campaign_id)
            .await
            .unwrap()
            .is_none(),
        "the refused write left nothing"
    );
    assert!(
        days_of(&options, "crm_events")
            .await
            .contains(&"crm_events_p20250210".to_owned())
    );
    store
        .create_campaign(&campaign, &events)
        .await
        .expect("the retry finds the day");

    // A day retention has dropped is never made again: the write is refused each time.
    create_campaign(&store, &tenant_id, on_day(3, 0)).await;
    expire_before(&store, on_day(3, 0)).await;
    let feed = feed_from(&store, None).await;
    let (late, late_events) = new_campaign(&tenant_id, None, on_day(1, 0));
    for _ in 0..2 {
        match store.create_campaign(&late, &late_events).await {
            Err(StoreError::Unavailable(error)) => assert!(
                error
                    .to_string()
                    .contains("older than the events retention dropped"),
                "{error}"
            ),
            other => panic!("a write into a dropped day must be refused: {other:?}"),
        }
    }
    assert!(
        store
            .campaign(&tenant_id, late.campaign_id)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(names(&feed_from(&store, None).await), names(&feed));
    drop_schema(&url, options.schema()).await;
}

#[tokio::test]
async fn a_finished_item_leaves_the_queue_for_its_day_and_is_still_found() {
    let Some(url) = database_url("a_finished_item_leaves") else {
        return;
    };
    let (store, options) = fresh_store(&url, "partition_done").await;
    let tenant_id = tenant("tenant_a");
    schedule(&store, &tenant_id, None, at(0)).await;
    schedule(&store, &tenant_id, None, at(0)).await;
    store
        .drain(at(1_000), 10, &SendAll::default())
        .await
        .unwrap();
    let leased = claim_at(&store, 202_000, 10).await;
    assert_eq!(leased.len(), 2);
    let ack = accepted(&leased[0]);
    let ack_with = AckWith { now: at(203_000) };
    assert_eq!(
        store
            .ack(std::slice::from_ref(&ack), &ack_with)
            .await
            .unwrap(),
        [AckStatus::Acked]
    );

    let client = connect(&options).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM crm_outbound_queue").await,
        1
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM crm_outbound_done_p20250101").await,
        1
    );
    let done = store
        .queue_entry(leased[0].entry.queue_item_id)
        .await
        .unwrap()
        .expect("a finished item is still found");
    assert_eq!(done.status.as_str(), "done");
    // The same ack again finds the finished item and answers as the first time did.
    assert_eq!(
        store.ack(&[ack], &ack_with).await.unwrap(),
        [AckStatus::Acked]
    );
    assert_eq!(store.outbound_items(0, 10).await.unwrap().len(), 2);
    drop_schema(&url, options.schema()).await;
}

#[tokio::test]
async fn an_unpartitioned_database_is_migrated_with_its_data_and_numbers() {
    let Some(url) = database_url("an_unpartitioned_database") else {
        return;
    };
    let options = PgOptions::new(&url, fresh_schema("partition_migration")).unwrap();
    migrate_through(&options, 8)
        .await
        .expect("the release before partitions");
    let store = PgStore::new(&options).unwrap();
    let tenant_id = tenant("tenant_a");
    for day in 0..3 {
        create_campaign(&store, &tenant_id, on_day(day, 1_000)).await;
    }
    for _ in 0..4 {
        schedule(&store, &tenant_id, None, at(0)).await;
    }
    store
        .drain(at(1_000), 10, &SendAll::default())
        .await
        .unwrap();
    let client = connect(&options).await;
    finish_in_place(&client, on_day(1, 36_000_000), 2).await;
    let events_before = feed_with_cursors(&store).await;
    let items_before = store.outbound_items(0, 10).await;
    assert!(
        items_before.is_err(),
        "the store of this release needs the migration"
    );

    migrate(&options, None)
        .await
        .expect("the migration applies over data");
    let store = PgStore::new(&options).unwrap();
    let events_after = feed_with_cursors(&store).await;
    assert_eq!(
        events_after
            .iter()
            .map(|(cursor, event)| (*cursor, event.event_id))
            .collect::<Vec<_>>(),
        events_before
            .iter()
            .map(|(cursor, event)| (*cursor, event.event_id))
            .collect::<Vec<_>>(),
        "every event, with its number"
    );
    let days = days_of(&options, "crm_events").await;
    for day in ["20250101", "20250102", "20250103"] {
        assert!(days.contains(&format!("crm_events_p{day}")), "{days:?}");
    }
    assert_eq!(store.outbound_items(0, 10).await.unwrap().len(), 4);
    let waiting = count(&client, "SELECT count(*) FROM crm_outbound_queue").await;
    assert_eq!(waiting, 2, "finished items left the queue");
    assert_eq!(
        claim_at(&store, 202_000, 10).await.len(),
        2,
        "waiting items are claimed"
    );
    // New events are numbered after the old ones.
    let campaign = create_campaign(&store, &tenant_id, on_day(2, 5_000)).await;
    let last_before = events_before.last().expect("events before").0;
    let newest = feed_from(&store, Some(last_before)).await;
    assert!(
        newest
            .iter()
            .any(|event| event.payload["campaign_id"] == campaign.campaign_id.to_string()),
        "{newest:?}"
    );
    drop_schema(&url, options.schema()).await;
}

#[tokio::test]
async fn a_day_dropped_while_a_writer_commits_into_it_expires_that_writer_s_event_too() {
    let Some(url) = database_url("a_day_dropped_while_a_writer") else {
        return;
    };
    let (store, options) = fresh_store(&url, "partition_race").await;
    let tenant_id = tenant("tenant_a");
    create_campaign(&store, &tenant_id, on_day(0, 1_000)).await;
    create_campaign(&store, &tenant_id, on_day(3, 0)).await;
    let before = feed_with_cursors(&store).await;
    // A writer (a replica whose clock is days behind) has an event of day 0 in flight.
    let writer = connect(&options).await;
    writer
        .batch_execute(
            "BEGIN; INSERT INTO crm_events (event_id, tenant_id, name, correlation_id, \
             emitted_at, envelope) VALUES (gen_random_uuid(), 'tenant_a', 'crm.late', \
             gen_random_uuid(), timestamptz '2025-01-01 12:00Z', '{}'::jsonb)",
        )
        .await
        .unwrap();
    let retention = {
        let store = store.clone();
        tokio::spawn(async move { expire_before(&store, on_day(2, 0)).await })
    };
    // Retention waits for the writer's lock; the writer commits while it waits.
    let watcher = connect(&options).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let waiting = count(
            &watcher,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%crm_drop_partitions%'",
        )
        .await;
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retention never waited"
        );
        tokio::task::yield_now().await;
    }
    writer.batch_execute("COMMIT").await.unwrap();
    let expired = retention.await.unwrap();
    assert_eq!(
        expired.events, 2,
        "the day went with the writer's event: {expired:?}"
    );

    // The feed's start is past the writer's event: a consumer that stopped at the first
    // event is told it expired, and is not moved past the late one without a word.
    let oldest = expired_from(&store, before[0].0).await;
    assert!(oldest > before[0].0);
    drop_schema(&url, options.schema()).await;
}

#[tokio::test]
async fn an_item_an_older_replica_finished_in_the_queue_is_moved_to_its_day() {
    let Some(url) = database_url("an_item_an_older_replica") else {
        return;
    };
    let (store, options) = fresh_store(&url, "partition_straggler").await;
    let tenant_id = tenant("tenant_a");
    schedule(&store, &tenant_id, None, at(0)).await;
    store
        .drain(at(1_000), 10, &SendAll::default())
        .await
        .unwrap();
    let client = connect(&options).await;
    finish_in_place(&client, on_day(0, 36_000_000), 10).await;
    expire_before(&store, on_day(0, 0)).await;
    assert_eq!(
        count(&client, "SELECT count(*) FROM crm_outbound_queue").await,
        0
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM crm_outbound_done").await,
        1
    );
    drop_schema(&url, options.schema()).await;
}
