//! Stages 4 and 5: sign, send, classify, record. Both the worker and the API
//! (`/test`, manual retry) deliver through `Deliverer::deliver`.
//! Depends on `queue` (claims and the fenced finish) and `domain`.
pub mod completer;
pub mod outcome;
pub mod sender;
pub mod signing;
pub mod worker;

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use rand::Rng;
use sqlx::PgPool;

use crate::domain::headers::CustomHeaders;
use crate::domain::secret::WebhookSecret;
use crate::metrics::Metrics;
use crate::queue::breaker::{BreakerConfig, Change};
use crate::queue::completion;
use crate::queue::retry::RetryPolicy;
use crate::queue::{AttemptRecord, Claimed, Finished, NextState};
use crate::webhooks::{self, DisableReason};
use sender::{Request, Sender};

#[derive(Clone)]
pub struct Deliverer {
    pool: PgPool,
    sender: Sender,
    policy: RetryPolicy,
    breaker: BreakerConfig,
    metrics: Arc<Metrics>,
}

impl Deliverer {
    pub fn new(
        pool: PgPool,
        sender: Sender,
        policy: RetryPolicy,
        breaker: BreakerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pool,
            sender,
            policy,
            breaker,
            metrics,
        }
    }

    /// Sends one claimed delivery and records the attempt at once (the API's
    /// `/test` and manual retry, which answer with the recorded result). `Err`
    /// means the database write failed (the lease then expires and the
    /// delivery is sent again); a receiver's failure is recorded data, `Ok`.
    pub async fn deliver(&self, claimed: Claimed) -> anyhow::Result<()> {
        let finished = self.attempt(&claimed).await;
        let mut conn = self.pool.acquire().await?;
        record(&mut conn, &self.metrics, &self.breaker, &[finished]).await?;
        Ok(())
    }

    /// Signs, sends and classifies one attempt, without touching the database.
    pub async fn attempt(&self, claimed: &Claimed) -> Finished {
        let started_at = Utc::now();
        let secret = WebhookSecret::from_stored(claimed.secret.clone());
        let previous = claimed
            .previous_secret
            .clone()
            .map(WebhookSecret::from_stored);
        let signatures = signing::sign_rotating(
            &secret,
            previous.as_ref(),
            &claimed.id,
            started_at.timestamp(),
            claimed.body.as_bytes(),
        );
        let clock = Instant::now();
        let result = self
            .sender
            .send(Request {
                url: claimed.url.clone(),
                delivery_id: claimed.id.clone(),
                event_type: claimed.event_type.clone(),
                timestamp: started_at.timestamp(),
                smartdrop_signature: signatures.smartdrop,
                standard_signature: signatures.standard,
                headers: CustomHeaders::from_stored(&claimed.headers),
                body: claimed.body.clone().into_bytes(),
            })
            .await;
        let elapsed = clock.elapsed();
        self.metrics.attempt_seconds.record(elapsed.as_secs_f64());
        let attempts = claimed.attempts as u32 + 1;
        let unit = rand::rng().random::<f64>();
        let next = outcome::classify(&result, attempts, &self.policy, Utc::now(), unit);
        let attempt = AttemptRecord {
            started_at,
            duration_ms: elapsed.as_millis().min(i32::MAX as u128) as i32,
            response_status: result.as_ref().ok().map(|r| r.status as i32),
            error_kind: match &result {
                Ok(r) if !(200..300).contains(&r.status) => Some("http_status"),
                Ok(_) => None,
                Err(e) => Some(e.kind()),
            },
            error: outcome::describe(&result),
            response_excerpt: result.as_ref().ok().map(|r| r.excerpt.clone()),
        };
        Finished {
            id: claimed.id.clone(),
            webhook_id: claimed.webhook_id.clone(),
            lease_token: claimed.lease_token,
            probe: claimed.probe,
            attempt,
            next,
        }
    }
}

/// Records attempts in one transaction, counts their outcomes, and acts on
/// what they meant for their endpoints: breaker transitions are logged once,
/// a `410 Gone` or a circuit open too long disables the webhook. An attempt
/// whose lease was lost is not recorded: another worker owns the delivery.
pub async fn record(
    conn: &mut sqlx::PgConnection,
    metrics: &Metrics,
    breaker: &BreakerConfig,
    batch: &[Finished],
) -> sqlx::Result<()> {
    let done = completion::complete(conn, batch, breaker).await?;
    for f in batch {
        if !done.recorded.contains(&f.id) {
            tracing::warn!(delivery = %f.id, "lease lost before the attempt was recorded; another worker owns this delivery");
            continue;
        }
        match f.next {
            NextState::Success => metrics.delivered.increment(1),
            NextState::Retry { .. } => metrics.retry_scheduled.increment(1),
            NextState::Failed => metrics.failed.increment(1),
        }
    }
    let mut disable: Vec<(String, DisableReason)> = vec![];
    for (webhook, change) in done.changes {
        match change {
            Change::Opened { until } => {
                tracing::warn!(webhook = %webhook, open_until = %until, "circuit opened: deliveries deferred until the probe")
            }
            Change::Closed => {
                tracing::info!(webhook = %webhook, "circuit closed: the endpoint answered again")
            }
            Change::Disable => disable.push((webhook, DisableReason::CircuitOpen)),
        }
    }
    disable.extend(done.gone.into_iter().map(|w| (w, DisableReason::Gone)));
    for (webhook, reason) in disable {
        if webhooks::disable(&mut *conn, &webhook, reason, breaker).await? {
            metrics.disabled(reason.kind());
        }
    }
    Ok(())
}
