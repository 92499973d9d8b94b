//! Replay: a webhook gets the deliveries it is missing for retained events
//! in a window (an endpoint registered late, or one that lost its data).
//! They are created like the fan-out creates them: same body bytes, same
//! headers, ordinary deliveries from then on.
use sqlx::{Connection, PgPool};

use super::store;
use crate::domain::ids::WebhookId;
use crate::domain::window::Window;

/// Events looked at per transaction: the work of one statement is bounded
/// however wide the window.
const CHUNK: i64 = 1000;

#[derive(Debug, PartialEq, Eq)]
pub enum Replayed {
    Created(i64),
    NoSuchWebhook,
    /// Deliveries of an inactive webhook are not sent; re-enable it first.
    Inactive,
}

/// Idempotent: a second replay of the same window creates nothing. Each
/// chunk commits on its own, so a replay cut short (a timeout, a restart) is
/// finished by calling it again.
pub async fn replay(pool: &PgPool, webhook: &WebhookId, window: Window) -> sqlx::Result<Replayed> {
    let mut conn = pool.acquire().await?;
    let range = store::event_range(&mut conn, window.since, window.until).await?;
    let mut created = 0;
    let mut after = range.map_or(0, |(lo, _)| lo - 1);
    loop {
        let mut tx = conn.begin().await?;
        match store::lock_for_replay(&mut tx, webhook.as_str()).await? {
            None => return Ok(Replayed::NoSuchWebhook),
            Some(false) => return Ok(Replayed::Inactive),
            Some(true) => {}
        }
        let Some((_, hi)) = range else { break };
        let (last, n) = store::replay_chunk(
            &mut tx,
            webhook.as_str(),
            window.since,
            window.until,
            after,
            hi,
            CHUNK,
        )
        .await?;
        tx.commit().await?;
        created += n;
        match last {
            Some(last) if last < hi => after = last,
            _ => break,
        }
    }
    if created > 0 {
        tracing::info!(webhook = %webhook, created, since = %window.since, until = %window.until, "webhook replayed");
    }
    Ok(Replayed::Created(created))
}
