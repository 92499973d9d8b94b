//! The event-type catalogue: what producers may publish and webhooks may
//! subscribe to, each type with an optional JSON Schema for its `data`.
//! Read by the intake (every event is checked against it) and by `webhooks`
//! (subscriptions). Types are archived, never deleted: events reference them.
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::db::{Bounds, Interrupted};

/// How long a checked catalogue is trusted before it is read again: a
/// change made on another instance or in SQL takes effect here within this
/// time (one made through this instance's API, at once).
const FRESH_FOR: Duration = Duration::from_secs(1);
const MAX_NAME: usize = 255;
const MAX_DESCRIPTION: usize = 500;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventType {
    #[schema(example = "pool.created")]
    pub name: String,
    pub description: String,
    /// The JSON Schema that `data` must satisfy over HTTP and `publish`;
    /// `null` = any JSON.
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Value>,
    /// Archived types refuse new events and new subscriptions; existing
    /// subscriptions keep receiving what is already published.
    pub archived: bool,
    pub archived_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewEventType {
    pub name: String,
    pub description: String,
    pub schema: Option<Value>,
}

/// `None` leaves a field as it is; `schema: Some(None)` removes the schema.
#[derive(Debug, Clone, Default)]
pub struct EventTypePatch {
    pub description: Option<String>,
    pub schema: Option<Option<Value>>,
    pub archived: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogueError {
    #[error("name: {0}")]
    InvalidName(String),
    #[error("description: must be at most {MAX_DESCRIPTION} characters")]
    Description,
    #[error("schema: {0}")]
    InvalidSchema(String),
    #[error("event type `{0}` already exists")]
    Exists(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Why an event was refused by the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeRefusal {
    #[error("unknown event type")]
    Unknown,
    #[error("event type is archived")]
    Archived,
    /// `path` is the JSON pointer into `data` ("" for `data` itself).
    #[error("data{path}: {message}")]
    Schema { path: String, message: String },
}

/// Compiles a JSON Schema, refusing what cannot be one. Remote `$ref`s are
/// refused too: jsonschema is built without its HTTP and file resolvers, so
/// a schema can never make the service fetch anything.
/// Boolean schemas are refused too: `true` is no schema (send `null`), and
/// `false` would refuse every event (archive the type instead).
pub fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    if !schema.is_object() {
        return Err("must be a JSON Schema object (send null for no schema)".into());
    }
    jsonschema::validator_for(schema).map_err(|e| format!("not a valid JSON Schema: {e}"))
}

fn check_name(name: &str) -> Result<(), CatalogueError> {
    let segment = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    if name.len() > MAX_NAME || parts.len() < 2 || !parts.iter().all(|p| segment(p)) {
        return Err(CatalogueError::InvalidName(format!(
            "`{}` is not a type name: two or more dot-separated segments of lowercase letters, \
             digits and `_`, each starting with a letter (e.g. `pool.created`), at most {MAX_NAME} characters",
            name.escape_default()
        )));
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), CatalogueError> {
    if d.chars().count() > MAX_DESCRIPTION {
        return Err(CatalogueError::Description);
    }
    Ok(())
}

/// Adds a type; its schema must compile.
pub async fn create(catalogue: &Catalogue, new: NewEventType) -> Result<EventType, CatalogueError> {
    check_name(&new.name)?;
    check_description(&new.description)?;
    if let Some(schema) = &new.schema {
        compile(schema).map_err(CatalogueError::InvalidSchema)?;
    }
    let created = store::create(&catalogue.pool, &new)
        .await?
        .ok_or_else(|| CatalogueError::Exists(new.name.clone()))?;
    catalogue.invalidate();
    tracing::info!(event_type = %created.name, "event type created");
    Ok(created)
}

/// Changes a type; `None` when there is no such type.
pub async fn update(
    catalogue: &Catalogue,
    name: &str,
    patch: EventTypePatch,
) -> Result<Option<EventType>, CatalogueError> {
    if let Some(d) = &patch.description {
        check_description(d)?;
    }
    if let Some(Some(schema)) = &patch.schema {
        compile(schema).map_err(CatalogueError::InvalidSchema)?;
    }
    let updated = store::patch(&catalogue.pool, name, &patch).await?;
    catalogue.invalidate();
    if let Some(t) = &updated {
        tracing::info!(event_type = %t.name, archived = t.archived, "event type changed");
    }
    Ok(updated)
}

struct Rule {
    archived: bool,
    schema: Option<(Value, Arc<jsonschema::Validator>)>,
}

struct Snapshot {
    read_at: Instant,
    rules: HashMap<String, Rule>,
}

/// The catalogue as the intake checks events against it: read from the
/// database at most every `FRESH_FOR` (and at once for a type not seen
/// yet), schemas compiled once per change. Shared by an instance's tasks.
pub struct Catalogue {
    pool: PgPool,
    /// A read that gets no answer in time fails the request (a `503`)
    /// instead of holding it and every request waiting behind it.
    bounds: Bounds,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    reading: tokio::sync::Mutex<()>,
}

impl Catalogue {
    /// Reads on `pool` get `limit` (statement timeout + margin, as every
    /// other bounded database call) to answer.
    pub fn new(pool: PgPool, limit: std::time::Duration) -> Arc<Self> {
        Arc::new(Self {
            pool,
            bounds: Bounds {
                limit,
                shutdown: Default::default(),
            },
            snapshot: RwLock::new(None),
            reading: tokio::sync::Mutex::new(()),
        })
    }

    /// Forgets what was read: the next check reads the catalogue again.
    pub fn invalidate(&self) {
        *self.snapshot.write().unwrap() = None;
    }

    /// Checks each `(type, data)`; the first refused one is returned with
    /// its index. `data` is JSON text (parsed only for a type with a schema).
    pub async fn check<'a>(
        &self,
        events: impl Iterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Result<Result<(), (usize, TypeRefusal)>, Interrupted> {
        let asked = Instant::now();
        let mut snapshot = self.current(asked, false).await?;
        if events.clone().any(|(t, _)| !snapshot.rules.contains_key(t)) {
            snapshot = self.current(asked, true).await?;
        }
        for (index, (event_type, data)) in events.enumerate() {
            let refusal = match snapshot.rules.get(event_type) {
                None => Some(TypeRefusal::Unknown),
                Some(rule) if rule.archived => Some(TypeRefusal::Archived),
                Some(Rule {
                    schema: Some((_, validator)),
                    ..
                }) => schema_refusal(validator, data),
                Some(_) => None,
            };
            if let Some(refusal) = refusal {
                return Ok(Err((index, refusal)));
            }
        }
        Ok(Ok(()))
    }

    /// A snapshot read after `asked` if `must_read` (a type was unknown),
    /// else any fresh one. Concurrent callers share one read.
    async fn current(&self, asked: Instant, must_read: bool) -> Result<Arc<Snapshot>, Interrupted> {
        let usable = |s: &Option<Arc<Snapshot>>| {
            s.as_ref()
                .filter(|s| {
                    if must_read {
                        s.read_at >= asked
                    } else {
                        s.read_at.elapsed() < FRESH_FOR
                    }
                })
                .cloned()
        };
        if let Some(s) = usable(&self.snapshot.read().unwrap()) {
            return Ok(s);
        }
        let _reading = self.reading.lock().await;
        let previous = self.snapshot.read().unwrap().clone();
        if let Some(s) = usable(&previous) {
            return Ok(s);
        }
        let read_at = Instant::now();
        let rows = self
            .bounds
            .run(&self.pool, |conn| Box::pin(store::rules(conn)))
            .await?;
        let mut rules = HashMap::with_capacity(rows.len());
        for row in rows {
            let schema = row.schema.and_then(|schema| {
                // Unchanged since the last read: keep its compiled validator.
                let kept = previous
                    .as_ref()
                    .and_then(|p| p.rules.get(&row.name))
                    .and_then(|r| r.schema.as_ref())
                    .filter(|(s, _)| *s == schema)
                    .map(|(_, v)| v.clone());
                match kept
                    .map(Ok)
                    .unwrap_or_else(|| compile(&schema).map(Arc::new))
                {
                    Ok(validator) => Some((schema, validator)),
                    Err(e) => {
                        // Only SQL can store one: the API compiles first.
                        tracing::warn!(event_type = %row.name, "schema not applied: {e}");
                        None
                    }
                }
            });
            rules.insert(
                row.name,
                Rule {
                    archived: row.archived,
                    schema,
                },
            );
        }
        let snapshot = Arc::new(Snapshot { read_at, rules });
        *self.snapshot.write().unwrap() = Some(snapshot.clone());
        Ok(snapshot)
    }
}

fn schema_refusal(validator: &jsonschema::Validator, data: &str) -> Option<TypeRefusal> {
    let data: Value = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(e) => {
            return Some(TypeRefusal::Schema {
                path: String::new(),
                message: format!("not JSON: {e}"),
            });
        }
    };
    let error = validator.validate(&data).err()?;
    Some(TypeRefusal::Schema {
        path: error.instance_path().to_string(),
        message: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_follow_the_catalogue_rule() {
        for ok in ["pool.created", "a.b.c", "price.alert_2"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "pool",
            "Pool.created",
            "pool..x",
            "pool.",
            ".x",
            "pool.2x",
            "pool.cré",
            "pool.*",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_schema_must_compile_and_names_the_failing_path() {
        assert!(compile(&json!("string")).is_err());
        assert!(compile(&json!(true)).is_err());
        assert!(compile(&json!(false)).is_err());
        assert!(compile(&json!({"type": "no-such-type"})).is_err());
        assert!(compile(&json!({"$ref": "https://example.com/schema.json"})).is_err());
        let v = compile(&json!({
            "type": "object",
            "required": ["pool_id"],
            "properties": {"pool_id": {"type": "string"}, "amounts": {"type": "array", "items": {"type": "number"}}}
        }))
        .unwrap();
        assert_eq!(
            schema_refusal(&v, r#"{"pool_id": "p1", "amounts": [1, 2.5]}"#),
            None
        );
        let Some(TypeRefusal::Schema { path, .. }) =
            schema_refusal(&v, r#"{"pool_id": "p1", "amounts": [1, "x"]}"#)
        else {
            panic!("refused")
        };
        assert_eq!(path, "/amounts/1");
        let Some(refusal) = schema_refusal(&v, r#"{}"#) else {
            panic!("refused")
        };
        assert!(refusal.to_string().starts_with("data: "), "{refusal}");
        assert!(refusal.to_string().contains("pool_id"), "{refusal}");
    }
}
