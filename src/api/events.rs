//! HTTP intake for producers without SQL access, and the event catalogue.
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ApiState;
use super::error::ApiError;
use super::extract::ApiJson;
use crate::fanout;
use crate::intake::{self, IntakeError};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishEvent {
    /// A catalogue type, e.g. `pool.assets_locked`.
    #[schema(example = "pool.created")]
    pub event: String,
    /// Idempotency key (1–255 characters); generated (`evt_…`) when absent.
    #[schema(min_length = 1, max_length = 255)]
    pub event_id: Option<String>,
    /// Defaults to now.
    pub occurred_at: Option<DateTime<Utc>>,
    /// Any JSON value; delivered as the body's `data`, numbers exactly as
    /// sent (never rounded through a float).
    #[schema(value_type = Object, example = json!({"pool_id": "p1", "amount": "1000000000000000000"}))]
    pub data: Box<RawValue>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Published {
    pub event_id: String,
    /// Deliveries created by this call: 0 for an event_id already fanned out;
    /// a repeat of one published (through SQL) but not fanned out yet fans it
    /// out here and counts its deliveries.
    pub deliveries: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventType {
    pub name: String,
    pub description: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventTypes {
    pub data: Vec<EventType>,
}

#[utoipa::path(post, path = "/api/v1/events", operation_id = "publishEvent", tag = "events", request_body = PublishEvent,
    responses((status = 202, body = Published), (status = 400, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn publish(
    state: web::Data<ApiState>,
    body: ApiJson<PublishEvent>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    // Publish and fan out in one transaction: the same path as the indexer's
    // SQL, with the count of deliveries known before we answer.
    let mut tx = state.pool.begin().await?;
    let event_id = intake::publish(
        &mut tx,
        &body.event,
        &body.data,
        body.event_id.as_deref(),
        body.occurred_at,
    )
    .await
    .map_err(|e| match e {
        IntakeError::UnknownType(_) => ApiError::Validation(format!(
            "event: unknown event type `{}` (see GET /api/v1/event-types)",
            body.event
        )),
        IntakeError::InvalidEventId => {
            ApiError::Validation("event_id: must be 1 to 255 characters".into())
        }
        IntakeError::UnstorableData(_) => ApiError::Validation(
            "data: must not contain the NUL character (\\u0000), which Postgres jsonb cannot store"
                .into(),
        ),
        IntakeError::Database(e) => e.into(),
    })?;
    let (dispatched, deliveries) = fanout::dispatch_event(&mut tx, &event_id).await?;
    tx.commit().await?;
    state.metrics.events_published_http.increment(1);
    // 0 when the event_id was already known (and fanned out before).
    state.metrics.events_dispatched.increment(dispatched as u64);
    state
        .metrics
        .deliveries_created
        .increment(deliveries as u64);
    Ok(HttpResponse::Accepted().json(Published {
        event_id,
        deliveries,
    }))
}

#[utoipa::path(get, path = "/api/v1/event-types", operation_id = "listEventTypes", tag = "events",
    responses((status = 200, body = EventTypes)), security(("bearer" = [])))]
pub async fn event_types(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let data = intake::event_types(&state.pool)
        .await?
        .into_iter()
        .map(|(name, description)| EventType { name, description })
        .collect();
    Ok(HttpResponse::Ok().json(EventTypes { data }))
}
