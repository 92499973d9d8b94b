//! Stage 1: accept events durably. SQL producers call `webhook_publish`
//! themselves; the HTTP endpoint and the CLI come through `publish`, which
//! wraps the same function, so all three share one path and one semantics.
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("{0}")]
    UnknownType(String),
    #[error("event_id must be 1 to 255 characters")]
    InvalidEventId,
    /// Valid JSON that Postgres `jsonb` cannot store (a `\u0000` escape).
    #[error("{0}")]
    UnstorableData(String),
    #[error(transparent)]
    Database(sqlx::Error),
}

impl From<sqlx::Error> for IntakeError {
    fn from(e: sqlx::Error) -> Self {
        match e.as_database_error().and_then(|d| d.code()).as_deref() {
            // raised by the webhook_events_check_type trigger
            Some("23503") => Self::UnknownType(e.as_database_error().unwrap().message().to_owned()),
            // the event_id length CHECK
            Some("23514") => Self::InvalidEventId,
            // jsonb refuses \u0000 (untranslatable character)
            Some("22P05") => {
                Self::UnstorableData(e.as_database_error().unwrap().message().to_owned())
            }
            _ => Self::Database(e),
        }
    }
}

/// Publishes an event in the caller's transaction; it is delivered if and
/// only if that transaction commits. Idempotent on `event_id`: the existing
/// event's id is returned and nothing more fans out. `data` is the
/// producer's JSON text, parsed by Postgres alone: numbers keep every digit
/// (`jsonb` stores them as `numeric`), as they do through the SQL intake.
pub async fn publish(
    conn: &mut sqlx::PgConnection,
    event_type: &str,
    data: &RawValue,
    event_id: Option<&str>,
    occurred_at: Option<DateTime<Utc>>,
) -> Result<String, IntakeError> {
    let row = sqlx::query!(
        r#"SELECT (p).event_id AS "event_id!" FROM (SELECT webhook_publish($1, $2, $3, $4) AS p) s"#,
        event_type,
        sqlx::types::Json(data) as _,
        event_id,
        occurred_at,
    )
    .fetch_one(conn)
    .await?;
    Ok(row.event_id)
}

/// The catalogue of event types, by name.
pub async fn event_types(pool: &sqlx::PgPool) -> sqlx::Result<Vec<(String, String)>> {
    let rows = sqlx::query!("SELECT name, description FROM webhook_event_types ORDER BY name")
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|r| (r.name, r.description)).collect())
}
