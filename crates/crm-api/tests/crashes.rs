//! The file store under attack, through the real `crm-api` binary: `kill -9` at any
//! instant of start-up and compaction (of its own journal, of a data dir of the first
//! release being upgraded, and of the Node.js service's being adopted), SIGTERM while a background compaction runs, and a disk
//! that fills up and frees again. Every acknowledged write must come back, and the
//! service must recover by itself.

mod process;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use process::data_dirs::{write_first_release, write_node};
use process::{
    CLIENTS, FUTURE, POLL_INTERVAL, Server, assert_all_there, client, follow_up_body,
    start_writers, wait_for_exit, wait_for_load,
};
use serde_json::Value;
use tempfile::TempDir;
use uuid::Uuid;

/// Delays after spawning at which a start-up is killed: from before the data dir is
/// read to well into the compaction that start-up begins.
const KILL_AFTER_MS: [u64; 10] = [0, 15, 40, 80, 130, 200, 300, 450, 700, 1_000];

/// Starts the binary and kills it `after` later, whatever it is doing.
async fn start_and_kill(data_dir: &Path, logs: &Path, flags: &[&str], after: Duration) {
    let log = logs.join(format!("killed-{}.log", Uuid::new_v4().simple()));
    let mut server = Server::spawn(data_dir, log, flags);
    tokio::time::sleep(after).await;
    server.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_any_instant_of_start_up_and_compaction_loses_nothing() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    // A large journal that nothing has folded in yet.
    let never = ["--file-compact-after-bytes", "1000000000000"];
    let server = Server::start(data_dir.path(), logs.path(), &client, &never).await;
    let (writers, acknowledged) = start_writers(&client, &server, &tenant, FUTURE);
    wait_for_load(&acknowledged, Duration::from_secs(3), &server, "preload").await;
    drop(server);
    writers.join_all().await;
    let acknowledged: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();

    // Every start-up now finds a journal larger than its threshold and folds it in the
    // background, so each kill lands somewhere in reading, verifying or compacting.
    let eager = ["--file-compact-after-bytes", "4096"];
    for after in KILL_AFTER_MS {
        start_and_kill(
            data_dir.path(),
            logs.path(),
            &eager,
            Duration::from_millis(after),
        )
        .await;
    }
    let server = Server::start(data_dir.path(), logs.path(), &client, &never).await;
    assert_all_there(&server, &tenant, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_then_kill_during_the_final_flush_loses_nothing() {
    // `docker stop` with a short grace period: SIGTERM starts the final compaction of a
    // large journal, SIGKILL cuts it short.
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let never = ["--file-compact-after-bytes", "1000000000000"];
    let mut acknowledged_so_far = HashSet::new();
    for grace_ms in [50, 150, 400] {
        let server = Server::start(data_dir.path(), logs.path(), &client, &never).await;
        let (writers, acknowledged) = start_writers(&client, &server, &tenant, FUTURE);
        wait_for_load(&acknowledged, Duration::from_secs(1), &server, "load").await;
        server.terminate();
        tokio::time::sleep(Duration::from_millis(grace_ms)).await;
        drop(server);
        writers.join_all().await;
        acknowledged_so_far.extend(acknowledged.lock().unwrap().iter().cloned());
    }
    let server = Server::start(data_dir.path(), logs.path(), &client, &never).await;
    assert_all_there(&server, &tenant, &acknowledged_so_far).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_background_compaction_runs_exits_within_the_shutdown_timeout() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    // Compactions run back to back while the clients write.
    let flags = [
        "--file-compact-after-bytes",
        "65536",
        "--shutdown-timeout-ms",
        "10000",
    ];
    let mut acknowledged_so_far = HashSet::new();
    for round in 0..3 {
        let mut server = Server::start(data_dir.path(), logs.path(), &client, &flags).await;
        let (writers, acknowledged) = start_writers(&client, &server, &tenant, FUTURE);
        wait_for_load(&acknowledged, Duration::from_secs(2), &server, "load").await;
        server.terminate();
        // The bound under test is the server's own 10 s; the slack is for a slow machine.
        let status = wait_for_exit(&mut server.child, Duration::from_secs(25)).await;
        let log = server.log_text();
        let status = status.unwrap_or_else(|| {
            panic!("round {round}: crm-api still runs 25 s after SIGTERM:\n{log}")
        });
        assert!(
            status.success(),
            "round {round}: exited with {status}:\n{log}"
        );
        assert!(
            log.contains("file store compacted"),
            "round {round}: no background compaction ran:\n{log}"
        );
        writers.join_all().await;
        acknowledged_so_far.extend(acknowledged.lock().unwrap().iter().cloned());
    }
    let server = Server::start(data_dir.path(), logs.path(), &client, &[]).await;
    assert_all_there(&server, &tenant, &acknowledged_so_far).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_release_data_dir_survives_kill_9_during_its_upgrade() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let tenant = "first-release";
    // The first release's data dir before its first compaction: one large journal.
    let ids = write_first_release(data_dir.path(), tenant, 20_000);

    for after in KILL_AFTER_MS {
        start_and_kill(
            data_dir.path(),
            logs.path(),
            &[],
            Duration::from_millis(after),
        )
        .await;
    }
    let server = Server::start(data_dir.path(), logs.path(), &client(), &[]).await;
    let expected: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
    assert_all_there(&server, tenant, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_data_dir_survives_kill_9_at_any_instant_of_its_adoption() {
    let data_dir = TempDir::new().expect("a data dir");
    let logs = TempDir::new().expect("a log dir");
    let tenant = "node-service";
    let (ids, originals) = write_node(data_dir.path(), tenant, 20_000);

    for after in KILL_AFTER_MS {
        start_and_kill(
            data_dir.path(),
            logs.path(),
            &[],
            Duration::from_millis(after),
        )
        .await;
        // The originals are always whole somewhere: in place until the adoption commits,
        // in the backup from then on.
        let committed = data_dir.path().join("manifest.json").exists();
        let kept_in = if committed {
            data_dir.path().join("node-backup")
        } else {
            data_dir.path().to_owned()
        };
        for (name, bytes) in &originals {
            assert_eq!(
                &fs::read(kept_in.join(name)).unwrap(),
                bytes,
                "{name} after a kill at {after} ms (committed: {committed})"
            );
        }
    }
    let server = Server::start(data_dir.path(), logs.path(), &client(), &[]).await;
    let expected: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
    assert_all_there(&server, tenant, &expected).await;
}

/// A small filesystem of its own, unmounted when dropped.
struct SmallDisk {
    mount: TempDir,
}

impl SmallDisk {
    /// A tmpfs of `megabytes`; `None` (the test is skipped) where mounting is not allowed,
    /// except under CI, where it must be.
    fn mount(megabytes: u32) -> Option<Self> {
        let mount = TempDir::new().expect("a mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(mount.path())
            .status();
        match status {
            Ok(status) if status.success() => Some(Self { mount }),
            outcome if std::env::var_os("CI").is_some() => {
                panic!("CI must be able to mount a tmpfs for the full-disk test: {outcome:?}")
            }
            outcome => {
                eprintln!("skipped: cannot mount a tmpfs ({outcome:?})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.mount.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_and_the_store_recovers_by_itself_once_there_is_room() {
    let Some(disk) = SmallDisk::mount(8) else {
        return;
    };
    let logs = TempDir::new().expect("a log dir");
    let data_dir = disk.path().join("data");
    let ballast = disk.path().join("ballast");
    fs::write(&ballast, vec![0u8; 6 * 1024 * 1024]).unwrap();
    let client = client();
    let tenant = format!("tenant-{}", Uuid::new_v4().simple());
    let server = Server::start(&data_dir, logs.path(), &client, &["--log-format", "json"]).await;
    let url = format!("{}/v1/crm/followups", server.address);

    // Create until the disk is full and creates are refused.
    let mut acknowledged = HashSet::new();
    let mut refused = 0;
    let started = Instant::now();
    while refused < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the disk never filled: {} acknowledged",
            acknowledged.len()
        );
        let id = Uuid::new_v4().to_string();
        let response = client
            .post(&url)
            .json(&follow_up_body(&tenant, &id, FUTURE))
            .send()
            .await
            .expect("the server answers");
        match response.status().as_u16() {
            200 => {
                acknowledged.insert(id);
            }
            503 => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"], "storage_unavailable", "{body}");
                refused += 1;
            }
            other => panic!("a create answered {other}:\n{}", server.log_text()),
        }
    }
    let ready = client
        .get(format!("{}/ready", server.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "a full disk is not ready");
    // Each refusal's cause is logged once, on a line that names its request.
    let failures: Vec<Value> = server
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "request failed")
        .collect();
    assert!(!failures.is_empty(), "no refusal was logged");
    for line in &failures {
        assert!(line["request_id"].is_string(), "no request id: {line}");
        assert_eq!(line["code"], "storage_unavailable", "{line}");
    }

    // Room again: without a restart, /ready and creates come back.
    fs::remove_file(&ballast).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client
            .get(format!("{}/ready", server.address))
            .send()
            .await
            .unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/ready still fails 30 s after the disk has room:\n{}",
            server.log_text()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    for _ in 0..CLIENTS {
        let id = Uuid::new_v4().to_string();
        let response = client
            .post(&url)
            .json(&follow_up_body(&tenant, &id, FUTURE))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", server.log_text());
        acknowledged.insert(id);
    }
    assert_all_there(&server, &tenant, &acknowledged).await;
    drop(server);
    let restarted = Server::start(&data_dir, logs.path(), &client, &[]).await;
    assert_all_there(&restarted, &tenant, &acknowledged).await;
}
