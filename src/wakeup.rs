//! One LISTEN connection for the whole instance, of its own: not one of the
//! pipeline pool's, which it would hold for good (with
//! `DATABASE_MAX_CONNECTIONS=1` nothing would ever be delivered).
//! Notifications wake the fan-out (`webhook_events`) and the worker
//! (`webhook_deliveries`). After a (re)connect both are woken, since
//! notifications sent while the connection was down are lost and the sweep
//! is what recovers them.
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

pub const EVENTS_CHANNEL: &str = "webhook_events";
/// How often an idle LISTEN connection is asked `SELECT 1`: silence is what
/// a dead or black-holed connection looks like, and sqlx offers no TCP
/// keepalive, so liveness is checked by asking.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
pub const DELIVERIES_CHANNEL: &str = "webhook_deliveries";

#[derive(Clone, Default)]
pub struct Wakeups {
    pub events: Arc<Notify>,
    pub deliveries: Arc<Notify>,
}

impl Wakeups {
    fn wake_all(&self) {
        self.events.notify_one();
        self.deliveries.notify_one();
    }
}

pub async fn run(
    pool: PgPool,
    wakeups: Wakeups,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    // The pipeline pool's settings, one connection, opened when needed.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with((*pool.connect_options()).clone());
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&own).await?;
            listener
                .listen_all([EVENTS_CHANNEL, DELIVERIES_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = connected => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "LISTEN connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
        };
        tracing::info!("listening for events and deliveries");
        if !std::mem::take(&mut first) {
            metrics.listener_reconnects.increment(1);
        }
        backoff = Duration::from_millis(100);
        metrics.pipeline.listener(true);
        wakeups.wake_all();
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        loop {
            let mut ping_due = false;
            // A notification cut short by the ping is not lost for good: the
            // sweeps find what it announced.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ping.tick() => ping_due = true,
                received = listener.try_recv() => match received {
                    Ok(Some(n)) if n.channel() == EVENTS_CHANNEL => wakeups.events.notify_one(),
                    Ok(Some(_)) => wakeups.deliveries.notify_one(),
                    // The connection dropped; sqlx reconnects on the next call,
                    // and whatever was notified meanwhile is found by a sweep.
                    // The connection dropped. Reconnect and LISTEN again before
                    // sweeping, so nothing committed in between is missed.
                    Ok(None) => {
                        tracing::warn!("LISTEN connection lost; reconnecting and sweeping");
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "LISTEN connection failed; reconnecting");
                        break;
                    }
                },
            }
            if ping_due {
                let alive = tokio::time::timeout(
                    PING_TIMEOUT,
                    sqlx::query("SELECT 1").execute(&mut listener),
                )
                .await;
                if !matches!(alive, Ok(Ok(_))) {
                    tracing::warn!(
                        "LISTEN connection stopped answering; reconnecting and sweeping"
                    );
                    break;
                }
            }
        }
        metrics.pipeline.listener(false);
    }
}
