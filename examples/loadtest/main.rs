//! The load-test harness: `cargo run --release --example loadtest -- <scenario>`
//! with scenario one of throughput, fanout, wide, steady, backlog, retention
//! (a day of 1,000,000 finished deliveries and the week of their events past
//! retention, dropped), failing,
//! slow-neighbour, reporting, filtered (10,000 webhooks, each filtering on
//! its own pool_id), isolation (throughput, slow-neighbour, failing),
//! http-intake (http-1, http-32: one event per POST /events on 1 and 32
//! keep-alive connections; http-batch: batches of 500 on 4), all, or smoke
//! (a few seconds of each, for CI).
//!
//! `--baseline /path/to/an/older/smartdrop-webhooks` (or
//! `LOADTEST_BASELINE_BIN`) runs the throughput, fanout, wide, wide-body,
//! wide-100k, filtered, steady, isolation and http-1/-32 scenarios with that binary too, alternating with
//! the current one for `--rounds N` (default 1), and prints the after/before
//! ratio of the medians: before and after from one run.
//!
//! `wide-body` is one event with 200 KiB of data to 2,000 webhooks; it
//! reports how much the database and the WAL grew. `wide-100k` is one event
//! to 100,000 webhooks (commit → first arrival, and all); not in `all`. Where the server preloads
//! `pg_stat_statements`, every scenario also reports Postgres execution time
//! per delivery (`pg µs/d`).
//!
//! It starts a fast loopback receiver, a fresh database per scenario, and the
//! real service binary; registers webhooks through the API; publishes through
//! `webhook_publish` like the indexer; and prints a table plus one JSON line
//! per scenario. Every rate is also given as a ratio to the ceiling: the same
//! receiver driven by a plain keep-alive client with the same body size and
//! concurrency, measured in the same run.
mod intake;
mod isolation;
mod receiver;
mod scenarios;
mod service;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use serde_json::json;

use receiver::Tally;

pub struct Ctx {
    pub server_url: String,
    pub bin: String,
    pub client: reqwest::Client,
    pub tally: Arc<Tally>,
    pub receiver: String,
    pub ceiling: f64,
    pub smoke: bool,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    pub scenario: String,
    pub deliveries: u64,
    pub seconds: f64,
    pub rate: f64,
    pub ceiling: f64,
    pub ratio: f64,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub cpu_s_per_1k: Option<f64>,
    /// Postgres execution time per delivery (pg_stat_statements), when the
    /// server preloads it.
    pub pg_us_per_delivery: Option<f64>,
    pub note: String,
}

/// A delivery body of the size the service sends for our events.
pub fn sample_body() -> String {
    json!({
        "event": "pool.created",
        "event_id": "evt_00000000000000000000000000000000",
        "occurred_at": "2026-06-25T12:00:00.000Z",
        "data": {"i": 1, "pad": scenarios::PAD},
    })
    .to_string()
}

/// The ceiling: the receiver driven by a plain keep-alive client.
async fn measure_ceiling(
    client: &reqwest::Client,
    url: &str,
    total: usize,
    concurrency: usize,
) -> f64 {
    let body = sample_body();
    let started = Instant::now();
    futures_util::stream::iter(0..total)
        .map(|_| {
            let request = client
                .post(url)
                .header("content-type", "application/json")
                .body(body.clone());
            async move {
                request
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(concurrency)
        .for_each(|_| async {})
        .await;
    total as f64 / started.elapsed().as_secs_f64()
}

pub async fn wait_ok(tally: &Tally, expected: u64, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while tally.ok.load(std::sync::atomic::Ordering::Relaxed) < expected {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    true
}

fn print_row(r: &Report) {
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    println!(
        "| {:<10} | {:>9} | {:>8.2} | {:>9.0} | {:>6.3} | {:>6} | {:>6} | {:>6} | {:>7} | {:>7} | {:>7} | {}",
        r.scenario,
        r.deliveries,
        r.seconds,
        r.rate,
        r.ratio,
        opt(r.p50_ms),
        opt(r.p95_ms),
        opt(r.p99_ms),
        opt(r.peak_rss_mb),
        r.cpu_s_per_1k
            .map(|v| format!("{v:.3}"))
            .unwrap_or_else(|| "-".into()),
        opt(r.pg_us_per_delivery),
        r.note
    );
}

/// The scenarios run with the baseline binary too.
const COMPARED: &[&str] = &[
    "throughput",
    "fanout",
    "wide",
    "wide-body",
    "wide-100k",
    "filtered",
    "steady",
    "slow-neighbour",
    "failing",
    "http-1",
    "http-32",
];

/// `loadtest [--baseline PATH] [--rounds N] [SCENARIO]`.
struct Args {
    scenario: String,
    baseline: Option<String>,
    rounds: usize,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let mut args = Self {
            scenario: "all".into(),
            baseline: std::env::var("LOADTEST_BASELINE_BIN").ok(),
            rounds: 1,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--baseline" => {
                    let path = it.next().context("--baseline needs a path to a binary")?;
                    anyhow::ensure!(
                        std::path::Path::new(&path).is_file(),
                        "--baseline {path}: no such file"
                    );
                    args.baseline = Some(path);
                }
                "--rounds" => {
                    args.rounds = it
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n >= 1)
                        .context("--rounds needs a number >= 1")?;
                }
                flag if flag.starts_with("--") => anyhow::bail!("unknown option {flag}"),
                name => args.scenario = name.into(),
            }
        }
        Ok(args)
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One line: the ratio after/before of the medians of each figure.
fn compare(name: &str, before: &[Report], after: &[Report]) -> String {
    let ratio = |f: &dyn Fn(&Report) -> Option<f64>| {
        let b = median(before.iter().filter_map(f).collect())?;
        let a = median(after.iter().filter_map(f).collect())?;
        Some(format!("{b:.1} -> {a:.1} ({:.2}x)", a / b))
    };
    let mut parts = vec![format!(
        "rate {}",
        ratio(&|r| Some(r.rate)).unwrap_or_default()
    )];
    parts.push(format!(
        "seconds {}",
        ratio(&|r| Some(r.seconds)).unwrap_or_default()
    ));
    if let Some(pg) = ratio(&|r| r.pg_us_per_delivery) {
        parts.push(format!("Postgres µs/delivery {pg}"));
    }
    if let Some(p99) = ratio(&|r| r.p99_ms) {
        parts.push(format!("p99 ms {p99}"));
    }
    format!(
        "{name}, median of {} round(s), before -> after: {}",
        before.len(),
        parts.join("; ")
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse()?;
    let scenario = args.scenario.clone();
    let smoke = scenario == "smoke";
    let server_url = std::env::var("LOADTEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let bin = service::binary();
    let tally = Arc::new(Tally::default());
    let receiver = receiver::start(tally.clone());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    if cfg!(debug_assertions) && !smoke {
        eprintln!(
            "note: a debug build measures little; use `cargo run --release --example loadtest`"
        );
    }

    let concurrency = 64;
    let ceiling_total = if smoke { 2_000 } else { 50_000 };
    measure_ceiling(
        &client,
        &format!("{receiver}/ok/warmup"),
        ceiling_total / 10,
        concurrency,
    )
    .await;
    let ceiling = measure_ceiling(
        &client,
        &format!("{receiver}/ok/ceiling"),
        ceiling_total,
        concurrency,
    )
    .await;
    tally.reset();
    println!(
        "ceiling: {ceiling:.0} POST/s (plain keep-alive client, concurrency {concurrency}, {} B bodies)",
        sample_body().len()
    );
    println!(
        "| scenario   | delivered |  seconds |    per s  |  ratio | p50 ms | p95 ms | p99 ms | RSS MB | CPU s/1k | pg µs/d | note"
    );
    println!(
        "|------------|-----------|----------|-----------|--------|--------|--------|--------|---------|---------|---------|-----"
    );

    let mut ctx = Ctx {
        server_url,
        bin,
        client,
        tally,
        receiver,
        ceiling,
        smoke,
    };
    let names: Vec<&str> = match scenario.as_str() {
        "all" | "smoke" => vec![
            "throughput",
            "fanout",
            "wide",
            "wide-body",
            "steady",
            "backlog",
            "retention",
            "failing",
            "slow-neighbour",
            "reporting",
            "filtered",
            "http-32",
            "http-batch",
        ],
        "isolation" => vec!["throughput", "slow-neighbour", "failing"],
        "http-intake" => vec!["http-1", "http-32", "http-batch"],
        one => vec![one],
    };
    let mut reports = vec![];
    let mut ratios = vec![];
    for name in names {
        let Some(old) = args.baseline.as_ref().filter(|_| COMPARED.contains(&name)) else {
            let report = scenarios::run(&mut ctx, name).await?;
            print_row(&report);
            reports.push(report);
            continue;
        };
        // Before and after alternate, so drift on this noisy machine falls
        // on both; the ratio compares medians.
        let (mut before, mut after) = (vec![], vec![]);
        for _ in 0..args.rounds {
            let current = std::mem::replace(&mut ctx.bin, old.clone());
            let report = scenarios::run(&mut ctx, name).await;
            ctx.bin = current;
            let mut report = report?;
            report.scenario = format!("{name} (before)");
            print_row(&report);
            before.push(report.clone());
            reports.push(report);
            let report = scenarios::run(&mut ctx, name).await?;
            print_row(&report);
            after.push(report.clone());
            reports.push(report);
        }
        ratios.push(compare(name, &before, &after));
    }
    println!();
    for line in &ratios {
        println!("{line}");
    }
    for r in &reports {
        println!("{}", serde_json::to_string(r)?);
    }
    let incomplete: Vec<&str> = reports
        .iter()
        .filter(|r| r.note.contains("INCOMPLETE"))
        .map(|r| r.scenario.as_str())
        .collect();
    anyhow::ensure!(
        incomplete.is_empty(),
        "not every delivery arrived in: {incomplete:?}"
    );
    Ok(())
}
