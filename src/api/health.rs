//! GET /health: 200 when the database answers and the pipeline moves (the
//! LISTEN connection up, the claim loop reaching the database), 503 with the
//! reason otherwise. Its probe is one `SELECT 1`; the backlog figures it and
//! /metrics report are cached by a background task, never queried here.
use std::time::Duration;

use actix_web::{HttpResponse, web};
use chrono::Utc;
use serde::Serialize;

use super::ApiState;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: &'static str,
    pub timestamp: chrono::DateTime<Utc>,
    /// `ok` or `unreachable`.
    pub database: &'static str,
    /// `connected` or `down`.
    pub listener: &'static str,
    /// Seconds since the worker's claim loop last reached the database.
    pub last_claim_age_s: f64,
    /// Seconds since attempts were last recorded (`null` before any).
    pub last_record_age_s: Option<f64>,
    /// Deliveries due now, and how long the oldest has waited (refreshed
    /// every few seconds).
    pub due: i64,
    pub oldest_due_age_s: f64,
    /// Why the status is not `ok`.
    pub reason: Option<String>,
}

#[utoipa::path(get, path = "/health", operation_id = "getHealth", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn health(state: web::Data<ApiState>) -> HttpResponse {
    let probe = sqlx::query_scalar!("SELECT 1 AS \"one!\"").fetch_one(&state.health_pool);
    let up = matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(1))
    );
    let pipeline = state.metrics.pipeline.report();
    let reason = if up {
        pipeline.stuck(state.pipeline_stale)
    } else {
        Some("the database does not answer".into())
    };
    let healthy = reason.is_none();
    let body = Health {
        status: if healthy { "ok" } else { "unavailable" },
        timestamp: Utc::now(),
        database: if up { "ok" } else { "unreachable" },
        listener: if pipeline.listener_up {
            "connected"
        } else {
            "down"
        },
        last_claim_age_s: pipeline.claim_age_s,
        last_record_age_s: pipeline.record_age_s,
        due: pipeline.due,
        oldest_due_age_s: pipeline.oldest_due_age_s,
        reason,
    };
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// GET /metrics: Prometheus text format. The backlog gauges (the shared queue,
/// the same on every instance) come from the background refresh: a scrape
/// never queries the database.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String,
        description = "Prometheus text exposition format")))]
pub async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    let pipeline = state.metrics.pipeline.report();
    state.metrics.due_backlog.set(pipeline.due as f64);
    state
        .metrics
        .oldest_due_age_seconds
        .set(pipeline.oldest_due_age_s);
    state
        .metrics
        .circuits_open
        .set(pipeline.open_circuits as f64);
    state
        .metrics
        .events_set_aside_now
        .set(pipeline.events_set_aside as f64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
