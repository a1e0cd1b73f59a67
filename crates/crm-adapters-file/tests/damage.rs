//! A damaged data dir is refused at start-up with the file (and line or item) named, and
//! not one byte of it changes. Each test damages one file in one way, including ways
//! that leave valid JSON behind.

mod support;

use std::fs;
use std::path::Path;

use crm_ports::{CampaignStore, Store};
use serde_json::Value;
use support::{
    assert_refused_untouched, assert_restored, journal_files, open, open_quiet, write_some,
};

/// A data dir whose snapshots hold `write_some`'s records (compacted), then the same
/// records written again into a fresh journal on top, unreplayed.
async fn compacted_then_journaled() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1).unwrap();
    write_some(&store).await;
    store.flush().await.unwrap();
    drop(store);
    let store = open_quiet(dir.path()).unwrap();
    write_some(&store).await;
    drop(store);
    dir
}

/// Rewrites the sealed manifest with `change` applied, sealed again with a matching
/// checksum: a manifest that is believable, but wrong.
fn reseal_manifest(dir: &Path, change: impl FnOnce(&mut Value)) {
    let path = dir.join("manifest.json");
    let sealed: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let mut manifest = sealed["manifest"].clone();
    change(&mut manifest);
    let text = serde_json::to_string(&manifest).unwrap();
    let crc = format!("{:08x}", crc32fast::hash(text.as_bytes()));
    fs::write(
        &path,
        format!("{{\"crc32\":\"{crc}\",\"manifest\":{text}}}\n"),
    )
    .unwrap();
}

#[tokio::test]
async fn a_truncated_snapshot_is_refused() {
    let dir = compacted_then_journaled().await;
    let path = dir.path().join("followups.json");
    let mut bytes = fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    fs::write(&path, &bytes).unwrap();
    assert_refused_untouched(dir.path(), "followups.json");
}

#[tokio::test]
async fn a_snapshot_emptied_to_valid_json_is_refused_instead_of_starting_without_its_records() {
    let dir = compacted_then_journaled().await;
    fs::write(dir.path().join("campaigns.json"), b"{\"items\": []}\n").unwrap();
    assert_refused_untouched(dir.path(), "campaigns.json");
}

#[tokio::test]
async fn a_missing_snapshot_is_refused() {
    let dir = compacted_then_journaled().await;
    fs::remove_file(dir.path().join("campaigns.json")).unwrap();
    assert_refused_untouched(dir.path(), "campaigns.json");
}

#[tokio::test]
async fn an_event_log_with_a_line_removed_is_refused() {
    let dir = compacted_then_journaled().await;
    let path = dir.path().join("events.ndjson");
    let text = fs::read_to_string(&path).unwrap();
    let kept: Vec<&str> = text.lines().skip(1).collect();
    fs::write(&path, kept.join("\n") + "\n").unwrap();
    assert_refused_untouched(dir.path(), "events.ndjson");
}

#[tokio::test]
async fn an_outbound_queue_cut_to_nothing_is_refused() {
    let dir = compacted_then_journaled().await;
    fs::write(dir.path().join("outbound-queue.ndjson"), b"").unwrap();
    assert_refused_untouched(dir.path(), "outbound-queue.ndjson");
}

#[tokio::test]
async fn a_manifest_with_one_flipped_digit_is_refused() {
    let dir = compacted_then_journaled().await;
    let path = dir.path().join("manifest.json");
    let text = fs::read_to_string(&path).unwrap();
    let digit = text.find("\"last_seq\":").unwrap() + "\"last_seq\":".len();
    let mut bytes = text.into_bytes();
    bytes[digit] = if bytes[digit] == b'9' {
        b'8'
    } else {
        bytes[digit] + 1
    };
    fs::write(&path, &bytes).unwrap();
    assert_refused_untouched(dir.path(), "manifest.json");
}

#[tokio::test]
async fn a_believable_manifest_with_a_wrong_file_length_is_refused() {
    let dir = compacted_then_journaled().await;
    reseal_manifest(dir.path(), |manifest| {
        manifest["files"]["outbound-queue.ndjson"]["bytes"] = Value::from(0);
    });
    assert_refused_untouched(dir.path(), "outbound-queue.ndjson");
}

#[tokio::test]
async fn a_believable_manifest_claiming_an_unreplayed_journal_is_refused() {
    let dir = compacted_then_journaled().await;
    let newest = journal_files(dir.path()).len() as u64 + 10;
    reseal_manifest(dir.path(), |manifest| {
        manifest["generation"] = Value::from(newest);
    });
    assert_refused_untouched(dir.path(), "journal.");
}

#[tokio::test]
async fn an_old_manifest_restored_from_a_backup_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1).unwrap();
    write_some(&store).await;
    store.flush().await.unwrap();
    let old_manifest = fs::read(dir.path().join("manifest.json")).unwrap();
    write_some(&store).await;
    store.flush().await.unwrap();
    drop(store);
    fs::write(dir.path().join("manifest.json"), old_manifest).unwrap();
    assert_refused_untouched(dir.path(), ".json");
}

#[tokio::test]
async fn a_journal_with_a_whole_line_deleted_from_the_middle_is_refused() {
    let dir = compacted_then_journaled().await;
    let journal = journal_files(dir.path()).pop().unwrap();
    let text = fs::read_to_string(&journal).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 3);
    let kept: Vec<&str> = lines
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != 2)
        .map(|(_, line)| *line)
        .collect();
    fs::write(&journal, kept.join("\n") + "\n").unwrap();
    let message = assert_refused_untouched(dir.path(), &journal.display().to_string());
    assert!(message.contains("missing"), "{message}");
}

#[tokio::test]
async fn an_emptied_journal_is_refused() {
    let dir = compacted_then_journaled().await;
    let journal = journal_files(dir.path()).pop().unwrap();
    fs::write(&journal, b"").unwrap();
    assert_refused_untouched(dir.path(), &journal.display().to_string());
}

#[tokio::test]
async fn a_journal_file_missing_between_two_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..3 {
        let store = open_quiet(dir.path()).unwrap();
        write_some(&store).await;
        drop(store);
    }
    let journals = journal_files(dir.path());
    assert!(journals.len() >= 3, "{journals:?}");
    fs::remove_file(&journals[1]).unwrap();
    assert_refused_untouched(dir.path(), &journals[1].display().to_string());
}

#[tokio::test]
async fn a_damaged_journal_line_is_refused_naming_the_file_and_line() {
    let dir = compacted_then_journaled().await;
    let journal = journal_files(dir.path()).pop().unwrap();
    let text = fs::read_to_string(&journal).unwrap();
    // One digit of a phone number: the JSON stays valid, the checksum does not.
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = lines[2].replacen("+5511", "+5512", 1);
    fs::write(&journal, lines.join("\n") + "\n").unwrap();
    let message = assert_refused_untouched(dir.path(), &journal.display().to_string());
    assert!(message.contains("line 3"), "{message}");
}

#[tokio::test]
async fn a_torn_final_journal_line_is_a_write_never_acknowledged_and_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path()).unwrap();
    let campaign = write_some(&store).await;
    drop(store);
    let journal = journal_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&journal).unwrap();
    bytes.extend_from_slice(b"0badc0de {\"seq\":99,\"campaigns\":[{\"campa");
    fs::write(&journal, &bytes).unwrap();
    let store = open_quiet(dir.path()).unwrap();
    assert_restored(&store, &campaign).await;
}

/// Appends the first 40 bytes of `journal`'s last record to it: a write cut short.
fn tear(journal: &Path) {
    let text = fs::read_to_string(journal).unwrap();
    let last = text.lines().last().unwrap();
    let mut bytes = text.clone().into_bytes();
    bytes.extend_from_slice(&last.as_bytes()[..40]);
    fs::write(journal, &bytes).unwrap();
}

#[tokio::test]
async fn a_torn_tail_is_cut_off_at_start_up_so_later_journals_cannot_turn_it_into_damage() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path()).unwrap();
    let campaign = write_some(&store).await;
    drop(store);
    let torn = journal_files(dir.path()).pop().unwrap();
    let whole = fs::read(&torn).unwrap();
    tear(&torn);

    // Start, write into the next journal, crash; then start again.
    let store = open_quiet(dir.path()).unwrap();
    assert_eq!(
        fs::read(&torn).unwrap(),
        whole,
        "the torn bytes are cut off"
    );
    let later = crm_ports::conformance::create_campaign(
        &store,
        &crm_ports::conformance::tenant("tenant_b"),
        crm_ports::conformance::at(1),
    )
    .await;
    drop(store);
    assert!(journal_files(dir.path()).pop().unwrap() != torn);
    let store = open_quiet(dir.path()).unwrap();
    assert_restored(&store, &campaign).await;
    assert_eq!(
        store
            .campaign(&later.tenant_id, later.campaign_id)
            .await
            .unwrap(),
        Some(later)
    );
}

#[tokio::test]
async fn a_torn_line_in_a_journal_that_another_follows_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let store = open_quiet(dir.path()).unwrap();
        write_some(&store).await;
        drop(store);
    }
    let journals = journal_files(dir.path());
    let older = &journals[journals.len() - 2];
    tear(older);
    assert_refused_untouched(dir.path(), &older.display().to_string());
}

#[tokio::test]
async fn a_torn_line_followed_by_a_whole_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path()).unwrap();
    write_some(&store).await;
    drop(store);
    let journal = journal_files(dir.path()).pop().unwrap();
    let text = fs::read_to_string(&journal).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let last = lines.pop().unwrap();
    lines.push(last[..40].to_owned());
    lines.push(last);
    fs::write(&journal, lines.join("\n") + "\n").unwrap();
    assert_refused_untouched(dir.path(), &journal.display().to_string());
}

#[tokio::test]
async fn a_complete_last_journal_record_without_its_newline_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_quiet(dir.path()).unwrap();
    let campaign = write_some(&store).await;
    drop(store);
    // The last record is the drain: losing it would send two follow-ups again.
    let journal = journal_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&journal).unwrap();
    assert_eq!(bytes.pop(), Some(b'\n'));
    fs::write(&journal, &bytes).unwrap();
    let store = open_quiet(dir.path()).unwrap();
    assert_restored(&store, &campaign).await;
}

#[tokio::test]
async fn leftovers_of_an_uncommitted_compaction_are_ignored_and_cleared() {
    let dir = compacted_then_journaled().await;
    // A compaction that wrote its files but died before its manifest committed.
    fs::write(dir.path().join("campaigns.json.next"), b"{\"items\":[]}\n").unwrap();
    fs::write(dir.path().join("followups.json.next"), b"{\"items\":[{\"fo").unwrap();
    fs::write(dir.path().join("manifest.json.tmp"), b"{\"crc32\"").unwrap();
    let store = open_quiet(dir.path()).unwrap();
    let follow_ups =
        crm_ports::conformance::all_follow_ups(&store, &crm_ports::conformance::tenant("tenant_a"))
            .await;
    assert_eq!(follow_ups.len(), 6);
    drop(store);
    assert!(!dir.path().join("campaigns.json.next").exists());
    assert!(!dir.path().join("manifest.json.tmp").exists());
}

#[tokio::test]
async fn a_compaction_committed_but_cut_short_before_its_renames_is_finished_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1).unwrap();
    let campaign = write_some(&store).await;
    store.flush().await.unwrap();
    drop(store);
    // Put the dir back to the instant after the manifest's rename: each file still
    // under its `.next` name, the old ones (here: another data dir's) in place.
    let other = tempfile::tempdir().unwrap();
    drop(open_quiet(other.path()).unwrap());
    for name in ["campaigns.json", "followups.json", "events.ndjson"] {
        fs::rename(
            dir.path().join(name),
            dir.path().join(format!("{name}.next")),
        )
        .unwrap();
        fs::copy(other.path().join(name), dir.path().join(name)).unwrap();
    }
    let store = open_quiet(dir.path()).unwrap();
    assert_restored(&store, &campaign).await;
    drop(store);
    assert!(!dir.path().join("campaigns.json.next").exists());
    let store = open_quiet(dir.path()).unwrap();
    assert_restored(&store, &campaign).await;
}

#[test]
fn a_refused_dir_stays_refused_and_unchanged_on_every_retry() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = runtime.block_on(compacted_then_journaled());
    fs::write(dir.path().join("campaigns.json"), b"{\"items\": []}\n").unwrap();
    for _ in 0..3 {
        assert_refused_untouched(dir.path(), "campaigns.json");
    }
}
