//! The README, run as written, the way doc tests keep Rust examples honest.
//!
//! Its shell blocks are of three kinds, by the word after `sh` in the fence:
//! - none: a walkthrough block. They all run, in order, in one `bash`, against the real
//!   binary on a new file store (`$API` points at it, `crm-api` is on the `PATH`), and a
//!   `curl` that gets an error status fails the run;
//! - `ci`: commands CI runs itself; each must be a line of `.ci/run`;
//! - `manual`: commands that need what a test does not have (a Docker engine, the
//!   Node.js service's data, a PostgreSQL host to back up); they are not run.

mod process;

use std::path::Path;
use std::process::Command;

use process::{BINARY, Server, client};
use tempfile::TempDir;

const README: &str = include_str!("../../../README.md");
const CI_RUN: &str = include_str!("../../../.ci/run");

#[derive(Debug)]
struct Block {
    /// The word after `sh`, if any.
    kind: Option<String>,
    /// The line of the opening fence.
    line: usize,
    text: String,
}

/// Every ```sh block, with the indentation of its fence removed (blocks inside list
/// items are indented).
fn shell_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, usize, Option<String>, Vec<String>)> = None;
    for (index, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```sh") {
                    let kind = info.split_whitespace().next().map(str::to_owned);
                    open = Some((index + 1, indent, kind, Vec::new()));
                }
            }
            Some((start, fence_indent, kind, lines)) => {
                if trimmed.starts_with("```") {
                    blocks.push(Block {
                        kind: kind.take(),
                        line: *start,
                        text: lines.join("\n"),
                    });
                    open = None;
                } else {
                    let cut = (*fence_indent).min(indent);
                    lines.push(line[cut..].to_owned());
                }
            }
        }
    }
    assert!(open.is_none(), "README.md ends inside a code block");
    blocks
}

/// Whether `program` can be run here.
fn available(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

#[test]
fn every_shell_block_of_the_readme_has_a_known_kind() {
    let blocks = shell_blocks(README);
    assert!(
        blocks.len() > 5,
        "the README has few shell blocks: {blocks:?}"
    );
    for block in &blocks {
        assert!(
            matches!(block.kind.as_deref(), None | Some("ci" | "manual")),
            "README.md line {}: unknown block kind {:?}",
            block.line,
            block.kind
        );
    }
}

#[test]
fn every_command_the_readme_says_ci_runs_is_in_ci() {
    let ci_lines: Vec<&str> = CI_RUN.lines().map(str::trim).collect();
    for block in shell_blocks(README)
        .iter()
        .filter(|block| block.kind.as_deref() == Some("ci"))
    {
        for command in block.text.lines() {
            let command = command.split(" #").next().unwrap_or_default().trim();
            if command.is_empty() || command.starts_with('#') || command.starts_with("export ") {
                continue;
            }
            assert!(
                ci_lines.iter().any(|line| line.contains(command)),
                "README.md line {}: `{command}` is not run by .ci/run",
                block.line
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs_as_written_against_the_binary() {
    let missing: Vec<&str> = ["bash", "curl", "jq"]
        .into_iter()
        .filter(|program| !available(program))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have {missing:?} to run the README"
        );
        eprintln!("skipped: the README walkthrough needs {missing:?}");
        return;
    }
    // The server serves the default data dir of the working dir, as the quick start does.
    let work = TempDir::new().expect("a working dir");
    let data_dir = work.path().join(".runtime-data/crm-automation");
    let server = Server::start(&data_dir, work.path(), &client(), &[]).await;

    let mut script = String::from(
        "set -euo pipefail\n\
         # An error status fails the run, as a reader would notice it.\n\
         curl() { command curl --fail-with-body \"$@\"; }\n",
    );
    for block in shell_blocks(README)
        .iter()
        .filter(|block| block.kind.is_none())
    {
        script.push_str(&format!(
            "echo '== README.md line {}' >&2\n{}\n",
            block.line, block.text
        ));
    }
    let binary_dir = Path::new(BINARY).parent().expect("the binary's dir");
    let path = format!(
        "{}:{}",
        binary_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let output = tokio::task::spawn_blocking({
        let (address, work) = (server.address.clone(), work.path().to_owned());
        move || {
            Command::new("bash")
                .arg("-c")
                .arg(script)
                .current_dir(work)
                .env("API", address)
                .env("PATH", path)
                .output()
                .expect("bash runs")
        }
    })
    .await
    .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the README walkthrough failed ({}):\n{printed}\nserver log:\n{}",
        output.status,
        server.log_text()
    );
}
