//! /event-types: the catalogue, read and managed over HTTP.
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ApiState;
use super::error::ApiError;
use super::extract::ApiJson;
use super::webhooks::present;
use crate::catalogue::{self, CatalogueError, EventType, EventTypePatch, NewEventType};

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventTypes {
    pub data: Vec<EventType>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEventType {
    /// Two or more dot-separated lowercase segments, e.g. `pool.migrated`.
    #[schema(
        example = "pool.migrated",
        max_length = 255,
        pattern = "^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)+$"
    )]
    pub name: String,
    #[schema(example = "a pool moved to a new contract", max_length = 500)]
    pub description: String,
    /// A JSON Schema for `data`, checked on `POST /events` and `publish`.
    #[schema(value_type = Option<Object>, example = json!({"type": "object", "required": ["pool_id"]}))]
    pub schema: Option<Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchEventType {
    #[schema(max_length = 500)]
    pub description: Option<String>,
    /// `null` removes the schema.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<Option<Value>>,
    /// `true` archives the type (no new events or subscriptions), `false`
    /// brings it back.
    pub archived: Option<bool>,
}

impl From<CatalogueError> for ApiError {
    fn from(e: CatalogueError) -> Self {
        match e {
            CatalogueError::Exists(_) => Self::Conflict(e.to_string()),
            CatalogueError::Database(e) => e.into(),
            e => Self::Validation(e.to_string()),
        }
    }
}

#[utoipa::path(get, path = "/api/v1/event-types", operation_id = "listEventTypes", tag = "events",
    responses((status = 200, body = EventTypes)), security(("bearer" = [])))]
pub async fn list(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let data = catalogue::store::list(&state.pool).await?;
    Ok(HttpResponse::Ok().json(EventTypes { data }))
}

#[utoipa::path(post, path = "/api/v1/event-types", operation_id = "createEventType", tag = "events", request_body = CreateEventType,
    responses((status = 201, body = EventType), (status = 400, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody, description = "the name is taken")),
    security(("bearer" = [])))]
pub async fn create(
    state: web::Data<ApiState>,
    body: ApiJson<CreateEventType>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    let created = catalogue::create(
        &state.catalogue,
        NewEventType {
            name: body.name,
            description: body.description,
            schema: body.schema,
        },
    )
    .await?;
    Ok(HttpResponse::Created().json(created))
}

#[utoipa::path(patch, path = "/api/v1/event-types/{name}", operation_id = "updateEventType", tag = "events", request_body = PatchEventType,
    responses((status = 200, body = EventType), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn patch(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: ApiJson<PatchEventType>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    if body.description.is_none() && body.schema.is_none() && body.archived.is_none() {
        return Err(ApiError::Validation(
            "the body must change at least one of description, schema, archived".into(),
        ));
    }
    let patch = EventTypePatch {
        description: body.description,
        schema: body.schema,
        archived: body.archived,
    };
    let updated = catalogue::update(&state.catalogue, &path, patch)
        .await?
        .ok_or(ApiError::NotFound("event type"))?;
    Ok(HttpResponse::Ok().json(updated))
}

#[utoipa::path(delete, path = "/api/v1/event-types/{name}", operation_id = "deleteEventType", tag = "events",
    responses((status = 405, body = super::error::ErrorBody, description = "types are archived, never deleted")),
    security(("bearer" = [])))]
pub async fn delete() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotAllowed(
        "event types are not deleted (events reference them): archive one with PATCH /api/v1/event-types/{name} {\"archived\": true}"
            .into(),
    ))
}
