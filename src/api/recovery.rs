//! /webhooks/{id}/recover and /replay: an operator's tools after an outage
//! (dead letters back in the queue) or for a late endpoint (deliveries for
//! events it missed).
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
use super::extract::ApiJson;
use super::webhooks::parse_id;
use crate::domain::ids::WebhookId;
use crate::domain::window::Window;
use crate::fanout::replay::{self, Replayed};
use crate::queue::recover::{self, Recovered};

/// `POST /webhooks/{id}/recover` and `/replay`: a window of time.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowBody {
    /// Start of the window (inclusive), RFC 3339.
    pub since: DateTime<Utc>,
    /// End of the window (exclusive); now when absent.
    pub until: Option<DateTime<Utc>>,
}

impl WindowBody {
    fn window(&self) -> Result<Window, ApiError> {
        Window::new(self.since, self.until, Utc::now()).map_err(ApiError::Validation)
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecoverResult {
    /// Failed deliveries put back in the queue with a fresh retry schedule.
    pub requeued: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayResult {
    /// Deliveries created for events the webhook had none for.
    pub created: i64,
}

fn inactive(id: &WebhookId) -> ApiError {
    ApiError::Conflict(format!(
        "webhook {id} is inactive: its deliveries would not be sent; re-enable it first (PATCH {{\"active\": true}})"
    ))
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/recover", operation_id = "recoverWebhook", tag = "webhooks", request_body = WindowBody,
    responses((status = 202, body = RecoverResult), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "the webhook is inactive")),
    security(("bearer" = [])))]
pub async fn recover(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: ApiJson<WindowBody>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let window = body.0.window()?;
    match recover::recover(&state.pool, &id, window).await? {
        Recovered::Requeued(requeued) => {
            Ok(HttpResponse::Accepted().json(RecoverResult { requeued }))
        }
        Recovered::NoSuchWebhook => Err(ApiError::NotFound("webhook")),
        Recovered::Inactive => Err(inactive(&id)),
    }
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/replay", operation_id = "replayWebhook", tag = "webhooks", request_body = WindowBody,
    responses((status = 202, body = ReplayResult), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody), (status = 409, body = super::error::ErrorBody, description = "the webhook is inactive")),
    security(("bearer" = [])))]
pub async fn replay(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: ApiJson<WindowBody>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let window = body.0.window()?;
    match replay::replay(&state.pool, &id, window).await? {
        Replayed::Created(created) => Ok(HttpResponse::Accepted().json(ReplayResult { created })),
        Replayed::NoSuchWebhook => Err(ApiError::NotFound("webhook")),
        Replayed::Inactive => Err(inactive(&id)),
    }
}
