//! Reads from a hot standby while it keeps up.
//!
//! A store made by `PgStore::reading_from` serves lists, single reads, traces and the
//! event feed from the standby while its lag is at most `max_lag`, and from the primary
//! otherwise or when the standby fails a call; everything else it is asked stays on the
//! primary. The lag is measured without comparing clocks: every `STEP` the monitor notes
//! the primary's WAL position when it moved, and asks the standby what it has replayed;
//! the lag is the age of the oldest noted position not replayed yet, and 0 when every one
//! is. It can be under-estimated by one step at most.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::time::Instant;

use crate::primary::Connector;
use crate::sql;
use crate::statement::query_value;
use crate::store::{PgError, PgOptions, bounded, pool};

/// How often the monitor measures the lag.
const STEP: Duration = Duration::from_millis(100);

/// The standby and what the monitor last found.
pub(crate) struct Replica {
    pub(crate) pool: Pool,
    max_lag: Duration,
    usable: AtomicBool,
    lag_ms: AtomicU64,
}

impl Replica {
    /// Builds the standby's pool and starts its monitor, which asks `primary` for its
    /// position; nothing is read from the standby until the monitor has found it fresh.
    pub(crate) fn start(
        options: &PgOptions,
        max_lag: Duration,
        primary: Pool,
    ) -> Result<Arc<Self>, PgError> {
        let pool = pool(options, Connector::Standby)?;
        let replica = Arc::new(Self {
            pool,
            max_lag,
            usable: AtomicBool::new(false),
            lag_ms: AtomicU64::new(u64::MAX),
        });
        tokio::spawn(monitor(Arc::downgrade(&replica), primary, options.timeout));
        Ok(replica)
    }

    /// Whether reads may go to the standby now.
    pub(crate) fn usable(&self) -> bool {
        self.usable.load(Ordering::Acquire)
    }

    /// The lag last measured, in milliseconds; `u64::MAX` while it is unknown.
    pub(crate) fn lag_ms(&self) -> u64 {
        self.lag_ms.load(Ordering::Acquire)
    }

    /// Not to be read from until the monitor finds it fresh again (a call on it failed).
    pub(crate) fn set_aside(&self) {
        self.usable.store(false, Ordering::Release);
    }

    fn found(&self, lag: Result<Option<Duration>, String>) {
        let lag = match lag {
            Ok(lag) => lag,
            Err(cause) => {
                self.lag_ms.store(u64::MAX, Ordering::Release);
                self.usable.store(false, Ordering::Release);
                return tracing::debug!(%cause, "the replica's lag is unknown");
            }
        };
        let usable = lag.is_some_and(|lag| lag <= self.max_lag);
        let lag_ms = lag.map_or(u64::MAX, |lag| {
            u64::try_from(lag.as_millis()).unwrap_or(u64::MAX)
        });
        self.lag_ms.store(lag_ms, Ordering::Release);
        let was = self.usable.swap(usable, Ordering::AcqRel);
        if was != usable {
            let max_lag_ms = self.max_lag.as_millis();
            if usable {
                tracing::info!(lag_ms, "reads go to the replica");
            } else {
                tracing::warn!(
                    lag_ms,
                    max_lag_ms,
                    "the replica lags; reads go to the primary"
                );
            }
        }
    }
}

/// The primary positions the standby may not have replayed yet, oldest first.
#[derive(Default)]
struct Positions {
    noted: VecDeque<(i64, Instant)>,
    /// Whether the standby was ever seen to have replayed a noted position: until then,
    /// how old its state is cannot be told.
    caught_up: bool,
}

impl Positions {
    /// Notes where the primary is, when it has moved.
    fn primary_at(&mut self, position: i64, now: Instant) {
        if self.noted.back().is_none_or(|(last, _)| position > *last) {
            self.noted.push_back((position, now));
        }
    }

    /// Forgets what the standby has replayed; the age of the oldest position left, or
    /// `None` before the standby has been seen to catch up once.
    fn replayed(&mut self, position: i64, now: Instant) -> Option<Duration> {
        while self
            .noted
            .front()
            .is_some_and(|(noted, _)| *noted <= position)
        {
            self.noted.pop_front();
            self.caught_up = true;
        }
        if !self.caught_up {
            return None;
        }
        Some(
            self.noted
                .front()
                .map_or(Duration::ZERO, |(_, at)| now.duration_since(*at)),
        )
    }
}

/// Measures the lag every `STEP` until the store is gone.
async fn monitor(replica: Weak<Replica>, primary: Pool, timeout: Duration) {
    let mut positions = Positions::default();
    let mut reported: Option<String> = None;
    let mut ticks = tokio::time::interval(STEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(replica) = replica.upgrade() else {
            return;
        };
        let primary_at = bounded(
            &primary,
            timeout,
            async |client| query_value::<i64>(&*client, sql::PRIMARY_POSITION, &[]).await,
            |error| error,
        )
        .await;
        let replayed = bounded(
            &replica.pool,
            timeout,
            async |client| query_value::<i64>(&*client, sql::REPLAYED_POSITION, &[]).await,
            |error| error,
        )
        .await;
        let now = Instant::now();
        let lag = match (primary_at, replayed) {
            (Ok(primary_at), Ok(replayed)) => {
                positions.primary_at(primary_at, now);
                reported = None;
                Ok(positions.replayed(replayed, now))
            }
            // Without the primary's position the lag is unknown; reads fall back to the
            // primary, which cannot serve them either.
            (Err(error), _) => Err(format!("the primary: {}", cause(&error))),
            (_, Err(error)) => Err(cause(&error)),
        };
        // Said once per cause, not at every step.
        if let Err(cause) = &lag
            && reported.as_ref() != Some(cause)
        {
            tracing::warn!(%cause, "reads cannot go to the replica");
            reported = Some(cause.clone());
        }
        replica.found(lag);
    }
}

/// The most telling cause of a failed call: the server's own message when it answered.
fn cause(error: &crm_ports::StoreError) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut last = error.to_string();
    while let Some(inner) = source {
        if let Some(db) = inner
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::as_db_error)
        {
            return db.message().to_owned();
        }
        last = inner.to_string();
        source = inner.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_that_replayed_everything_noted_has_no_lag() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(100, start);
        positions.primary_at(200, start + Duration::from_millis(100));
        let lag = positions.replayed(200, start + Duration::from_millis(150));
        assert_eq!(lag, Some(Duration::ZERO));
    }

    #[test]
    fn the_lag_is_the_age_of_the_oldest_position_not_replayed() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(100, start);
        positions.primary_at(200, start + Duration::from_millis(100));
        positions.primary_at(300, start + Duration::from_millis(200));
        let lag = positions.replayed(150, start + Duration::from_millis(250));
        assert_eq!(lag, Some(Duration::from_millis(150)));
    }

    #[test]
    fn an_idle_primary_does_not_age_a_stopped_standby() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(100, start);
        positions.primary_at(100, start + Duration::from_secs(5));
        let lag = positions.replayed(100, start + Duration::from_secs(6));
        assert_eq!(lag, Some(Duration::ZERO));
    }

    #[test]
    fn a_standby_that_stopped_replaying_ages_while_the_primary_writes() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(100, start);
        assert_eq!(positions.replayed(100, start), Some(Duration::ZERO));
        positions.primary_at(200, start + Duration::from_secs(1));
        positions.primary_at(300, start + Duration::from_secs(2));
        let lag = positions.replayed(150, start + Duration::from_secs(3));
        assert_eq!(lag, Some(Duration::from_secs(2)));
    }

    #[test]
    fn a_standby_never_seen_to_catch_up_has_an_unknown_lag() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(100, start);
        assert_eq!(positions.replayed(50, start), None);
        assert_eq!(
            positions.replayed(50, start + Duration::from_secs(60)),
            None
        );
    }
}
