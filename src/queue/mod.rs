//! Stage 3: the durable queue, which is the `webhook_deliveries` table.
//! Postgres only, no HTTP. Depends on `domain`.
pub mod breaker;
pub mod completion;
pub mod endpoints;
pub mod fairness;
pub mod recover;
pub mod retry;
pub mod store;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// A delivery claimed under a lease: everything the sender needs, and the
/// token that fences every later write. `Debug` leaves the secret out.
#[derive(Clone)]
pub struct Claimed {
    pub id: String,
    pub lease_token: Uuid,
    /// Attempts made before this one in the current retry schedule (a
    /// recovered delivery starts a new one).
    pub attempts: i32,
    pub webhook_id: String,
    pub url: String,
    pub secret: String,
    /// The secret a rotation replaced, while its overlap lasts: it signs too.
    pub previous_secret: Option<String>,
    /// The webhook's custom headers, as stored (`{name: value}`).
    pub headers: serde_json::Value,
    pub event_type: String,
    pub body: String,
    /// The one attempt a half-open circuit lets through.
    pub probe: bool,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("id", &self.id)
            .field("lease_token", &self.lease_token)
            .field("attempts", &self.attempts)
            .field("webhook_id", &self.webhook_id)
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

/// One attempt, as recorded in `webhook_delivery_attempts`.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub response_status: Option<i32>,
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

/// The new state written by a fenced finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextState {
    Success,
    /// `at` is on this host's clock; it is stored as "that long from now"
    /// on the database's clock (`queue::retry::from_now_ms`), so a skewed
    /// host neither delays nor hurries retries.
    Retry {
        at: DateTime<Utc>,
    },
    Failed,
}

/// An attempt ready to be recorded against the lease it was made under.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: String,
    pub webhook_id: String,
    pub lease_token: Uuid,
    /// Whether this attempt was a half-open circuit's probe.
    pub probe: bool,
    pub attempt: AttemptRecord,
    pub next: NextState,
}

/// A delivery as the API lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: String,
    pub webhook_id: String,
    #[serde(rename = "event")]
    pub event_type: String,
    pub event_id: String,
    /// `pending`, `success` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub response_status: Option<i32>,
    pub last_error: Option<String>,
    /// When a pending delivery is next tried (or its current send's lease ends).
    pub next_retry_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// Duration of the latest attempt.
    pub duration_ms: Option<i32>,
}

/// One row of a delivery's `attempt_log`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub response_status: Option<i32>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    pub response_excerpt: Option<String>,
}
