//! The in-process worker: drains due follow-ups on a timer, beside the HTTP drain.
//!
//! Exactly-once comes from the store's claim, so this loop, the HTTP endpoint and other
//! replicas can all drain at once. On shutdown the batch in progress finishes first.

use std::time::Duration;

use crm_ports::DrainStatus;
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
