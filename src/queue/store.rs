//! SQL for `webhook_deliveries` and `webhook_delivery_attempts`. Every state
//! change after a claim is fenced on `(id, lease_token)`: a worker whose lease
//! expired and was taken over changes nothing.
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{Attempt, AttemptRecord, Claimed, Delivery, NextState};

/// Claims up to `batch` due deliveries under a lease of `lease_ms` and commits
/// (one statement) before anything is sent. Deliveries of an inactive webhook
/// are marked `failed` in the same statement and not returned for sending.
pub async fn claim_due(pool: &PgPool, batch: i64, lease_ms: i64) -> sqlx::Result<Vec<Claimed>> {
    let rows = sqlx::query!(
        r#"
        WITH due AS (
            -- Walks webhook_deliveries_due_idx in next_retry_at order. SKIP LOCKED
            -- lets concurrent claimers (other workers, other instances) take
            -- disjoint rows without waiting on each other. A leased row has
            -- next_retry_at = its lease expiry, so it is skipped until then and
            -- due again if its worker died (no rescuer process needed).
            SELECT id FROM webhook_deliveries
            WHERE status = 'pending' AND next_retry_at <= now()
            ORDER BY next_retry_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        UPDATE webhook_deliveries d
        SET next_retry_at    = CASE WHEN w.active THEN now() + make_interval(secs => $2::float8 / 1000) ELSE d.next_retry_at END,
            lease_expires_at = CASE WHEN w.active THEN now() + make_interval(secs => $2::float8 / 1000) END,
            lease_token      = CASE WHEN w.active THEN gen_random_uuid() END,
            status           = CASE WHEN w.active THEN d.status ELSE 'failed' END,
            last_error       = CASE WHEN w.active THEN d.last_error ELSE 'not sent: the webhook is inactive' END
        FROM due, webhooks w
        WHERE d.id = due.id AND w.id = d.webhook_id
        RETURNING d.id, d.lease_token, d.attempts, d.webhook_id, w.url, w.secret, w.active,
                  d.event_type, d.body
        "#,
        batch,
        lease_ms as f64,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            Some(Claimed {
                lease_token: r.lease_token.filter(|_| r.active)?,
                id: r.id,
                attempts: r.attempts,
                webhook_id: r.webhook_id,
                url: r.url,
                secret: r.secret,
                event_type: r.event_type,
                body: r.body,
            })
        })
        .collect())
}

/// Inserts a delivery already claimed by the caller (the `/test` endpoint),
/// so no worker can pick it up before the caller sends it.
pub async fn insert_claimed(
    pool: &PgPool,
    webhook_id: &str,
    event_id: &str,
    event_type: &str,
    body: &str,
    lease_ms: i64,
) -> sqlx::Result<Option<Claimed>> {
    let row = sqlx::query!(
        r#"
        WITH ins AS (
            INSERT INTO webhook_deliveries
                (webhook_id, event_id, event_type, body, next_retry_at, lease_expires_at, lease_token)
            SELECT w.id, $2, $3, $4,
                   now() + make_interval(secs => $5::float8 / 1000),
                   now() + make_interval(secs => $5::float8 / 1000),
                   gen_random_uuid()
            FROM webhooks w WHERE w.id = $1
            RETURNING id, lease_token, attempts, webhook_id, event_type, body
        )
        SELECT ins.id, ins.lease_token AS "lease_token!", ins.attempts, ins.webhook_id,
               ins.event_type, ins.body, w.url, w.secret
        FROM ins JOIN webhooks w ON w.id = ins.webhook_id
        "#,
        webhook_id,
        event_id,
        event_type,
        body,
        lease_ms as f64,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Claimed {
        id: r.id,
        lease_token: r.lease_token,
        attempts: r.attempts,
        webhook_id: r.webhook_id,
        url: r.url,
        secret: r.secret,
        event_type: r.event_type,
        body: r.body,
    }))
}

/// Claims one `failed` delivery for a manual retry. `None` when it is not
/// failed (or does not exist).
pub async fn claim_failed(
    pool: &PgPool,
    webhook_id: &str,
    delivery_id: &str,
    lease_ms: i64,
) -> sqlx::Result<Option<Claimed>> {
    let row = sqlx::query!(
        r#"
        UPDATE webhook_deliveries d
        SET status = 'pending',
            next_retry_at    = now() + make_interval(secs => $3::float8 / 1000),
            lease_expires_at = now() + make_interval(secs => $3::float8 / 1000),
            lease_token      = gen_random_uuid()
        FROM webhooks w
        WHERE d.id = $2 AND d.webhook_id = $1 AND d.status = 'failed' AND w.id = d.webhook_id
        RETURNING d.id, d.lease_token AS "lease_token!", d.attempts, d.webhook_id, w.url, w.secret,
                  d.event_type, d.body
        "#,
        webhook_id,
        delivery_id,
        lease_ms as f64,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| Claimed {
        id: r.id,
        lease_token: r.lease_token,
        attempts: r.attempts,
        webhook_id: r.webhook_id,
        url: r.url,
        secret: r.secret,
        event_type: r.event_type,
        body: r.body,
    }))
}

/// Records an attempt and the delivery's next state in one statement, fenced
/// on the lease. Returns `false` when the lease was lost (nothing written).
pub async fn finish(
    pool: &PgPool,
    claimed: &Claimed,
    attempt: &AttemptRecord,
    next: &NextState,
) -> sqlx::Result<bool> {
    let (status, retry_at) = match next {
        NextState::Success => ("success", None),
        NextState::Retry { at } => ("pending", Some(*at)),
        NextState::Failed => ("failed", None),
    };
    let done = sqlx::query!(
        r#"
        WITH done AS (
            UPDATE webhook_deliveries
            SET status = $3,
                attempts = attempts + 1,
                next_retry_at = COALESCE($4, next_retry_at),
                lease_expires_at = NULL,
                lease_token = NULL,
                response_status = $5,
                last_error = $6,
                last_attempt_at = $7
            WHERE id = $1 AND lease_token = $2
            RETURNING id, webhook_id, attempts
        )
        INSERT INTO webhook_delivery_attempts
            (delivery_id, webhook_id, attempt, started_at, duration_ms, response_status, error_kind, error, response_excerpt)
        SELECT id, webhook_id, attempts, $7, $8, $5, $9, $6, $10 FROM done
        "#,
        claimed.id,
        claimed.lease_token,
        status,
        retry_at,
        attempt.response_status,
        attempt.error,
        attempt.started_at,
        attempt.duration_ms,
        attempt.error_kind,
        attempt.response_excerpt,
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives leases back without consuming an attempt (shutdown), so another
/// instance can send those deliveries at once.
pub async fn release(pool: &PgPool, tokens: &[Uuid]) -> sqlx::Result<u64> {
    let released = sqlx::query!(
        r#"
        UPDATE webhook_deliveries
        SET next_retry_at = now(), lease_expires_at = NULL, lease_token = NULL
        WHERE lease_token = ANY($1) AND status = 'pending'
        "#,
        tokens,
    )
    .execute(pool)
    .await?;
    Ok(released.rows_affected())
}

/// A webhook's deliveries, newest first, after the `(created_at, id)` cursor.
pub async fn list(
    pool: &PgPool,
    webhook_id: &str,
    status: Option<&str>,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> sqlx::Result<Vec<Delivery>> {
    let (after_at, after_id) = after.unzip();
    sqlx::query_as!(
        Delivery,
        r#"
        SELECT d.id, d.webhook_id, d.event_type, d.event_id, d.status, d.attempts, d.response_status,
               d.last_error,
               CASE WHEN d.status = 'pending' THEN d.next_retry_at END AS next_retry_at,
               d.created_at, d.last_attempt_at,
               (SELECT a.duration_ms FROM webhook_delivery_attempts a
                WHERE a.delivery_id = d.id AND a.attempt = d.attempts) AS duration_ms
        FROM webhook_deliveries d
        -- webhook_deliveries_webhook_idx serves the filter, the order and the cursor
        WHERE d.webhook_id = $1
          AND ($2::text IS NULL OR d.status = $2)
          AND ($3::timestamptz IS NULL OR (d.created_at, d.id) < ($3, $4))
        ORDER BY d.created_at DESC, d.id DESC
        LIMIT $5
        "#,
        webhook_id,
        status,
        after_at,
        after_id,
        limit,
    )
    .fetch_all(pool)
    .await
}

pub async fn get(
    pool: &PgPool,
    webhook_id: &str,
    delivery_id: &str,
) -> sqlx::Result<Option<Delivery>> {
    sqlx::query_as!(
        Delivery,
        r#"
        SELECT d.id, d.webhook_id, d.event_type, d.event_id, d.status, d.attempts, d.response_status,
               d.last_error,
               CASE WHEN d.status = 'pending' THEN d.next_retry_at END AS next_retry_at,
               d.created_at, d.last_attempt_at,
               (SELECT a.duration_ms FROM webhook_delivery_attempts a
                WHERE a.delivery_id = d.id AND a.attempt = d.attempts) AS duration_ms
        FROM webhook_deliveries d
        WHERE d.id = $2 AND d.webhook_id = $1
        "#,
        webhook_id,
        delivery_id,
    )
    .fetch_optional(pool)
    .await
}

pub async fn attempts(pool: &PgPool, delivery_id: &str) -> sqlx::Result<Vec<Attempt>> {
    sqlx::query_as!(
        Attempt,
        r#"
        SELECT attempt, started_at, duration_ms, response_status, error, error_kind, response_excerpt
        FROM webhook_delivery_attempts
        WHERE delivery_id = $1
        ORDER BY attempt
        "#,
        delivery_id,
    )
    .fetch_all(pool)
    .await
}
