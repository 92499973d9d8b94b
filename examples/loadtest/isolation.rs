//! The endpoint-isolation scenarios: a healthy webhook beside a slow or a
//! failing one. Service settings as in the endpoint-isolation issue: defaults
//! except a 1 s timeout, a 300 ms retry base and a 100 ms poll.
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::scenarios::{
    Db, elapsed_to_last, env, finish, latencies_ms, publish_typed, publish_typed_in_batches,
};
use crate::service::Service;
use crate::{Ctx, Report, wait_ok};

/// A fresh database and service with the settings, a troubled
/// neighbour at `neighbour_path` subscribed to `pool.closed`, and a healthy
/// webhook subscribed to `healthy_type`.
async fn neighbours(
    ctx: &Ctx,
    name: &str,
    neighbour_path: &str,
    healthy_type: &str,
) -> anyhow::Result<(Db, Service)> {
    let settings = env(&[
        ("WEBHOOK_TIMEOUT_MS", "1000"),
        ("WEBHOOK_RETRY_BASE_MS", "300"),
        ("WEBHOOK_RETRY_POLL_MS", "100"),
    ]);
    let db = Db::fresh(ctx, name).await?;
    let service = Service::start(&ctx.bin, &db.url, &settings).await;
    let neighbour = format!("{}{neighbour_path}", ctx.receiver);
    service
        .register_for(&ctx.client, &neighbour, "pool.closed")
        .await;
    let healthy = format!("{}/ok/1", ctx.receiver);
    service
        .register_for(&ctx.client, &healthy, healthy_type)
        .await;
    Ok((db, service))
}

/// A webhook whose receiver hangs past the timeout has 2,000 due deliveries;
/// another webhook's fresh events, published one by one: commit → arrival.
pub async fn slow_neighbour(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let (backlog, fresh) = if ctx.smoke { (200, 5) } else { (2_000, 20) };
    let (db, service) = neighbours(ctx, "slow_neighbour", "/hang/0", "price.alert").await?;
    publish_typed(&db.pool, "pool.closed", 1, backlog).await?;
    // The neighbour's sends are hanging before the fresh events come.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ctx.tally.hung.load(Ordering::Relaxed) < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ctx.tally.track.store(true, Ordering::SeqCst);
    let mut committed = vec![];
    let started = Instant::now();
    for i in 0..fresh {
        let id = format!("fresh-{i}");
        sqlx::query(
            "SELECT webhook_publish('price.alert', jsonb_build_object('i', $2::bigint), $1)",
        )
        .bind(&id)
        .bind(i)
        .execute(&db.pool)
        .await?;
        committed.push((id, Instant::now()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let window = if ctx.smoke { 10 } else { 60 };
    let complete = wait_ok(&ctx.tally, fresh as u64, Duration::from_secs(window)).await;
    ctx.tally.track.store(false, Ordering::SeqCst);
    let arrivals = ctx.tally.arrivals.lock().unwrap().clone();
    // Not arrived within the window counts as the whole window.
    let window_ms = Some(window as f64 * 1000.0);
    let latencies = latencies_ms(
        committed.iter().map(|(id, at)| (id, at)),
        &arrivals,
        window_ms,
    );
    let delivered = ctx.tally.ok.load(Ordering::Relaxed);
    let late = committed
        .iter()
        .filter(|(id, _)| !arrivals.contains_key(id))
        .count();
    let note = format!(
        "{fresh} fresh events beside {backlog} due to a hanging endpoint: {late} not delivered within {window} s; {} hanging sends started{}",
        ctx.tally.hung.load(Ordering::Relaxed),
        if complete { "" } else { " INCOMPLETE" }
    );
    let mut report = finish(
        ctx,
        "slow-neighbour",
        delivered,
        started.elapsed().as_secs_f64(),
        &service,
        note,
    );
    report.set_percentiles(&latencies);
    service.stop();
    db.drop_it().await?;
    Ok(report)
}

/// One healthy webhook's rate beside a neighbour whose every attempt gets
/// `500` and which has a backlog published first, over its rate alone (both
/// measured here, same binary, same run).
pub async fn failing(ctx: &mut Ctx) -> anyhow::Result<Report> {
    let (backlog, events) = if ctx.smoke {
        (500, 1_000)
    } else {
        (6_000, 20_000)
    };
    let alone = healthy_rate(ctx, 0, events).await?;
    ctx.tally.reset();
    let beside = healthy_rate(ctx, backlog, events).await?;
    let failing_attempts = ctx.tally.failed.load(Ordering::Relaxed);
    let ratio = beside.rate / alone.rate;
    let mut report = beside;
    report.scenario = "failing".into();
    report.note = format!(
        "healthy {:.0}/s beside a failing neighbour with {backlog} deliveries, {:.0}/s alone: {ratio:.2} of alone; {failing_attempts} attempts made on the neighbour{}",
        report.rate, alone.rate, report.note
    );
    Ok(report)
}

async fn healthy_rate(ctx: &mut Ctx, backlog: i64, events: i64) -> anyhow::Result<Report> {
    let (db, service) = neighbours(ctx, "failing", "/fail/0", "pool.created").await?;
    if backlog > 0 {
        publish_typed(&db.pool, "pool.closed", 1, backlog).await?;
    }
    let started = Instant::now();
    publish_typed_in_batches(&db.pool, "pool.created", events, 500).await?;
    let complete = wait_ok(&ctx.tally, events as u64, Duration::from_secs(300)).await;
    let seconds = elapsed_to_last(ctx, started);
    let delivered = ctx.tally.ok.load(Ordering::Relaxed);
    let note = if complete { "" } else { " INCOMPLETE" };
    let report = finish(ctx, "failing", delivered, seconds, &service, note.into());
    service.stop();
    db.drop_it().await?;
    Ok(report)
}
