//! Repository automation, run as `cargo xtask <task>`.
//!
//! - `ci`: runs `.ci/run`, the one definition of CI;
//! - `deps`: check that `crm-domain` stays free of runtimes, frameworks and drivers;
//! - `smoke`: the whole flow against PostgreSQL through the real binary;
//! - `migrate`: apply the migrations to `CRM_DATABASE_URL`;
//! - `bench`: throughput and latency of the release binary (see `bench.rs`).

mod bench;
mod server;
mod smoke;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str).unwrap_or("help");
    let rest = &args[1.min(args.len())..];
    match task {
        "ci" => ci(),
        "deps" => dependency_check(),
        "smoke" => runtime()?.block_on(smoke::run()),
        "migrate" => migrate(),
        // The load comes from this process: measured with an unoptimized client, the
        // numbers would be the client's.
        "bench" if cfg!(debug_assertions) => {
            let mut args = vec![
                "run",
                "--quiet",
                "--release",
                "--package",
                "xtask",
                "--",
                "bench",
            ];
            args.extend(rest.iter().map(String::as_str));
            run("cargo", &args)
        }
        "bench" => runtime()?.block_on(bench::run(rest)),
        _ => {
            eprintln!("usage: cargo xtask <ci|deps|smoke|migrate|bench>");
            bail!("unknown task {task:?}")
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// The workspace root (the parent of this crate).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_owned()
}

/// Runs a command in the workspace root, failing with its command line if it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

/// The database the smoke, migrate and bench tasks use.
pub fn database_url() -> anyhow::Result<String> {
    std::env::var("CRM_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .context("set CRM_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test)")
}

/// CI has one definition, `.ci/run`; this runs it.
fn ci() -> anyhow::Result<()> {
    run("bash", &[".ci/run"])
}

/// The domain stays pure: no async runtime, web framework or database driver.
fn dependency_check() -> anyhow::Result<()> {
    let output = Command::new("cargo")
        .args([
            "tree",
            "-p",
            "crm-domain",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .current_dir(root())
        .output()?;
    let tree = String::from_utf8(output.stdout)?;
    let forbidden = ["tokio", "actix", "postgres", "deadpool", "reqwest"];
    let found: Vec<&str> = tree
        .lines()
        .filter(|line| forbidden.iter().any(|name| line.starts_with(name)))
        .collect();
    if !output.status.success() || !found.is_empty() {
        bail!("crm-domain must stay pure, but depends on: {found:?}");
    }
    eprintln!("dependency check: crm-domain depends on no runtime, framework or driver");
    Ok(())
}

fn migrate() -> anyhow::Result<()> {
    // The URL goes through the environment, never the command line, which is echoed.
    let url = database_url()?;
    let schema = std::env::var("CRM_PG_SCHEMA").unwrap_or_else(|_| "public".to_owned());
    eprintln!("$ cargo run --package crm-api -- --backend postgres --pg-schema {schema} migrate");
    let status = Command::new("cargo")
        .args([
            "run",
            "--quiet",
            "--package",
            "crm-api",
            "--",
            "--backend",
            "postgres",
        ])
        .args(["--pg-schema", &schema, "migrate"])
        .env("CRM_DATABASE_URL", url)
        .current_dir(root())
        .status()?;
    if !status.success() {
        bail!("migrate failed with {status}");
    }
    Ok(())
}
