//! The HTTP intake: producers posting events to `POST /api/v1/events` (one
//! per request) or `/events/batch`, each client a keep-alive loop at a fixed
//! concurrency for a fixed time. Reports events accepted per second and the
//! request latency; then waits until every accepted event was delivered and
//! counts duplicates (by event_id at the receiver).
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::scenarios::{Db, PAD};
use crate::service::{KEY, Service};
use crate::{Ctx, Report, wait_ok};

/// `connections` clients, each sending `batch` events per request (0: the
/// single-event endpoint), for the scenario's duration.
pub async fn http_intake(
    ctx: &mut Ctx,
    name: &str,
    connections: usize,
    batch: usize,
) -> anyhow::Result<Report> {
    let seconds = if ctx.smoke { 1.0 } else { 10.0 };
    let db = Db::fresh(ctx, &name.replace('-', "_")).await?;
    let env = [("WEBHOOK_EVENTS_RATELIMIT_MAX", "1000000000".to_owned())];
    let service = Service::start(&ctx.bin, &db.url, &env).await;
    // LOADTEST_INTAKE_ONLY=1: no webhook, so nothing is delivered and the
    // intake has the machine to itself.
    let intake_only = std::env::var_os("LOADTEST_INTAKE_ONLY").is_some();
    if !intake_only {
        service
            .register(&ctx.client, &format!("{}/ok/0", ctx.receiver))
            .await;
    }
    ctx.tally.track.store(true, Ordering::SeqCst);
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut clients = vec![];
    for c in 0..connections {
        // One connection per client: a keep-alive producer.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let url = format!(
            "{}/api/v1/events{}",
            service.base,
            if batch > 0 { "/batch" } else { "" }
        );
        let (accepted, refused) = (accepted.clone(), refused.clone());
        clients.push(tokio::spawn(async move {
            let mut latencies = vec![];
            let mut n = 0u64;
            while Instant::now() < deadline {
                let event = |i: u64| {
                    json!({"event": "pool.created", "event_id": format!("c{c}-{i}"),
                           "data": {"i": i, "amount": 1234567890123456789u64, "pad": PAD}})
                };
                let body = if batch > 0 {
                    let events: Vec<Value> = (0..batch as u64).map(|k| event(n + k)).collect();
                    json!({ "events": events })
                } else {
                    event(n)
                };
                let size = batch.max(1) as u64;
                n += size;
                let sent = Instant::now();
                let response = http.post(&url).bearer_auth(KEY).json(&body).send().await;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                match response {
                    Ok(r) if r.status() == 202 => accepted.fetch_add(size, Ordering::Relaxed),
                    _ => refused.fetch_add(size, Ordering::Relaxed),
                };
            }
            latencies
        }));
    }
    let mut latencies = vec![];
    for client in clients {
        latencies.extend(client.await?);
    }
    let took = started.elapsed().as_secs_f64();
    let accepted = accepted.load(Ordering::Relaxed);
    let refused = refused.load(Ordering::Relaxed);
    let expected = if intake_only { 0 } else { accepted };
    let complete = wait_ok(&ctx.tally, expected, Duration::from_secs(300)).await;
    // Anything sent twice would arrive after the count is reached.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = ctx.tally.ok.load(Ordering::Relaxed);
    let distinct = ctx.tally.arrivals.lock().unwrap().len() as u64;
    ctx.tally.track.store(false, Ordering::SeqCst);
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
    };
    let report = Report {
        scenario: name.into(),
        deliveries: accepted,
        seconds: took,
        rate: accepted as f64 / took,
        ceiling: ctx.ceiling,
        ratio: 0.0,
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        peak_rss_mb: Some(service.peak_rss_mb()),
        cpu_s_per_1k: Some(service.cpu_since_start() / (accepted.max(1) as f64 / 1000.0)),
        pg_us_per_delivery: None,
        note: format!(
            "events accepted/s, {connections} conn, {}; {refused} refused; delivered {delivered}, distinct {distinct}, duplicates {}{}",
            if batch > 0 {
                format!("batches of {batch}")
            } else {
                "one per request".into()
            },
            delivered.saturating_sub(distinct),
            if complete && distinct == expected {
                ""
            } else {
                " INCOMPLETE"
            }
        ),
    };
    service.stop();
    db.drop_it().await?;
    Ok(report)
}
