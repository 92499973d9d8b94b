//! SQL for `webhooks` (read with its endpoint state, for the circuit).
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::{NewWebhook, Ordering, Webhook, WebhookPatch};
use crate::domain::filter::Filter;
use crate::domain::headers::CustomHeaders;
use crate::queue::endpoints::CircuitView;

struct Row {
    id: String,
    url: String,
    events: Vec<String>,
    secret: String,
    description: Option<String>,
    active: bool,
    rate_limit: Option<i32>,
    ordering: String,
    disabled_reason: Option<String>,
    disabled_at: Option<DateTime<Utc>>,
    filter: Option<serde_json::Value>,
    headers: serde_json::Value,
    circuit: Option<String>,
    consecutive_failures: Option<i32>,
    open_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for Webhook {
    fn from(r: Row) -> Self {
        Self {
            circuit: CircuitView::from_parts(
                r.circuit.as_deref(),
                r.consecutive_failures,
                r.open_until,
            ),
            id: r.id,
            url: r.url,
            events: r.events,
            secret: r.secret,
            description: r.description,
            active: r.active,
            rate_limit: r.rate_limit,
            ordering: Ordering::parse(&r.ordering),
            disabled_reason: r.disabled_reason,
            disabled_at: r.disabled_at,
            filter: r.filter,
            headers: CustomHeaders::from_stored(&r.headers),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

pub async fn create(pool: &PgPool, new: &NewWebhook) -> sqlx::Result<Webhook> {
    let id = sqlx::query_scalar!(
        r#"
        INSERT INTO webhooks (url, events, secret, description, active, rate_limit, ordering, filter, headers)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        RETURNING id
        "#,
        new.url,
        &new.events,
        new.secret,
        new.description,
        new.active,
        new.rate_limit,
        new.ordering.as_str(),
        new.filter.clone().map(Filter::into_json),
        new.headers.to_json(),
    )
    .fetch_one(pool)
    .await?;
    get(pool, &id).await?.ok_or(sqlx::Error::RowNotFound)
}

pub async fn get(pool: &PgPool, id: &str) -> sqlx::Result<Option<Webhook>> {
    let row = sqlx::query_as!(
        Row,
        r#"SELECT w.id, w.url, w.events, w.secret, w.description, w.active, w.rate_limit, w.ordering,
                  w.disabled_reason, w.disabled_at, w.filter, w.headers, s.circuit AS "circuit?",
                  s.consecutive_failures AS "consecutive_failures?", s.open_until, w.created_at, w.updated_at
           FROM webhooks w LEFT JOIN webhook_endpoint_state s ON s.webhook_id = w.id
           WHERE w.id = $1"#,
        id,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Webhook::from))
}

/// Newest first, after the `(created_at, id)` cursor (webhooks_created_idx).
pub async fn list(
    pool: &PgPool,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> sqlx::Result<Vec<Webhook>> {
    let (after_at, after_id) = after.unzip();
    let rows = sqlx::query_as!(
        Row,
        r#"
        SELECT w.id, w.url, w.events, w.secret, w.description, w.active, w.rate_limit, w.ordering,
               w.disabled_reason, w.disabled_at, w.filter, w.headers, s.circuit AS "circuit?",
               s.consecutive_failures AS "consecutive_failures?", s.open_until, w.created_at, w.updated_at
        FROM webhooks w LEFT JOIN webhook_endpoint_state s ON s.webhook_id = w.id
        WHERE ($1::timestamptz IS NULL OR (w.created_at, w.id) < ($1, $2))
        ORDER BY w.created_at DESC, w.id DESC
        LIMIT $3
        "#,
        after_at,
        after_id,
        limit,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(Webhook::from).collect())
}

/// Returns false when there is no such webhook. Re-enabling clears the
/// disable reason.
pub async fn patch(conn: &mut PgConnection, id: &str, patch: &WebhookPatch) -> sqlx::Result<bool> {
    let (set_description, description) = match &patch.description {
        Some(d) => (true, d.clone()),
        None => (false, None),
    };
    let (set_rate_limit, rate_limit) = match patch.rate_limit {
        Some(r) => (true, r),
        None => (false, None),
    };
    let (set_filter, filter) = match &patch.filter {
        Some(f) => (true, f.clone().map(Filter::into_json)),
        None => (false, None),
    };
    let done = sqlx::query!(
        r#"
        UPDATE webhooks
        SET url = COALESCE($2, url),
            events = COALESCE($3, events),
            active = COALESCE($4, active),
            description = CASE WHEN $5 THEN $6 ELSE description END,
            rate_limit = CASE WHEN $7 THEN $8 ELSE rate_limit END,
            ordering = COALESCE($9, ordering),
            filter = CASE WHEN $10 THEN $11 ELSE filter END,
            headers = COALESCE($12, headers),
            disabled_reason = CASE WHEN $4 THEN NULL ELSE disabled_reason END,
            disabled_at = CASE WHEN $4 THEN NULL ELSE disabled_at END,
            updated_at = now()
        WHERE id = $1
        "#,
        id,
        patch.url,
        patch.events.as_deref(),
        patch.active,
        set_description,
        description,
        set_rate_limit,
        rate_limit,
        patch.ordering.map(Ordering::as_str),
        set_filter,
        filter,
        patch.headers.as_ref().map(CustomHeaders::to_json),
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes the webhook and, by cascade, its deliveries and their attempts
/// (again if a delivery in flight moved to the history under it).
pub async fn delete(pool: &PgPool, id: &str) -> sqlx::Result<bool> {
    crate::db::retry_if_moved(|| async {
        let done = sqlx::query!("DELETE FROM webhooks WHERE id = $1", id)
            .execute(pool)
            .await?;
        Ok(done.rows_affected() == 1)
    })
    .await
}

/// Replaces the secret; the one it replaces keeps signing for `overlap_s`
/// seconds (none when 0). A rotation during an overlap replaces the older
/// secret: only the one being replaced now overlaps. Returns the webhook and
/// the end of the overlap.
pub async fn rotate_secret(
    pool: &PgPool,
    id: &str,
    secret: &str,
    overlap_s: i64,
) -> sqlx::Result<Option<(Webhook, Option<DateTime<Utc>>)>> {
    let done = sqlx::query_scalar!(
        r#"
        UPDATE webhooks
        SET previous_secret = CASE WHEN $3::int8 > 0 THEN secret END,
            previous_secret_expires_at = CASE WHEN $3::int8 > 0 THEN now() + make_interval(secs => $3::int8) END,
            secret = $2,
            updated_at = now()
        WHERE id = $1
        RETURNING previous_secret_expires_at
        "#,
        id,
        secret,
        overlap_s,
    )
    .fetch_optional(pool)
    .await?;
    let Some(until) = done else {
        return Ok(None);
    };
    Ok(get(pool, id).await?.map(|w| (w, until)))
}

/// Sets `active` false with the reason and fails what is pending and not in
/// flight. `None` when the webhook was not active; otherwise how many
/// deliveries became `failed`.
pub async fn disable<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: &str,
    reason: &str,
) -> sqlx::Result<Option<i64>> {
    let row = sqlx::query!(
        r#"
        WITH off AS (
            UPDATE webhooks
            SET active = false, disabled_reason = $2, disabled_at = now(), updated_at = now()
            WHERE id = $1 AND active
            RETURNING id
        ), failed AS (
            UPDATE webhook_deliveries d
            SET status = 'failed', done_at = now(), last_error = 'not sent: the webhook was disabled: ' || $2
            FROM off
            WHERE d.webhook_id = off.id AND d.status = 'pending'
              AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= now())
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM off) AS "off!", (SELECT count(*) FROM failed) AS "failed!"
        "#,
        id,
        reason,
    )
    .fetch_one(db)
    .await?;
    Ok((row.off == 1).then_some(row.failed))
}

/// Every catalogue type: (name, archived, subscribed to by name by `current`).
pub async fn subscribable(
    pool: &PgPool,
    current: Option<&str>,
) -> sqlx::Result<Vec<(String, bool, bool)>> {
    let rows = sqlx::query!(
        r#"
        SELECT t.name, t.archived_at IS NOT NULL AS "archived!",
               coalesce(t.name = ANY (w.events), false) AS "kept!"
        FROM webhook_event_types t
        LEFT JOIN webhooks w ON w.id = $1
        "#,
        current,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.name, r.archived, r.kept))
        .collect())
}
