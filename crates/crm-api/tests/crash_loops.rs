//! Crash loops on the file store, through the real `crm-api` binary: started, loaded and
//! killed with `kill -9` again and again, never stopped gracefully, sometimes with a torn
//! record appended to the newest journal (what a kill in the middle of a multi-page write
//! leaves). Whatever was never acknowledged must never stop a later start, and every start
//! must come up with every acknowledged write: on a new data dir, and on one that went
//! through the adoption of the Node.js service's files or the upgrade of the first
//! release's.
//!
//! The kill instants are random; the seed is printed and `CRM_TEST_SEED` replays one.

mod process;

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use process::data_dirs::{write_first_release, write_node};
use process::{FUTURE, Server, assert_all_there, client, follow_up_body, start_writers};
use tempfile::TempDir;
use uuid::Uuid;

/// Compactions start at start-up and keep running under load, so kills land in them.
const COMPACT_OFTEN: [&str; 2] = ["--file-compact-after-bytes", "65536"];
const NEVER_COMPACT: [&str; 2] = ["--file-compact-after-bytes", "1000000000000"];

/// A xorshift generator for the kill instants, reproducible from its seed.
struct Dice {
    seed: u64,
    state: u64,
}

impl Dice {
    fn new() -> Self {
        let seed = std::env::var("CRM_TEST_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| Uuid::new_v4().as_u64_pair().0);
        eprintln!("crash loop seed: {seed} (replay with CRM_TEST_SEED={seed})");
        Self {
            seed,
            state: seed | 1,
        }
    }

    /// A number in `0..bound`.
    fn below(&mut self, bound: u64) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state % bound
    }

    fn millis_below(&mut self, bound: u64) -> Duration {
        Duration::from_millis(self.below(bound))
    }
}

/// The journal with the highest generation in `dir`.
fn newest_journal(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with("journal.") && name.ends_with(".ndjson")
        })
        .max()
}

/// Appends the first `length(line)` bytes of the newest journal's last line to it, as a
/// write cut short by a kill leaves them. Does nothing when the journal already ends
/// inside a line: a write cannot follow a torn one.
fn tear_newest_journal(dir: &Path, length: impl FnOnce(usize) -> usize) -> bool {
    let Some(journal) = newest_journal(dir) else {
        return false;
    };
    let bytes = fs::read(&journal).unwrap();
    let Some(body) = bytes.strip_suffix(b"\n") else {
        return false;
    };
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let line = &body[start..];
    if line.len() < 2 {
        return false;
    }
    let cut = length(line.len()).clamp(1, line.len() - 1);
    OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap()
        .write_all(&line[..cut])
        .unwrap();
    true
}

/// Creates `count` follow-ups one after another, each acknowledged; returns their ids.
async fn create(server: &Server, tenant: &str, count: usize) -> Vec<String> {
    let client = client();
    let url = format!("{}/v1/crm/followups", server.address);
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let id = Uuid::new_v4().to_string();
        let response = client
            .post(&url)
            .json(&follow_up_body(tenant, &id, FUTURE))
            .send()
            .await
            .expect("the server answers");
        assert_eq!(response.status(), 200, "{}", server.log_text());
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_journal_tail_followed_by_more_writes_and_a_second_kill_9_still_starts() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let tenant = "torn-then-more";
    let mut acknowledged = HashSet::new();

    let mut server = Server::start(data_dir.path(), logs.path(), &client, &NEVER_COMPACT).await;
    acknowledged.extend(create(&server, tenant, 300).await);
    server.kill();
    assert!(tear_newest_journal(data_dir.path(), |_| 40));

    // The torn line is the newest journal's tail: a write never acknowledged, ignored.
    let mut server = Server::start(data_dir.path(), logs.path(), &client, &NEVER_COMPACT).await;
    assert_all_there(&server, tenant, &acknowledged).await;
    acknowledged.extend(create(&server, tenant, 300).await);
    server.kill();

    // A newer journal now follows the one that was torn: the start must not see damage.
    let server = Server::start(data_dir.path(), logs.path(), &client, &NEVER_COMPACT).await;
    assert_all_there(&server, tenant, &acknowledged).await;
}

/// Starts, loads and kills the binary on `data_dir` `cycles` times, at random instants,
/// tearing the newest journal before some starts. Every start must come up (or be killed
/// before it could) and serve every follow-up of `tenant` acknowledged so far.
async fn crash_loop(
    data_dir: &Path,
    tenant: &str,
    mut acknowledged: HashSet<String>,
    cycles: usize,
) {
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let mut dice = Dice::new();
    for cycle in 0..cycles {
        let torn = dice.below(2) == 0
            && tear_newest_journal(data_dir, |length| 1 + dice.below(length as u64) as usize);
        let context = format!("seed {}, cycle {cycle}, torn tail: {torn}", dice.seed);
        let log = logs.path().join(format!("cycle-{cycle}.log"));
        let mut server = Server::spawn(data_dir, log, &COMPACT_OFTEN);
        if dice.below(3) == 0 {
            // Killed during start-up: locking, verifying, converting or compacting.
            tokio::time::sleep(dice.millis_below(500)).await;
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "{context}: the start exited with {status}:\n{}",
                    server.log_text()
                );
            }
            server.kill();
            continue;
        }
        if let Err(log) = server.wait_until_healthy(&client).await {
            assert!(
                log.contains("cannot listen"),
                "{context}: the start was refused:\n{log}"
            );
            continue;
        }
        assert_all_there(&server, tenant, &acknowledged).await;
        let (writers, acknowledged_now) = start_writers(&client, &server, tenant, FUTURE);
        tokio::time::sleep(dice.millis_below(1_500)).await;
        server.kill();
        for outcome in writers.join_all().await {
            outcome.unwrap_or_else(|message| panic!("{context}: {message}"));
        }
        acknowledged.extend(acknowledged_now.lock().unwrap().iter().cloned());
    }
    let server = Server::start(data_dir, logs.path(), &client, &NEVER_COMPACT).await;
    assert_all_there(&server, tenant, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_with_torn_tails_never_bricks_a_data_dir_nor_loses_an_acknowledged_write() {
    let data_dir = TempDir::new().expect("a data dir");
    crash_loop(data_dir.path(), "crash-loop", HashSet::new(), 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_from_the_node_services_data_dir_loses_nothing_it_adopted_or_took_later() {
    let data_dir = TempDir::new().expect("a data dir");
    let tenant = "node-service";
    let (ids, _) = write_node(data_dir.path(), tenant, 5_000);
    let adopted = ids.iter().map(Uuid::to_string).collect();
    crash_loop(data_dir.path(), tenant, adopted, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_from_a_first_release_data_dir_loses_nothing_it_upgraded_or_took_later() {
    let data_dir = TempDir::new().expect("a data dir");
    let tenant = "first-release";
    let ids = write_first_release(data_dir.path(), tenant, 5_000);
    let upgraded = ids.iter().map(Uuid::to_string).collect();
    crash_loop(data_dir.path(), tenant, upgraded, 10).await;
}
