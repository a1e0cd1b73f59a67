//! Reads from a hot standby while it keeps up.
//!
//! A store made by `PgStore::reading_from` serves lists, single reads, traces and the
//! event feed from the standby while its lag is at most `max_lag`, and from the primary
//! otherwise or when the standby fails a call; everything else it is asked stays on the
//! primary. The lag is measured without comparing clocks: every `STEP` the monitor notes
//! the primary's WAL position when it moved, and asks the standby what it has replayed;
//! the standby may miss commits since the oldest noted position it has not replayed
//! (each noted at the look before the one that saw it), or since the last look when it
//! has replayed them all; reads go to it until then plus `max_lag`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::time::Instant;

use crate::primary::Connector;
use crate::sql;
use crate::statement::query_value;
use crate::store::{PgError, PgOptions, bounded, pool, telling_cause};

/// How often the monitor measures the lag.
const STEP: Duration = Duration::from_millis(100);
/// The longest the monitor waits before asking a standby that failed again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The most primary positions kept while the standby has not replayed them.
const MAX_NOTED: usize = 10_000;
/// How long a standby that failed a read is not read from, whatever its lag.
const SET_ASIDE: Duration = Duration::from_secs(1);

/// The standby and what the monitor last found.
pub(crate) struct Replica {
    pub(crate) pool: Pool,
    max_lag: Duration,
    /// The origin of the times below, in milliseconds.
    origin: Instant,
    /// Until when reads may go to the standby: the lag last measured, aged by the time
    /// since, reaches `max_lag` then. 0: not at all.
    fresh_until_ms: AtomicU64,
    /// Until when the standby is set aside after a failed read.
    aside_until_ms: AtomicU64,
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
            origin: Instant::now(),
            fresh_until_ms: AtomicU64::new(0),
            aside_until_ms: AtomicU64::new(0),
            lag_ms: AtomicU64::new(u64::MAX),
        });
        tokio::spawn(monitor(Arc::downgrade(&replica), primary, options.timeout));
        Ok(replica)
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether reads may go to the standby now: its last measured lag, plus the time
    /// since it was measured, is within `max_lag`, and no read failed on it just now.
    pub(crate) fn usable(&self) -> bool {
        let now = self.millis(Instant::now());
        now < self.fresh_until_ms.load(Ordering::Acquire)
            && now >= self.aside_until_ms.load(Ordering::Acquire)
    }

    /// The lag last measured, in milliseconds; `u64::MAX` while it is unknown.
    pub(crate) fn lag_ms(&self) -> u64 {
        self.lag_ms.load(Ordering::Acquire)
    }

    /// Not to be read from for a while: a read on it failed.
    pub(crate) fn set_aside(&self) {
        let until = self.millis(Instant::now() + SET_ASIDE);
        self.aside_until_ms.store(until, Ordering::Release);
    }

    /// What a look found: since when the standby may miss a commit (`None`: unknown).
    /// Reads may go to it until that time plus `max_lag`.
    fn found(&self, stale_since: Option<Instant>, now: Instant) {
        let lag_ms = stale_since.map_or(u64::MAX, |since| {
            u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
        });
        self.lag_ms.store(lag_ms, Ordering::Release);
        let fresh_until = stale_since.map_or(0, |since| self.millis(since + self.max_lag));
        self.fresh_until_ms.store(fresh_until, Ordering::Release);
    }
}

/// The primary positions the standby may not have replayed yet, oldest first, each with
/// a time the primary may already have been there.
#[derive(Default)]
struct Positions {
    noted: VecDeque<(i64, Instant)>,
    /// Whether the standby was ever seen to have replayed a noted position: until then,
    /// how old its state is cannot be told.
    caught_up: bool,
}

impl Positions {
    /// Notes where the primary is, when it has moved, at `since`: the time of the
    /// look before, when it may already have been there (over-estimating a lag by one
    /// step at most rather than under-estimating it). Past `MAX_NOTED`, a position in
    /// the middle is forgotten: the oldest stays, so the lag only grows.
    fn primary_at(&mut self, position: i64, since: Instant) {
        if self.noted.back().is_none_or(|(last, _)| position > *last) {
            self.noted.push_back((position, since));
        }
        if self.noted.len() > MAX_NOTED {
            self.noted.remove(1);
        }
    }

    /// Forgets what the standby has replayed; since when it may miss a commit: the time
    /// of the oldest position left, or `look` (when the primary was last asked) when it
    /// has replayed every one. `None` before it has been seen to catch up once.
    fn stale_since(&mut self, position: i64, look: Instant) -> Option<Instant> {
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
        Some(self.noted.front().map_or(look, |(_, at)| *at))
    }
}

/// Measures the lag every `STEP` until the store is gone. The primary is asked at every
/// step, so that its positions are noted even while the standby cannot answer; a
/// standby that fails is asked again after a back-off.
async fn monitor(replica: Weak<Replica>, primary: Pool, timeout: Duration) {
    let mut positions = Positions::default();
    let mut previous_look: Option<Instant> = None;
    let mut backoff = STEP;
    let mut next_ask = Instant::now();
    let mut reported: Option<String> = None;
    let mut was_usable = false;
    let mut ticks = tokio::time::interval(STEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(replica) = replica.upgrade() else {
            return;
        };
        let look = Instant::now();
        let primary_at = bounded(
            &primary,
            timeout,
            async |client| query_value::<i64>(&*client, sql::PRIMARY_POSITION, &[]).await,
            |error| error,
        )
        .await;
        let primary_at = match primary_at {
            Ok(position) => {
                positions.primary_at(position, previous_look.unwrap_or(look));
                previous_look = Some(look);
                Ok(position)
            }
            Err(error) => Err(format!("the primary: {}", telling_cause(&error))),
        };
        let stale_since = if Instant::now() < next_ask {
            Err(reported.clone().unwrap_or_default())
        } else {
            let replayed = bounded(
                &replica.pool,
                timeout,
                async |client| query_value::<i64>(&*client, sql::REPLAYED_POSITION, &[]).await,
                |error| error,
            )
            .await;
            match (primary_at, replayed) {
                (Ok(_), Ok(replayed)) => {
                    backoff = STEP;
                    Ok(positions.stale_since(replayed, look))
                }
                // Without the primary's position the lag is unknown; reads fall back to
                // the primary, which cannot serve them either.
                (Err(cause), _) => Err(cause),
                (_, Err(error)) => {
                    next_ask = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    Err(telling_cause(&error))
                }
            }
        };
        match &stale_since {
            Ok(_) => reported = None,
            // Said once per cause, not at every step.
            Err(cause) if reported.as_ref() != Some(cause) => {
                tracing::warn!(%cause, "reads cannot go to the replica");
                reported = Some(cause.clone());
            }
            Err(_) => {}
        }
        replica.found(stale_since.ok().flatten(), Instant::now());
        let usable = replica.usable();
        if usable != was_usable {
            let (lag_ms, max_lag_ms) = (replica.lag_ms(), replica.max_lag.as_millis());
            if usable {
                tracing::info!(lag_ms, "reads go to the replica");
            } else {
                tracing::warn!(
                    lag_ms,
                    max_lag_ms,
                    "the replica lags; reads go to the primary"
                );
            }
            was_usable = usable;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn a_standby_that_replayed_everything_noted_is_stale_since_the_last_look() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(100, start);
        positions.primary_at(200, start + ms(100));
        let look = start + ms(200);
        assert_eq!(positions.stale_since(200, look), Some(look));
    }

    #[test]
    fn a_standby_is_stale_since_the_oldest_position_it_has_not_replayed() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(100, start);
        positions.primary_at(200, start + ms(100));
        positions.primary_at(300, start + ms(200));
        let since = positions.stale_since(150, start + ms(250));
        assert_eq!(since, Some(start + ms(100)));
    }

    #[test]
    fn an_idle_primary_does_not_age_a_standby_that_has_everything() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(100, start);
        positions.primary_at(100, start + Duration::from_secs(5));
        let look = start + Duration::from_secs(6);
        assert_eq!(positions.stale_since(100, look), Some(look));
    }

    #[test]
    fn a_standby_that_stopped_replaying_ages_while_the_primary_writes() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(100, start);
        assert_eq!(positions.stale_since(100, start), Some(start));
        positions.primary_at(200, start + Duration::from_secs(1));
        positions.primary_at(300, start + Duration::from_secs(2));
        let since = positions.stale_since(150, start + Duration::from_secs(3));
        assert_eq!(since, Some(start + Duration::from_secs(1)));
    }

    #[test]
    fn a_standby_never_seen_to_catch_up_is_of_unknown_staleness() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(100, start);
        assert_eq!(positions.stale_since(50, start), None);
        assert_eq!(
            positions.stale_since(50, start + Duration::from_secs(60)),
            None
        );
    }

    #[test]
    fn the_positions_kept_are_bounded_and_the_oldest_stays() {
        let start = Instant::now();
        let mut positions = Positions::default();
        positions.primary_at(0, start);
        assert_eq!(positions.stale_since(0, start), Some(start));
        for n in 1..=(MAX_NOTED as i64 + 50) {
            positions.primary_at(n, start + ms(n as u64));
        }
        assert_eq!(positions.noted.len(), MAX_NOTED);
        assert_eq!(positions.stale_since(0, start), Some(start + ms(1)));
    }
}
