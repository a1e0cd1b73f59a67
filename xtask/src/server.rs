//! Starting the real `crm-api` binary and talking to it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::root;

/// A running `crm-api` process, killed when dropped.
pub struct Server {
    child: Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the binary (`release` or debug) and returns its path; `CRM_BENCH_BINARY` names
/// one built elsewhere instead (another commit's release, to compare the two in one run).
pub fn build(release: bool) -> anyhow::Result<PathBuf> {
    if let Some(binary) = std::env::var_os("CRM_BENCH_BINARY") {
        let binary = PathBuf::from(binary);
        anyhow::ensure!(
            binary.is_file(),
            "CRM_BENCH_BINARY names no file: {}",
            binary.display()
        );
        return Ok(binary);
    }
    let mut args = vec!["build", "--quiet", "--package", "crm-api"];
    if release {
        args.push("--release");
    }
    crate::run("cargo", &args)?;
    let profile = if release { "release" } else { "debug" };
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    Ok(target.join(profile).join("crm-api"))
}

/// A port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the process, from `/proc`, in bytes.
    pub fn resident_bytes(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .context("no VmRSS in /proc status")?
            .parse()?;
        Ok(kib * 1024)
    }

    /// CPU time the process has used (user and system), from `/proc`, in clock ticks.
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name, which may hold spaces: utime and stime are the
        // 12th and 13th of them.
        let rest = stat.rsplit_once(')').context("a /proc stat line")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let tick = |n: usize| -> anyhow::Result<u64> {
            Ok(fields.get(n).context("a /proc stat field")?.parse()?)
        };
        Ok(tick(11)? + tick(12)?)
    }

    /// Waits until the process has been idle (under 5 % of a core) for a second, at most
    /// `limit`: background work a load left behind (a file store's compaction) is done.
    /// How long it waited.
    pub async fn settle(&self, limit: Duration) -> anyhow::Result<Duration> {
        let started = std::time::Instant::now();
        let mut quiet = 0;
        let mut last = self.cpu_ticks()?;
        while quiet < 2 && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = self.cpu_ticks()?;
            // 100 ticks a second: 5 % of a core over half a second is 2.5 ticks.
            quiet = if now - last <= 2 { quiet + 1 } else { 0 };
            last = now;
        }
        Ok(started.elapsed())
    }

    /// SIGTERM, then waits for the exit; how long the graceful stop took.
    pub fn stop(mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let exit = self.child.wait()?;
        if !exit.success() {
            bail!("crm-api exited with {exit} after SIGTERM");
        }
        Ok(started.elapsed())
    }

    /// Starts the binary with `args` on a free port and waits until `/ready` answers.
    pub async fn start(binary: &std::path::Path, args: &[&str]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let bind = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["--bind", &bind])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut server = Self {
            child,
            base: format!("http://{bind}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("crm-api exited during start-up with {status}");
            }
            if let Ok(response) = client.get(format!("{}/ready", server.base)).send().await
                && response.status().is_success()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("crm-api did not become ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
