//! The binary's command line: help, start-up failures, log formats, and secrets that
//! must never be printed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_crm-api");
const TOKEN: &str = "tok-5f1d-never-print-me";
const PASSWORD: &str = "pw-hunter2-never-print-me";

fn run(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(BINARY)
        .args(args)
        .env("CRM_API_TOKEN", TOKEN)
        .env("CRM_INTERNAL_TOKEN", TOKEN)
        .env(
            "CRM_DATABASE_URL",
            format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/test"),
        )
        .env_remove("DATABASE_URL")
        .output()
        .expect("the binary runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code(), text)
}

#[test]
fn help_lists_every_flag_and_prints_no_secret_from_the_environment() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, Some(0));
    for flag in [
        "--bind",
        "--backend",
        "--data-dir",
        "--database-url",
        "--read-database-url",
        "--read-max-lag-ms",
        "--pg-schema",
        "--api-token",
        "--internal-token",
        "--body-limit",
        "--worker-interval-ms",
        "--log-format",
        "--workflows",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    assert!(!text.contains(TOKEN) && !text.contains(PASSWORD), "{text}");
}

#[test]
fn every_subcommand_takes_every_flag_after_it_and_lists_them_in_its_help() {
    for subcommand in ["serve", "migrate", "adopt", "backup"] {
        let (code, text) = run(&[subcommand, "--help"]);
        assert_eq!(code, Some(0), "{subcommand} --help: {text}");
        for flag in [
            "--bind",
            "--backend",
            "--data-dir",
            "--database-url",
            "--log-format",
        ] {
            assert!(
                text.contains(flag),
                "{subcommand} --help lacks {flag}:\n{text}"
            );
        }
        assert!(!text.contains(TOKEN) && !text.contains(PASSWORD), "{text}");
    }
    // A flag after the subcommand is read like one before it.
    let (code, text) = run(&["migrate", "--backend", "file"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("migrate applies to --backend postgres"),
        "{text}"
    );
}

#[test]
fn a_backup_of_postgresql_is_left_to_postgresql_s_own_tools() {
    let backups = tempfile::tempdir().unwrap();
    let (code, text) = run(&[
        "backup",
        "--backend",
        "postgres",
        "--to",
        backups.path().join("copy").to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("pg_dump"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

#[test]
fn a_database_that_answers_but_does_not_exist_stops_start_up_at_once_saying_so() {
    let Some(url) = std::env::var("CRM_TEST_DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must set CRM_TEST_DATABASE_URL"
        );
        eprintln!("skipped: CRM_TEST_DATABASE_URL is not set");
        return;
    };
    let base = url.rsplit_once('/').map_or(url.as_str(), |(base, _)| base);
    let missing = format!("{base}/crm_no_such_database_{}", std::process::id());
    let started = Instant::now();
    let (code, text) = run(&[
        "--backend",
        "postgres",
        "--database-url",
        &missing,
        "--pg-startup-wait-ms",
        "60000",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("does not exist"), "{text}");
    assert!(
        !text.contains("retrying"),
        "a database that does not exist is not waited for: {text}"
    );
    // Not the 60 s a database that cannot be reached would be waited for.
    assert!(started.elapsed() < Duration::from_secs(30), "{text}");
}

#[test]
fn an_unreachable_database_stops_start_up_with_one_line_and_no_password() {
    let (code, text) = run(&["--backend", "postgres", "--pg-startup-wait-ms", "0"]);
    assert_eq!(code, Some(1));
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("crm-api: database still unreachable"),
        "{text}"
    );
    // The cause, not just "db error".
    assert!(last.contains("refused"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
    let (_, json) = run(&[
        "--backend",
        "postgres",
        "--pg-startup-wait-ms",
        "0",
        "--log-format",
        "json",
    ]);
    let last: serde_json::Value =
        serde_json::from_str(json.lines().last().unwrap_or_default()).expect("a JSON line");
    assert!(
        last["error"]
            .as_str()
            .is_some_and(|error| error.starts_with("database still unreachable")),
        "{json}"
    );
    assert!(!json.contains(PASSWORD), "{json}");
}

#[test]
fn bad_values_stop_start_up_with_a_non_zero_exit_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let bad_workflows = dir.path().join("workflows.json");
    std::fs::write(&bad_workflows, r#"{"version": "1", "module": "m", "workflows": {"campaign": {"states": ["draft"], "transitions": [{"from": "draft", "to": "gone", "trigger": "go"}]}}}"#).unwrap();
    let odd_workflows = dir.path().join("odd-workflows.json");
    std::fs::write(&odd_workflows, r#"{"version": "1", "module": "m", "workflows": {"campaign": {"states": ["draft", "archived"], "transitions": [{"from": "draft", "to": "archived", "trigger": "archive"}]}}}"#).unwrap();
    let twice_listed = dir.path().join("answers-twice.json");
    std::fs::write(&twice_listed, r#"{"version": "1", "provider": "p", "answers": [{"codes": ["131048"], "action": "finish"}, {"codes": ["131048"], "action": "opt_out"}]}"#).unwrap();
    let off_contract = dir.path().join("answers-off-contract.json");
    std::fs::write(
        &off_contract,
        r#"{"version": "1", "provider": "p", "answers": [{"codes": ["1"], "action": "explode"}]}"#,
    )
    .unwrap();
    let answers = |path: &std::path::Path| path.to_str().unwrap().to_owned();
    let (twice_listed, off_contract) = (answers(&twice_listed), answers(&off_contract));
    let cases: [(&[&str], &str); 10] = [
        (
            &[
                "--read-database-url",
                "postgres://localhost/crm",
                "--data-dir",
                data_dir,
            ],
            "--read-database-url",
        ),
        (
            &["--provider-answers", &twice_listed, "--data-dir", data_dir],
            "answers-twice.json",
        ),
        (
            &["--provider-answers", &off_contract, "--data-dir", data_dir],
            "provider-answers.schema.json",
        ),
        (
            &[
                "--provider-answers",
                "/nonexistent/answers.json",
                "--data-dir",
                data_dir,
            ],
            "/nonexistent/answers.json",
        ),
        (&["--backend", "mongo"], "mongo"),
        (
            &["--bind", "not-an-address", "--data-dir", data_dir],
            "--bind",
        ),
        (
            &[
                "--workflows",
                bad_workflows.to_str().unwrap(),
                "--data-dir",
                data_dir,
            ],
            "gone",
        ),
        (
            &["--body-limit", "0", "--data-dir", data_dir],
            "--body-limit",
        ),
        (&["--api-token", " ", "--data-dir", data_dir], "--api-token"),
        (
            &[
                "--workflows",
                odd_workflows.to_str().unwrap(),
                "--data-dir",
                data_dir,
            ],
            "archived",
        ),
    ];
    for (args, named) in cases {
        let (code, text) = run(args);
        assert_ne!(code, Some(0), "{args:?} started");
        assert!(text.contains(named), "{args:?}: {text}");
        assert!(!text.contains(TOKEN), "{text}");
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BINARY)
        .args([
            "--log-format",
            "json",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .env_remove("CRM_API_TOKEN")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if health_with_request_id(port, "cli-test-1") {
            break;
        }
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "SIGTERM ends the server with status 0"
    );
    let lines: Vec<serde_json::Value> = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).expect("every log line is a JSON object"))
        .collect();
    let request = lines
        .iter()
        .find(|line| line["request_id"] == "cli-test-1")
        .expect("a line for the request");
    assert_eq!(request["method"], "GET");
    assert_eq!(request["route"], "/health");
    assert_eq!(request["status"], 200);
    assert!(request["latency_ms"].is_number());
}

/// A plain HTTP/1.1 `GET /health`; true when it answered 200.
fn health_with_request_id(port: u16, request_id: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let request = format!(
        "GET /health HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {request_id}\r\nConnection: close\r\n\r\n"
    );
    let mut reply = String::new();
    stream.write_all(request.as_bytes()).is_ok()
        && stream.read_to_string(&mut reply).is_ok()
        && reply.starts_with("HTTP/1.1 200")
}

#[test]
fn with_json_logs_every_line_is_json_start_up_refusals_included_and_no_build_path_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    // A data dir in use: the second process refuses.
    let mut first = Command::new(BINARY)
        .args(["--bind", "127.0.0.1:0", "--data-dir", data_dir])
        .env_remove("CRM_API_TOKEN")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("manifest.json").exists() {
        assert!(Instant::now() < deadline, "the first server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refusals: [&[&str]; 3] = [
        &["--data-dir", data_dir],
        &["--bind", "0.0.0.0:0", "--data-dir", data_dir],
        &["--backend", "postgres", "--pg-startup-wait-ms", "0"],
    ];
    for args in refusals {
        let (code, text) = run(&[&["--log-format", "json"], args].concat());
        assert_eq!(code, Some(1), "{args:?}: {text}");
        assert!(!text.trim().is_empty(), "{args:?} printed nothing");
        for line in text.lines() {
            let object: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|_| panic!("{args:?}: not a JSON line: {line}"));
            assert!(object.get("log.file").is_none(), "{line}");
            assert!(!line.contains(".cargo/registry"), "{line}");
        }
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["level"], "ERROR", "{text}");
    }
    let _ = first.kill();
    let _ = first.wait();
}

/// A copy of the Node.js service's data dir of the file store's fixtures.
fn node_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a data dir");
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crm-adapters-file/tests/fixtures/node");
    for name in ["campaigns.json", "followups.json"] {
        std::fs::copy(fixture.join(name), dir.path().join(name)).expect("a fixture file");
    }
    dir
}

fn entries(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap_or_default();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
            )
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn adopt_check_reports_what_would_be_adopted_and_changes_nothing() {
    let dir = node_data_dir();
    let path = dir.path().to_str().unwrap();
    let before = entries(dir.path());

    let (code, text) = run(&["--data-dir", path, "adopt", "--check"]);

    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("3 campaign(s) and 3 follow-up(s) will be adopted"),
        "{text}"
    );
    assert_eq!(entries(dir.path()), before, "a dry run changes nothing");

    // Flags may follow the subcommand, as operators type them.
    let (code, text) = run(&["adopt", "--data-dir", path]);
    assert_eq!(code, Some(0), "{text}");
    assert!(dir.path().join("node-backup/campaigns.json").exists());
    let (code, text) = run(&["--data-dir", path, "adopt", "--check"]);
    assert_eq!(
        (code, text.trim()),
        (Some(0), "nothing of the Node.js service to adopt here")
    );
}

#[test]
fn adopt_check_names_every_record_that_breaks_a_rule() {
    let dir = node_data_dir();
    let file = dir.path().join("followups.json");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\"status\": \"failed\"", "\"status\": \"bounced\"")
        .replace("+14155550123", "4155550123");
    std::fs::write(&file, text).unwrap();
    let before = entries(dir.path());

    let (code, text) = run(&[
        "adopt",
        "--check",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);

    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("followups.json item 1 (followup_id 4c5d6e7f"),
        "{text}"
    );
    assert!(text.contains("/phone_e164"), "{text}");
    assert!(text.contains("followups.json item 2"), "{text}");
    assert!(text.contains("/status"), "{text}");
    assert_eq!(entries(dir.path()), before);
}
