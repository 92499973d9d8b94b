//! Queries over the reporting functions (see the reporting migration). Columns
//! of SQL functions come back as nullable, hence the `!` overrides on the ones
//! the functions never leave NULL.
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{
    Backlog, DisabledWebhook, FailureReason, HourlyVolume, OpenCircuit, RecentFailure,
    SetAsideEvent, Totals, WebhookHealth,
};

/// Failing webhooks first: consecutive failures, then failed deliveries, then
/// the lowest success rate.
pub async fn health(
    pool: &PgPool,
    since: DateTime<Utc>,
    only: Option<&str>,
) -> sqlx::Result<Vec<WebhookHealth>> {
    sqlx::query_as!(
        WebhookHealth,
        r#"
        SELECT webhook_id AS "webhook_id!", url AS "url!", active AS "active!",
               deliveries AS "deliveries!", success AS "success!", pending AS "pending!", failed AS "failed!",
               success_rate, retry_rate, p50_ms, p95_ms, last_success_at, last_failure_at,
               consecutive_failures AS "consecutive_failures!"
        FROM webhook_health($1, $2)
        ORDER BY consecutive_failures DESC, failed DESC, success_rate ASC NULLS LAST, url
        "#,
        since,
        only,
    )
    .fetch_all(pool)
    .await
}

pub async fn totals(
    pool: &PgPool,
    since: DateTime<Utc>,
    only: Option<&str>,
) -> sqlx::Result<Totals> {
    sqlx::query_as!(
        Totals,
        r#"
        SELECT deliveries AS "deliveries!", success AS "success!", pending AS "pending!", failed AS "failed!",
               attempts AS "attempts!", success_rate, retry_rate, p50_ms, p95_ms
        FROM webhook_delivery_totals($1, $2)
        "#,
        since,
        only,
    )
    .fetch_one(pool)
    .await
}

pub async fn hourly(
    pool: &PgPool,
    since: DateTime<Utc>,
    only: Option<&str>,
) -> sqlx::Result<Vec<HourlyVolume>> {
    sqlx::query_as!(
        HourlyVolume,
        r#"
        SELECT hour AS "hour!", success AS "success!", pending AS "pending!", failed AS "failed!"
        FROM webhook_delivery_volume($1, $2)
        "#,
        since,
        only,
    )
    .fetch_all(pool)
    .await
}

pub async fn failure_reasons(
    pool: &PgPool,
    since: DateTime<Utc>,
    only: Option<&str>,
) -> sqlx::Result<Vec<FailureReason>> {
    sqlx::query_as!(
        FailureReason,
        r#"
        SELECT reason AS "reason!", error_kind, response_status, count AS "count!", last_seen_at AS "last_seen_at!"
        FROM webhook_failure_reasons($1, $2)
        LIMIT 20
        "#,
        since,
        only,
    )
    .fetch_all(pool)
    .await
}

pub async fn recent_failures(
    pool: &PgPool,
    since: DateTime<Utc>,
    only: Option<&str>,
) -> sqlx::Result<Vec<RecentFailure>> {
    sqlx::query_as!(
        RecentFailure,
        r#"
        SELECT webhook_id AS "webhook_id!", delivery_id AS "delivery_id!", event AS "event!",
               attempt AS "attempt!", started_at AS "started_at!", response_status, error
        FROM webhook_recent_failures($1, $2, 20)
        "#,
        since,
        only,
    )
    .fetch_all(pool)
    .await
}

pub async fn backlog(pool: &PgPool) -> sqlx::Result<Backlog> {
    sqlx::query_as!(
        Backlog,
        r#"SELECT due AS "due!", oldest_due_age_seconds FROM webhook_due_backlog"#
    )
    .fetch_one(pool)
    .await
}

pub async fn open_circuits(pool: &PgPool, only: Option<&str>) -> sqlx::Result<Vec<OpenCircuit>> {
    sqlx::query_as!(
        OpenCircuit,
        r#"
        SELECT webhook_id AS "webhook_id!", url AS "url!", circuit AS "circuit!",
               consecutive_failures AS "consecutive_failures!", open_until, opened_at
        FROM webhook_open_circuits
        WHERE $1::text IS NULL OR webhook_id = $1
        ORDER BY opened_at
        LIMIT 100
        "#,
        only,
    )
    .fetch_all(pool)
    .await
}

pub async fn disabled(pool: &PgPool, only: Option<&str>) -> sqlx::Result<Vec<DisabledWebhook>> {
    sqlx::query_as!(
        DisabledWebhook,
        r#"
        SELECT webhook_id AS "webhook_id!", url AS "url!", disabled_reason, disabled_at
        FROM webhook_disabled
        WHERE $1::text IS NULL OR webhook_id = $1
        ORDER BY disabled_at DESC
        LIMIT 100
        "#,
        only,
    )
    .fetch_all(pool)
    .await
}

/// Set-aside events, oldest first; none for one webhook's stats (an event
/// that was never fanned out belongs to no webhook yet).
pub async fn set_aside(pool: &PgPool, only: Option<&str>) -> sqlx::Result<Vec<SetAsideEvent>> {
    if only.is_some() {
        return Ok(vec![]);
    }
    sqlx::query_as!(
        SetAsideEvent,
        r#"
        SELECT event_id AS "event_id!", event_type AS "event!", created_at AS "created_at!",
               fan_out_failures AS "failures!", fan_out_error AS error, set_aside_at
        FROM webhook_events_set_aside
        ORDER BY created_at
        LIMIT 100
        "#
    )
    .fetch_all(pool)
    .await
}
