//! `GET /internal/orchestration/events`: the event feed.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, eventually, follow_up_body, names, new_tenant, spawn_app, spawn_app_with, str_field,
};
use crate::ops::metric_sum;

/// A bound on following the feed, so a feed that never ends fails instead of hanging.
const MAX_PAGES: usize = 1_000;

/// Follows the feed from `after` (the start when `None`) with `query` until a page comes
/// back empty; returns the events and the last cursor.
async fn follow(
    app: &TestApp,
    after: Option<&str>,
    query: &[(&str, &str)],
) -> (Vec<Value>, String) {
    let mut events = Vec::new();
    let mut cursor = after.map(str::to_owned);
    for _ in 0..MAX_PAGES {
        let mut page_query = query.to_vec();
        if let Some(cursor) = &cursor {
            page_query.push(("after", cursor));
        }
        let page = app.feed(&page_query).await.ok();
        let next = str_field(&page, "/next_cursor").to_owned();
        let items = page["items"].as_array().expect("items").clone();
        if items.is_empty() {
            assert_eq!(
                cursor.as_deref().unwrap_or(&next),
                next,
                "an empty page keeps the cursor"
            );
            return (events, next);
        }
        events.extend(items);
        cursor = Some(next);
    }
    panic!("the feed did not end within {MAX_PAGES} pages");
}

fn event_ids(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| str_field(event, "/event_id"))
        .collect()
}

/// Creates `count` follow-ups of `tenant`, one after another, and returns their ids.
async fn seed(app: &TestApp, tenant: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..count {
        let response = app.seed_follow_up(&follow_up_body(tenant)).await;
        ids.push(str_field(&response, "/followup/followup_id").to_owned());
    }
    ids
}

#[tokio::test]
async fn the_feed_pages_through_every_event_once_in_commit_order() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    let ids = seed(&app, &tenant, 7).await;

    let (events, _) = follow(&app, None, &[("limit", "2")]).await;

    let followups: Vec<&str> = events
        .iter()
        .map(|event| str_field(event, "/payload/followup_id"))
        .collect();
    assert_eq!(
        followups, ids,
        "one event per follow-up, in the order they were created"
    );
    assert!(
        names(&events)
            .iter()
            .all(|name| *name == "crm.followup.scheduled")
    );
}

#[tokio::test]
async fn a_cursor_at_the_end_comes_back_unchanged_with_no_items() {
    let app = spawn_app().await;
    let tenant = new_tenant();
    seed(&app, &tenant, 2).await;
    let (_, end) = follow(&app, None, &[]).await;

    let page = app.feed(&[("after", &end)]).await.ok();

    assert_eq!(page, json!({"items": [], "next_cursor": end}));
}

#[tokio::test]
async fn an_empty_store_has_an_empty_feed_with_a_cursor_to_continue_from() {
    let app = spawn_app().await;

    let page = app.feed(&[]).await.ok();
    assert_eq!(page["items"], json!([]));

    let tenant = new_tenant();
    let ids = seed(&app, &tenant, 1).await;
    let cursor = str_field(&page, "/next_cursor");
    let (events, _) = follow(&app, Some(cursor), &[]).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["payload"]["followup_id"], ids[0].as_str());
}

#[tokio::test]
async fn tenant_and_name_filters_select_events_without_losing_the_place() {
    let app = spawn_app().await;
    let (one, other) = (new_tenant(), new_tenant());
    seed(&app, &one, 2).await;
    app.seed_campaign(&one, "draft").await;
    seed(&app, &other, 3).await;
    let (everything, _) = follow(&app, None, &[]).await;

    let (only_other, _) = follow(&app, None, &[("tenant_id", &other)]).await;
    let (follow_ups_of_one, _) = follow(
        &app,
        None,
        &[("tenant_id", &one), ("name_prefix", "crm.followup.")],
    )
    .await;

    let expected = |keep: &dyn Fn(&Value) -> bool| -> Vec<&str> {
        everything
            .iter()
            .filter(|event| keep(event))
            .map(|event| str_field(event, "/event_id"))
            .collect()
    };
    assert_eq!(
        event_ids(&only_other),
        expected(&|e| e["tenant_id"] == other.as_str())
    );
    assert_eq!(only_other.len(), 3);
    assert_eq!(
        event_ids(&follow_ups_of_one),
        expected(&|e| e["tenant_id"] == one.as_str()
            && str_field(e, "/name").starts_with("crm.followup."))
    );
    assert_eq!(follow_ups_of_one.len(), 2);
}

#[tokio::test]
async fn a_long_poll_answers_with_the_event_that_commits_while_it_waits() {
    let app = spawn_app().await;
    let (_, end) = follow(&app, None, &[]).await;
    let waiting = {
        let app = app.clone();
        let end = end.clone();
        tokio::spawn(async move { app.feed(&[("after", &end), ("wait_ms", "20000")]).await })
    };
    until_waiting(&app, &waiting).await;
    let tenant = new_tenant();
    let ids = seed(&app, &tenant, 1).await;

    let page = waiting.await.expect("the poll task").ok();

    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["payload"]["followup_id"], ids[0].as_str());
    assert_ne!(page["next_cursor"], end.as_str());
}

#[tokio::test]
async fn a_long_poll_with_nothing_new_ends_empty_when_the_wait_is_over() {
    let app = spawn_app().await;
    let (_, end) = follow(&app, None, &[]).await;

    let page = app.feed(&[("after", &end), ("wait_ms", "300")]).await.ok();

    assert_eq!(page, json!({"items": [], "next_cursor": end}));
}

#[tokio::test]
async fn a_long_poll_ignores_events_its_filter_does_not_match() {
    let app = spawn_app().await;
    let (watched, other) = (new_tenant(), new_tenant());
    let (_, end) = follow(&app, None, &[]).await;
    let waiting = {
        let app = app.clone();
        let (end, watched) = (end.clone(), watched.clone());
        tokio::spawn(async move {
            app.feed(&[
                ("after", &end),
                ("tenant_id", &watched),
                ("wait_ms", "20000"),
            ])
            .await
        })
    };
    until_waiting(&app, &waiting).await;
    seed(&app, &other, 2).await;
    let ids = seed(&app, &watched, 1).await;

    let page = waiting.await.expect("the poll task").ok();

    let items = page["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["payload"]["followup_id"], ids[0].as_str());
}

#[tokio::test]
async fn bad_feed_parameters_are_validation_errors() {
    let app = spawn_app().await;
    seed(&app, &new_tenant(), 1).await;

    for (query, parameter) in [
        (vec![("after", "not-a-cursor")], "after"),
        (vec![("after", "e1_")], "after"),
        (vec![("after", "e1_01")], "after"),
        (vec![("after", "e1_99999999999999999999")], "after"),
        (vec![("limit", "0")], "limit"),
        (vec![("limit", "ten")], "limit"),
        (vec![("wait_ms", "30001")], "wait_ms"),
        (vec![("wait_ms", "-1")], "wait_ms"),
        (vec![("tenant_id", "")], "tenant_id"),
        (vec![("name_prefix", "")], "name_prefix"),
    ] {
        let parameters = app.feed(&query).await.invalid_parameters();
        assert_eq!(parameters, [parameter], "{query:?}");
    }
}

#[tokio::test]
async fn a_cursor_past_every_event_was_not_issued_by_this_server() {
    let app = spawn_app().await;
    seed(&app, &new_tenant(), 2).await;

    let parameters = app
        .feed(&[("after", "e1_1000000")])
        .await
        .invalid_parameters();

    assert_eq!(parameters, ["after"]);
}

#[tokio::test]
async fn a_cursor_older_than_retention_is_gone_and_names_where_the_feed_starts() {
    let app = spawn_app_with(|settings| {
        settings.retention = Duration::from_millis(1);
        settings.retention_interval = Duration::from_millis(50);
    })
    .await;
    if app.backend == "postgres" {
        // PostgreSQL keeps a UTC day until all of it is older than the retention, so a
        // retention of 1 ms removes nothing of today; its day partitions are checked with
        // a clock of their own in crm-adapters-pg/tests/partitions.rs.
        return;
    }
    let tenant = new_tenant();
    seed(&app, &tenant, 3).await;
    let first = app.feed(&[("limit", "1")]).await.ok();
    let stale = str_field(&first, "/next_cursor").to_owned();

    let details = wait_for_gone(&app, &stale).await;

    let oldest = details["oldest_cursor"].as_str().expect("oldest_cursor");
    let resumed = app.feed(&[("after", oldest)]).await.ok();
    assert_eq!(
        resumed["items"],
        json!([]),
        "everything before it was deleted"
    );
    let ids = seed(&app, &tenant, 1).await;
    let (events, _) = follow(&app, Some(oldest), &[]).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["payload"]["followup_id"], ids[0].as_str());
}

/// Returns once a feed read is waiting for an event (or `poll` has answered already), so
/// that what the test commits next commits during the wait. Tests share the process's
/// metrics, so another test's long-poll may be the one seen; then this one may still be
/// on its first read, and it finds the event there.
async fn until_waiting<T>(app: &TestApp, poll: &tokio::task::JoinHandle<T>) {
    eventually("a long-poll waiting for an event", async || {
        let waiting = metric_sum(&app.metrics().await, "crm_feed_waiting", &[]);
        (waiting >= 1.0 || poll.is_finished()).then_some(())
    })
    .await;
}

/// Reads the feed after `cursor` until retention has deleted what follows it; the
/// details of the `410 cursor_expired`.
async fn wait_for_gone(app: &TestApp, cursor: &str) -> Value {
    eventually("retention deleting what follows the cursor", async || {
        let reply = app.feed(&[("after", cursor)]).await;
        if reply.status == 410 {
            return Some(reply.error(410, "cursor_expired"));
        }
        reply.ok();
        None
    })
    .await
}
