//! SQL for `webhooks`.
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{NewWebhook, Webhook, WebhookPatch};

pub async fn create(pool: &PgPool, new: &NewWebhook) -> sqlx::Result<Webhook> {
    sqlx::query_as!(
        Webhook,
        r#"
        INSERT INTO webhooks (url, events, secret, description, active)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING id, url, events, secret, description, active, created_at, updated_at
        "#,
        new.url,
        &new.events,
        new.secret,
        new.description,
        new.active,
    )
    .fetch_one(pool)
    .await
}

pub async fn get(pool: &PgPool, id: &str) -> sqlx::Result<Option<Webhook>> {
    sqlx::query_as!(
        Webhook,
        r#"SELECT id, url, events, secret, description, active, created_at, updated_at
           FROM webhooks WHERE id = $1"#,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// Newest first, after the `(created_at, id)` cursor (webhooks_created_idx).
pub async fn list(
    pool: &PgPool,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> sqlx::Result<Vec<Webhook>> {
    let (after_at, after_id) = after.unzip();
    sqlx::query_as!(
        Webhook,
        r#"
        SELECT id, url, events, secret, description, active, created_at, updated_at
        FROM webhooks
        WHERE ($1::timestamptz IS NULL OR (created_at, id) < ($1, $2))
        ORDER BY created_at DESC, id DESC
        LIMIT $3
        "#,
        after_at,
        after_id,
        limit,
    )
    .fetch_all(pool)
    .await
}

pub async fn patch(pool: &PgPool, id: &str, patch: &WebhookPatch) -> sqlx::Result<Option<Webhook>> {
    let (set_description, description) = match &patch.description {
        Some(d) => (true, d.clone()),
        None => (false, None),
    };
    sqlx::query_as!(
        Webhook,
        r#"
        UPDATE webhooks
        SET url = COALESCE($2, url),
            events = COALESCE($3, events),
            active = COALESCE($4, active),
            description = CASE WHEN $5 THEN $6 ELSE description END,
            updated_at = now()
        WHERE id = $1
        RETURNING id, url, events, secret, description, active, created_at, updated_at
        "#,
        id,
        patch.url,
        patch.events.as_deref(),
        patch.active,
        set_description,
        description,
    )
    .fetch_optional(pool)
    .await
}

/// Deletes the webhook and, by cascade, its deliveries and their attempts.
pub async fn delete(pool: &PgPool, id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query!("DELETE FROM webhooks WHERE id = $1", id)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn rotate_secret(pool: &PgPool, id: &str, secret: &str) -> sqlx::Result<Option<Webhook>> {
    sqlx::query_as!(
        Webhook,
        r#"
        UPDATE webhooks SET secret = $2, updated_at = now() WHERE id = $1
        RETURNING id, url, events, secret, description, active, created_at, updated_at
        "#,
        id,
        secret,
    )
    .fetch_optional(pool)
    .await
}
