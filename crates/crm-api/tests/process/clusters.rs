//! A PostgreSQL primary and its streaming standby, started by a test on free loopback
//! ports with PostgreSQL's own tools (`initdb`, `pg_basebackup -R`, `pg_ctl`), and
//! stopped when dropped.
//!
//! The tools are found with `pg_config --bindir` (or `CRM_TEST_PG_BINDIR`). The server
//! refuses to run as root, so as root every tool runs as the `postgres` user. A machine
//! that cannot run the clusters skips the test with a message, and fails it when `CI` is
//! set: a skipped test must never pass as green.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::free_port;

const PATIENCE: Duration = Duration::from_secs(60);

/// One cluster: its data directory and port.
pub struct Node {
    pub data: PathBuf,
    pub port: u16,
    log: PathBuf,
    /// Settings given at each start.
    settings: Vec<String>,
}

impl Node {
    /// A URL for the `postgres` database of this node.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A primary with one standby, synchronous or not.
pub struct Clusters {
    tools: Tools,
    pub primary: Node,
    pub standby: Node,
    dir: TempDir,
}

struct Tools {
    bindir: PathBuf,
    /// `runuser -u postgres --` when this process is root.
    as_postgres: bool,
}

impl Tools {
    fn find() -> Result<Self, String> {
        let bindir = match std::env::var("CRM_TEST_PG_BINDIR") {
            Ok(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                let output = Command::new("pg_config")
                    .arg("--bindir")
                    .output()
                    .map_err(|error| format!("pg_config cannot run: {error}"))?;
                PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
            }
        };
        for tool in ["initdb", "pg_ctl", "pg_basebackup", "postgres"] {
            if !bindir.join(tool).exists() {
                return Err(format!("{tool} is not in {}", bindir.display()));
            }
        }
        let uid = Command::new("id")
            .arg("-u")
            .output()
            .map_err(|error| format!("id cannot run: {error}"))?;
        let as_postgres = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        Ok(Self {
            bindir,
            as_postgres,
        })
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bindir.join(tool);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let output = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|error| panic!("{tool} cannot run: {error}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }
}

impl Clusters {
    /// A primary and a standby streaming from it, both up; with `synchronous`, the
    /// primary waits for the standby's flush before it reports a commit. `None` after
    /// saying why when the machine cannot run them (a failure under `CI`).
    pub fn start(test: &str, synchronous: bool) -> Option<Self> {
        let tools = match Tools::find() {
            Ok(tools) => tools,
            Err(reason) if std::env::var_os("CI").is_some() => {
                panic!("{test}: cannot start PostgreSQL clusters, and CI requires it: {reason}")
            }
            Err(reason) => {
                eprintln!("{test}: skipped, cannot start PostgreSQL clusters: {reason}");
                return None;
            }
        };
        let dir = TempDir::new().expect("a directory for the clusters");
        if tools.as_postgres {
            let status = Command::new("chown")
                .args(["postgres:", &dir.path().to_string_lossy()])
                .status()
                .expect("chown runs");
            assert!(status.success(), "the clusters' directory goes to postgres");
        }
        let node = |name: &str, settings: Vec<String>| Node {
            data: dir.path().join(name),
            port: free_port(),
            log: dir.path().join(format!("{name}.log")),
            settings,
        };
        let socket_dir = dir.path().to_string_lossy().into_owned();
        let common = |extra: &[&str]| {
            let mut settings = vec![
                "listen_addresses=127.0.0.1".to_owned(),
                format!("unix_socket_directories={socket_dir}"),
                // The test crashes servers, never the machine: no flush to disk needed.
                "fsync=off".to_owned(),
                "max_connections=60".to_owned(),
            ];
            settings.extend(extra.iter().map(|s| (*s).to_owned()));
            settings
        };
        let primary = node(
            "primary",
            common(if synchronous {
                &["synchronous_standby_names=*", "synchronous_commit=on"]
            } else {
                &[]
            }),
        );
        let standby = node("standby", common(&[]));
        tools.run(
            "initdb",
            &[
                "-D",
                &primary.data.to_string_lossy(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        let clusters = Self {
            tools,
            primary,
            standby,
            dir,
        };
        clusters.start_node(&clusters.primary);
        clusters.tools.run(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &clusters.primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &clusters.standby.data.to_string_lossy(),
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
                "--no-sync",
            ],
        );
        clusters.start_node(&clusters.standby);
        Some(clusters)
    }

    fn start_node(&self, node: &Node) {
        let options: Vec<String> = std::iter::once(format!("-p {}", node.port))
            .chain(node.settings.iter().map(|setting| format!("-c {setting}")))
            .collect();
        self.tools.run(
            "pg_ctl",
            &[
                "-D",
                &node.data.to_string_lossy(),
                "-l",
                &node.log.to_string_lossy(),
                "-o",
                &options.join(" "),
                "-w",
                "start",
            ],
        );
    }

    /// Starts a stopped node again with the settings it had.
    pub fn restart(&self, node: &Node) {
        self.start_node(node);
    }

    /// Starts the former primary again as a primary of its own, as a careless operator
    /// would, without the synchronous standby it had (there is none to wait for).
    pub fn restart_former_primary(&mut self) {
        self.primary
            .settings
            .retain(|setting| !setting.starts_with("synchronous_standby_names"));
        self.start_node(&self.primary);
    }

    /// `pg_ctl stop -m immediate`: the server's processes die at once, as in a crash.
    pub fn crash(&self, node: &Node) {
        self.tools.run(
            "pg_ctl",
            &[
                "-D",
                &node.data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// Promotes the standby and waits until it accepts writes.
    pub fn promote_standby(&self) {
        self.tools.run(
            "pg_ctl",
            &["-D", &self.standby.data.to_string_lossy(), "-w", "promote"],
        );
    }

    /// Waits until the primary reports its standby as streaming (and, for a synchronous
    /// pair, as its synchronous standby).
    pub async fn wait_for_streaming(&self) {
        let client = connect(&self.primary.url()).await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            let row = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE state = 'streaming'), \
                     count(*) FILTER (WHERE sync_state = 'sync') FROM pg_stat_replication",
                    &[],
                )
                .await
                .expect("pg_stat_replication answers");
            let (streaming, sync): (i64, i64) = (row.get(0), row.get(1));
            let wants_sync = self
                .primary
                .settings
                .iter()
                .any(|setting| setting.starts_with("synchronous_standby_names"));
            if streaming == 1 && (!wants_sync || sync == 1) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the standby did not start streaming:\n{}",
                self.standby.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A URL naming both nodes, primary first, that asks for a read-write server.
    pub fn failover_url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
            self.primary.port, self.standby.port
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        for node in [&self.primary, &self.standby] {
            // A node already stopped makes this fail, which is fine.
            let _ = self
                .tools
                .command("pg_ctl")
                .args([
                    "-D",
                    &node.data.to_string_lossy(),
                    "-m",
                    "immediate",
                    "stop",
                ])
                .output();
        }
    }
}

/// A plain connection, for a test to look at a node's tables.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("{url} is reachable: {error}"));
    tokio::spawn(connection);
    client
}
