//! GET /health: 200 when the database answers, 503 otherwise.
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
    pub database: &'static str,
}

#[utoipa::path(get, path = "/health", operation_id = "getHealth", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn health(state: web::Data<ApiState>) -> HttpResponse {
    let probe = sqlx::query_scalar!("SELECT 1 AS \"one!\"").fetch_one(&state.pool);
    let up = matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(1))
    );
    let body = Health {
        status: if up { "ok" } else { "unavailable" },
        timestamp: Utc::now(),
        database: if up { "ok" } else { "unreachable" },
    };
    if up {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// GET /metrics: Prometheus text format. The backlog gauges are read from the
/// database at scrape time so every instance reports the shared queue.
#[utoipa::path(get, path = "/metrics", operation_id = "getMetrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String,
        description = "Prometheus text exposition format")))]
pub async fn metrics(state: web::Data<ApiState>) -> HttpResponse {
    if let Ok(Ok(backlog)) = tokio::time::timeout(
        Duration::from_secs(2),
        crate::reporting::store::backlog(&state.pool),
    )
    .await
    {
        state.metrics.due_backlog.set(backlog.due as f64);
        state
            .metrics
            .oldest_due_age_seconds
            .set(backlog.oldest_due_age_seconds.unwrap_or(0.0));
    }
    if let Ok(Ok(open)) = tokio::time::timeout(
        Duration::from_secs(2),
        crate::queue::endpoints::open_count(&state.pool),
    )
    .await
    {
        state.metrics.circuits_open.set(open as f64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
