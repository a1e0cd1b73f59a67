//! The limits of SPEC §10 under load: what setting every limit costs a drain when none
//! binds, and whether a claim's cost grows with the sends the ledger holds.
//!
//! ```text
//! cargo xtask bench limits [--backend file|postgres] [--part all|rate|ledger]
//!                          [--depth N] [--rounds N] [--recorded N] [--calls N]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use uuid::Uuid;

use super::policy::{seed, send, set_policy};
use super::{Body, Flags, Target, drain_all_with, quantile_ms, result};

const TENANT: &str = "bench_limits";
const DUE: &str = "2025-01-01T09:00:00Z";
/// Senders the follow-ups are spread over, so that a sender's rate does not bind.
const SENDERS: u64 = 64;

/// Every limit of SPEC §10 set, none of them binding for distinct recipients spread
/// over [`SENDERS`] senders.
fn every_limit() -> Value {
    json!({
        "max_per_second": null,
        "quiet_hours": null,
        "max_per_second_per_sender": 1_000,
        "daily_recipient_limit": 10_000_000,
        "recipient_min_interval_ms": 1,
        "recipient_daily_cap": 1_000,
    })
}

/// The `n`th follow-up of `tenant`, counted from `first`: its own recipient, one of the
/// senders.
fn body(tenant: &'static str, first: u64) -> Body {
    Arc::new(move |n| {
        let n = first + n;
        json!({"request": {
            "request_id": Uuid::new_v4(),
            "tenant_id": tenant,
            "source_module": "mod-02-whatsapp-crm",
            "followup": {
                "phone_e164": format!("+551{:010}", n),
                "sender": format!("sender-{}", n % SENDERS),
                "message": "hello",
                "schedule_at": DUE,
            }
        }})
    })
}

pub async fn limits(flags: &Flags) -> anyhow::Result<()> {
    flags.only(&["backend", "part", "depth", "rounds", "recorded", "calls"])?;
    let part: String = flags.get("part", "all".to_owned())?;
    let backend: String = flags.get("backend", "file".to_owned())?;
    let depth: u64 = flags.get("depth", 60_000)?;
    let rounds: usize = flags.get("rounds", 3)?;
    let recorded: u64 = flags.get("recorded", 1_000_000)?;
    let calls: usize = flags.get("calls", 300)?;
    if part == "all" || part == "rate" {
        rates(&backend, depth, rounds).await?;
    }
    if part == "all" || part == "ledger" {
        ledger_sizes(&backend, recorded, calls).await?;
    }
    Ok(())
}

/// The drain's rate with every limit set but none binding, beside none set.
async fn rates(backend: &str, depth: u64, rounds: usize) -> anyhow::Result<()> {
    for loops in [1, 4] {
        // Rounds alternate, so that the machine's drift weighs on both alike.
        let (mut none, mut every) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            none.push(drain_rate(backend, depth, loops, None).await?);
            every.push(drain_rate(backend, depth, loops, Some(every_limit())).await?);
        }
        let (none, every) = (median(none), median(every));
        result(json!({
            "scenario": "limits: drain rate with every limit set but none binding, beside none set",
            "backend": backend, "depth": depth, "drain_loops": loops, "rounds": rounds,
            "none_set_per_second": none.round(),
            "every_limit_per_second": every.round(),
            "ratio": (every / none * 100.0).round() / 100.0,
        }));
    }
    Ok(())
}

/// A drain's latency with a thousand and with `recorded` sends of the tenant in the
/// ledger; and, to tell the ledger's part from the store's size, with a thousand of the
/// tenant's and `recorded` of another tenant's.
async fn ledger_sizes(backend: &str, recorded: u64, calls: usize) -> anyhow::Result<()> {
    let (small, _) = drain_latency(backend, 1_000, 0, calls).await?;
    let (beside, _) = drain_latency(backend, 1_000, recorded, calls).await?;
    let (large, settled) = drain_latency(backend, recorded, 0, calls).await?;
    let p50 = |latencies: &[Duration]| quantile_ms(latencies, 0.5);
    let ratio =
        |a: &[Duration], b: &[Duration]| (p50(a) / p50(b).max(0.001) * 100.0).round() / 100.0;
    result(json!({
        "scenario": "limits: a drain of 100 with every limit set, by sends in the ledger",
        "backend": backend, "calls": calls, "recorded": recorded,
        "own_1000_p50_ms": p50(&small), "own_1000_p99_ms": quantile_ms(&small, 0.99),
        "own_1000_other_recorded_p50_ms": p50(&beside),
        "own_recorded_p50_ms": p50(&large), "own_recorded_p99_ms": quantile_ms(&large, 0.99),
        "p50_ratio_recorded_vs_1000": ratio(&large, &small),
        "p50_ratio_own_vs_other_tenant_s": ratio(&large, &beside),
        "settled_after_load_s": (settled.as_secs_f64() * 10.0).round() / 10.0,
    }));
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// Follow-ups/s a queue `depth` deep drains at with `loops` drain loops under `policy`.
async fn drain_rate(
    backend: &str,
    depth: u64,
    loops: usize,
    policy: Option<Value>,
) -> anyhow::Result<f64> {
    let target = Target::new(backend)?;
    let server = target.start(&[]).await?;
    if let Some(policy) = policy {
        set_policy(&server.base, TENANT, policy).await?;
    }
    seed(&server.base, depth, body(TENANT, 0)).await?;
    let (sent, elapsed) = drain_all_with(&server.base, loops).await?;
    ensure!(sent == depth, "{sent} of {depth} were sent");
    drop(server);
    target.remove().await?;
    Ok(sent as f64 / elapsed.as_secs_f64())
}

/// Latencies of `calls` drains of 100, every limit set, after `own` sends of the tenant and
/// `other` of another, once the server has settled; and how long it took to settle.
async fn drain_latency(
    backend: &str,
    own: u64,
    other: u64,
    calls: usize,
) -> anyhow::Result<(Vec<Duration>, Duration)> {
    let target = Target::new(backend)?;
    let server = target.start(&[]).await?;
    let base = server.base.clone();
    set_policy(&base, TENANT, every_limit()).await?;
    seed(&base, own, body(TENANT, 0)).await?;
    seed(&base, other, body("bench_other", 0)).await?;
    let (sent, _) = drain_all_with(&base, 4).await?;
    ensure!(sent == own + other, "{sent} of {} were sent", own + other);
    seed(&base, calls as u64 * 100, body(TENANT, own)).await?;
    // What the load left behind (a compaction of every follow-up, a million dead rows for
    // autovacuum) is not the claim's cost.
    target.settle_database().await?;
    let settled = server.settle(Duration::from_secs(300)).await?;
    eprintln!(
        "bench: {calls} drains of 100 after {own} + {other} sends, settled in {:.1} s (pid {})",
        settled.as_secs_f64(),
        server.pid()
    );
    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let reply = send(
            client
                .post(format!("{base}/internal/worker/crm-followups/drain"))
                .json(&json!({"limit": 100})),
        )
        .await?;
        latencies.push(started.elapsed());
        let succeeded = reply["succeeded_count"].as_u64().context("a count")?;
        ensure!(
            succeeded == 100,
            "a drain sent {succeeded}, not 100: {reply}"
        );
    }
    latencies.sort_unstable();
    drop(server);
    target.remove().await?;
    Ok((latencies, settled))
}
