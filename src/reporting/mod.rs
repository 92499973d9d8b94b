//! Read-only reporting over the SQL functions and views of the reporting
//! migration; the API serves exactly what an analyst gets from SQL.
pub mod store;

use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookHealth {
    pub webhook_id: String,
    pub url: String,
    pub active: bool,
    pub deliveries: i64,
    pub success: i64,
    pub pending: i64,
    pub failed: i64,
    /// success / (success + failed) among deliveries created in the window.
    pub success_rate: Option<f64>,
    /// Deliveries that needed more than one attempt / deliveries attempted.
    pub retry_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    /// Failed attempts since the last successful one.
    pub consecutive_failures: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Totals {
    pub deliveries: i64,
    pub success: i64,
    pub pending: i64,
    pub failed: i64,
    pub attempts: i64,
    pub success_rate: Option<f64>,
    pub retry_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HourlyVolume {
    pub hour: DateTime<Utc>,
    pub success: i64,
    pub pending: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FailureReason {
    /// `HTTP <status>` or the transport error kind (`timeout`, `connect`, …).
    pub reason: String,
    pub error_kind: Option<String>,
    pub response_status: Option<i32>,
    pub count: i64,
    pub last_seen_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecentFailure {
    pub webhook_id: String,
    pub delivery_id: String,
    pub event: String,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub response_status: Option<i32>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Backlog {
    /// Pending deliveries due now.
    pub due: i64,
    pub oldest_due_age_seconds: Option<f64>,
}

/// An active webhook whose circuit is not closed (`webhook_open_circuits`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OpenCircuit {
    pub webhook_id: String,
    pub url: String,
    /// `open` or `half_open`.
    pub circuit: String,
    pub consecutive_failures: i32,
    pub open_until: Option<DateTime<Utc>>,
    /// When it first opened since the last success.
    pub opened_at: Option<DateTime<Utc>>,
}

/// A webhook the service disabled (`webhook_disabled`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DisabledWebhook {
    pub webhook_id: String,
    pub url: String,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub window: String,
    pub since: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub totals: Totals,
    pub backlog: Backlog,
    /// Failing webhooks first.
    pub webhooks: Vec<WebhookHealth>,
    pub hourly: Vec<HourlyVolume>,
    pub failure_reasons: Vec<FailureReason>,
    pub recent_failures: Vec<RecentFailure>,
    /// Circuits open or half-open now.
    pub open_circuits: Vec<OpenCircuit>,
    /// Webhooks the service disabled (410 Gone, a circuit open too long).
    pub disabled_webhooks: Vec<DisabledWebhook>,
    /// Events whose fan-out failed repeatedly, oldest first (up to 100; empty
    /// in a webhook's stats): put one back with
    /// `SELECT webhook_retry_fan_out('<event_id>')`.
    pub set_aside_events: Vec<SetAsideEvent>,
}

/// An event set aside after repeated fan-out failures (`webhook_events_set_aside`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SetAsideEvent {
    pub event_id: String,
    pub event: String,
    pub created_at: DateTime<Utc>,
    pub failures: i32,
    /// The last failure's error.
    pub error: Option<String>,
    pub set_aside_at: Option<DateTime<Utc>>,
}
