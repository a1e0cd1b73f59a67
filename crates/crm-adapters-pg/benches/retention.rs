//! Retention of `CRM_BENCH_EVENTS` events (1,000,000 by default), each way: the release
//! before day partitions deleted them in batches of 1,000 (its statement is below, as it
//! ran); this one drops their day partitions. Also the migration (V9) of an unpartitioned
//! database holding them, which is what an upgrade costs.
//!
//! `CRM_BENCH_DELETE_EVENTS` sizes the DELETE's table on its own (it slows down as the
//! table grows). Needs `CRM_DATABASE_URL`. Each run works in schemas of its own and drops them.

use std::time::{Duration, Instant};

use crm_adapters_pg::testing::{connect, drop_schema, fresh_schema};
use crm_adapters_pg::{PgOptions, PgStore, migrate, migrate_through};
use crm_domain::timestamp::Timestamp;
use crm_ports::{Retention, Store};

/// The retention of the release before partitions: the oldest run of events emitted
/// before `$1`, at most `$2` of them, deleted, and the feed's start moved past them.
const BATCHED_DELETE: &str = "WITH state AS (SELECT events_deleted_through AS through \
    FROM crm_feed_state FOR UPDATE), \
    batch AS (SELECT e.seq, e.emitted_at FROM crm_events e, state \
    WHERE e.seq > state.through ORDER BY e.seq LIMIT $2), \
    bound AS (SELECT coalesce((SELECT min(seq) - 1 FROM batch WHERE emitted_at >= $1), \
    (SELECT max(seq) FROM batch)) AS seq), \
    gone AS (DELETE FROM crm_events e USING state, bound WHERE e.seq > state.through \
    AND e.seq <= bound.seq RETURNING 1), \
    moved AS (UPDATE crm_feed_state f SET events_deleted_through = bound.seq FROM bound \
    WHERE bound.seq > f.events_deleted_through RETURNING 1) \
    SELECT (SELECT count(*) FROM gone)";

/// `count` events of ten tenants, emitted ten days ago, a millisecond apart, with
/// envelopes of the size the service writes (about 600 bytes).
const SEED_EVENTS: &str = "INSERT INTO crm_events (event_id, tenant_id, name, \
    correlation_id, emitted_at, envelope) \
    SELECT gen_random_uuid(), 'tenant_' || (i % 10), 'crm.followup.sent', gen_random_uuid(), \
    date_trunc('day', now() - interval '10 days') + i * interval '1 ms', \
    jsonb_build_object('event_id', gen_random_uuid(), 'name', 'crm.followup.sent', \
    'tenant_id', 'tenant_' || (i % 10), 'correlation_id', gen_random_uuid(), \
    'trace_id', md5(i::text), 'emitted_at', now(), 'payload', jsonb_build_object( \
    'followup_id', gen_random_uuid(), 'campaign_id', gen_random_uuid(), \
    'phone_e164', '+55119' || lpad(i::text, 8, '0'), 'status', 'sent', \
    'provider_message_id', gen_random_uuid(), 'message', repeat('x', 160))) \
    FROM generate_series(1, $1::bigint) i";

#[tokio::main]
async fn main() {
    let url = std::env::var("CRM_DATABASE_URL")
        .or_else(|_| std::env::var("CRM_TEST_DATABASE_URL"))
        .expect("CRM_DATABASE_URL names the database to measure on");
    let events: i64 = std::env::var("CRM_BENCH_EVENTS")
        .ok()
        .map_or(1_000_000, |n| {
            n.parse().expect("CRM_BENCH_EVENTS is a number")
        });
    // The batched DELETE slows down with the table (each batch scans it), so it may be
    // measured on fewer events: `CRM_BENCH_DELETE_EVENTS`, all of them by default.
    let delete_events: i64 = std::env::var("CRM_BENCH_DELETE_EVENTS")
        .ok()
        .map_or(events, |n| {
            n.parse().expect("CRM_BENCH_DELETE_EVENTS is a number")
        });
    let cutoff =
        Timestamp::from_datetime(time::OffsetDateTime::now_utc() - time::Duration::days(7));

    // The release before: a table of events, deleted in batches.
    let before = seeded(&url, "bench_delete", delete_events).await;
    let client = connect(&before).await;
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .expect("no bound on the batches");
    let started = Instant::now();
    let mut deleted = 0_i64;
    loop {
        let gone: i64 = client
            .query_one(BATCHED_DELETE, &[&cutoff.as_datetime(), &1_000_i64])
            .await
            .expect("a batch deletes")
            .get(0);
        if gone == 0 {
            break;
        }
        deleted += gone;
    }
    let delete_time = started.elapsed();
    let dead = dead_tuples(&client, &before).await;
    assert_eq!(deleted, delete_events, "every event deleted");
    report("batched DELETE (before V9)", deleted, delete_time, dead);

    // The upgrade of that database, holding as many events again.
    let upgraded = seeded(&url, "bench_migrate", events).await;
    let started = Instant::now();
    migrate(&upgraded, None).await.expect("V9 applies");
    let migration = started.elapsed();
    println!(
        "{{\"scenario\": \"migration V9 over {events} events\", \"seconds\": {:.1}, \
         \"seconds_per_million\": {:.1}}}",
        migration.as_secs_f64(),
        migration.as_secs_f64() * 1_000_000.0 / events as f64
    );

    // This release: the migrated events' day dropped.
    let store = PgStore::new(&upgraded).expect("pool builds");
    let started = Instant::now();
    let mut dropped = 0;
    loop {
        let expired = store
            .expire(
                Retention {
                    records_before: cutoff,
                    ledger_before: cutoff,
                },
                1_000,
            )
            .await
            .expect("retention runs");
        if expired.events == 0 {
            break;
        }
        dropped += expired.events;
    }
    let drop_time = started.elapsed();
    let client = connect(&upgraded).await;
    let dead = dead_tuples(&client, &upgraded).await;
    // What the store counted: exact up to 100,000 per day, estimated above.
    println!("{{\"retention counted\": {dropped}}}");
    report("day partitions dropped (V9)", events, drop_time, dead);

    for options in [&before, &upgraded] {
        drop_schema(&url, options.schema()).await;
    }
}

/// A schema as the release before partitions left it, holding `events` events.
async fn seeded(url: &str, prefix: &str, events: i64) -> PgOptions {
    let options = PgOptions::new(url, fresh_schema(prefix)).expect("valid options");
    migrate_through(&options, 8).await.expect("V1 to V8 apply");
    let client = connect(&options).await;
    client
        .batch_execute("SET statement_timeout = 0")
        .await
        .expect("no bound on seeding");
    client
        .execute(SEED_EVENTS, &[&events])
        .await
        .expect("events seeded");
    client
        .batch_execute("ANALYZE crm_events")
        .await
        .expect("analyzed");
    options
}

/// Dead tuples left in the event tables of `options`' schema for VACUUM, as the
/// statistics count them (this backend's counts flushed first; autovacuum is off for the
/// seeded table, so nothing has cleaned them yet).
async fn dead_tuples(client: &tokio_postgres::Client, options: &PgOptions) -> i64 {
    client
        .batch_execute("SELECT pg_stat_force_next_flush()")
        .await
        .expect("statistics flushed");
    client
        .query_one(
            "SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables \
             WHERE schemaname = $1 AND relname LIKE 'crm_events%'",
            &[&options.schema()],
        )
        .await
        .expect("dead tuples counted")
        .get(0)
}

fn report(scenario: &str, rows: i64, took: Duration, dead: i64) {
    println!(
        "{{\"scenario\": \"{scenario}\", \"events\": {rows}, \"seconds\": {:.2}, \
         \"dead_tuples_left\": {dead}}}",
        took.as_secs_f64()
    );
}
