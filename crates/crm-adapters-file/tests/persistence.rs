//! What survives a restart, and what makes the file store refuse to start.

use std::fs;
use std::path::Path;

use crm_adapters_file::{FileStore, FileStoreOptions, OpenError};
use crm_domain::follow_up::FollowUpStatus;
use crm_ports::conformance::{SendAll, all_follow_ups, at, create_campaign, schedule, tenant};
use crm_ports::{CampaignStore, EventEmitter, FollowUpStore, OutboundQueue, Store};

fn open(dir: &Path, compact_after_bytes: u64) -> Result<FileStore, OpenError> {
    FileStore::open(
        dir,
        FileStoreOptions {
            compact_after_bytes,
        },
    )
}

/// Writes a campaign, three follow-ups and drains two of them.
async fn write_some(store: &FileStore) -> (crm_domain::campaign::Campaign, usize) {
    let tenant_id = tenant("tenant_a");
    let campaign = create_campaign(store, &tenant_id, at(0)).await;
    for offset in 0..3 {
        schedule(store, &tenant_id, Some(campaign.campaign_id), at(offset)).await;
    }
    let drained = store
        .drain(at(10_000), 2, &SendAll::default())
        .await
        .unwrap();
    (campaign, drained.len())
}

async fn assert_restored(store: &FileStore, campaign: &crm_domain::campaign::Campaign) {
    let tenant_id = tenant("tenant_a");
    assert_eq!(
        store
            .campaign(&tenant_id, campaign.campaign_id)
            .await
            .unwrap()
            .as_ref(),
        Some(campaign)
    );
    let follow_ups = all_follow_ups(store, &tenant_id).await;
    assert_eq!(follow_ups.len(), 3);
    let sent = follow_ups
        .iter()
        .filter(|f| f.status == FollowUpStatus::Sent)
        .count();
    assert_eq!(sent, 2);
    assert_eq!(store.outbound_items(0, 100).await.unwrap().len(), 2);
    assert_eq!(store.count_due(at(10_000)).await.unwrap(), 1);
    for follow_up in follow_ups {
        let events = store
            .events_by_correlation(follow_up.correlation_id)
            .await
            .unwrap();
        let expected = if follow_up.status == FollowUpStatus::Sent {
            2
        } else {
            1
        };
        assert_eq!(events.len(), expected);
    }
}

#[tokio::test]
async fn everything_acknowledged_is_there_after_a_restart_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), u64::MAX).unwrap();
    let (campaign, drained) = write_some(&store).await;
    assert_eq!(drained, 2);
    drop(store);
    let store = open(dir.path(), u64::MAX).unwrap();
    assert_restored(&store, &campaign).await;
}

#[tokio::test]
async fn everything_acknowledged_is_there_after_a_restart_from_compacted_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1).unwrap();
    let (campaign, _) = write_some(&store).await;
    // Let the background compactions finish: a running one keeps the dir locked.
    store.flush().await.unwrap();
    assert!(dir.path().join("followups.json").exists());
    assert!(dir.path().join("outbound-queue.ndjson").exists());
    drop(store);
    let store = open(dir.path(), u64::MAX).unwrap();
    assert_restored(&store, &campaign).await;
    // And again, now mixing compacted files with a fresh journal.
    drop(store);
    let store = open(dir.path(), u64::MAX).unwrap();
    assert_restored(&store, &campaign).await;
}

#[tokio::test]
async fn a_second_store_on_the_same_dir_is_refused_while_the_first_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path(), u64::MAX).unwrap();
    let second = open(dir.path(), u64::MAX);
    assert!(
        matches!(second, Err(OpenError::Locked { .. })),
        "{second:?}"
    );
    drop(first);
    open(dir.path(), u64::MAX).expect("the dir is free once the first store is gone");
}

#[tokio::test]
async fn a_corrupt_snapshot_stops_start_up_naming_it_and_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1).unwrap();
    write_some(&store).await;
    store.flush().await.unwrap();
    drop(store);
    let path = dir.path().join("followups.json");
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    fs::write(&path, &bytes).unwrap();

    let error = open(dir.path(), u64::MAX).unwrap_err();
    assert!(matches!(error, OpenError::Corrupt { .. }), "{error:?}");
    assert!(error.to_string().contains("followups.json"), "{error}");
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "the unreadable file is not rewritten"
    );
}

#[tokio::test]
async fn a_snapshot_missing_after_a_compaction_stops_start_up_instead_of_starting_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), u64::MAX).unwrap();
    write_some(&store).await;
    drop(store);
    // Reopening folds the journal into the snapshots.
    drop(open(dir.path(), u64::MAX).unwrap());
    assert!(
        journal_files(dir.path()).is_empty(),
        "the journal was folded in"
    );
    fs::remove_file(dir.path().join("campaigns.json")).unwrap();
    let error = open(dir.path(), u64::MAX).unwrap_err();
    assert!(matches!(error, OpenError::Corrupt { .. }), "{error:?}");
    assert!(error.to_string().contains("campaigns.json"), "{error}");
}

#[tokio::test]
async fn a_torn_final_journal_line_is_an_unacknowledged_write_and_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), u64::MAX).unwrap();
    let (campaign, _) = write_some(&store).await;
    drop(store);
    let journal = journal_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&journal).unwrap();
    bytes.extend_from_slice(b"0badc0de {\"campaigns\":[{\"campa");
    fs::write(&journal, &bytes).unwrap();
    let store = open(dir.path(), u64::MAX).unwrap();
    assert_restored(&store, &campaign).await;
}

#[tokio::test]
async fn a_damaged_journal_line_stops_start_up_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), u64::MAX).unwrap();
    write_some(&store).await;
    drop(store);
    let journal = journal_files(dir.path()).pop().unwrap();
    let text = fs::read_to_string(&journal).unwrap();
    // Flip one digit of the phone number in the second line: JSON stays valid, the
    // checksum does not.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1] = lines[1].replacen("+5511", "+5512", 1);
    fs::write(&journal, lines.join("\n") + "\n").unwrap();
    let error = open(dir.path(), u64::MAX).unwrap_err().to_string();
    assert!(
        error.contains(&journal.display().to_string()) && error.contains("line 2"),
        "{error}"
    );
}

fn journal_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("journal.")
                && fs::metadata(p).unwrap().len() > 0
        })
        .collect();
    files.sort();
    files
}
