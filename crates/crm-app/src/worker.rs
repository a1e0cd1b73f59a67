//! The in-process workers: the drain on a timer (beside the HTTP drain), and retention.
//!
//! Exactly-once comes from the store's claim, so this loop, the HTTP endpoint and other
//! replicas can all drain at once. On shutdown the batch in progress finishes first.

use std::time::Duration;

use crm_domain::limits::LEDGER_RETENTION_MILLIS;
use crm_domain::timestamp::Timestamp;
use crm_ports::{DrainStatus, Retention};
use tokio::sync::watch;

use crate::drain::{DrainCommand, MAX_DRAIN_LIMIT};
use crate::service::Crm;

/// Drains until nothing is due, then waits `interval`, until `stop` turns true.
pub async fn run(crm: Crm, interval: Duration, mut stop: watch::Receiver<bool>) {
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "in-process worker started"
    );
    let command = DrainCommand {
        limit: MAX_DRAIN_LIMIT,
        force_failure: false,
    };
    while !*stop.borrow() {
        match crm.drain(command).await {
            // A full batch that moved something means more may be due: go again at once.
            // A batch of skips only would come back the same, so it waits like the rest.
            Ok(report)
                if report.outcomes.len() == MAX_DRAIN_LIMIT
                    && report.count(DrainStatus::Skipped) < report.outcomes.len() =>
            {
                continue;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "worker drain failed; retrying after the interval")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => {}
        }
    }
    tracing::info!("in-process worker stopped");
}

/// How many events (and finished items) one retention pass deletes at most, so that no
/// lock is held for long.
pub const RETENTION_BATCH: usize = 1_000;

/// How often retention looks for expired events when there was nothing to delete.
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(60);

/// Deletes events and finished outbound items older than `retention`, a batch at a time,
/// every `interval` (sooner while a pass finds a full batch), until `stop` turns true. Replicas
/// may all run it: the store keeps them from deleting the same rows twice.
pub async fn retain(
    crm: Crm,
    retention: Duration,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    // The first pass waits one interval too: start-up has better uses for the store.
    let mut wait = interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let now = crate::service::now();
        let back = |by: Duration| Timestamp::from_datetime(now.as_datetime() - by);
        let retention = Retention {
            records_before: back(retention),
            // The ledger keeps what the longest window of a limit looks back over, whatever
            // the service keeps of its events.
            ledger_before: back(Duration::from_millis(
                LEDGER_RETENTION_MILLIS.unsigned_abs(),
            )),
        };
        wait = match crm.store().expire(retention, RETENTION_BATCH).await {
            Ok(expired) => {
                metrics::counter!(crate::metrics::EVENTS_EXPIRED).increment(expired.events);
                metrics::counter!(crate::metrics::OUTBOUND_EXPIRED)
                    .increment(expired.outbound_items);
                let full = [
                    expired.events,
                    expired.outbound_items,
                    expired.ledger_entries,
                ]
                .into_iter()
                .any(|count| count >= RETENTION_BATCH as u64);
                if full {
                    // More is expired: go on after a breath.
                    Duration::from_millis(100).min(interval)
                } else {
                    interval
                }
            }
            Err(error) => {
                tracing::warn!(%error, "retention pass failed; retrying later");
                interval
            }
        };
    }
}
