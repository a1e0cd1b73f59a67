//! What survives a restart: acknowledged writes, from the journal and from compacted
//! files, and data dirs written by earlier releases.

mod support;

use std::fs;
use std::path::Path;

use crm_adapters_file::OpenError;
use crm_domain::campaign::CampaignState;
use crm_domain::follow_up::FollowUpStatus;
use crm_domain::ids::{CampaignId, CorrelationId, FollowUpId};
use crm_domain::receipt::{Receipt, ReceiptAnswer, ReceiptStatus};
use crm_domain::timestamp::Timestamp;
use crm_ports::conformance::{AckWith, all_follow_ups, events_of, tenant};
use crm_ports::{CampaignQuery, OptOutQuery, OutboundQueue, Store};
use support::{assert_restored, copy_dir, journal_files, open, open_quiet, write_some};
use uuid::Uuid;

#[tokio::test]
async fn everything_acknowledged_is_there_after_a_restart_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path()).unwrap();
    let campaign = write_some(&store).await;
    drop(store);
    let store = open_quiet(dir.path()).unwrap();
    assert_restored(&store, &campaign).await;
}

#[tokio::test]
async fn everything_acknowledged_is_there_after_a_restart_from_compacted_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1).unwrap();
    let campaign = write_some(&store).await;
    store.flush().await.unwrap();
    assert_eq!(
        journal_files(dir.path()).len(),
        1,
        "every journal but the current one was folded in"
    );
    drop(store);
    let store = open_quiet(dir.path()).unwrap();
    assert_restored(&store, &campaign).await;
    // And again, now mixing compacted files with a fresh journal.
    drop(store);
    let store = open_quiet(dir.path()).unwrap();
    assert_restored(&store, &campaign).await;
}

#[tokio::test]
async fn a_second_store_on_the_same_dir_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let first = open_quiet(dir.path()).unwrap();
    let second = open_quiet(dir.path());
    assert!(
        matches!(second, Err(OpenError::Locked { .. })),
        "{second:?}"
    );
    drop(first);
    open_quiet(dir.path()).expect("the dir is free once the first store is gone");
}

#[tokio::test]
async fn a_new_data_dir_has_a_manifest_from_its_first_start() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_quiet(dir.path()).unwrap());
    for name in [
        "manifest.json",
        "campaigns.json",
        "followups.json",
        "events.ndjson",
        "outbound-queue.ndjson",
    ] {
        assert!(dir.path().join(name).exists(), "{name}");
    }
    let campaigns: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("campaigns.json")).unwrap()).unwrap();
    assert_eq!(campaigns, serde_json::json!({"items": []}));
}

fn fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
        dir.path(),
    );
    dir
}

fn id(text: &str) -> Uuid {
    Uuid::parse_str(text).unwrap()
}

/// The data dirs of `tests/fixtures/format-1` (written by the first release) and
/// `format-2` (this format) hold the same story: three campaigns and four follow-ups, a
/// drain, a graceful stop (a compaction), then one more follow-up drained, another
/// scheduled and a campaign paused, and a `kill -9`, so its journal holds those changes
/// unreplayed. `first_item` is the outbound item the first drain made.
async fn assert_format_1_fixture(store: &dyn Store) {
    assert_fixture_story(store, "ba43faf3-f026-48e0-a603-4ea60228c63c").await;
}

async fn assert_fixture_story(store: &dyn Store, first_item: &str) {
    let acme = tenant("acme");
    let campaigns = store
        .list_campaigns(&CampaignQuery {
            tenant_id: acme.clone(),
            state: None,
            after: None,
            limit: 100,
        })
        .await
        .unwrap()
        .items;
    let states: Vec<_> = campaigns
        .iter()
        .map(|c| (c.campaign_id.as_uuid(), c.state, c.revision))
        .collect();
    assert_eq!(
        states,
        vec![
            (
                id("aaaaaaaa-0000-4000-8000-000000000001"),
                CampaignState::Paused,
                4
            ),
            (
                id("aaaaaaaa-0000-4000-8000-000000000002"),
                CampaignState::Paused,
                2
            ),
        ]
    );
    let spring = &campaigns[0];
    assert_eq!(spring.external_key.as_deref(), Some("spring-sale"));
    assert_eq!(spring.metadata["owner"], "ana");
    assert_eq!(spring.metadata["note"], "running");
    let winter = store
        .campaign(
            &tenant("globex"),
            CampaignId::new(id("aaaaaaaa-0000-4000-8000-000000000003")),
        )
        .await
        .unwrap()
        .expect("globex's campaign");
    assert_eq!(winter.state, CampaignState::Canceled);

    let mut follow_ups = all_follow_ups(store, &acme).await;
    follow_ups.extend(all_follow_ups(store, &tenant("globex")).await);
    follow_ups.sort_by_key(|f| f.followup_id);
    // The story's six (format 2 adds a seventh).
    follow_ups.truncate(6);
    let statuses: Vec<_> = follow_ups
        .iter()
        .map(|f| {
            (
                f.followup_id.to_string(),
                f.status,
                f.last_error_code.clone(),
            )
        })
        .collect();
    let expected = [
        ("1", FollowUpStatus::Sent, None),
        ("2", FollowUpStatus::Pending, None),
        ("3", FollowUpStatus::Failed, Some("CAMPAIGN_CANCELED")),
        ("4", FollowUpStatus::Pending, None),
        ("5", FollowUpStatus::Sent, None),
        ("6", FollowUpStatus::Pending, None),
    ];
    assert_eq!(
        statuses,
        expected
            .iter()
            .map(|(n, status, code)| (
                format!("bbbbbbbb-0000-4000-8000-00000000000{n}"),
                *status,
                code.map(str::to_owned)
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        follow_ups[0].provider_message_id.as_deref(),
        Some(first_item)
    );
    let items = store.outbound_items(0, 100).await.unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].queue_item_id.to_string(), first_item);
    let events = events_of(
        store,
        CorrelationId::new(id("c0000000-0000-4000-8000-000000000002")),
    )
    .await;
    let names: Vec<_> = events.iter().map(|e| &e.name[..]).take(2).collect();
    assert_eq!(names, ["crm.followup.scheduled", "crm.followup.sent"]);
}

/// What only format 2 holds: a sending policy, an opt-out, a follow-up's time zone, and
/// the first drained item leased and acknowledged, written after the graceful stop.
async fn assert_format_2_fixture(store: &dyn Store) {
    assert_fixture_story(store, "81781b66-2f3c-49eb-938a-178429c8611b").await;
    let acme = tenant("acme");
    let policy = store
        .sending_policy(&acme)
        .await
        .unwrap()
        .expect("a policy");
    assert_eq!(policy.max_per_second, Some(80));
    let quiet = policy.quiet_hours.expect("quiet hours");
    assert_eq!(
        (
            quiet.start.to_string(),
            quiet.end.to_string(),
            quiet.time_zone.to_string()
        ),
        (
            "21:00".to_owned(),
            "08:00".to_owned(),
            "America/Sao_Paulo".to_owned()
        )
    );
    let opt_outs = store
        .opt_outs(&OptOutQuery {
            tenant_id: acme.clone(),
            after: None,
            limit: 10,
        })
        .await
        .unwrap()
        .items;
    assert_eq!(opt_outs.len(), 1);
    assert_eq!(opt_outs[0].phone_e164, "+5511999990099");
    let zoned = store
        .follow_up(
            &tenant("globex"),
            FollowUpId::new(id("bbbbbbbb-0000-4000-8000-000000000007")),
        )
        .await
        .unwrap()
        .expect("the zoned follow-up");
    assert_eq!(zoned.time_zone.as_deref(), Some("America/New_York"));
    let first = store
        .follow_up(
            &acme,
            FollowUpId::new(id("bbbbbbbb-0000-4000-8000-000000000001")),
        )
        .await
        .unwrap()
        .expect("the first follow-up");
    let delivery = first.delivery.expect("its delivery");
    assert_eq!(
        delivery.provider_message_id.as_deref(),
        Some("wamid.fixture")
    );
    let stats = store
        .campaign_stats(CampaignId::new(id("aaaaaaaa-0000-4000-8000-000000000001")))
        .await
        .unwrap();
    assert_eq!((stats.sent, stats.delivery_accepted), (1, 1));
}

#[tokio::test]
async fn a_data_dir_of_format_2_opens_with_every_record_before_and_after_a_compaction() {
    let dir = fixture("format-2");
    let store = open_quiet(dir.path()).unwrap();
    assert_format_2_fixture(&store).await;
    store.flush().await.unwrap();
    drop(store);
    let store = open_quiet(dir.path()).unwrap();
    assert_format_2_fixture(&store).await;
    // A receipt finds the message an earlier version recorded, after a compaction.
    let receipt = Receipt {
        provider_message_id: "wamid.fixture".into(),
        tenant_id: None,
        status: ReceiptStatus::Delivered,
        at: Timestamp::from_unix_millis(1_735_722_000_000).unwrap(),
        error_code: None,
        error_message: None,
    };
    let applier = AckWith {
        now: Timestamp::from_unix_millis(1_735_722_001_000).unwrap(),
    };
    let answers = store.apply_receipts(&[receipt], &applier).await.unwrap();
    assert_eq!(answers, [ReceiptAnswer::Applied]);
}

#[tokio::test]
async fn a_data_dir_of_the_first_release_opens_with_every_record_and_is_upgraded() {
    let dir = fixture("format-1");
    let store = open_quiet(dir.path()).unwrap();
    assert_format_1_fixture(&store).await;
    drop(store);
    let manifest = fs::read_to_string(dir.path().join("manifest.json")).unwrap();
    assert!(manifest.contains("\"format\":2"), "{manifest}");
    assert!(
        !dir.path().join("journal.000003.ndjson").exists(),
        "the first release's journals were folded in"
    );
    // Upgraded once, it opens as any other data dir.
    let store = open_quiet(dir.path()).unwrap();
    assert_format_1_fixture(&store).await;
}

#[tokio::test]
async fn a_first_release_data_dir_whose_first_compaction_was_cut_short_opens_from_its_journals() {
    // The first release, killed during its first compaction: journals, snapshot and log
    // files it had begun to write, and no manifest. That release refused to start on
    // it; the journals hold everything.
    let dir = fixture("format-1");
    let journal = fs::read(dir.path().join("journal.000003.ndjson")).unwrap();
    fs::remove_file(dir.path().join("manifest.json")).unwrap();
    fs::remove_file(dir.path().join("journal.000002.ndjson")).unwrap();
    fs::write(dir.path().join("journal.000001.ndjson"), &journal).unwrap();
    fs::remove_file(dir.path().join("journal.000003.ndjson")).unwrap();
    fs::write(dir.path().join("campaigns.json"), b"{\"items\":[{\"campai").unwrap();
    let store = open_quiet(dir.path()).unwrap();
    let follow_ups = all_follow_ups(&store, &tenant("acme")).await;
    let ids: Vec<_> = follow_ups
        .iter()
        .map(|f| f.followup_id.to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "bbbbbbbb-0000-4000-8000-000000000005",
            "bbbbbbbb-0000-4000-8000-000000000006"
        ]
    );
    assert_eq!(follow_ups[0].status, FollowUpStatus::Sent);
}
