//! The webhook resource: registered endpoints, their subscriptions and
//! delivery options, and their enabled state. Depends on `queue` for the
//! endpoint state a change of options must reset.
pub mod store;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::domain::filter::Filter;
use crate::domain::headers::CustomHeaders;
use crate::queue::breaker::BreakerConfig;
use crate::queue::endpoints::{self, CircuitView};

/// `unordered` (the default) or `fifo`: one delivery in flight at a time, in
/// publish order, across all instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    Unordered,
    Fifo,
}

impl Ordering {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unordered => "unordered",
            Self::Fifo => "fifo",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "fifo" {
            Self::Fifo
        } else {
            Self::Unordered
        }
    }
}

/// A stored webhook. The secret stays inside the service except in the
/// create and rotate responses (and `Debug` leaves it out).
#[derive(Clone)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub secret: String,
    pub description: Option<String>,
    pub active: bool,
    pub rate_limit: Option<i32>,
    pub ordering: Ordering,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// `None`: every event of the subscribed types.
    pub filter: Option<serde_json::Value>,
    pub headers: CustomHeaders,
    pub circuit: CircuitView,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// A validated registration.
#[derive(Clone)]
pub struct NewWebhook {
    pub url: String,
    pub events: Vec<String>,
    pub secret: String,
    pub description: Option<String>,
    pub active: bool,
    pub rate_limit: Option<i32>,
    pub ordering: Ordering,
    pub filter: Option<Filter>,
    pub headers: CustomHeaders,
}

impl std::fmt::Debug for NewWebhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewWebhook")
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A validated change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub active: Option<bool>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
    /// `Some(None)` removes the limit.
    pub rate_limit: Option<Option<i32>>,
    pub ordering: Option<Ordering>,
    /// `Some(None)` removes the filter.
    pub filter: Option<Option<Filter>>,
    pub headers: Option<CustomHeaders>,
}

/// Why the service disabled a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisableReason {
    /// The endpoint answered `410 Gone`.
    Gone,
    /// The circuit stayed open with no success for WEBHOOK_DISABLE_AFTER_S.
    CircuitOpen,
}

impl DisableReason {
    /// The `reason` label of `webhook_disabled_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Gone => "gone",
            Self::CircuitOpen => "circuit_open",
        }
    }

    /// The sentence stored in `disabled_reason`.
    pub fn sentence(self, breaker: &BreakerConfig) -> String {
        match self {
            Self::Gone => {
                "The endpoint answered 410 Gone, which says it will not come back.".into()
            }
            Self::CircuitOpen => format!(
                "The circuit stayed open for {} with no successful attempt.",
                human(breaker.disable_after)
            ),
        }
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 && s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s >= 3_600 && s % 3_600 == 0 => format!("{} hours", s / 3_600),
        s => format!("{s} seconds"),
    }
}

/// Applies a validated change. Re-enabling clears the disable reason and the
/// breaker (what it deferred is due at once); a change of ordering re-sorts
/// what is pending (again if a delivery in flight moved to the history
/// under it).
pub async fn update(
    pool: &PgPool,
    id: &str,
    patch: &WebhookPatch,
) -> sqlx::Result<Option<Webhook>> {
    let changed = crate::db::retry_if_moved(|| async {
        let mut tx = pool.begin().await?;
        if !store::patch(&mut tx, id, patch).await? {
            return Ok(false);
        }
        if patch.active == Some(true) {
            endpoints::reset(&mut tx, id).await?;
        }
        if let Some(ordering) = patch.ordering {
            endpoints::set_ordering(&mut tx, id, ordering == Ordering::Fifo).await?;
        }
        tx.commit().await?;
        Ok(true)
    })
    .await?;
    if !changed {
        return Ok(None);
    }
    store::get(pool, id).await
}

/// Disables an active webhook: `active` false with the reason, and what was
/// pending becomes `failed` (the dead letter, retryable by hand once it is
/// re-enabled). Returns false when it was already inactive (another instance
/// got there first), so the change is logged and counted once.
pub async fn disable<'e>(
    db: impl sqlx::PgExecutor<'e>,
    id: &str,
    reason: DisableReason,
    breaker: &BreakerConfig,
) -> sqlx::Result<bool> {
    let sentence = reason.sentence(breaker);
    let failed = store::disable(db, id, &sentence).await?;
    if let Some(failed) = failed {
        tracing::warn!(webhook = %id, reason = reason.kind(), failed_pending = failed, "webhook disabled: {sentence}");
    }
    Ok(failed.is_some())
}

/// The event types a subscription may name.
#[derive(Debug, Default)]
pub struct Subscribable {
    /// Active types, and the archived ones the webhook being changed
    /// already subscribes to by name (an existing subscription keeps
    /// working; a new one to an archived type is refused).
    pub names: Vec<String>,
    /// Every archived type, to say why one is refused.
    pub archived: Vec<String>,
}

pub async fn subscribable(pool: &PgPool, current: Option<&str>) -> sqlx::Result<Subscribable> {
    let rows = store::subscribable(pool, current).await?;
    let mut out = Subscribable::default();
    for (name, archived, kept) in rows {
        if !archived || kept {
            out.names.push(name.clone());
        }
        if archived {
            out.archived.push(name);
        }
    }
    Ok(out)
}
