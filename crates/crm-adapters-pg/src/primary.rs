//! Finding the primary among the hosts of the database URL.
//!
//! `--database-url` may name several hosts: a primary and its standbys, in any order
//! (`postgres://db-a:5432,db-b:5432/crm?target_session_attrs=read-write`). Every
//! connection this process makes, pooled, listening or migrating, goes through
//! `connect`, which takes a host that accepts writes and, within one cluster (one
//! system identifier), is on a timeline no older than the newest this process has
//! connected to. After a failover the promoted standby starts a new timeline; a former
//! primary that comes back read-write is still on the old one, and is refused. A process
//! that has seen no timeline yet asks every host before it chooses, so a replica started
//! after the failover refuses the former primary too. A primary of another cluster (a
//! wrongly listed host, or the old cluster after `pg_upgrade`) is refused until restart.
//!
//! Hosts are tried from the one that last answered; when that one fails, the next attempt
//! begins with the next host, so a host that swallows packets costs one attempt its share
//! of the connect timeout, not every attempt.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::config::{Host, TargetSessionAttrs};
use tokio_postgres::{AsyncMessage, Client, Config, Error, NoTls};

/// What connections of these options have found, shared by every clone of the options:
/// the newest primary (cluster and timeline) and the host to try first.
#[derive(Clone, Debug, Default)]
pub(crate) struct Timeline(Arc<Seen>);

#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// The cluster's system identifier and its newest timeline; `None` before the first.
    newest: Mutex<Option<(i64, u32)>>,
    first_host: AtomicUsize,
}

impl Timeline {
    fn newest(&self) -> Option<(i64, u32)> {
        *self
            .0
            .newest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a primary of `system` on `timeline` may be written to: one of the cluster
    /// these options have connected to, on its newest timeline or a later one. Another
    /// cluster is refused, so that writes never split between two.
    fn admits(&self, system: i64, timeline: u32) -> bool {
        self.newest()
            .is_none_or(|(known, newest)| known == system && timeline >= newest)
    }

    fn saw(&self, system: i64, timeline: u32) {
        let mut newest = self
            .0
            .newest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match *newest {
            Some((known, seen)) if known != system || seen >= timeline => {}
            _ => *newest = Some((system, timeline)),
        }
    }
}

/// The least time a host is given to accept a connection.
const MIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a server said it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Standby,
    Primary { system: i64, timeline: u32 },
}

/// Whether the server is in recovery (a standby), its cluster's system identifier, and,
/// when it is not in recovery, the timeline it writes on: the first eight hex digits of
/// the current WAL file's name.
const ROLE: &str = "SELECT pg_is_in_recovery(), \
    (SELECT system_identifier FROM pg_control_system()), \
    CASE WHEN pg_is_in_recovery() THEN 0 \
    ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END";

/// An open connection.
pub(crate) struct Connected {
    pub client: Client,
    /// Drives the connection; ends when the client is dropped or the link fails.
    pub task: JoinHandle<()>,
    /// The payloads of the notifications heard on the connection.
    pub notifications: mpsc::UnboundedReceiver<String>,
}

/// A connection to the primary of `config`'s hosts. `timeline` is what these options
/// have seen.
pub(crate) async fn connect(config: &Config, timeline: &Timeline) -> Result<Connected, Error> {
    let mut hosts = single_hosts(config);
    if hosts.is_empty() {
        // No host to try: the driver's own error says so.
        hosts.push(config.clone());
    }
    let count = hosts.len();
    // Knowing no timeline yet, a choice in URL order could fall on a former primary.
    let ask_all = count > 1 && timeline.newest().is_none();
    let first = timeline.0.first_host.load(Ordering::Acquire) % count;
    let mut primaries: Vec<(usize, i64, u32, Connected)> = Vec::new();
    let mut failure = None;
    for index in (0..count).map(|offset| (first + offset) % count) {
        let host = &hosts[index];
        let (connected, role) = match probe(host).await {
            Ok(found) => found,
            Err(error) => {
                // The next attempt begins with the next host, unless another attempt has
                // moved the start already.
                if index == first {
                    let next = (first + 1) % count;
                    let _ = timeline.0.first_host.compare_exchange(
                        first,
                        next,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    );
                }
                failure = Some(error);
                continue;
            }
        };
        match role {
            Role::Primary {
                system,
                timeline: seen,
            } if timeline.admits(system, seen) => {
                if !ask_all {
                    timeline.saw(system, seen);
                    timeline.0.first_host.store(index, Ordering::Release);
                    return Ok(connected);
                }
                primaries.push((index, system, seen, connected));
            }
            role => failure = Some(refuse_logged(&connected.client, host, role, timeline).await),
        }
    }
    // Asked every host: the newest timeline wins, and a primary of the same cluster on
    // an older one is a former primary.
    primaries.sort_by_key(|(_, _, seen, _)| std::cmp::Reverse(*seen));
    let mut primaries = primaries.into_iter();
    let Some((index, system, seen, connected)) = primaries.next() else {
        return Err(failure.expect("every host tried either fails or is a primary"));
    };
    timeline.saw(system, seen);
    timeline.0.first_host.store(index, Ordering::Release);
    for (other, other_system, other_seen, stale) in primaries {
        let role = Role::Primary {
            system: other_system,
            timeline: other_seen,
        };
        if !timeline.admits(other_system, other_seen) {
            drop(refuse_logged(&stale.client, &hosts[other], role, timeline).await);
        }
    }
    Ok(connected)
}

/// A connection to `host` and what the server is, within the host's share of the
/// connect timeout: a server that accepts the connection and then says nothing must not
/// hold up the hosts after it.
async fn probe(host: &Config) -> Result<(Connected, Role), Error> {
    let share = host
        .get_connect_timeout()
        .copied()
        .unwrap_or(MIN_CONNECT_TIMEOUT);
    let found = tokio::time::timeout(share, async {
        let connected = open(host).await?;
        let role = role_of(&connected.client).await?;
        Ok((connected, role))
    });
    // The driver's own "timeout waiting for server", which it offers for this use.
    found
        .await
        .unwrap_or_else(|_| Err(Error::__private_api_timeout()))
}

/// Refuses a server that is not the primary wanted, saying why in the log.
async fn refuse_logged(client: &Client, host: &Config, role: Role, timeline: &Timeline) -> Error {
    let message = refusal(&describe(host), role, timeline.newest().unwrap_or_default());
    // A standby is where it should be; a second primary needs an operator.
    match role {
        Role::Standby => tracing::debug!(reason = %message, "not the primary"),
        Role::Primary { .. } => tracing::warn!(reason = %message, "a former primary refused"),
    }
    refuse(client, &message).await
}

/// A connection to the standby `config` names, for reads. A server that is not in
/// recovery is refused: a replica URL that points at a primary is a mistake to report,
/// not a second way to the primary.
pub(crate) async fn connect_standby(config: &Config) -> Result<Connected, Error> {
    let connected = open(config).await?;
    match role_of(&connected.client).await? {
        Role::Standby => Ok(connected),
        Role::Primary { .. } => {
            let message = format!(
                "{} is a primary, not a standby: reads stay on the primary",
                describe(config)
            );
            Err(refuse(&connected.client, &message).await)
        }
    }
}

/// A connection to one server, driven by a task of its own.
async fn open(config: &Config) -> Result<Connected, Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (heard, notifications) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                // Nobody listens on a pooled connection: a send that fails is nothing.
                Ok(AsyncMessage::Notification(notification)) => {
                    let _ = heard.send(notification.payload().to_owned());
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, "database connection closed");
                    return;
                }
            }
        }
    });
    Ok(Connected {
        client,
        task,
        notifications,
    })
}

async fn role_of(client: &Client) -> Result<Role, Error> {
    let row = client.query_one(ROLE, &[]).await?;
    let in_recovery: bool = row.get(0);
    let system: i64 = row.get(1);
    let timeline: i64 = row.get(2);
    Ok(if in_recovery {
        Role::Standby
    } else {
        Role::Primary {
            system,
            timeline: u32::try_from(timeline).unwrap_or(0),
        }
    })
}

/// Why a server is refused, given the cluster and timeline connected to.
fn refusal(server: &str, role: Role, (known, newest): (i64, u32)) -> String {
    match role {
        Role::Standby => format!("{server} is a standby (in recovery); writes need the primary"),
        Role::Primary { system, timeline } if system == known => format!(
            "{server} is a primary on timeline {timeline}, older than timeline {newest} \
             already connected to: a former primary, refused so that writes are not split \
             between two primaries"
        ),
        Role::Primary { system, .. } => format!(
            "{server} is a primary of another cluster (system identifier {system}, not \
             {known}): refused so that writes are not split between two; restart the \
             service to move to it"
        ),
    }
}

/// The refusal of a server, as the error of a statement on it, so that it reads like any
/// other refusal by a server: the driver offers no way to make one of its errors.
async fn refuse(client: &Client, message: &str) -> Error {
    let statement = format!(
        "DO $crm$ BEGIN RAISE EXCEPTION USING ERRCODE = 'read_only_sql_transaction', \
         MESSAGE = '{}'; END $crm$",
        message.replace('\'', "''").replace('$', "")
    );
    match client.batch_execute(&statement).await {
        Err(error) => error,
        Ok(()) => unreachable!("a DO block that raises cannot succeed"),
    }
}

fn describe(config: &Config) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(Host::Tcp(name)) => format!("the server at {name}:{port}"),
        Some(Host::Unix(path)) => format!("the server at {}:{port}", path.display()),
        None => "the server".to_owned(),
    }
}

/// One configuration per host of `config`, each with everything else of `config`. The
/// role check is ours, so each asks for any session.
fn single_hosts(config: &Config) -> Vec<Config> {
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let addresses = config.get_hostaddrs();
    let count = hosts.len().max(addresses.len());
    (0..count)
        .map(|index| {
            let mut single = Config::new();
            match hosts.get(index) {
                Some(Host::Tcp(name)) => {
                    single.host(name);
                }
                Some(Host::Unix(path)) => {
                    single.host_path(path);
                }
                None => {}
            }
            if let Some(address) = addresses.get(index) {
                single.hostaddr(*address);
            }
            // One port for every host, or one each.
            if let Some(port) = ports.get(index).or(ports.first()) {
                single.port(*port);
            }
            if let Some(user) = config.get_user() {
                single.user(user);
            }
            if let Some(password) = config.get_password() {
                single.password(password);
            }
            if let Some(dbname) = config.get_dbname() {
                single.dbname(dbname);
            }
            if let Some(options) = config.get_options() {
                single.options(options);
            }
            if let Some(name) = config.get_application_name() {
                single.application_name(name);
            }
            // An equal share each, so that one host that swallows packets leaves the
            // others time within the caller's bound.
            if let Some(timeout) = config.get_connect_timeout() {
                let share = *timeout / u32::try_from(count).unwrap_or(u32::MAX);
                single.connect_timeout(share.max(MIN_CONNECT_TIMEOUT));
            }
            if let Some(timeout) = config.get_tcp_user_timeout() {
                single.tcp_user_timeout(*timeout);
            }
            single
                .ssl_mode(config.get_ssl_mode())
                .channel_binding(config.get_channel_binding())
                .keepalives(config.get_keepalives())
                .keepalives_idle(config.get_keepalives_idle())
                .target_session_attrs(TargetSessionAttrs::Any);
            if let Some(interval) = config.get_keepalives_interval() {
                single.keepalives_interval(interval);
            }
            if let Some(retries) = config.get_keepalives_retries() {
                single.keepalives_retries(retries);
            }
            single
        })
        .collect()
}

/// A pool's way of connecting: to the primary (`connect`, sharing the options'
/// timeline), or to a standby for reads (`connect_standby`).
pub(crate) enum Connector {
    Primary(Timeline),
    Standby,
}

impl deadpool_postgres::Connect for Connector {
    fn connect(
        &self,
        config: &Config,
    ) -> Pin<Box<dyn Future<Output = Result<(Client, JoinHandle<()>), Error>> + Send + '_>> {
        let config = config.clone();
        Box::pin(async move {
            let connected = match self {
                Self::Primary(timeline) => connect(&config, timeline).await?,
                Self::Standby => connect_standby(&config).await?,
            };
            Ok((connected.client, connected.task))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_host_of_a_url_keeps_the_rest_of_the_url() {
        let config: Config = "postgres://crm:secret@db-a:5433,db-b:5434/crm\
            ?target_session_attrs=read-write&application_name=crm-test&options=-c%20x%3D1"
            .parse()
            .unwrap();
        let singles = single_hosts(&config);
        assert_eq!(singles.len(), 2);
        for (single, (host, port)) in singles.iter().zip([("db-a", 5433), ("db-b", 5434)]) {
            assert_eq!(single.get_hosts(), [Host::Tcp(host.to_owned())]);
            assert_eq!(single.get_ports(), [port]);
            assert_eq!(single.get_user(), Some("crm"));
            assert_eq!(single.get_password(), Some(&b"secret"[..]));
            assert_eq!(single.get_dbname(), Some("crm"));
            assert_eq!(single.get_application_name(), Some("crm-test"));
            assert_eq!(single.get_options(), Some("-c x=1"));
            assert_eq!(single.get_target_session_attrs(), TargetSessionAttrs::Any);
        }
    }

    #[test]
    fn one_port_serves_every_host() {
        let config: Config = "host=db-a,db-b port=6000".parse().unwrap();
        let ports: Vec<_> = single_hosts(&config)
            .iter()
            .map(|single| single.get_ports().to_vec())
            .collect();
        assert_eq!(ports, [vec![6000], vec![6000]]);
    }

    #[test]
    fn the_newest_timeline_only_moves_forward() {
        let timeline = Timeline::default();
        timeline.saw(7, 2);
        timeline.saw(7, 1);
        assert_eq!(timeline.newest(), Some((7, 2)));
        assert!(!timeline.admits(7, 1), "a former primary");
        assert!(timeline.admits(7, 3), "a newer promotion");
    }

    #[test]
    fn a_primary_of_another_cluster_is_refused() {
        let timeline = Timeline::default();
        timeline.saw(7, 5);
        assert!(
            !timeline.admits(8, 9),
            "another cluster, whatever its timeline"
        );
        timeline.saw(8, 9);
        assert_eq!(timeline.newest(), Some((7, 5)));
    }

    #[test]
    fn each_host_gets_a_share_of_the_connect_timeout() {
        let mut config: Config = "host=db-a,db-b,db-c".parse().unwrap();
        config.connect_timeout(Duration::from_secs(6));
        for single in single_hosts(&config) {
            assert_eq!(single.get_connect_timeout(), Some(&Duration::from_secs(2)));
        }
    }
}
