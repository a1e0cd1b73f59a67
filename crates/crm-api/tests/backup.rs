//! `crm-api backup`, through the real binary: a copy of a file store's data dir taken
//! while it serves a write load and compacts, then started as a second process. Every
//! write acknowledged before the backup began must be in the copy, each follow-up with
//! exactly its event (nothing half-present), and the live store keeps acknowledging
//! writes while the copy is taken.

mod process;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use process::{
    BINARY, FUTURE, Server, assert_all_there, client, start_writers, wait_for_exit, wait_for_load,
};
use serde_json::Value;
use tempfile::TempDir;
use uuid::Uuid;

/// Compactions keep running under the load, so the copy meets them.
const COMPACT_OFTEN: [&str; 2] = ["--file-compact-after-bytes", "65536"];

/// Runs `crm-api backup`; returns its exit code and what it printed.
fn run_backup(data_dir: &Path, to: &Path) -> (Option<i32>, String) {
    let output = Command::new(BINARY)
        .arg("backup")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--to")
        .arg(to)
        .env_remove("CRM_BACKEND")
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

/// Every `crm.followup.scheduled` event of the feed, counted per follow-up id.
async fn scheduled_events(server: &Server) -> HashMap<String, usize> {
    let client = client();
    let mut counts = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!(
            "{}/internal/orchestration/events?limit=1000&name_prefix=crm.followup.scheduled",
            server.address
        );
        if let Some(cursor) = &after {
            url.push_str(&format!("&after={cursor}"));
        }
        let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
        let items = page["items"].as_array().expect("a feed page");
        for event in items {
            let id = event["payload"]["followup_id"].as_str().unwrap().to_owned();
            *counts.entry(id).or_default() += 1;
        }
        if items.is_empty() {
            return counts;
        }
        after = page["next_cursor"].as_str().map(str::to_owned);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_holds_every_earlier_write_whole_and_the_copy_starts() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let backups = TempDir::new().expect("a backup dir");
    let copy = backups.path().join("copy");
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());

    let server = Server::start(data_dir.path(), logs.path(), &client, &COMPACT_OFTEN).await;
    let (writers, acknowledged) = start_writers(&client, &server, &tenant, FUTURE);
    wait_for_load(&acknowledged, Duration::from_secs(2), &server, "load").await;

    let before: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    let (code, text) = tokio::task::spawn_blocking({
        let (data_dir, copy) = (data_dir.path().to_owned(), copy.clone());
        move || run_backup(&data_dir, &copy)
    })
    .await
    .unwrap();
    let during = acknowledged.lock().unwrap().len() - before.len();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("verified"), "{text}");
    // The store was not paused for the copy: writes went on being acknowledged.
    assert!(during > 0, "no write was acknowledged while the backup ran");
    drop(server);
    writers.join_all().await;

    let restored = Server::start(&copy, logs.path(), &client, &[]).await;
    assert_all_there(&restored, &tenant, &before).await;
    let listed = restored.follow_up_ids(&client, &tenant).await;
    let events = scheduled_events(&restored).await;
    for id in &listed {
        assert_eq!(
            events.get(id),
            Some(&1),
            "follow-up {id} without exactly one event"
        );
    }
    let orphans: Vec<&String> = events.keys().filter(|id| !listed.contains(*id)).collect();
    assert!(
        orphans.is_empty(),
        "events without their follow-up: {orphans:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_stopped_store_restores_everything() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let backups = TempDir::new().expect("a backup dir");
    let copy = backups.path().join("copy");
    let client = client();
    let tenant = "stopped";

    let mut server = Server::start(data_dir.path(), logs.path(), &client, &[]).await;
    let (writers, acknowledged) = start_writers(&client, &server, tenant, FUTURE);
    wait_for_load(&acknowledged, Duration::from_millis(500), &server, "load").await;
    server.terminate();
    wait_for_exit(&mut server.child, Duration::from_secs(40))
        .await
        .expect("a graceful stop");
    writers.join_all().await;
    let written: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();

    let (code, text) = run_backup(data_dir.path(), &copy);
    assert_eq!(code, Some(0), "{text}");
    let restored = Server::start(&copy, logs.path(), &client, &[]).await;
    assert_all_there(&restored, tenant, &written).await;

    // A data dir that a start would refuse gives no backup: one changed digit in a
    // snapshot, still valid JSON.
    let snapshot = data_dir.path().join("followups.json");
    let text = std::fs::read_to_string(&snapshot).unwrap();
    std::fs::write(&snapshot, text.replacen("+5511", "+5512", 1)).unwrap();
    let second = backups.path().join("second");
    let (code, text) = run_backup(data_dir.path(), &second);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("does not open"), "{text}");
    assert!(!second.exists() && !backups.path().join("second.partial").exists());
}

#[test]
fn a_backup_refuses_a_target_that_exists_and_a_damaged_data_dir_keeping_nothing() {
    let data_dir = TempDir::new().expect("a data dir");
    let backups = TempDir::new().expect("a backup dir");
    let (code, text) = run_backup(data_dir.path(), backups.path());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("already exists"), "{text}");

    // A data dir that a start would refuse gives no backup either.
    let empty = TempDir::new().expect("an empty dir");
    let copy = backups.path().join("copy");
    let (code, text) = run_backup(empty.path(), &copy);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("no data dir of this store's format"),
        "{text}"
    );
    assert!(!copy.exists() && !backups.path().join("copy.partial").exists());
}
