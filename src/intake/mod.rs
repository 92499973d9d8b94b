//! Stage 1: accept events durably. SQL producers call `webhook_publish`
//! themselves. The HTTP endpoints and the CLI hand events to `publisher`,
//! which writes many requests' events in one transaction (group commit)
//! with the same rules: the type checked first, idempotent on `event_id`,
//! the producer's JSON stored as Postgres parses it.
pub mod publisher;
mod store;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

pub use publisher::{Publisher, Refused};

/// The options of a connection the publisher writes on. It checks event
/// types itself and fans out what it inserts in the same statement, so the
/// per-row type trigger and the NOTIFY for the sweep are skipped for it
/// (migration 11; the foreign key still holds).
pub fn connect_options(
    options: sqlx::postgres::PgConnectOptions,
) -> sqlx::postgres::PgConnectOptions {
    options.options([("smartdrop.intake", "on")])
}

/// Most events in one request to the batch endpoint (and one CLI batch).
pub const MAX_BATCH: usize = 1000;

/// One event as a producer sends it.
#[derive(Debug)]
pub struct NewEvent {
    pub event_type: String,
    pub event_id: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    /// The producer's JSON text, never re-serialized: numbers keep every digit.
    pub data: Box<RawValue>,
}

/// An event written (or found already written, for a repeated `event_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub event_id: String,
    /// Deliveries created by this request: 0 for an event already fanned out
    /// (or a repeat of an event_id earlier in the same request).
    pub deliveries: i64,
}

impl NewEvent {
    /// What can be checked without the database, so one bad event is refused
    /// before it can fail a transaction shared with other requests.
    pub fn check(&self) -> Result<(), IntakeError> {
        if self.event_type.contains('\0') {
            return Err(IntakeError::UnknownType(format!(
                "unknown event type \"{}\"",
                self.event_type.replace('\0', "\\u0000")
            )));
        }
        if let Some(id) = &self.event_id {
            if !(1..=255).contains(&id.chars().count()) {
                return Err(IntakeError::InvalidEventId);
            }
            if id.contains('\0') {
                return Err(IntakeError::Nul("event_id"));
            }
        }
        if escapes_nul(self.data.get()) {
            return Err(IntakeError::Nul("data"));
        }
        Ok(())
    }
}

/// Whether JSON text holds a `\u0000` escape, which `jsonb` cannot store.
/// Outside strings JSON has no backslashes, and inside them every backslash
/// starts an escape, so walking escape by escape is exact (`\\u0000` is a
/// backslash and the text `u0000`, not NUL).
fn escapes_nul(json: &str) -> bool {
    let mut bytes = json.bytes();
    while let Some(b) = bytes.next() {
        if b == b'\\' && bytes.next() == Some(b'u') && bytes.by_ref().take(4).eq(*b"0000") {
            return true;
        }
    }
    false
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// `unknown event type "<type>"`, as the publishing trigger says it.
    #[error("{0}")]
    UnknownType(String),
    /// The type exists but is archived: it accepts no new events.
    #[error("event type \"{0}\" is archived")]
    Archived(String),
    /// `data` breaks the type's JSON Schema: `data<pointer>: <why>`.
    #[error("{0}")]
    Schema(String),
    #[error("event_id must be 1 to 255 characters")]
    InvalidEventId,
    /// A NUL character in the named field: Postgres text cannot hold it.
    #[error("{0}: must not contain the NUL character (\\u0000), which Postgres cannot store")]
    Nul(&'static str),
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
            Some("22P05") => Self::Nul("data"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_escape_is_found_only_where_it_is_one() {
        for (json, nul) in [
            (r#"{"a":"\u0000"}"#, true),
            (r#"{"a":"x\u0000y"}"#, true),
            (r#"["\\\u0000"]"#, true),
            (r#"{"a":"\\u0000"}"#, false),
            (r#"{"a":"\u00001"}"#, true),
            (r#"{"a":"\u0001"}"#, false),
            (r#"{"\"":"u0000"}"#, false),
            (r#"{"a":"\\\\u0000"}"#, false),
            (r#"{"amount":123456789012345678901234567890}"#, false),
        ] {
            assert_eq!(escapes_nul(json), nul, "{json}");
        }
    }

    fn event(event_type: &str, event_id: Option<&str>, data: &str) -> NewEvent {
        NewEvent {
            event_type: event_type.into(),
            event_id: event_id.map(Into::into),
            occurred_at: None,
            data: RawValue::from_string(data.into()).unwrap(),
        }
    }

    #[test]
    fn what_postgres_would_refuse_is_refused_before() {
        assert!(event("pool.created", None, "{}").check().is_ok());
        assert!(
            event("pool.created", Some(&"é".repeat(255)), "{}")
                .check()
                .is_ok()
        );
        assert!(matches!(
            event("pool.created", Some(&"é".repeat(256)), "{}").check(),
            Err(IntakeError::InvalidEventId)
        ));
        assert!(matches!(
            event("pool.created", Some(""), "{}").check(),
            Err(IntakeError::InvalidEventId)
        ));
        assert!(matches!(
            event("pool.created", Some("a\0b"), "{}").check(),
            Err(IntakeError::Nul("event_id"))
        ));
        assert!(matches!(
            event("pool.created", None, r#"{"a":"\u0000"}"#).check(),
            Err(IntakeError::Nul("data"))
        ));
        assert!(matches!(
            event("pool\0created", None, "{}").check(),
            Err(IntakeError::UnknownType(_))
        ));
    }
}
