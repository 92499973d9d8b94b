//! Recover: a webhook's dead letters in a window go back to the queue, each
//! with a fresh retry schedule (WEBHOOK_MAX_ATTEMPTS more tries, the backoff
//! from its first step), after an outage that outlasted the schedule.
use sqlx::PgPool;

use super::store;
use crate::domain::ids::WebhookId;
use crate::domain::window::Window;

/// Deliveries requeued per statement: bounded work, short locks.
const BATCH: i64 = 1000;

#[derive(Debug, PartialEq, Eq)]
pub enum Recovered {
    Requeued(i64),
    NoSuchWebhook,
    /// An inactive webhook's deliveries would only fail again.
    Inactive,
}

/// Safe to call twice: what was requeued is `pending`, not `failed`, and a
/// concurrent call skips the rows this one holds.
pub async fn recover(
    pool: &PgPool,
    webhook: &WebhookId,
    window: Window,
) -> sqlx::Result<Recovered> {
    match store::webhook_active(pool, webhook.as_str()).await? {
        None => return Ok(Recovered::NoSuchWebhook),
        Some(false) => return Ok(Recovered::Inactive),
        Some(true) => {}
    }
    let mut requeued = 0;
    loop {
        let n = store::requeue_failed(pool, webhook.as_str(), window.since, window.until, BATCH)
            .await?;
        requeued += n;
        if n < BATCH {
            break;
        }
    }
    if requeued > 0 {
        tracing::info!(webhook = %webhook, requeued, since = %window.since, until = %window.until, "webhook recovered");
    }
    Ok(Recovered::Requeued(requeued))
}
