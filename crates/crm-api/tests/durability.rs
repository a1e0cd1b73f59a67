//! Durability of the file store, through the real `crm-api` binary on a temporary data dir:
//! acknowledged writes survive `kill -9`, SIGTERM under load stops the process cleanly
//! without losing them, a corrupt snapshot or any believable damage to a data dir stops
//! start-up without a byte being touched, and a second process cannot open a data dir that
//! is in use.
//!
//! Every wait is bounded and polls a condition; a server left running by a failed
//! assertion is killed when its `Server` is dropped.

mod process;

use std::collections::HashSet;
use std::fs;
use std::time::{Duration, Instant};

use process::{
    EXIT_TIMEOUT, FUTURE, PAST, Server, client, start_writers, wait_for_exit, wait_for_load,
};
use tempfile::TempDir;
use uuid::Uuid;

/// The graceful shutdown bound: the server's own 30 s for in-flight requests, plus slack.
const GRACEFUL_EXIT_TIMEOUT: Duration = Duration::from_secs(35);
const LOAD_AT_LEAST: Duration = Duration::from_millis(1_500);
/// How long the clients run before the SIGTERM.
const SIGTERM_AFTER: Duration = Duration::from_secs(1);
const KILL_CYCLES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_follow_ups_survive_repeated_kill_9_under_load() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let mut acknowledged_so_far: HashSet<String> = HashSet::new();

    for cycle in 0..KILL_CYCLES {
        let mut server = Server::start(data_dir.path(), logs.path(), &client, &[]).await;
        let listed = server.follow_up_ids(&client, &tenant).await;
        let lost: Vec<&String> = acknowledged_so_far.difference(&listed).collect();
        assert!(
            lost.is_empty(),
            "cycle {cycle}: acknowledged but lost: {lost:?}"
        );

        let (clients, acknowledged) = start_writers(&client, &server, &tenant, FUTURE);
        wait_for_load(
            &acknowledged,
            LOAD_AT_LEAST,
            &server,
            &format!("cycle {cycle}"),
        )
        .await;
        // Killed while the clients still have requests in flight.
        server.kill();
        let finished = tokio::time::timeout(Duration::from_secs(30), clients.join_all())
            .await
            .expect("the clients stop once the server is gone");
        for outcome in finished {
            outcome.unwrap_or_else(|message| panic!("cycle {cycle}: {message}"));
        }
        let acknowledged = acknowledged.lock().expect("the ack list");
        acknowledged_so_far.extend(acknowledged.iter().cloned());
    }

    let server = Server::start(data_dir.path(), logs.path(), &client, &[]).await;
    let listed = server.follow_up_ids(&client, &tenant).await;
    let lost: Vec<&String> = acknowledged_so_far.difference(&listed).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_with_the_worker_on_exits_0_and_keeps_every_acknowledged_write() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let worker = ["--worker-interval-ms", "50"];
    let mut server = Server::start(data_dir.path(), logs.path(), &client, &worker).await;

    // Due follow-ups, so the worker is draining while the server shuts down.
    let (clients, acknowledged) = start_writers(&client, &server, &tenant, PAST);
    wait_for_load(&acknowledged, SIGTERM_AFTER, &server, "before SIGTERM").await;
    server.terminate();
    let terminated = Instant::now();
    // The clients keep going until the server stops answering.
    let status = wait_for_exit(&mut server.child, GRACEFUL_EXIT_TIMEOUT).await;
    let log = server.log_text();
    let status = status.unwrap_or_else(|| {
        panic!("crm-api still runs {GRACEFUL_EXIT_TIMEOUT:?} after SIGTERM:\n{log}")
    });
    assert!(
        status.success(),
        "crm-api exited with {status} after SIGTERM:\n{log}"
    );
    let stopping = terminated.elapsed();
    let finished = tokio::time::timeout(Duration::from_secs(30), clients.join_all())
        .await
        .expect("the clients stop once the server is gone");
    for outcome in finished {
        outcome.unwrap_or_else(|message| panic!("{message}\n{log}"));
    }

    let acknowledged: HashSet<String> = acknowledged
        .lock()
        .expect("the ack list")
        .iter()
        .cloned()
        .collect();
    let restarted = Server::start(data_dir.path(), logs.path(), &client, &[]).await;
    let listed = restarted.follow_up_ids(&client, &tenant).await;
    let lost: Vec<&String> = acknowledged.difference(&listed).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged follow-ups lost after SIGTERM (stopped in {stopping:?}): {lost:?}",
        lost.len(),
        acknowledged.len()
    );
}

#[tokio::test]
async fn a_corrupt_snapshot_stops_start_up_naming_the_file_and_leaves_it_untouched() {
    let garbage: &[u8] = br#"{"items": [{"followup_id": "#;
    for snapshot in ["followups.json", "campaigns.json"] {
        let data_dir = TempDir::new().expect("a data dir");
        let logs = TempDir::new().expect("a log dir");
        fs::write(
            data_dir.path().join("manifest.json"),
            r#"{"generation":0,"events_bytes":0,"outbound_bytes":0}"#,
        )
        .expect("a manifest");
        let corrupt = data_dir.path().join(snapshot);
        fs::write(&corrupt, garbage).expect("a corrupt snapshot");

        let mut server = Server::spawn(data_dir.path(), logs.path().join("server.log"), &[]);
        let status = wait_for_exit(&mut server.child, EXIT_TIMEOUT).await;

        let log = server.log_text();
        let status = status
            .unwrap_or_else(|| panic!("crm-api kept running on a corrupt {snapshot}:\n{log}"));
        assert!(
            !status.success(),
            "{snapshot}: exited with {status}:\n{log}"
        );
        assert!(
            log.contains(&corrupt.display().to_string()),
            "the message must name {}:\n{log}",
            corrupt.display()
        );
        assert_eq!(
            fs::read(&corrupt).expect("the snapshot is still there"),
            garbage,
            "{snapshot} was changed"
        );
    }
}

/// The store's committed format-2 data dir: snapshots, an event log, an outbound queue and
/// journals holding records past the snapshots.
const FORMAT_2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../crm-adapters-file/tests/fixtures/format-2"
);

/// One believable damage to the data dir, and the file a refusal must name.
struct Damage {
    what: &'static str,
    names: &'static str,
    apply: fn(&std::path::Path),
}

fn edit(dir: &std::path::Path, file: &str, change: impl FnOnce(String) -> String) {
    let path = dir.join(file);
    let text = fs::read_to_string(&path).expect("a fixture file");
    let damaged = change(text.clone());
    assert_ne!(damaged, text, "the damage to {file} changes nothing");
    fs::write(&path, damaged).expect("the damaged file");
}

const DAMAGES: [Damage; 9] = [
    Damage {
        what: "a manifest with one digit of a byte count changed",
        names: "manifest.json",
        apply: |dir| {
            edit(dir, "manifest.json", |text| {
                text.replacen("\"bytes\":1003", "\"bytes\":1002", 1)
            })
        },
    },
    Damage {
        what: "campaigns.json emptied to valid JSON",
        names: "campaigns.json",
        apply: |dir| edit(dir, "campaigns.json", |_| "{\"items\": []}\n".to_owned()),
    },
    Damage {
        what: "campaigns.json missing",
        names: "campaigns.json",
        apply: |dir| fs::remove_file(dir.join("campaigns.json")).expect("removed"),
    },
    Damage {
        what: "followups.json with one phone digit changed",
        names: "followups.json",
        apply: |dir| {
            edit(dir, "followups.json", |text| {
                text.replacen("+5511", "+5512", 1)
            })
        },
    },
    Damage {
        what: "events.ndjson with its first line removed",
        names: "events.ndjson",
        apply: |dir| {
            edit(dir, "events.ndjson", |text| {
                text.split_once('\n').expect("lines").1.to_owned()
            })
        },
    },
    Damage {
        what: "outbound-queue.ndjson cut to nothing",
        names: "outbound-queue.ndjson",
        apply: |dir| edit(dir, "outbound-queue.ndjson", |_| String::new()),
    },
    Damage {
        what: "sending-policies.json replaced by other valid JSON",
        names: "sending-policies.json",
        apply: |dir| {
            edit(dir, "sending-policies.json", |_| {
                "{\"items\":[{}]}".to_owned()
            })
        },
    },
    Damage {
        what: "a journal with a whole record removed from the middle",
        names: "journal.000003.ndjson",
        apply: |dir| {
            edit(dir, "journal.000003.ndjson", |text| {
                let lines: Vec<&str> = text.lines().collect();
                assert!(lines.len() >= 4, "the fixture journal holds records");
                let kept: Vec<&str> = lines
                    .iter()
                    .enumerate()
                    .filter(|(at, _)| *at != 2)
                    .map(|(_, line)| *line)
                    .collect();
                kept.join("\n") + "\n"
            })
        },
    },
    Damage {
        what: "a journal emptied",
        names: "journal.000003.ndjson",
        apply: |dir| edit(dir, "journal.000003.ndjson", |_| String::new()),
    },
];

/// Every file of the dir and its bytes.
fn contents(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .expect("a data dir")
        .map(|entry| {
            let entry = entry.expect("an entry");
            let bytes = fs::read(entry.path()).expect("a file");
            (entry.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

#[tokio::test]
async fn a_believably_damaged_data_dir_stops_the_binary_naming_the_file_and_not_a_byte_changes() {
    for damage in DAMAGES {
        let data_dir = TempDir::new().expect("a data dir");
        let logs = TempDir::new().expect("a log dir");
        for (name, bytes) in contents(std::path::Path::new(FORMAT_2)) {
            fs::write(data_dir.path().join(name), bytes).expect("a fixture copy");
        }
        (damage.apply)(data_dir.path());
        let before = contents(data_dir.path());

        let mut server = Server::spawn(data_dir.path(), logs.path().join("server.log"), &[]);
        let status = wait_for_exit(&mut server.child, EXIT_TIMEOUT).await;

        let what = damage.what;
        let log = server.log_text();
        let status = status.unwrap_or_else(|| panic!("{what}: crm-api kept running:\n{log}"));
        assert!(!status.success(), "{what}: exited with {status}:\n{log}");
        assert!(
            log.contains(damage.names),
            "{what}: the refusal must name {}:\n{log}",
            damage.names
        );
        let mut after = contents(data_dir.path());
        // The data dir's lock file is the only thing start-up may add.
        after.retain(|name, _| before.contains_key(name) || !name.contains("lock"));
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "{what}: files were added or removed"
        );
        for (name, bytes) in &before {
            assert!(after[name] == *bytes, "{what}: {name} was changed");
        }
    }
}

#[tokio::test]
async fn a_second_process_on_a_data_dir_in_use_exits_quickly_and_leaves_the_first_serving() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let first = Server::start(data_dir.path(), logs.path(), &client, &[]).await;

    let mut second = Server::spawn(data_dir.path(), logs.path().join("second.log"), &[]);
    let started = Instant::now();
    let status = wait_for_exit(&mut second.child, EXIT_TIMEOUT).await;

    let log = second.log_text();
    let status = status.unwrap_or_else(|| panic!("a second crm-api runs on a used dir:\n{log}"));
    assert!(!status.success(), "exited with {status}:\n{log}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?} to refuse",
        started.elapsed()
    );
    assert!(
        log.to_lowercase().contains("in use"),
        "the message must say the dir is in use:\n{log}"
    );
    let health = client
        .get(format!("{}/health", first.address))
        .send()
        .await
        .expect("the first server still answers");
    assert_eq!(health.status(), 200);
}
