//! The sending policy under load: paced tenants beside an unlimited one, a small tenant
//! behind a big one, and what held work costs a drain that finds nothing due.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::{Body, Flags, Target, quantile_ms, result};

const DUE: &str = "2025-01-01T09:00:00Z";

fn body(tenant: &'static str, campaign: Option<Uuid>) -> Body {
    Arc::new(move |_| {
        json!({"request": {
            "request_id": Uuid::new_v4(),
            "tenant_id": tenant,
            "source_module": "mod-02-whatsapp-crm",
            "followup": {
                "campaign_id": campaign,
                "phone_e164": "+5511944443333",
                "message": "hello",
                "schedule_at": DUE,
            }
        }})
    })
}

/// Creates `count` follow-ups made by `body` (one tenant's), through the batch route: a
/// million are set up in a minute rather than several.
pub(super) async fn seed(base: &str, count: u64, body: Body) -> anyhow::Result<()> {
    const BATCH: u64 = 1_000;
    const SENDERS: u64 = 4;
    let url = format!("{base}/v1/crm/followups/batch");
    let client = reqwest::Client::new();
    let senders = (0..SENDERS).map(|sender| {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        tokio::spawn(async move {
            let mut first = sender * BATCH;
            while first < count {
                let made: Vec<Value> = (first..count.min(first + BATCH)).map(|n| body(n)).collect();
                let request = &made[0]["request"];
                let items: Vec<&Value> = made.iter().map(|m| &m["request"]["followup"]).collect();
                let batch = json!({"request": {
                    "request_id": Uuid::new_v4(),
                    "tenant_id": request["tenant_id"],
                    "source_module": request["source_module"],
                    "followups": items,
                }});
                let reply = send(client.post(&url).json(&batch)).await?;
                let created = reply["response"]["created_count"].as_u64();
                ensure!(created == Some(items.len() as u64), "a seed batch: {reply}");
                first += SENDERS * BATCH;
            }
            anyhow::Ok(())
        })
    });
    for sender in senders.collect::<Vec<_>>() {
        sender.await??;
    }
    Ok(())
}

pub(super) async fn send(request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status.is_success(), "{status}: {body}");
    Ok(body)
}

pub(super) async fn set_policy(base: &str, tenant: &str, policy: Value) -> anyhow::Result<()> {
    let url = format!("{base}/internal/tenants/{tenant}/sending-policy");
    send(reqwest::Client::new().put(url).json(&policy)).await?;
    Ok(())
}

/// Four drain loops (limit 100) until `until`, or until a whole round finds nothing;
/// how many were sent.
async fn drain_loops(base: &str, until: Option<Instant>) -> anyhow::Result<u64> {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = format!("{base}/internal/worker/crm-followups/drain");
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut sent = 0;
            loop {
                if until.is_some_and(|until| Instant::now() >= until) {
                    return anyhow::Ok(sent);
                }
                let reply = send(client.post(&url).json(&json!({"limit": 100}))).await?;
                sent += reply["succeeded_count"].as_u64().context("a count")?;
                if until.is_none() && reply["processed_count"] == 0 {
                    return Ok(sent);
                }
            }
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await??;
    }
    Ok(sent)
}

/// When each of the tenant's follow-ups was marked sent.
async fn sent_times(base: &str, tenant: &str) -> anyhow::Result<Vec<OffsetDateTime>> {
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/crm/followups?tenant_id={tenant}&status=sent&limit=1000");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let page = send(client.get(url)).await?;
        for item in page["items"].as_array().context("items")? {
            let at = item["updated_at"].as_str().context("updated_at")?;
            times.push(OffsetDateTime::parse(at, &Rfc3339)?);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    times.sort();
    Ok(times)
}

/// The most of `times` (sorted) in any one-second window.
fn busiest_second(times: &[OffsetDateTime]) -> usize {
    let mut most = 0;
    let mut end = 0;
    for (start, at) in times.iter().enumerate() {
        while end < times.len() && times[end] < *at + time::Duration::seconds(1) {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

/// `cargo xtask bench policy [--backend file|postgres] [--seconds S] [--unlimited N]
/// [--big N] [--held N]`
pub async fn policy(flags: &Flags) -> anyhow::Result<()> {
    flags.only(&["backend", "seconds", "unlimited", "big", "held"])?;
    let backend: String = flags.get("backend", "file".to_owned())?;
    let seconds: u64 = flags.get("seconds", 30)?;
    let unlimited: u64 = flags.get("unlimited", 60_000)?;
    let big: u64 = flags.get("big", 100_000)?;
    let held: u64 = flags.get("held", 1_000_000)?;
    pacing(&backend, seconds, unlimited).await?;
    fairness(&backend, big).await?;
    held_work(&backend, held).await
}

async fn pacing(backend: &str, seconds: u64, unlimited: u64) -> anyhow::Result<()> {
    // Today's rate: one tenant alone, no policy.
    let target = Target::new(backend)?;
    let server = target.start(&[]).await?;
    seed(&server.base, unlimited, body("bench_alone", None)).await?;
    let started = Instant::now();
    let sent = drain_loops(&server.base, None).await?;
    let baseline = sent as f64 / started.elapsed().as_secs_f64();
    drop(server);
    target.remove().await?;

    let target = Target::new(backend)?;
    let server = target.start(&[]).await?;
    let base = server.base.clone();
    let paced = [("bench_50", 50u64), ("bench_200", 200u64)];
    for (tenant, rate) in paced {
        set_policy(
            &base,
            tenant,
            json!({"max_per_second": rate, "quiet_hours": null}),
        )
        .await?;
        seed(&base, rate * (seconds + 5), body(tenant, None)).await?;
    }
    seed(&base, unlimited, body("bench_free", None)).await?;
    drain_loops(&base, Some(Instant::now() + Duration::from_secs(seconds))).await?;
    let free = sent_times(&base, "bench_free").await?;
    ensure!(
        free.len() as u64 == unlimited,
        "the unlimited tenant was not drained"
    );
    let span = (*free.last().context("sent")? - *free.first().context("sent")?).as_seconds_f64();
    let free_rate = free.len() as f64 / span.max(0.001);
    let mut paced_results = Vec::new();
    for (tenant, rate) in paced {
        let times = sent_times(&base, tenant).await?;
        paced_results.push(json!({
            "tenant": tenant, "rate": rate, "sent": times.len(),
            "busiest_second": busiest_second(&times),
            "allowed_busiest_second": rate + rate / 20,
        }));
    }
    result(json!({
        "scenario": "policy: tenants at 50/s and 200/s beside an unlimited one, 4 drain loops",
        "backend": backend, "seconds": seconds,
        "unlimited_alone_per_second": baseline.round(),
        "unlimited_beside_paced_per_second": free_rate.round(),
        "unlimited_ratio": (free_rate / baseline * 100.0).round() / 100.0,
        "paced": paced_results,
    }));
    drop(server);
    target.remove().await
}

async fn fairness(backend: &str, big: u64) -> anyhow::Result<()> {
    let target = Target::new(backend)?;
    let server = target.start(&[]).await?;
    let base = server.base.clone();
    seed(&base, big, body("bench_big", None)).await?;
    let client = reqwest::Client::new();
    let mut small = HashSet::new();
    for _ in 0..5 {
        let reply = send(
            client
                .post(format!("{base}/v1/crm/followups"))
                .json(&body("bench_small", None)(0)),
        )
        .await?;
        small.insert(
            reply["response"]["followup"]["followup_id"]
                .as_str()
                .context("an id")?
                .to_owned(),
        );
    }
    let mut batches = 0;
    while !small.is_empty() && batches < 1_000 {
        let reply = send(
            client
                .post(format!("{base}/internal/worker/crm-followups/drain"))
                .json(&json!({"limit": 100})),
        )
        .await?;
        batches += 1;
        for entry in reply["processed"].as_array().context("processed")? {
            small.remove(entry["followup_id"].as_str().unwrap_or_default());
        }
    }
    result(json!({
        "scenario": "policy: 5 follow-ups of one tenant behind another's queue, drains of 100",
        "backend": backend, "queue_ahead": big, "batches_until_all_5_sent": batches,
    }));
    drop(server);
    target.remove().await
}

/// Drain calls with nothing due: their latency.
async fn idle_drains(base: &str, calls: usize) -> anyhow::Result<Vec<Duration>> {
    let client = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        send(
            client
                .post(format!("{base}/internal/worker/crm-followups/drain"))
                .json(&json!({"limit": 100})),
        )
        .await?;
        latencies.push(started.elapsed());
    }
    latencies.sort_unstable();
    Ok(latencies)
}

async fn held_work(backend: &str, held: u64) -> anyhow::Result<()> {
    let target = Target::new(backend)?;
    let server = target.start(&[]).await?;
    let base = server.base.clone();
    let empty = idle_drains(&base, 300).await?;

    // A third behind a paused campaign, a third in quiet hours, a third over its rate.
    let campaign = send(
        reqwest::Client::new()
            .post(format!("{base}/v1/crm/campaigns"))
            .json(&json!({"request": {
                "request_id": Uuid::new_v4(), "tenant_id": "bench_paused",
                "source_module": "mod-02-whatsapp-crm",
                "campaign": {"name": "Paused", "channel": "whatsapp", "state": "paused"}
            }})),
    )
    .await?;
    let campaign_id: Uuid = campaign["response"]["campaign"]["campaign_id"]
        .as_str()
        .context("an id")?
        .parse()?;
    let now = OffsetDateTime::now_utc();
    let clock = |at: OffsetDateTime| format!("{:02}:{:02}", at.hour(), at.minute());
    set_policy(
        &base,
        "bench_quiet",
        json!({"max_per_second": null, "quiet_hours": {
            "start": clock(now - time::Duration::hours(2)),
            "end": clock(now + time::Duration::hours(2)), "time_zone": "UTC"}}),
    )
    .await?;
    set_policy(
        &base,
        "bench_over",
        json!({"max_per_second": 1, "quiet_hours": null}),
    )
    .await?;
    let third = held / 3;
    seed(&base, third, body("bench_paused", Some(campaign_id))).await?;
    seed(&base, third, body("bench_quiet", None)).await?;
    seed(&base, held - 2 * third, body("bench_over", None)).await?;
    // The over-rate tenant's allowance goes first; after that it holds.
    idle_drains(&base, 2).await?;
    let with_held = idle_drains(&base, 300).await?;
    result(json!({
        "scenario": "policy: drain latency with nothing due, then with held follow-ups",
        "backend": backend, "held": held,
        "empty_p50_ms": quantile_ms(&empty, 0.5), "empty_p99_ms": quantile_ms(&empty, 0.99),
        "held_p50_ms": quantile_ms(&with_held, 0.5), "held_p99_ms": quantile_ms(&with_held, 0.99),
        "p50_ratio": (quantile_ms(&with_held, 0.5) / quantile_ms(&empty, 0.5).max(0.001) * 100.0)
            .round() / 100.0,
    }));
    drop(server);
    target.remove().await
}
