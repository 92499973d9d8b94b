//! The scenarios. Each gets a fresh database and (except backlog and
//! reporting, which measure SQL alone) a fresh service process.
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sqlx::{Connection, Executor, PgPool};

use crate::service::Service;
use crate::{Ctx, Report, wait_ok};

/// Padding in each event's data, for a realistic body (about 300 bytes).
pub const PAD: &str = "0x5f3759df0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

pub struct Db {
    name: String,
    server_url: String,
    pub url: String,
    pub pool: PgPool,
}

impl Db {
    pub async fn fresh(ctx: &Ctx, scenario: &str) -> anyhow::Result<Self> {
        let name = format!("loadtest_{scenario}_{}", std::process::id());
        let mut admin = sqlx::PgConnection::connect(&ctx.server_url).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let url = match ctx.server_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => anyhow::bail!("LOADTEST_DATABASE_URL must name a database"),
        };
        // The binary under test migrates its own database, so a baseline
        // binary gets the schema it was built for.
        let migrated = std::process::Command::new(&ctx.bin)
            .arg("migrate")
            .env_clear()
            .env("DATABASE_URL", &url)
            .env("LOG_LEVEL", "warn")
            .status()?;
        anyhow::ensure!(migrated.success(), "{} migrate failed", ctx.bin);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await?;
        Ok(Self {
            name,
            server_url: ctx.server_url.clone(),
            url,
            pool,
        })
    }

    /// Registers `n` webhooks at `{receiver}/ok/{i}` in SQL (the API's
    /// validation is not what is measured); `filtered`: each on `pool.*`
    /// with a filter on its own `pool_id` (`p{i}`), else on everything.
    pub async fn register_in_sql(
        &self,
        receiver: &str,
        n: i64,
        filtered: bool,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO webhooks (url, events, secret, filter)
             SELECT $1 || '/ok/' || i,
                    CASE WHEN $3 THEN '{pool.*}' ELSE '{*}' END::text[],
                    'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
                    CASE WHEN $3 THEN jsonb_build_object('pool_id', 'p' || i) END
             FROM generate_series(0, $2 - 1) i",
        )
        .bind(receiver)
        .bind(n)
        .bind(filtered)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Starts counting Postgres execution time in this database, where the
    /// server preloads pg_stat_statements (elsewhere the figure is absent).
    pub async fn pg_time_start(&self) {
        let _ = self
            .pool
            .execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await;
        let _ = self
            .pool
            .execute(
                "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database
                                                     WHERE datname = current_database()), 0)",
            )
            .await;
    }

    /// Postgres execution time (every statement of every session in this
    /// database, nested work included) per delivery since `pg_time_start`.
    pub async fn pg_us_per_delivery(&self, deliveries: u64) -> Option<f64> {
        let ms: Option<f64> = sqlx::query_scalar(
            "SELECT sum(total_exec_time)::float8 FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&self.pool)
        .await
        .ok()
        .flatten();
        ms.map(|ms| ms * 1000.0 / deliveries.max(1) as f64)
    }

    pub async fn drop_it(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let mut admin = sqlx::PgConnection::connect(&self.server_url).await?;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await?;
        Ok(())
    }
}

/// Publishes events `from..to` in one transaction, as an indexer batch would.
pub async fn publish_batch(pool: &PgPool, from: i64, to: i64) -> anyhow::Result<()> {
    publish_typed(pool, "pool.created", from, to).await
}

pub async fn publish_typed(
    pool: &PgPool,
    event_type: &str,
    from: i64,
    to: i64,
) -> anyhow::Result<()> {
    sqlx::query("SELECT count(webhook_publish($4, jsonb_build_object('i', g, 'pad', $3::text))) FROM generate_series($1, $2) g")
        .bind(from)
        .bind(to)
        .bind(PAD)
        .bind(event_type)
        .execute(pool)
        .await?;
    Ok(())
}

pub async fn publish_in_batches(pool: &PgPool, total: i64, batch: i64) -> anyhow::Result<()> {
    publish_typed_in_batches(pool, "pool.created", total, batch).await
}

pub async fn publish_typed_in_batches(
    pool: &PgPool,
    event_type: &str,
    total: i64,
    batch: i64,
) -> anyhow::Result<()> {
    let mut from = 1;
    while from <= total {
        let to = (from + batch - 1).min(total);
        publish_typed(pool, event_type, from, to).await?;
        from = to + 1;
    }
    Ok(())
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                Box::leak(k.to_string().into_boxed_str()) as &'static str,
                v.to_string(),
            )
        })
        .collect()
}

pub fn finish(
    ctx: &Ctx,
    name: &str,
    delivered: u64,
    seconds: f64,
    service: &Service,
    note: String,
) -> Report {
    let rate = delivered as f64 / seconds;
    Report {
        scenario: name.into(),
        deliveries: delivered,
        seconds,
        rate,
        ceiling: ctx.ceiling,
        ratio: rate / ctx.ceiling,
        peak_rss_mb: Some(service.peak_rss_mb()),
        cpu_s_per_1k: Some(service.cpu_since_start() / (delivered.max(1) as f64 / 1000.0)),
        note,
        ..Default::default()
    }
}

/// Commit → arrival per event in ms, sorted. An event that never arrived
/// counts as `missing` ms, or is left out when `missing` is `None`.
pub fn latencies_ms<'a>(
    committed: impl Iterator<Item = (&'a String, &'a Instant)>,
    arrivals: &HashMap<String, Instant>,
    missing: Option<f64>,
) -> Vec<f64> {
    let mut ms: Vec<f64> = committed
        .filter_map(|(id, at)| {
            arrivals
                .get(id)
                .map(|a| a.saturating_duration_since(*at).as_secs_f64() * 1000.0)
                .or(missing)
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    ms
}

impl Report {
    /// p50, p95 and p99 of sorted latencies.
    pub fn set_percentiles(&mut self, sorted: &[f64]) {
        let pct = |p: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
                .copied()
        };
        self.p50_ms = pct(0.50);
        self.p95_ms = pct(0.95);
        self.p99_ms = pct(0.99);
    }
}

pub fn elapsed_to_last(ctx: &Ctx, started: Instant) -> f64 {
    let last = ctx
        .tally
        .last_ok
        .lock()
        .unwrap()
        .unwrap_or_else(Instant::now);
    last.saturating_duration_since(started).as_secs_f64()
}

pub async fn run(ctx: &mut Ctx, name: &str) -> anyhow::Result<Report> {
    ctx.tally.reset();
    match name {
        "throughput" => throughput(ctx).await,
        "fanout" => fanout(ctx).await,
        "wide" => wide(ctx).await,
        "wide-body" => wide_body(ctx).await,
        "wide-100k" => wide_100k(ctx).await,
        "steady" => steady(ctx).await,
        "backlog" => backlog(ctx).await,
        "retention" => retention(ctx).await,
        "failing" => crate::isolation::failing(ctx).await,
        "slow-neighbour" => crate::isolation::slow_neighbour(ctx).await,
        "reporting" => reporting(ctx).await,
        "filtered" => filtered(ctx).await,
        "http-1" => crate::intake::http_intake(ctx, name, 1, 0).await,
        "http-32" => crate::intake::http_intake(ctx, name, 32, 0).await,
        "http-batch" => crate::intake::http_intake(ctx, name, 4, 500).await,
        other => anyhow::bail!("unknown scenario {other}"),
    }
}

/// 1 webhook, 50,000 events published in batches of 500.
async fn throughput(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let total: i64 = if ctx.smoke { 2_000 } else { 50_000 };
    let db = Db::fresh(ctx, "throughput").await?;
    let service = Service::start(&ctx.bin, &db.url, &[]).await;
    service
        .register(&ctx.client, &format!("{}/ok/0", ctx.receiver))
        .await;
    db.pg_time_start().await;
    let started = Instant::now();
    publish_in_batches(&db.pool, total, 500).await?;
    let complete = wait_ok(&ctx.tally, total as u64, Duration::from_secs(300)).await;
    let seconds = elapsed_to_last(ctx, started);
    let delivered = ctx.tally.ok.load(Ordering::Relaxed);
    let mut report = finish(
        ctx,
        "throughput",
        delivered,
        seconds,
        &service,
        if complete {
            String::new()
        } else {
            "INCOMPLETE".into()
        },
    );
    report.pg_us_per_delivery = db.pg_us_per_delivery(delivered).await;
    service.stop();
    db.drop_it().await?;
    Ok(report)
}

/// 100 webhooks × 1,000 events.
async fn fanout(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let (hooks, events) = if ctx.smoke { (10, 200) } else { (100, 1_000) };
    let db = Db::fresh(ctx, "fanout").await?;
    let service = Service::start(&ctx.bin, &db.url, &[]).await;
    for i in 0..hooks {
        service
            .register(&ctx.client, &format!("{}/ok/{i}", ctx.receiver))
            .await;
    }
    db.pg_time_start().await;
    let started = Instant::now();
    publish_in_batches(&db.pool, events, 500).await?;
    let expected = (hooks * events) as u64;
    let complete = wait_ok(&ctx.tally, expected, Duration::from_secs(300)).await;
    let seconds = elapsed_to_last(ctx, started);
    let delivered = ctx.tally.ok.load(Ordering::Relaxed);
    let note = format!(
        "{hooks} webhooks × {events} events{}",
        if complete { "" } else { " INCOMPLETE" }
    );
    let mut report = finish(ctx, "fanout", delivered, seconds, &service, note);
    report.pg_us_per_delivery = db.pg_us_per_delivery(delivered).await;
    service.stop();
    db.drop_it().await?;
    Ok(report)
}

/// One event to 10,000 webhooks: time until all arrived.
async fn wide(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let hooks: usize = if ctx.smoke { 200 } else { 10_000 };
    let db = Db::fresh(ctx, "wide").await?;
    let service = Service::start(&ctx.bin, &db.url, &[]).await;
    let client = ctx.client.clone();
    let receiver = ctx.receiver.clone();
    futures_util::stream::iter(0..hooks)
        .map(|i| {
            let (service, client, url) = (&service, &client, format!("{receiver}/ok/{i}"));
            async move { service.register(client, &url).await }
        })
        .buffer_unordered(16)
        .for_each(|_| async {})
        .await;
    db.pg_time_start().await;
    let started = Instant::now();
    publish_batch(&db.pool, 1, 1).await?;
    let complete = wait_ok(&ctx.tally, hooks as u64, Duration::from_secs(120)).await;
    let seconds = elapsed_to_last(ctx, started);
    let delivered = ctx.tally.ok.load(Ordering::Relaxed);
    let note = format!(
        "1 event → {hooks} webhooks: all arrived in {:.2} s{}",
        seconds,
        if complete { "" } else { " INCOMPLETE" }
    );
    let mut report = finish(ctx, "wide", delivered, seconds, &service, note);
    report.pg_us_per_delivery = db.pg_us_per_delivery(delivered).await;
    service.stop();
    db.drop_it().await?;
    Ok(report)
}

/// One event to 100,000 webhooks: commit → first arrival, and until all
/// arrived. The fan-out goes in chunks of WEBHOOK_FANOUT_CHUNK, the first
/// sent while the rest are written.
async fn wide_100k(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let hooks: i64 = if ctx.smoke { 2_000 } else { 100_000 };
    let db = Db::fresh(ctx, "wide_100k").await?;
    let service = Service::start(&ctx.bin, &db.url, &[]).await;
    db.register_in_sql(&ctx.receiver, hooks, false).await?;
    sqlx::query("ANALYZE webhooks").execute(&db.pool).await?;
    db.pg_time_start().await;
    let started = Instant::now();
    publish_batch(&db.pool, 1, 1).await?;
    wait_ok(&ctx.tally, 1, Duration::from_secs(60)).await;
    let first_ms = started.elapsed().as_secs_f64() * 1000.0;
    let complete = wait_ok(&ctx.tally, hooks as u64, Duration::from_secs(600)).await;
    let seconds = elapsed_to_last(ctx, started);
    let delivered = ctx.tally.ok.load(Ordering::Relaxed);
    let note = format!(
        "1 event → {hooks} webhooks: first arrived {first_ms:.0} ms after the commit, all in {seconds:.2} s{}",
        if complete { "" } else { " INCOMPLETE" }
    );
    let mut report = finish(ctx, "wide-100k", delivered, seconds, &service, note);
    report.pg_us_per_delivery = db.pg_us_per_delivery(delivered).await;
    service.stop();
    db.drop_it().await?;
    Ok(report)
}

/// One event with 200 KiB of data (that compresses poorly, like hashes and
/// calldata) to 2,000 webhooks: how much the database and the WAL grew by
/// the time every delivery arrived.
async fn wide_body(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let hooks: i64 = if ctx.smoke { 100 } else { 2_000 };
    let db = Db::fresh(ctx, "wide_body").await?;
    let service = Service::start(&ctx.bin, &db.url, &[]).await;
    db.register_in_sql(&ctx.receiver, hooks, false).await?;
    sqlx::query("CHECKPOINT").execute(&db.pool).await?;
    let sizes = "SELECT pg_database_size(current_database())::float8, \
                        pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8";
    let (db_before, wal_before): (f64, f64) = sqlx::query_as(sizes).fetch_one(&db.pool).await?;
    db.pg_time_start().await;
    let started = Instant::now();
    sqlx::query(
        "SELECT webhook_publish('pool.created', jsonb_build_object('pad',
             (SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 6400))))",
    )
    .execute(&db.pool)
    .await?;
    let complete = wait_ok(&ctx.tally, hooks as u64, Duration::from_secs(120)).await;
    let seconds = elapsed_to_last(ctx, started);
    let delivered = ctx.tally.ok.load(Ordering::Relaxed);
    let (db_after, wal_after): (f64, f64) = sqlx::query_as(sizes).fetch_one(&db.pool).await?;
    let mb = |b: f64| b / (1024.0 * 1024.0);
    let note = format!(
        "1 event (200 KiB data) → {hooks} webhooks: database +{:.1} MB, WAL +{:.1} MB{}",
        mb(db_after - db_before),
        mb(wal_after - wal_before),
        if complete { "" } else { " INCOMPLETE" }
    );
    let mut report = finish(ctx, "wide-body", delivered, seconds, &service, note);
    report.pg_us_per_delivery = db.pg_us_per_delivery(delivered).await;
    service.stop();
    db.drop_it().await?;
    Ok(report)
}

/// 10,000 webhooks, each filtering on its own `pool_id` (`pool.*`): first
/// one event alone (commit → arrival at its one subscriber), then 20,000
/// events, each matching exactly one webhook. The fan-out finds the webhook
/// by its filter's index term instead of testing 10,000 filters per event.
async fn filtered(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let (hooks, total): (i64, i64) = if ctx.smoke {
        (1_000, 2_000)
    } else {
        (10_000, 20_000)
    };
    let db = Db::fresh(ctx, "filtered").await?;
    let service = Service::start(&ctx.bin, &db.url, &[]).await;
    db.register_in_sql(&ctx.receiver, hooks, true).await?;
    // Production's autovacuum analyzes a table that grew this much; this
    // machine runs with autovacuum off.
    sqlx::query("ANALYZE webhooks").execute(&db.pool).await?;
    db.pg_time_start().await;
    let one = Instant::now();
    sqlx::query("SELECT webhook_publish('pool.created', jsonb_build_object('pool_id', 'p7', 'pad', $1::text))")
        .bind(PAD)
        .execute(&db.pool)
        .await?;
    wait_ok(&ctx.tally, 1, Duration::from_secs(30)).await;
    let one_ms = one.elapsed().as_secs_f64() * 1000.0;
    ctx.tally.reset();
    let started = Instant::now();
    let mut from = 1;
    while from <= total {
        let to = (from + 499).min(total);
        sqlx::query(
            "SELECT count(webhook_publish('pool.created', jsonb_build_object('pool_id', 'p' || (g % $3), 'i', g, 'pad', $4::text)))
             FROM generate_series($1, $2) g",
        )
        .bind(from)
        .bind(to)
        .bind(hooks)
        .bind(PAD)
        .execute(&db.pool)
        .await?;
        from = to + 1;
    }
    let complete = wait_ok(&ctx.tally, total as u64, Duration::from_secs(300)).await;
    let seconds = elapsed_to_last(ctx, started);
    let delivered = ctx.tally.ok.load(Ordering::Relaxed);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries")
        .fetch_one(&db.pool)
        .await?;
    let note = format!(
        "{hooks} filtered webhooks: 1 event → its subscriber in {one_ms:.0} ms; {total} events → {rows} delivery rows{}",
        if complete { "" } else { " INCOMPLETE" }
    );
    let mut report = finish(ctx, "filtered", delivered, seconds, &service, note);
    report.pg_us_per_delivery = db.pg_us_per_delivery(delivered + 1).await;
    service.stop();
    db.drop_it().await?;
    Ok(report)
}

/// 500 events/s for 30 s, one event per transaction: commit → arrival latency.
async fn steady(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let (per_second, seconds) = if ctx.smoke { (100u64, 2u64) } else { (500, 30) };
    let total = per_second * seconds;
    let db = Db::fresh(ctx, "steady").await?;
    let service = Service::start(&ctx.bin, &db.url, &[]).await;
    service
        .register(&ctx.client, &format!("{}/ok/0", ctx.receiver))
        .await;
    ctx.tally.track.store(true, Ordering::SeqCst);
    let mut conn = db.pool.acquire().await?;
    let mut committed: HashMap<String, Instant> = HashMap::with_capacity(total as usize);
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let id = format!("steady-{i}");
        // One statement outside a transaction block: its own transaction.
        sqlx::query("SELECT webhook_publish('pool.created', jsonb_build_object('i', $2::bigint, 'pad', $3::text), $1)")
            .bind(&id)
            .bind(i as i64)
            .bind(PAD)
            .execute(&mut *conn)
            .await?;
        committed.insert(id, Instant::now());
    }
    let publish_secs = started.elapsed().as_secs_f64();
    let complete = wait_ok(&ctx.tally, total, Duration::from_secs(60)).await;
    ctx.tally.track.store(false, Ordering::SeqCst);
    let arrivals = ctx.tally.arrivals.lock().unwrap().clone();
    let latencies = latencies_ms(committed.iter(), &arrivals, None);
    let delivered = ctx.tally.ok.load(Ordering::Relaxed);
    let note = format!(
        "{per_second}/s for {seconds} s (published in {publish_secs:.1} s){}",
        if complete { "" } else { " INCOMPLETE" }
    );
    let mut report = finish(ctx, "steady", delivered, publish_secs, &service, note);
    report.set_percentiles(&latencies);
    drop(conn);
    service.stop();
    db.drop_it().await?;
    Ok(report)
}

async fn median_claim_ms(pool: &PgPool, claims: usize) -> anyhow::Result<f64> {
    let mut times = vec![];
    for _ in 0..claims {
        let t = Instant::now();
        let got = smartdrop_webhooks::queue::store::claim_due(pool, 25, 60_000).await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(got.len() == 25, "claim returned {} rows", got.len());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

const CLAIM_SQL: &str = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
WITH due AS (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_retry_at <= now()
             ORDER BY next_retry_at LIMIT 25 FOR UPDATE SKIP LOCKED)
UPDATE webhook_deliveries d SET next_retry_at = now() + interval '1 minute', lease_token = gen_random_uuid()
FROM due, webhooks w WHERE d.status = 'pending' AND d.id = due.id AND w.id = d.webhook_id
RETURNING d.id";

async fn explain(pool: &PgPool, sql: &str) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_all(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("\n"))
}

/// Claims and records successes in batches of 500 until `target` rows are done
/// (shared across concurrent drainers through the table itself).
async fn drain(
    pool: &PgPool,
    target: i64,
    done: &std::sync::atomic::AtomicI64,
) -> anyhow::Result<()> {
    use smartdrop_webhooks::queue::breaker::BreakerConfig;
    use smartdrop_webhooks::queue::{AttemptRecord, Finished, NextState, completion, store};
    let breaker = BreakerConfig {
        threshold: 10,
        cooldown: Duration::from_secs(30),
        max_cooldown: Duration::from_secs(3600),
        disable_after: Duration::from_secs(432_000),
    };
    loop {
        // Reserve a share of the target first, so concurrent drainers never overshoot.
        let reserved = done.fetch_add(500, Ordering::SeqCst);
        if reserved >= target {
            return Ok(());
        }
        let claimed = store::claim_due(pool, (target - reserved).min(500), 60_000).await?;
        let finished: Vec<Finished> = claimed
            .iter()
            .map(|c| Finished {
                id: c.id.clone(),
                webhook_id: c.webhook_id.clone(),
                lease_token: c.lease_token,
                probe: c.probe,
                attempt: AttemptRecord {
                    started_at: chrono::Utc::now(),
                    duration_ms: 1,
                    response_status: Some(200),
                    error_kind: None,
                    error: None,
                    response_excerpt: None,
                },
                next: NextState::Success,
            })
            .collect();
        completion::complete(&mut *pool.acquire().await?, &finished, &breaker).await?;
    }
}

async fn insert_due(pool: &PgPool, webhook: &str, from: i64, to: i64) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body, next_retry_at)
         SELECT $1, 'bk-' || g, 'pool.created', '{}', now() - interval '1 hour' + g * interval '1 microsecond'
         FROM generate_series($2::bigint, $3::bigint) g",
    )
    .bind(webhook)
    .bind(from)
    .bind(to)
    .execute(pool)
    .await?;
    Ok(())
}

/// Claim-batch latency with an empty queue, with 1,000,000 due deliveries,
/// after the backlog drained (dead index entries, before vacuum) and after a vacuum.
async fn backlog(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let big: i64 = if ctx.smoke { 20_000 } else { 1_000_000 };
    let db = Db::fresh(ctx, "backlog").await?;
    let webhook: String = sqlx::query_scalar(
        "INSERT INTO webhooks (url, events, secret) VALUES ('http://127.0.0.1:9/x', '{*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await?;
    insert_due(&db.pool, &webhook, 1, 1_000).await?;
    sqlx::query("ANALYZE webhook_deliveries")
        .execute(&db.pool)
        .await?;
    let empty = median_claim_ms(&db.pool, 39).await?;
    sqlx::query("DELETE FROM webhook_deliveries")
        .execute(&db.pool)
        .await?;
    let started = Instant::now();
    for chunk in (0..big).step_by(100_000) {
        insert_due(&db.pool, &webhook, chunk + 1, (chunk + 100_000).min(big)).await?;
    }
    sqlx::query("VACUUM ANALYZE webhook_deliveries")
        .execute(&db.pool)
        .await?;
    let fill_secs = started.elapsed().as_secs_f64();
    let full = median_claim_ms(&db.pool, 40).await?;
    let plan = explain(&db.pool, CLAIM_SQL).await?;
    // Drain all but 2,000 the way workers do (claim, then record a success,
    // four at a time) while autovacuum runs as configured, then claim from
    // the tail.
    let drain_started = Instant::now();
    let done = std::sync::atomic::AtomicI64::new(0);
    let drainers = (0..4).map(|_| drain(&db.pool, big - 2_000, &done));
    futures_util::future::try_join_all(drainers).await?;
    let drain_secs = drain_started.elapsed().as_secs_f64();
    let drained_plan = explain(&db.pool, CLAIM_SQL).await?;
    let drained = median_claim_ms(&db.pool, 20).await?;
    // What (auto)vacuum gives back: the dead entries at the head of the due index go.
    sqlx::query("VACUUM webhook_deliveries")
        .execute(&db.pool)
        .await?;
    let vacuumed = median_claim_ms(&db.pool, 20).await?;
    std::fs::create_dir_all("target/loadtest")?;
    std::fs::write(
        "target/loadtest/claim-explain.txt",
        format!(
            "-- {big} due rows\n{plan}\n\n-- after draining all but 2,000 (no vacuum yet)\n{drained_plan}\n"
        ),
    )?;
    println!("claim EXPLAIN with {big} due rows:\n{plan}");
    let note = format!(
        "claim of 25: empty {empty:.2} ms, {big} due {full:.2} ms ({:.2}×), drained {drained:.2} ms ({:.2}×), after vacuum {vacuumed:.2} ms ({:.2}×); filled in {fill_secs:.0} s, drained in {drain_secs:.0} s",
        full / empty,
        drained / empty,
        vacuumed / empty,
    );
    db.drop_it().await?;
    Ok(Report {
        scenario: "backlog".into(),
        deliveries: big as u64,
        ceiling: ctx.ceiling,
        p50_ms: Some(full),
        note,
        ..Default::default()
    })
}

/// A day of history past retention (1,000,000 finished deliveries and as many
/// attempts, each delivery of its own event, the events in a week partition
/// past retention) beside 1,000 pending deliveries as old: how long the drops
/// take, how long a publish waits meanwhile, and that the pending ones stay.
async fn retention(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let total: i64 = if ctx.smoke { 10_000 } else { 1_000_000 };
    let db = Db::fresh(ctx, "retention").await?;
    let webhook: String = sqlx::query_scalar(
        "INSERT INTO webhooks (url, events, secret) VALUES ('http://127.0.0.1:9/x', '{*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await?;
    let day = "(now() AT TIME ZONE 'UTC')::date - 31";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT webhook_history_prepare({day}, {day})"
    )))
    .execute(&db.pool)
    .await?;
    let started = Instant::now();
    // The events, in the partition that holds what was published before
    // migration 18 (the only one below the current week), bodies as the
    // fan-out stores them.
    sqlx::query(
        "INSERT INTO webhook_events (id, event_id, event_type, data, occurred_at, created_at, dispatched_at, body)
         OVERRIDING SYSTEM VALUE
         SELECT g, 'old-' || g, 'pool.created', d, t, t, t, webhook_body('pool.created', 'old-' || g, t, d)
         FROM generate_series(1, $1) g, (SELECT now() - interval '31 days' AS t) x,
              (SELECT '{\"pool\": \"0x52908400098527886e0f7030069857d2e4169ee7\", \"apr\": 12.5}'::jsonb AS d) y",
    )
    .bind(total)
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, event_seq, status, attempts, created_at, last_attempt_at, done_at)
         SELECT $1, 'old-' || g, 'pool.created', g, 'success', 1, t, t, t
         FROM generate_series(1, $2) g, (SELECT now() - interval '31 days' AS t) x",
    )
    .bind(&webhook)
    .bind(total)
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_delivery_attempts (delivery_id, webhook_id, attempt, started_at, duration_ms, response_status)
         SELECT id, webhook_id, 1, done_at, 5, 200 FROM webhook_deliveries WHERE status = 'success'",
    )
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body, created_at, next_retry_at)
         SELECT $1, 'waiting-' || g, 'pool.created', '{}', now() - interval '31 days', now() + interval '1 hour'
         FROM generate_series(1, 1000) g",
    )
    .bind(&webhook)
    .execute(&db.pool)
    .await?;
    let fill_secs = started.elapsed().as_secs_f64();
    let bytes: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT (pg_total_relation_size('webhook_deliveries_' || to_char({day}, 'YYYYMMDD'))
               + pg_total_relation_size('webhook_delivery_attempts_' || to_char({day}, 'YYYYMMDD')))::int8"
    )))
    .fetch_one(&db.pool)
    .await?;
    let event_bytes: i64 =
        sqlx::query_scalar("SELECT pg_total_relation_size('webhook_events_carried')::int8")
            .fetch_one(&db.pool)
            .await?;
    let bounds = smartdrop_webhooks::db::Bounds::new(
        Duration::from_secs(30),
        tokio_util::sync::CancellationToken::new(),
    );
    // A producer publishing one event at a time throughout: its slowest
    // publish is what the drops' locks cost it.
    let stop = tokio_util::sync::CancellationToken::new();
    let producer = {
        let (pool, stop) = (db.pool.clone(), stop.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let t = Instant::now();
                sqlx::query("SELECT webhook_publish('pool.created', '{}')")
                    .execute(&pool)
                    .await?;
                slowest = slowest.max(t.elapsed());
                n += 1;
            }
            anyhow::Ok((slowest, n))
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let events_dropped =
        smartdrop_webhooks::storage::drop_partition(&db.pool, "webhook_events_carried", 30).await?;
    let events_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        events_dropped == smartdrop_webhooks::storage::Dropped::Dropped,
        "the events' partition was not dropped: {events_dropped:?}"
    );
    let started = Instant::now();
    smartdrop_webhooks::storage::maintain(&db.pool, 30, &bounds).await;
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    let (slowest, published) = producer.await??;
    let (left, pending): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status <> 'pending'), count(*) FILTER (WHERE status = 'pending')
         FROM webhook_deliveries",
    )
    .fetch_one(&db.pool)
    .await?;
    anyhow::ensure!(left == 0, "{left} finished deliveries left after the drop");
    anyhow::ensure!(pending == 1000, "{pending} of 1000 pending deliveries left");
    let note = format!(
        "dropped a day of {total} deliveries + {total} attempts ({:.0} MB) in {:.0} ms and the week of their {total} events ({:.0} MB) in {:.0} ms; \
         1000 pending as old untouched; a producer's slowest of {published} publishes meanwhile {:.0} ms; seeded in {fill_secs:.0} s",
        bytes as f64 / 1e6,
        seconds * 1000.0,
        event_bytes as f64 / 1e6,
        events_seconds * 1000.0,
        slowest.as_secs_f64() * 1000.0,
    );
    db.drop_it().await?;
    Ok(Report {
        scenario: "retention".into(),
        deliveries: total as u64,
        seconds,
        rate: 0.0,
        ceiling: ctx.ceiling,
        ratio: 0.0,
        p50_ms: None,
        p95_ms: None,
        p99_ms: None,
        peak_rss_mb: None,
        cpu_s_per_1k: None,
        pg_us_per_delivery: None,
        note,
    })
}

/// 1,000,000 deliveries over 1,000 webhooks and 7 days: each reporting query timed.
async fn reporting(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let total: i64 = if ctx.smoke { 10_000 } else { 1_000_000 };
    let db = Db::fresh(ctx, "reporting").await?;
    let started = Instant::now();
    // the history's days for the week seeded below
    sqlx::query("SELECT webhook_history_prepare((now() AT TIME ZONE 'UTC')::date - 8, (now() AT TIME ZONE 'UTC')::date)")
        .execute(&db.pool)
        .await?;
    sqlx::query(
        "INSERT INTO webhooks (id, url, events, secret)
         SELECT 'wh_' || lpad(to_hex(g), 32, '0'), 'https://hook' || g || '.example/x', '{*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
         FROM generate_series(1, 1000) g",
    )
    .execute(&db.pool)
    .await?;
    for chunk in (0..total).step_by(100_000) {
        let (from, to) = (chunk + 1, (chunk + 100_000).min(total));
        // 90 % success (1 or 2 attempts), 5 % failed (3 attempts), 5 % pending (1 attempt).
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, body, status, attempts, created_at, last_attempt_at, next_retry_at, done_at)
             SELECT 'dlv_' || lpad(to_hex(g), 32, '0'), 'wh_' || lpad(to_hex(1 + g % 1000), 32, '0'), 'e' || g, 'pool.created', '{}',
                    CASE WHEN g % 20 = 0 THEN 'failed' WHEN g % 20 = 1 THEN 'pending' ELSE 'success' END,
                    CASE WHEN g % 20 = 0 THEN 3 WHEN g % 10 = 2 THEN 2 ELSE 1 END,
                    now() - (g % 604800) * interval '1 second', now() - (g % 604800) * interval '1 second',
                    now() + interval '1 hour',
                    CASE WHEN g % 20 = 1 THEN NULL ELSE now() - (g % 604800) * interval '1 second' END
             FROM generate_series($1::bigint, $2::bigint) g",
        )
        .bind(from)
        .bind(to)
        .execute(&db.pool)
        .await?;
        sqlx::query(
            "INSERT INTO webhook_delivery_attempts (delivery_id, webhook_id, attempt, started_at, duration_ms, response_status, error_kind, error)
             SELECT d.id, d.webhook_id, n, d.created_at + n * interval '1 second', 5 + (hashtext(d.id) & 255),
                    CASE WHEN d.status = 'success' AND n = d.attempts THEN 200
                         WHEN hashtext(d.id) % 3 = 0 THEN NULL ELSE 500 END,
                    CASE WHEN d.status = 'success' AND n = d.attempts THEN NULL
                         WHEN hashtext(d.id) % 3 = 0 THEN 'timeout' ELSE 'http_status' END,
                    CASE WHEN d.status = 'success' AND n = d.attempts THEN NULL ELSE 'seeded failure' END
             FROM webhook_deliveries d, generate_series(1, d.attempts) n
             WHERE d.id BETWEEN 'dlv_' || lpad(to_hex($1::bigint), 32, '0') AND 'dlv_' || lpad(to_hex($2::bigint), 32, '0')",
        )
        .bind(from)
        .bind(to)
        .execute(&db.pool)
        .await?;
    }
    sqlx::query("VACUUM ANALYZE").execute(&db.pool).await?;
    let seed_secs = started.elapsed().as_secs_f64();
    let queries = [
        (
            "health 24h",
            "SELECT * FROM webhook_health(now() - interval '24 hours')",
        ),
        (
            "health 7d",
            "SELECT * FROM webhook_health(now() - interval '7 days')",
        ),
        (
            "health 7d, one webhook",
            "SELECT * FROM webhook_health(now() - interval '7 days', 'wh_00000000000000000000000000000007')",
        ),
        (
            "totals 24h",
            "SELECT * FROM webhook_delivery_totals(now() - interval '24 hours')",
        ),
        (
            "totals 7d",
            "SELECT * FROM webhook_delivery_totals(now() - interval '7 days')",
        ),
        (
            "volume 7d",
            "SELECT * FROM webhook_delivery_volume(now() - interval '7 days')",
        ),
        (
            "failure reasons 7d",
            "SELECT * FROM webhook_failure_reasons(now() - interval '7 days')",
        ),
        (
            "recent failures",
            "SELECT * FROM webhook_recent_failures(now() - interval '7 days')",
        ),
        ("due backlog", "SELECT * FROM webhook_due_backlog"),
    ];
    let mut timings = vec![];
    let mut plans = String::new();
    for (label, sql) in queries {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&db.pool)
            .await?; // warm
        let t = Instant::now();
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&db.pool)
            .await?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        timings.push(format!("{label} {ms:.0} ms"));
        let plan = explain(&db.pool, &format!("EXPLAIN (ANALYZE, COSTS OFF) {sql}")).await?;
        plans.push_str(&format!("-- {label}: {ms:.1} ms\n{sql};\n{plan}\n\n"));
    }
    std::fs::create_dir_all("target/loadtest")?;
    std::fs::write("target/loadtest/reporting-explain.txt", &plans)?;
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_delivery_attempts")
        .fetch_one(&db.pool)
        .await?;
    db.drop_it().await?;
    Ok(Report {
        scenario: "reporting".into(),
        deliveries: total as u64,
        ceiling: ctx.ceiling,
        note: format!(
            "{attempts} attempts, seeded in {seed_secs:.0} s; {}",
            timings.join(", ")
        ),
        ..Default::default()
    })
}
