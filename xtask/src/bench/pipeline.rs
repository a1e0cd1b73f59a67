//! The consumers' side of the pipeline: the event feed, the outbound queue, and what the
//! file store holds once both have been consumed and retention has run.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Flags, Target, create_load, drain_all, follow_up_body, quantile_ms, result};

const NOT_DUE: &str = "2999-01-01T00:00:00Z";
const DUE: &str = "2025-01-01T09:00:00Z";
const CREATE_CLIENTS: usize = 32;

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = client.post(url).json(body).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status.is_success(), "POST {url}: {status} {body}");
    Ok(body)
}

async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let response = client.get(url).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    ensure!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body)
}

/// Creates `count` follow-ups scheduled at `schedule_at`; fails if any create failed.
async fn seed(base: &str, count: u64, schedule_at: &'static str) -> anyhow::Result<()> {
    let load = create_load(base, CREATE_CLIENTS, Some(count), None, schedule_at).await?;
    ensure!(load.failures == 0, "{} creates failed", load.failures);
    Ok(())
}

fn feed_url(base: &str, after: Option<&str>, extra: &str) -> String {
    match after {
        Some(cursor) => format!("{base}/internal/orchestration/events?after={cursor}{extra}"),
        None => format!(
            "{base}/internal/orchestration/events?{}",
            extra.trim_start_matches('&')
        ),
    }
}

/// `cargo xtask bench feed [--backend file|postgres] [--events N] [--samples S]`
pub async fn feed(flags: &Flags) -> anyhow::Result<()> {
    flags.only(&["backend", "events", "samples"])?;
    let target = Target::new(&flags.get("backend", "file".to_owned())?)?;
    let events: u64 = flags.get("events", 100_000)?;
    let samples: usize = flags.get("samples", 200)?;
    let server = target.start(&[]).await?;
    let base = server.base.clone();
    seed(&base, events, NOT_DUE).await?;

    // One consumer following the cursor from the start, 1000 a page.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut cursor: Option<String> = None;
    let mut read = 0u64;
    loop {
        let page = get(&client, &feed_url(&base, cursor.as_deref(), "&limit=1000")).await?;
        let items = page["items"].as_array().context("items")?.len();
        cursor = Some(page["next_cursor"].as_str().context("cursor")?.to_owned());
        if items == 0 {
            break;
        }
        read += items as u64;
    }
    let elapsed = started.elapsed();
    ensure!(
        read == events,
        "the feed gave {read} events, {events} were stored"
    );
    result(json!({
        "scenario": "feed: one consumer following next_cursor, limit 1000",
        "backend": target.backend(), "events": read, "seconds": elapsed.as_secs_f64(),
        "events_per_second": (read as f64 / elapsed.as_secs_f64()).round(),
    }));

    // A consumer long-polling from the end while a writer creates one follow-up at a time.
    let end = cursor.context("a cursor")?;
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let consumer = {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            let mut cursor = end;
            let mut seen = 0;
            while seen < samples {
                let url = feed_url(&base, Some(&cursor), "&limit=1000&wait_ms=30000");
                let page = get(&client, &url).await?;
                let now = Instant::now();
                for event in page["items"].as_array().context("items")? {
                    let id = event["payload"]["followup_id"].as_str().context("an id")?;
                    seen_tx.send((id.to_owned(), now))?;
                    seen += 1;
                }
                cursor = page["next_cursor"].as_str().context("cursor")?.to_owned();
            }
            anyhow::Ok(())
        })
    };
    let url = format!("{base}/v1/crm/followups");
    let mut sent: HashMap<String, (Instant, Instant)> = HashMap::new();
    for _ in 0..samples {
        let body = follow_up_body("tenant_bench", NOT_DUE);
        let id = body["request"]["followup"]["followup_id"]
            .as_str()
            .context("an id")?
            .to_owned();
        let before = Instant::now();
        post(&client, &url, &body).await?;
        sent.insert(id, (before, Instant::now()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    consumer.await??;
    let (mut from_send, mut from_reply) = (Vec::new(), Vec::new());
    while let Ok((id, seen)) = seen_rx.try_recv() {
        let (before, after) = sent.get(&id).context("an event the writer did not make")?;
        from_send.push(seen - *before);
        from_reply.push(seen.saturating_duration_since(*after));
    }
    ensure!(from_send.len() == samples, "the long-poll missed events");
    from_send.sort_unstable();
    from_reply.sort_unstable();
    result(json!({
        "scenario": "feed: long-poll, create request sent -> event in the consumer's hands",
        "backend": target.backend(), "samples": samples,
        "p50_ms": quantile_ms(&from_send, 0.5), "p99_ms": quantile_ms(&from_send, 0.99),
        "max_ms": quantile_ms(&from_send, 1.0),
        "after_create_reply_p99_ms": quantile_ms(&from_reply, 0.99),
    }));
    drop(server);
    target.remove().await
}

/// What a run of consumers did.
struct Consumed {
    /// The queue item ids acknowledged.
    items: Vec<String>,
    acked: usize,
    /// Items acknowledged under more than one lease.
    twice: usize,
    elapsed: Duration,
}

// A sender reads only what it needs from the claim reply, as a real one would.
#[derive(Deserialize)]
struct ClaimReply {
    items: Vec<Leased>,
}

#[derive(Deserialize)]
struct Leased {
    lease_id: String,
    item: LeasedItem,
}

#[derive(Deserialize)]
struct LeasedItem {
    queue_item_id: String,
}

#[derive(Serialize)]
struct AckBody<'a> {
    acks: Vec<Ack<'a>>,
}

#[derive(Serialize)]
struct Ack<'a> {
    queue_item_id: &'a str,
    lease_id: &'a str,
    result: &'static str,
    provider_message_id: String,
}

/// The provider id a bench sender reports for an item, one per message as WhatsApp's.
fn wamid(queue_item_id: &str) -> String {
    format!("wamid.{queue_item_id}")
}

#[derive(Deserialize)]
struct AckReply {
    results: Vec<AckResult>,
}

#[derive(Deserialize)]
struct AckResult {
    queue_item_id: String,
    status: String,
}

async fn post_typed<Body: Serialize, Reply: DeserializeOwned>(
    client: &reqwest::Client,
    url: &str,
    body: &Body,
) -> anyhow::Result<Reply> {
    let response = client.post(url).json(body).send().await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    ensure!(
        status.is_success(),
        "POST {url}: {status} {}",
        String::from_utf8_lossy(&bytes)
    );
    Ok(serde_json::from_slice(&bytes)?)
}

/// `consumers` loops that claim `batch` items and ack them all as accepted, until `total`
/// distinct items have been acknowledged.
async fn consume(
    base: &str,
    consumers: usize,
    batch: usize,
    total: usize,
) -> anyhow::Result<Consumed> {
    let acked = Arc::new(Mutex::new(HashSet::<String>::with_capacity(total)));
    let twice = Arc::new(Mutex::new(0usize));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let client = reqwest::Client::new();
        let (claim, ack) = (
            format!("{base}/internal/outbound/claim"),
            format!("{base}/internal/outbound/ack"),
        );
        let (acked, twice) = (Arc::clone(&acked), Arc::clone(&twice));
        tasks.push(tokio::spawn(async move {
            let request = json!({"limit": batch, "lease_ms": 60000});
            loop {
                if acked.lock().expect("acked").len() >= total {
                    return anyhow::Ok(());
                }
                ensure!(
                    started.elapsed() < Duration::from_secs(3600),
                    "consumers stalled"
                );
                let leased: ClaimReply = post_typed(&client, &claim, &request).await?;
                if leased.items.is_empty() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let body = AckBody {
                    acks: leased
                        .items
                        .iter()
                        .map(|leased| Ack {
                            queue_item_id: &leased.item.queue_item_id,
                            lease_id: &leased.lease_id,
                            result: "accepted",
                            provider_message_id: wamid(&leased.item.queue_item_id),
                        })
                        .collect(),
                };
                let reply: AckReply = post_typed(&client, &ack, &body).await?;
                let mut acked = acked.lock().expect("acked");
                for result in reply.results {
                    ensure!(result.status == "acked", "an ack was {}", result.status);
                    if !acked.insert(result.queue_item_id) {
                        *twice.lock().expect("twice") += 1;
                    }
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    let items: Vec<String> = acked.lock().expect("acked").iter().cloned().collect();
    let twice = *twice.lock().expect("twice");
    Ok(Consumed {
        acked: items.len(),
        items,
        twice,
        elapsed: started.elapsed(),
    })
}

/// `cargo xtask bench queue [--backend postgres|file] [--items N] [--consumers C] [--batch B]`
pub async fn queue(flags: &Flags) -> anyhow::Result<()> {
    flags.only(&["backend", "items", "consumers", "batch"])?;
    let target = Target::new(&flags.get("backend", "postgres".to_owned())?)?;
    let items: u64 = flags.get("items", 50_000)?;
    let consumers: usize = flags.get("consumers", 4)?;
    let batch: usize = flags.get("batch", 100)?;
    let server = target.start(&[]).await?;
    let base = server.base.clone();
    seed(&base, items, DUE).await?;
    let (queued, _) = drain_all(&base).await?;
    ensure!(queued == items, "the drain queued {queued} of {items}");

    // A consumer that leases a batch and dies: its items come back when the lease ends.
    let client = reqwest::Client::new();
    let abandoned = post(
        &client,
        &format!("{base}/internal/outbound/claim"),
        &json!({"limit": 100, "lease_ms": 2000}),
    )
    .await?;
    let abandoned = abandoned["items"].as_array().context("items")?.len();

    eprintln!("queue: {items} items queued; consuming");
    let run = consume(&base, consumers, batch, items as usize).await?;
    if run.twice > 0 || run.acked != items as usize {
        bail!(
            "{} acked, {} of them twice, of {items}",
            run.acked,
            run.twice
        );
    }
    result(json!({
        "scenario": "queue: claim + ack (accepted), one dead consumer holding 100 leases of 2 s",
        "backend": target.backend(), "consumers": consumers, "batch": batch,
        "items": items, "abandoned_then_recovered": abandoned, "acked_twice": run.twice,
        "lost": items as usize - run.acked, "seconds": run.elapsed.as_secs_f64(),
        "items_per_second": (items as f64 / run.elapsed.as_secs_f64()).round(),
    }));
    drop(server);
    target.remove().await
}

#[derive(Serialize)]
struct ReceiptsBody {
    receipts: Vec<ReceiptFields>,
}

#[derive(Serialize)]
struct ReceiptFields {
    provider_message_id: String,
    status: &'static str,
    at: &'static str,
}

#[derive(Deserialize)]
struct ReceiptsReply {
    results: Vec<ReceiptResult>,
}

#[derive(Deserialize)]
struct ReceiptResult {
    status: String,
}

/// `cargo xtask bench receipts [--backend postgres|file] [--items N] [--clients C]
/// [--batch B]`: N messages accepted, then a `delivered` and a `read` receipt for each,
/// in batches of B from C clients at once (each pass in its own order).
pub async fn receipts(flags: &Flags) -> anyhow::Result<()> {
    flags.only(&["backend", "items", "clients", "batch"])?;
    let target = Target::new(&flags.get("backend", "postgres".to_owned())?)?;
    let items: u64 = flags.get("items", 100_000)?;
    let clients: usize = flags.get("clients", 4)?;
    let batch: usize = flags.get("batch", 1_000)?;
    let server = target.start(&[]).await?;
    let base = server.base.clone();
    seed(&base, items, DUE).await?;
    let (queued, _) = drain_all(&base).await?;
    ensure!(queued == items, "the drain queued {queued} of {items}");
    let accepted = consume(&base, 4, 100, items as usize).await?;
    ensure!(accepted.acked == items as usize, "the queue lost items");
    target.settle_database().await?;
    eprintln!("receipts: {items} messages accepted; reporting");

    let mut passes = Vec::new();
    for (status, reversed) in [("delivered", false), ("read", true)] {
        let mut ids: Vec<String> = accepted.items.iter().map(|id| wamid(id)).collect();
        if reversed {
            ids.reverse();
        }
        let chunks: Vec<Vec<String>> = ids.chunks(batch).map(<[String]>::to_vec).collect();
        let queue = Arc::new(Mutex::new(chunks));
        let latencies = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (queue, latencies) = (Arc::clone(&queue), Arc::clone(&latencies));
            let (client, url) = (
                reqwest::Client::new(),
                format!("{base}/internal/outbound/receipts"),
            );
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(chunk) = queue.lock().expect("queue").pop() else {
                        return anyhow::Ok(());
                    };
                    let body = ReceiptsBody {
                        receipts: chunk
                            .into_iter()
                            .map(|provider_message_id| ReceiptFields {
                                provider_message_id,
                                status,
                                at: DUE,
                            })
                            .collect(),
                    };
                    let sent = Instant::now();
                    let reply: ReceiptsReply = post_typed(&client, &url, &body).await?;
                    latencies.lock().expect("latencies").push(sent.elapsed());
                    for result in reply.results {
                        ensure!(
                            result.status == "applied",
                            "a receipt was {}",
                            result.status
                        );
                    }
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        let elapsed = started.elapsed();
        let mut latencies = latencies.lock().expect("latencies").clone();
        latencies.sort_unstable();
        passes.push(json!({
            "status": status,
            "receipts_per_second": (items as f64 / elapsed.as_secs_f64()).round(),
            "batch_p50_ms": quantile_ms(&latencies, 0.5),
            "batch_p99_ms": quantile_ms(&latencies, 0.99),
        }));
    }
    result(json!({
        "scenario": "receipts: delivered then read for every accepted message, batches from concurrent clients",
        "backend": target.backend(), "items": items, "clients": clients, "batch": batch,
        "passes": passes,
    }));
    drop(server);
    target.remove().await
}

fn megabytes(bytes: u64) -> f64 {
    (bytes as f64 / 1_048_576.0 * 10.0).round() / 10.0
}

fn dir_bytes(dir: &std::path::Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let metadata = entry?.metadata()?;
        if metadata.is_file() {
            total += metadata.len();
        }
    }
    Ok(total)
}

/// `cargo xtask bench footprint [--follow-ups N] [--chunk C]`: the file store after N
/// follow-ups were created, drained, acknowledged and their events and outbound items
/// passed a one-second retention window.
pub async fn footprint(flags: &Flags) -> anyhow::Result<()> {
    flags.only(&["follow-ups", "chunk"])?;
    let total: u64 = flags.get("follow-ups", 1_000_000)?;
    let chunk: u64 = flags.get("chunk", 50_000)?;
    let target = Target::new("file")?;
    let Target::File(dir) = &target else {
        bail!("the footprint is the file store's");
    };
    // 0.0003 h is about a second: everything finished is past retention at once.
    let flags = ["--retention-hours", "0.0003"];
    // A copy of the binary: the restart must run the very one that wrote the data,
    // whatever is built meanwhile.
    let binary = dir.with_extension("crm-api");
    std::fs::copy(crate::server::build(true)?, &binary)?;
    let server = target.start_built(&binary, &flags).await?;
    let base = server.base.clone();
    let started = Instant::now();
    let mut done = 0;
    while done < total {
        let count = chunk.min(total - done);
        seed(&base, count, DUE).await?;
        let (queued, _) = drain_all(&base).await?;
        ensure!(queued == count, "the drain queued {queued} of {count}");
        let run = consume(&base, 4, 100, count as usize).await?;
        ensure!(
            run.acked == count as usize && run.twice == 0,
            "the queue lost or repeated items"
        );
        done += count;
        eprintln!(
            "footprint: {done} follow-ups through, {:.0} s, {} MB resident",
            started.elapsed().as_secs_f64(),
            megabytes(server.resident_bytes()?)
        );
    }
    let before_retention = server.resident_bytes()?;
    // Retention looks every minute; wait until the feed from the start is empty.
    let client = reqwest::Client::new();
    let waited = Instant::now();
    loop {
        let page = get(&client, &feed_url(&base, None, "&limit=1")).await?;
        if page["items"].as_array().context("items")?.is_empty() {
            break;
        }
        ensure!(
            waited.elapsed() < Duration::from_secs(900),
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let after_retention = server.resident_bytes()?;
    let stop = server.stop()?;
    let restart = Instant::now();
    let server = target.start_built(&binary, &flags).await?;
    let restart = restart.elapsed();
    let after_restart = server.resident_bytes()?;
    let listed = get(
        &client,
        &format!(
            "{}/v1/crm/followups?tenant_id=tenant_bench&limit=1",
            server.base
        ),
    )
    .await?;
    ensure!(
        listed["count"] == 1,
        "the follow-ups are still there after restart"
    );
    result(json!({
        "scenario": "footprint: file store after N follow-ups created, drained, acked, past retention",
        "follow_ups": total, "pipeline_seconds": started.elapsed().as_secs_f64(),
        "resident_mb_before_retention": megabytes(before_retention),
        "resident_mb_after_retention": megabytes(after_retention),
        "graceful_stop_seconds": stop.as_secs_f64(),
        "restart_to_ready_seconds": restart.as_secs_f64(),
        "resident_mb_after_restart": megabytes(after_restart),
        "data_dir_mb": megabytes(dir_bytes(dir)?),
    }));
    drop(server);
    let _ = std::fs::remove_file(&binary);
    target.remove().await
}
