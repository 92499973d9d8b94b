//! SQL for `webhook_deliveries` and `webhook_delivery_attempts`. Every state
//! change after a claim is fenced on `(id, lease_token)`: a worker whose lease
//! expired and was taken over changes nothing.
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::fairness::Rooms;
use super::{Attempt, Claimed, Delivery, Finished, NextState};

/// Claims up to `batch` due deliveries under a lease of `lease_ms` and commits
/// (one statement) before anything is sent. `rooms` is this instance's fair
/// share per webhook (`fairness::rooms`); the circuit, the throttle and FIFO
/// are applied by `webhook_claim` in the database, where every instance sees
/// them. Pending deliveries of an inactive webhook are marked `failed`.
pub async fn claim(
    conn: &mut sqlx::PgConnection,
    batch: i64,
    lease_ms: i64,
    rooms: &Rooms,
) -> sqlx::Result<Vec<Claimed>> {
    let (busy_ids, busy_room): (Vec<String>, Vec<i32>) = rooms.busy.iter().cloned().unzip();
    sqlx::query_as!(
        Claimed,
        r#"
        SELECT id AS "id!", lease_token AS "lease_token!", attempts AS "attempts!",
               webhook_id AS "webhook_id!", url AS "url!", secret AS "secret!", previous_secret,
               headers AS "headers!",
               event_type AS "event_type!", body AS "body!", probe AS "probe!"
        FROM webhook_claim($1::int4, $2::float8, $3::text[], $4::int4[], $5::int4)
        "#,
        batch as i32,
        lease_ms as f64,
        &busy_ids,
        &busy_room,
        rooms.newcomer,
    )
    .fetch_all(conn)
    .await
}

/// `claim` for a caller with nothing in flight (tests, the load-test harness).
pub async fn claim_due(pool: &PgPool, batch: i64, lease_ms: i64) -> sqlx::Result<Vec<Claimed>> {
    let rooms = Rooms {
        busy: vec![],
        newcomer: batch.clamp(0, i32::MAX as i64) as i32,
    };
    claim(&mut *pool.acquire().await?, batch, lease_ms, &rooms).await
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
    sqlx::query_as!(
        Claimed,
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
               ins.event_type, ins.body AS "body!", w.url, w.secret, w.headers,
               CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret,
               false AS "probe!"
        FROM ins JOIN webhooks w ON w.id = ins.webhook_id
        "#,
        webhook_id,
        event_id,
        event_type,
        body,
        lease_ms as f64,
    )
    .fetch_optional(pool)
    .await
}

/// Takes the webhook's endpoint state first, in the order every claim and
/// completion takes it, before changing its deliveries outside a claim.
async fn lock_endpoint(conn: &mut sqlx::PgConnection, webhook_id: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "SELECT webhook_id FROM webhook_endpoint_state WHERE webhook_id = $1 FOR UPDATE",
        webhook_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(())
}

/// What a hand retry found.
#[derive(Debug)]
pub enum HandRetry {
    Claimed(Claimed),
    NotFound,
    /// Only a failed delivery can be retried by hand; this is its status.
    NotFailed(String),
    /// An inactive webhook's delivery would only fail again.
    Inactive,
    /// Its event's week was dropped by retention: there is no body to send.
    EventExpired,
    /// It changed between the claim and the look that followed.
    Changed,
}

/// Claims one `failed` delivery of an active webhook whose event is still
/// stored, for a manual retry. The webhook is woken for the lease's end, so
/// the delivery is not stranded if this attempt is never recorded. Reading
/// the event holds off retention's drop of its week (`webhook_events_drop`)
/// until this commits, and the drop then sees the delivery in the queue.
pub async fn claim_failed(
    pool: &PgPool,
    webhook_id: &str,
    delivery_id: &str,
    lease_ms: i64,
) -> sqlx::Result<HandRetry> {
    let mut tx = pool.begin().await?;
    lock_endpoint(&mut tx, webhook_id).await?;
    let claimed = sqlx::query_as!(
        Claimed,
        r#"
        UPDATE webhook_deliveries d
        SET status = 'pending', done_at = NULL,
            next_retry_at    = now() + make_interval(secs => $3::float8 / 1000),
            lease_expires_at = now() + make_interval(secs => $3::float8 / 1000),
            lease_token      = gen_random_uuid()
        FROM webhooks w
        WHERE d.id = $2 AND d.webhook_id = $1 AND d.status = 'failed' AND w.id = d.webhook_id AND w.active
          AND (d.body IS NOT NULL OR EXISTS (SELECT 1 FROM webhook_events e WHERE e.id = d.event_seq))
        RETURNING d.id, d.lease_token AS "lease_token!", d.attempts - d.attempts_before AS "attempts!",
                  d.webhook_id, w.url, w.secret, w.headers,
                  CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END AS previous_secret,
                  d.event_type, webhook_delivery_body(d.body, d.event_seq) AS "body!", false AS "probe!"
        "#,
        webhook_id,
        delivery_id,
        lease_ms as f64,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(claimed) = claimed else {
        let found = sqlx::query!(
            r#"
            SELECT d.status, w.active,
                   d.body IS NOT NULL OR EXISTS (SELECT 1 FROM webhook_events e WHERE e.id = d.event_seq)
                       AS "has_body!"
            FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
            WHERE d.id = $2 AND d.webhook_id = $1
            "#,
            webhook_id,
            delivery_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        return Ok(match found {
            None => HandRetry::NotFound,
            Some(d) if d.status != "failed" => HandRetry::NotFailed(d.status),
            Some(d) if !d.active => HandRetry::Inactive,
            Some(d) if !d.has_body => HandRetry::EventExpired,
            Some(_) => HandRetry::Changed,
        });
    };
    sqlx::query!(
        r#"
        UPDATE webhook_endpoint_state
        SET ready_at = least(ready_at, now() + make_interval(secs => $2::float8 / 1000))
        WHERE webhook_id = $1
        "#,
        webhook_id,
        lease_ms as f64,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(HandRetry::Claimed(claimed))
}

/// Records many attempts in one statement: each row's new state and its
/// attempt row, fenced on its lease. Rows whose lease was lost are skipped.
/// Called by `completion::complete`.
pub(super) async fn finish_many(
    conn: &mut sqlx::PgConnection,
    batch: &[Finished],
) -> sqlx::Result<Vec<Recorded>> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut tokens = Vec::with_capacity(batch.len());
    let mut statuses = Vec::with_capacity(batch.len());
    let mut retry_in_ms: Vec<Option<i64>> = Vec::with_capacity(batch.len());
    let mut response_statuses: Vec<Option<i32>> = Vec::with_capacity(batch.len());
    let mut errors: Vec<Option<String>> = Vec::with_capacity(batch.len());
    let mut started: Vec<DateTime<Utc>> = Vec::with_capacity(batch.len());
    let mut durations = Vec::with_capacity(batch.len());
    let mut kinds: Vec<Option<String>> = Vec::with_capacity(batch.len());
    let mut excerpts: Vec<Option<String>> = Vec::with_capacity(batch.len());
    for f in batch {
        let (status, retry_at) = match f.next {
            NextState::Success => ("success", None),
            NextState::Retry { at } => ("pending", Some(at)),
            NextState::Failed => ("failed", None),
        };
        ids.push(f.id.clone());
        tokens.push(f.lease_token);
        statuses.push(status.to_owned());
        retry_in_ms.push(retry_at.map(super::retry::from_now_ms));
        response_statuses.push(f.attempt.response_status);
        errors.push(f.attempt.error.clone());
        started.push(f.attempt.started_at);
        durations.push(f.attempt.duration_ms);
        kinds.push(f.attempt.error_kind.map(str::to_owned));
        excerpts.push(f.attempt.response_excerpt.clone());
    }
    let done = sqlx::query!(
        r#"
        -- migration 22: the statement, run with sequential scans off
        SELECT delivery_id AS "delivery_id!", webhook_id AS "webhook_id!", at_rest AS "at_rest!"
        FROM webhook_record_attempts($1::text[], $2::uuid[], $3::text[], $4::int8[], $5::int4[],
                                     $6::text[], $7::timestamptz[], $8::int4[], $9::text[], $10::text[])
        "#,
        &ids,
        &tokens,
        &statuses,
        &retry_in_ms as &[Option<i64>],
        &response_statuses as &[Option<i32>],
        &errors as &[Option<String>],
        &started,
        &durations,
        &kinds as &[Option<String>],
        &excerpts as &[Option<String>],
    )
    .fetch_all(conn)
    .await?;
    Ok(done
        .into_iter()
        .map(|r| Recorded {
            id: r.delivery_id,
            webhook_id: r.webhook_id,
            at_rest: r.at_rest,
        })
        .collect())
}

/// An attempt `finish_many` recorded.
pub(super) struct Recorded {
    pub id: String,
    pub webhook_id: String,
    /// Its endpoint's state was closed with no failures, and not FIFO.
    pub at_rest: bool,
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

/// Puts up to `batch` of the webhook's `failed` deliveries created in
/// `[since, until)` back in the queue with a fresh retry schedule (their
/// attempt log keeps counting), and wakes the webhook. The endpoint state is
/// locked first, as every claim and completion locks it.
pub async fn requeue_failed(
    pool: &PgPool,
    webhook_id: &str,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    batch: i64,
) -> sqlx::Result<i64> {
    let mut tx = pool.begin().await?;
    lock_endpoint(&mut tx, webhook_id).await?;
    let requeued = sqlx::query_scalar!(
        r#"
        WITH picked AS (
            SELECT x.id FROM webhook_deliveries x
            WHERE x.webhook_id = $1 AND x.status = 'failed'
              AND x.created_at >= $2 AND x.created_at < $3
              -- one whose event's week retention dropped has nothing to send
              AND (x.body IS NOT NULL OR EXISTS (SELECT 1 FROM webhook_events e WHERE e.id = x.event_seq))
            LIMIT $4
            FOR UPDATE SKIP LOCKED
        )
        UPDATE webhook_deliveries d
        SET status = 'pending', done_at = NULL, attempts_before = d.attempts, next_retry_at = now(),
            lease_expires_at = NULL, lease_token = NULL
        FROM picked WHERE d.status = 'failed' AND d.id = picked.id
        RETURNING d.id
        "#,
        webhook_id,
        since,
        until,
        batch,
    )
    .fetch_all(&mut *tx)
    .await?
    .len() as i64;
    if requeued > 0 {
        sqlx::query!(
            r#"
            UPDATE webhook_endpoint_state SET ready_at = now()
            WHERE webhook_id = $1 AND (ready_at IS NULL OR ready_at > now())
            "#,
            webhook_id
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query!("SELECT pg_notify('webhook_deliveries', '')")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(requeued)
}

/// Whether the webhook is active; `None` when it does not exist.
pub async fn webhook_active(pool: &PgPool, webhook_id: &str) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar!("SELECT active FROM webhooks WHERE id = $1", webhook_id)
        .fetch_optional(pool)
        .await
}
