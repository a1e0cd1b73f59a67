//! Helpers shared by the file store's persistence and damage tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crm_adapters_file::{FileStore, FileStoreOptions, OpenError};
use crm_domain::campaign::Campaign;
use crm_domain::follow_up::FollowUpStatus;
use crm_ports::conformance::{
    SendAll, all_follow_ups, at, create_campaign, events_of, schedule, tenant,
};
use crm_ports::{CampaignStore, FollowUpStore, OutboundQueue};

/// Opens `dir`, compacting once the journal holds `compact_after_bytes`.
pub fn open(dir: &Path, compact_after_bytes: u64) -> Result<FileStore, OpenError> {
    FileStore::open(
        dir,
        FileStoreOptions {
            compact_after_bytes,
            ..FileStoreOptions::default()
        },
    )
}

/// Opens `dir` without ever compacting in the background.
pub fn open_quiet(dir: &Path) -> Result<FileStore, OpenError> {
    open(dir, u64::MAX)
}

/// Writes a campaign, three follow-ups and drains two of them.
pub async fn write_some(store: &FileStore) -> Campaign {
    let tenant_id = tenant("tenant_a");
    let campaign = create_campaign(store, &tenant_id, at(0)).await;
    for offset in 0..3 {
        schedule(store, &tenant_id, Some(campaign.campaign_id), at(offset)).await;
    }
    let drained = store
        .drain(at(10_000), 2, &SendAll::default())
        .await
        .unwrap();
    assert_eq!(drained.len(), 2);
    campaign
}

/// Checks that everything `write_some` wrote is there.
pub async fn assert_restored(store: &FileStore, campaign: &Campaign) {
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
    let held = crm_domain::follow_up::holding_states();
    assert_eq!(store.count_due(at(10_000), &held).await.unwrap(), 1);
    for follow_up in follow_ups {
        let events = events_of(store, follow_up.correlation_id).await;
        let expected = if follow_up.status == FollowUpStatus::Sent {
            2
        } else {
            1
        };
        assert_eq!(events.len(), expected);
    }
}

/// Every file of a data dir and its bytes (the lock file and subdirectories aside).
pub fn dir_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file() && path.file_name().unwrap() != ".lock")
        .map(|path| {
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&path).unwrap(),
            )
        })
        .collect()
}

/// The journal files of a data dir, oldest first.
pub fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("journal.") && name.ends_with(".ndjson")
        })
        .collect();
    files.sort();
    files
}

/// Copies a directory's files into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    }
}

/// Opening `dir` fails with a refusal naming `file`, and no file of the dir changed.
#[track_caller]
pub fn assert_refused_untouched(dir: &Path, file: &str) -> String {
    let before = dir_bytes(dir);
    let error = open_quiet(dir).expect_err("a damaged data dir must not open");
    let message = error.to_string();
    assert!(
        matches!(error, OpenError::Corrupt { .. }),
        "expected a corruption refusal, got: {message}"
    );
    assert!(
        message.contains(file),
        "the refusal names {file}: {message}"
    );
    assert_eq!(
        dir_bytes(dir),
        before,
        "not one byte of the data dir changed"
    );
    message
}
