//! The publisher's SQL: which types exist, and many events written in one
//! statement with `webhook_publish`'s rules (the type trigger, `ON CONFLICT
//! (event_id) DO NOTHING`).
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// The names among `types` that are in the catalogue.
pub async fn known_types(conn: &mut PgConnection, types: &[String]) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"SELECT name AS "name!" FROM webhook_event_types WHERE name = ANY ($1)"#,
        types
    )
    .fetch_all(conn)
    .await
}

/// Inserts the events in order; an `event_id` already stored (or repeated
/// among them) is skipped, as `webhook_publish` skips it. `data` is JSON text
/// that Postgres parses: numbers keep every digit.
pub async fn insert(
    conn: &mut PgConnection,
    types: &[String],
    ids: &[String],
    data: &[&str],
    occurred_at: &[Option<DateTime<Utc>>],
) -> sqlx::Result<()> {
    sqlx::query!(
        r#"
        INSERT INTO webhook_events (event_type, event_id, data, occurred_at)
        SELECT t, i, d::jsonb, coalesce(o, now())
        FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
             WITH ORDINALITY AS e(t, i, d, o, n)
        ORDER BY n
        ON CONFLICT (event_id) DO NOTHING
        "#,
        types,
        ids,
        data as &[&str],
        occurred_at as &[Option<DateTime<Utc>>],
    )
    .execute(conn)
    .await?;
    Ok(())
}
