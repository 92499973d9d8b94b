//! HTTP intake for producers without SQL access, and the event catalogue.
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, MAX_BATCH_BODY_BYTES};
use crate::intake::{self, Accepted, IntakeError, NewEvent, Refused};

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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBatch {
    /// 1 to 1,000 events, written all or nothing.
    #[schema(min_items = 1, max_items = 1000)]
    pub events: Vec<PublishEvent>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublishedBatch {
    /// One result per event, in request order.
    pub events: Vec<Published>,
}

impl PublishEvent {
    pub fn into_new(self) -> NewEvent {
        NewEvent {
            event_type: self.event,
            event_id: self.event_id,
            occurred_at: self.occurred_at,
            data: self.data,
        }
    }
}

/// A refused request as an API error. `field` prefixes the field names
/// (`events[3].` for a batch); `types` are the request's event types, to
/// name the unknown one.
fn refused(e: Refused, field: impl Fn(usize) -> String, types: &[String]) -> ApiError {
    let (index, error) = match e {
        Refused::Invalid { index, error } => (index, error),
        Refused::Database(e) => return e.as_ref().into(),
    };
    let at = field(index);
    ApiError::Validation(match error {
        IntakeError::UnknownType(_) => format!(
            "{at}event: unknown event type `{}` (see GET /api/v1/event-types)",
            types[index].replace('\0', "\\u0000")
        ),
        IntakeError::Archived(_) => format!(
            "{at}event: event type `{}` is archived: it accepts no new events",
            types[index]
        ),
        IntakeError::Schema(why) => format!(
            "{at}{why} (the JSON Schema of `{}`, see GET /api/v1/event-types)",
            types[index]
        ),
        IntakeError::InvalidEventId => format!("{at}event_id: must be 1 to 255 characters"),
        IntakeError::Nul(_) => format!("{at}{error}"),
        IntakeError::Database(e) => match e.as_database_error() {
            Some(db) => format!(
                "{}a value could not be stored: {}",
                at.replace('.', ": "),
                db.message()
            ),
            None => return ApiError::Unexpected(e.into()),
        },
    })
}

#[utoipa::path(post, path = "/api/v1/events", operation_id = "publishEvent", tag = "events", request_body = PublishEvent,
    responses((status = 202, body = Published), (status = 400, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn publish(
    state: web::Data<ApiState>,
    body: ApiJson<PublishEvent>,
) -> Result<HttpResponse, ApiError> {
    // Written and fanned out in a transaction shared with concurrent
    // requests (group commit), answered after its commit.
    let types = [body.0.event.clone()];
    let accepted = state
        .publisher
        .publish(vec![body.0.into_new()])
        .await
        .map_err(|e| refused(e, |_| String::new(), &types))?;
    state.metrics.events_published_http.increment(1);
    let Accepted {
        event_id,
        deliveries,
    } = accepted.into_iter().next().expect("one result per event");
    Ok(HttpResponse::Accepted().json(Published {
        event_id,
        deliveries,
    }))
}

#[utoipa::path(post, path = "/api/v1/events/batch", operation_id = "publishEvents", tag = "events", request_body = PublishBatch,
    responses((status = 202, body = PublishedBatch), (status = 400, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn publish_batch(
    state: web::Data<ApiState>,
    body: ApiJson<PublishBatch, MAX_BATCH_BODY_BYTES>,
) -> Result<HttpResponse, ApiError> {
    let events = body.0.events;
    if !(1..=intake::MAX_BATCH).contains(&events.len()) {
        return Err(ApiError::Validation(format!(
            "events: must hold 1 to {} events, not {}",
            intake::MAX_BATCH,
            events.len()
        )));
    }
    let types: Vec<String> = events.iter().map(|e| e.event.clone()).collect();
    let accepted = state
        .publisher
        .publish(events.into_iter().map(PublishEvent::into_new).collect())
        .await
        .map_err(|e| refused(e, |i| format!("events[{i}]."), &types))?;
    state
        .metrics
        .events_published_http
        .increment(accepted.len() as u64);
    Ok(HttpResponse::Accepted().json(PublishedBatch {
        events: accepted
            .into_iter()
            .map(|a| Published {
                event_id: a.event_id,
                deliveries: a.deliveries,
            })
            .collect(),
    }))
}
