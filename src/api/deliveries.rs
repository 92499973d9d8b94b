//! /webhooks/{id}/deliveries: the delivery log, one delivery with its
//! attempts, and the manual retry of a failed (dead-lettered) delivery.
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::error::ApiError;
use super::page::{self, Page};
use super::webhooks::parse_id;
use crate::domain::ids::{DeliveryId, WebhookId};
use crate::queue::store::HandRetry;
use crate::queue::{self, Attempt, Delivery};
use crate::webhooks;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// 1 to 200 (default 50).
    pub limit: Option<i64>,
    /// `pending`, `success` or `failed`.
    pub status: Option<String>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub attempt_log: Vec<Attempt>,
}

/// `/webhooks/{id}/deliveries/{delivery_id}`: a malformed id of either kind is a 404.
fn parse_ids(
    (webhook_id, delivery_id): (String, String),
) -> Result<(WebhookId, DeliveryId), ApiError> {
    let webhook_id = parse_id(&webhook_id)?;
    let delivery_id = DeliveryId::parse(&delivery_id).ok_or(ApiError::NotFound("delivery"))?;
    Ok((webhook_id, delivery_id))
}

async fn webhook_exists(state: &ApiState, raw: &str) -> Result<String, ApiError> {
    let id = parse_id(raw)?;
    webhooks::store::get(&state.pool, id.as_str())
        .await?
        .map(|w| w.id)
        .ok_or(ApiError::NotFound("webhook"))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", operation_id = "listDeliveries", tag = "deliveries", params(DeliveryQuery),
    responses((status = 200, body = Page<Delivery>), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<DeliveryQuery>,
) -> Result<HttpResponse, ApiError> {
    let webhook_id = webhook_exists(&state, &path).await?;
    let limit = page::limit(query.limit)?;
    let after = page::decode(query.cursor.as_deref())?;
    let status = match query.status.as_deref() {
        None | Some("") => None,
        Some(s @ ("pending" | "success" | "failed")) => Some(s),
        Some(_) => {
            return Err(ApiError::Validation(
                "status: must be pending, success or failed".into(),
            ));
        }
    };
    let rows = queue::store::list(&state.pool, &webhook_id, status, after, limit + 1).await?;
    let page = page::paginate(rows, limit, |d| (d.created_at, d.id.as_str()), |d| d);
    Ok(HttpResponse::Ok().json(page))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}", operation_id = "getDelivery", tag = "deliveries",
    responses((status = 200, body = DeliveryDetail), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (webhook_id, delivery_id) = parse_ids(path.into_inner())?;
    let delivery = queue::store::get(&state.pool, webhook_id.as_str(), delivery_id.as_str())
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    let attempt_log = queue::store::attempts(&state.pool, delivery_id.as_str()).await?;
    Ok(HttpResponse::Ok().json(DeliveryDetail {
        delivery,
        attempt_log,
    }))
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry", operation_id = "retryDelivery", tag = "deliveries",
    responses((status = 200, body = Delivery, description = "the delivery after the new attempt"),
        (status = 404, body = super::error::ErrorBody),
        (status = 409, body = super::error::ErrorBody, description = "the delivery is not failed, its webhook is inactive, or its event is past retention")),
    security(("bearer" = [])))]
pub async fn retry(
    state: web::Data<ApiState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (webhook_id, delivery_id) = parse_ids(path.into_inner())?;
    let claimed = match queue::store::claim_failed(
        &state.pool,
        webhook_id.as_str(),
        delivery_id.as_str(),
        state.lease_ms,
    )
    .await?
    {
        HandRetry::Claimed(claimed) => claimed,
        HandRetry::NotFound => return Err(ApiError::NotFound("delivery")),
        HandRetry::NotFailed(status) => {
            return Err(ApiError::Conflict(format!(
                "only a failed delivery can be retried by hand; this one is {status}"
            )))
        }
        HandRetry::Inactive => {
            return Err(ApiError::Conflict(
                "the webhook is inactive; reactivate it (PATCH {\"active\": true}) before retrying"
                    .into(),
            ))
        }
        HandRetry::EventExpired => {
            return Err(ApiError::Conflict(
                "the delivery's event is past WEBHOOK_RETENTION_DAYS and was dropped; there is nothing to send"
                    .into(),
            ))
        }
        HandRetry::Changed => {
            return Err(ApiError::Conflict(
                "the delivery changed while it was being retried; read it and try again".into(),
            ))
        }
    };
    state
        .deliverer
        .deliver(claimed)
        .await
        .map_err(|e| ApiError::unrecorded(delivery_id.as_str(), &e))?;
    let delivery = queue::store::get(&state.pool, webhook_id.as_str(), delivery_id.as_str())
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    Ok(HttpResponse::Ok().json(delivery))
}
