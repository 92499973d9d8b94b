//! SQL for `webhook_event_types`.
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{EventType, EventTypePatch, NewEventType};

struct Row {
    name: String,
    description: String,
    schema: Option<serde_json::Value>,
    archived_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for EventType {
    fn from(r: Row) -> Self {
        Self {
            name: r.name,
            description: r.description,
            schema: r.schema,
            archived: r.archived_at.is_some(),
            archived_at: r.archived_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

pub async fn list(pool: &PgPool) -> sqlx::Result<Vec<EventType>> {
    let rows = sqlx::query_as!(
        Row,
        "SELECT name, description, schema, archived_at, created_at, updated_at
         FROM webhook_event_types ORDER BY name"
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(EventType::from).collect())
}

/// `None` when the name is taken.
pub async fn create(pool: &PgPool, new: &NewEventType) -> sqlx::Result<Option<EventType>> {
    let row = sqlx::query_as!(
        Row,
        "INSERT INTO webhook_event_types (name, description, schema) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO NOTHING
         RETURNING name, description, schema, archived_at, created_at, updated_at",
        new.name,
        new.description,
        new.schema,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(EventType::from))
}

/// `None` when there is no such type. Archiving again keeps the first date.
pub async fn patch(
    pool: &PgPool,
    name: &str,
    patch: &EventTypePatch,
) -> sqlx::Result<Option<EventType>> {
    let (set_schema, schema) = match &patch.schema {
        Some(s) => (true, s.clone()),
        None => (false, None),
    };
    let row = sqlx::query_as!(
        Row,
        r#"
        UPDATE webhook_event_types
        SET description = COALESCE($2, description),
            schema = CASE WHEN $3 THEN $4 ELSE schema END,
            archived_at = CASE WHEN $5::bool IS NULL THEN archived_at
                               WHEN $5 THEN COALESCE(archived_at, now())
                               ELSE NULL END,
            updated_at = now()
        WHERE name = $1
        RETURNING name, description, schema, archived_at, created_at, updated_at
        "#,
        name,
        patch.description,
        set_schema,
        schema,
        patch.archived,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(EventType::from))
}

/// What the intake checks events against.
pub struct Rule {
    pub name: String,
    pub schema: Option<serde_json::Value>,
    pub archived: bool,
}

pub async fn rules(conn: &mut sqlx::PgConnection) -> sqlx::Result<Vec<Rule>> {
    sqlx::query_as!(
        Rule,
        r#"SELECT name, schema, archived_at IS NOT NULL AS "archived!" FROM webhook_event_types"#
    )
    .fetch_all(conn)
    .await
}
