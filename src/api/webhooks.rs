//! /webhooks: register, list, read, change, delete, rotate the secret, test.
use actix_web::{HttpResponse, web};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, OptionalJson};
use super::page::{self, Page, PageQuery};
use crate::domain::InvalidField;
use crate::domain::event_pattern::EventPattern;
use crate::domain::filter::Filter;
use crate::domain::headers::CustomHeaders;
use crate::domain::ids::WebhookId;
use crate::domain::secret::{self, WebhookSecret};
use crate::domain::webhook_url::WebhookUrl;
use crate::queue::endpoints::CircuitView;
use crate::queue::{self, Delivery};
use crate::webhooks::{self, NewWebhook, Ordering, Webhook, WebhookPatch, store};

const MAX_DESCRIPTION: usize = 500;
const MAX_PATTERNS: usize = 100;
const MAX_RATE_LIMIT: i64 = 100_000;
pub const TEST_EVENT: &str = "pool.assets_locked";

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Absolute http(s) URL, at most 2048 characters.
    #[schema(
        example = "https://example.com/hooks/smartdrop",
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://",
        max_length = 2048
    )]
    pub url: String,
    /// Event types: exact names, `*`, or `prefix.*`.
    #[schema(example = json!(["*"]), min_items = 1, max_items = 100)]
    pub events: Vec<String>,
    /// `whsec_` + base64 of 24–64 bytes; generated when absent.
    #[schema(pattern = "^whsec_[A-Za-z0-9+/]+={0,2}$")]
    pub secret: Option<String>,
    /// At most 500 characters.
    #[schema(example = "SmartDrop pool events", max_length = 500)]
    pub description: Option<String>,
    /// Defaults to true.
    pub active: Option<bool>,
    /// Deliveries per second to this endpoint, across all instances (1 to
    /// 100000); absent or `null` = unlimited.
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_limit: Option<i64>,
    /// `unordered` (default) or `fifo`.
    pub ordering: Option<Ordering>,
    /// Payload filter: `{data_key: value | [values]}` over top-level keys
    /// of the event's `data`; every key must match, any listed value
    /// matches. At most 20 keys and 100 values per key; `null` or absent =
    /// every event of the subscribed types.
    #[schema(value_type = Option<Object>, example = json!({"pool_id": ["p1", "p2"], "asset": "SDT"}))]
    pub filter: Option<serde_json::Value>,
    /// Up to 20 headers sent on every attempt (`{name: value}`); not our
    /// own, `Host`, `Content-*`, `User-Agent` or hop-by-hop; values up to
    /// 1 KiB of printable ASCII.
    #[schema(value_type = Option<Object>, example = json!({"X-Api-Key": "gateway-token"}))]
    pub headers: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchWebhook {
    #[schema(
        example = "https://example.com/hooks/smartdrop-v2",
        pattern = "^[Hh][Tt][Tt][Pp][Ss]?://",
        max_length = 2048
    )]
    pub url: Option<String>,
    #[schema(example = json!(["pool.*"]), min_items = 1, max_items = 100)]
    pub events: Option<Vec<String>>,
    /// `true` re-enables a disabled webhook and resets its circuit.
    pub active: Option<bool>,
    /// `null` clears the description.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i64>)]
    pub rate_limit: Option<Option<i64>>,
    pub ordering: Option<Ordering>,
    /// `null` removes the filter.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Option<serde_json::Value>>,
    /// Replaces every custom header; `null` or `{}` removes them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    pub headers: Option<Option<serde_json::Value>>,
}

/// Distinguishes an absent field (outer `None`) from `null` (`Some(None)`).
pub fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub active: bool,
    pub description: Option<String>,
    /// Recognisable, not usable: `whsec_AbCd…wXyZ`.
    pub secret_preview: String,
    /// Deliveries per second, across all instances; `null` = unlimited.
    pub rate_limit: Option<i32>,
    pub ordering: Ordering,
    /// Why the service disabled it (`410 Gone`, a circuit open too long);
    /// `null` when it is enabled or was deactivated by hand.
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<DateTime<Utc>>,
    /// `null` = every event of the subscribed types.
    #[schema(value_type = Option<Object>)]
    pub filter: Option<serde_json::Value>,
    /// The custom headers, names and values (`{}` when none).
    #[schema(value_type = Object)]
    pub headers: serde_json::Value,
    pub circuit: CircuitView,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Returned by create and rotate-secret only: the one time the secret is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: WebhookView,
    pub secret: String,
}

impl From<Webhook> for WebhookView {
    fn from(w: Webhook) -> Self {
        Self {
            secret_preview: secret::preview(&w.secret),
            id: w.id,
            url: w.url,
            events: w.events,
            active: w.active,
            description: w.description,
            rate_limit: w.rate_limit,
            ordering: w.ordering,
            disabled_reason: w.disabled_reason,
            disabled_at: w.disabled_at,
            filter: w.filter,
            headers: w.headers.to_json(),
            circuit: w.circuit,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// `POST /webhooks/{id}/rotate-secret`; the body may be left out.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateSecret {
    /// The new secret (`whsec_` + base64 of 24–64 bytes); generated when absent.
    #[schema(pattern = "^whsec_[A-Za-z0-9+/]+={0,2}$")]
    pub secret: Option<String>,
    /// Seconds the replaced secret keeps signing beside the new one
    /// (0–604800, default 86400); 0 is a hard cut-over.
    #[schema(example = 3600, minimum = 0, maximum = 604800)]
    pub overlap_s: Option<i64>,
}

/// The rotated webhook, its new secret (the one time it is shown) and until
/// when deliveries also carry the previous secret's signature.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RotatedSecret {
    #[serde(flatten)]
    pub webhook: WebhookView,
    pub secret: String,
    /// `null` when the rotation had no overlap.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

const DEFAULT_OVERLAP_S: i64 = 86_400;
const MAX_OVERLAP_S: i64 = 604_800;

fn with_secret(w: Webhook) -> WebhookWithSecret {
    WebhookWithSecret {
        secret: w.secret.clone(),
        webhook: w.into(),
    }
}

pub fn parse_id(raw: &str) -> Result<WebhookId, ApiError> {
    WebhookId::parse(raw).ok_or(ApiError::NotFound("webhook"))
}

/// Subscriptions are checked against the catalogue's active types; on a
/// change (`current`), a webhook keeps the archived types it already has.
async fn validate_events(
    state: &ApiState,
    events: Vec<String>,
    current: Option<&WebhookId>,
) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(InvalidField::new(
            "events",
            "must list at least one event type, `*` or `prefix.*`",
        )
        .into());
    }
    if events.len() > MAX_PATTERNS {
        return Err(InvalidField::new("events", format!("at most {MAX_PATTERNS} entries")).into());
    }
    let subscribable = webhooks::subscribable(&state.pool, current.map(WebhookId::as_str)).await?;
    let mut accepted: Vec<String> = Vec::with_capacity(events.len());
    for (i, raw) in events.into_iter().enumerate() {
        EventPattern::parse(&raw, &subscribable.names).map_err(|m| {
            let archived = subscribable.archived.contains(&raw);
            ApiError::Validation(if archived {
                format!("events[{i}]: `{raw}` is archived: it accepts no new subscriptions")
            } else {
                format!("events[{i}]: {m}")
            })
        })?;
        if !accepted.contains(&raw) {
            accepted.push(raw);
        }
    }
    Ok(accepted)
}

fn validate_filter(f: Option<serde_json::Value>) -> Result<Option<Filter>, ApiError> {
    f.map_or(Ok(None), |f| Filter::parse(f).map_err(ApiError::Validation))
}

fn validate_headers(h: Option<serde_json::Value>) -> Result<CustomHeaders, ApiError> {
    h.map_or(Ok(CustomHeaders::default()), |h| {
        CustomHeaders::parse(h).map_err(ApiError::Validation)
    })
}

fn validate_rate_limit(r: Option<i64>) -> Result<Option<i32>, ApiError> {
    match r {
        Some(r) if !(1..=MAX_RATE_LIMIT).contains(&r) => Err(InvalidField::new(
            "rate_limit",
            format!(
                "must be between 1 and {MAX_RATE_LIMIT} deliveries per second, or null for no limit"
            ),
        )
        .into()),
        r => Ok(r.map(|r| r as i32)),
    }
}

fn validate_description(d: Option<String>) -> Result<Option<String>, ApiError> {
    match d {
        Some(d) if d.chars().count() > MAX_DESCRIPTION => Err(InvalidField::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        )
        .into()),
        d => Ok(d),
    }
}

#[utoipa::path(post, path = "/api/v1/webhooks", operation_id = "createWebhook", tag = "webhooks", request_body = CreateWebhook,
    responses((status = 201, body = WebhookWithSecret), (status = 400, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    state: web::Data<ApiState>,
    body: ApiJson<CreateWebhook>,
) -> Result<HttpResponse, ApiError> {
    let body = body.0;
    let url = WebhookUrl::parse_and_vet(&body.url, state.allow_private_targets).await?;
    let events = validate_events(&state, body.events, None).await?;
    let secret = match body.secret {
        Some(raw) => WebhookSecret::parse(&raw).map_err(|m| InvalidField::new("secret", m))?,
        None => WebhookSecret::generate(),
    };
    let new = NewWebhook {
        url: url.into_string(),
        events,
        secret: secret.expose().to_owned(),
        description: validate_description(body.description)?,
        active: body.active.unwrap_or(true),
        rate_limit: validate_rate_limit(body.rate_limit)?,
        ordering: body.ordering.unwrap_or(Ordering::Unordered),
        filter: validate_filter(body.filter)?,
        headers: validate_headers(body.headers)?,
    };
    let created = store::create(&state.pool, &new).await?;
    tracing::info!(webhook = %created.id, "webhook registered");
    Ok(HttpResponse::Created().json(with_secret(created)))
}

#[utoipa::path(get, path = "/api/v1/webhooks", operation_id = "listWebhooks", tag = "webhooks", params(PageQuery),
    responses((status = 200, body = Page<WebhookView>)), security(("bearer" = [])))]
pub async fn list(
    state: web::Data<ApiState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = page::limit(query.limit)?;
    let after = page::decode(query.cursor.as_deref())?;
    let rows = store::list(&state.pool, after, limit + 1).await?;
    let page = page::paginate(
        rows,
        limit,
        |w| (w.created_at, w.id.as_str()),
        WebhookView::from,
    );
    Ok(HttpResponse::Ok().json(page))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}", operation_id = "getWebhook", tag = "webhooks",
    responses((status = 200, body = WebhookView), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn get(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let webhook = store::get(&state.pool, id.as_str())
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(HttpResponse::Ok().json(WebhookView::from(webhook)))
}

#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", operation_id = "updateWebhook", tag = "webhooks", request_body = PatchWebhook,
    responses((status = 200, body = WebhookView), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn patch(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: ApiJson<PatchWebhook>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let body = body.0;
    if body.url.is_none()
        && body.events.is_none()
        && body.active.is_none()
        && body.description.is_none()
        && body.rate_limit.is_none()
        && body.ordering.is_none()
        && body.filter.is_none()
        && body.headers.is_none()
    {
        return Err(ApiError::Validation(
            "the body must change at least one of url, events, active, description, rate_limit, ordering, filter, headers"
                .into(),
        ));
    }
    let url = match body.url {
        Some(raw) => Some(
            WebhookUrl::parse_and_vet(&raw, state.allow_private_targets)
                .await?
                .into_string(),
        ),
        None => None,
    };
    let events = match body.events {
        Some(e) => Some(validate_events(&state, e, Some(&id)).await?),
        None => None,
    };
    let description = match body.description {
        Some(d) => Some(validate_description(d)?),
        None => None,
    };
    let rate_limit = match body.rate_limit {
        Some(r) => Some(validate_rate_limit(r)?),
        None => None,
    };
    let patch = WebhookPatch {
        url,
        events,
        active: body.active,
        description,
        rate_limit,
        ordering: body.ordering,
        filter: body.filter.map(validate_filter).transpose()?,
        headers: body.headers.map(validate_headers).transpose()?,
    };
    let webhook = webhooks::update(&state.pool, id.as_str(), &patch)
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(HttpResponse::Ok().json(WebhookView::from(webhook)))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", operation_id = "deleteWebhook", tag = "webhooks",
    responses((status = 204), (status = 404, body = super::error::ErrorBody)), security(("bearer" = [])))]
pub async fn delete(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    if !store::delete(&state.pool, id.as_str()).await? {
        return Err(ApiError::NotFound("webhook"));
    }
    tracing::info!(webhook = %id, "webhook deleted");
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate-secret", operation_id = "rotateWebhookSecret", tag = "webhooks",
    request_body(content = Option<RotateSecret>, description = "optional; an empty body generates a secret with a one-day overlap"),
    responses((status = 200, body = RotatedSecret), (status = 400, body = super::error::ErrorBody),
        (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn rotate_secret(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    body: OptionalJson<RotateSecret>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let body = body.0;
    let secret = match body.secret {
        Some(raw) => WebhookSecret::parse(&raw).map_err(|m| InvalidField::new("secret", m))?,
        None => WebhookSecret::generate(),
    };
    let overlap_s = body.overlap_s.unwrap_or(DEFAULT_OVERLAP_S);
    if !(0..=MAX_OVERLAP_S).contains(&overlap_s) {
        return Err(InvalidField::new("overlap_s", "must be 0 to 604800 seconds").into());
    }
    let (webhook, previous_secret_expires_at) =
        store::rotate_secret(&state.pool, id.as_str(), secret.expose(), overlap_s)
            .await?
            .ok_or(ApiError::NotFound("webhook"))?;
    tracing::info!(webhook = %id, overlap_s, "webhook secret rotated");
    let WebhookWithSecret { webhook, secret } = with_secret(webhook);
    Ok(HttpResponse::Ok().json(RotatedSecret {
        webhook,
        secret,
        previous_secret_expires_at,
    }))
}

/// The body of a `/test` delivery: a synthetic `pool.assets_locked`.
fn test_body(event_id: &str, now: DateTime<Utc>) -> String {
    serde_json::json!({
        "event": TEST_EVENT,
        "event_id": event_id,
        "occurred_at": now.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": {
            "test": true,
            "pool_id": "pool_test",
            "asset": "TEST",
            "amount": "1.0",
        },
    })
    .to_string()
}

#[utoipa::path(post, path = "/api/v1/webhooks/{id}/test", operation_id = "testWebhook", tag = "webhooks",
    responses((status = 200, body = Delivery, description = "the delivery after its first attempt"),
        (status = 404, body = super::error::ErrorBody), (status = 429, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn test(
    state: web::Data<ApiState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let event_id = format!("evt_test_{}", uuid::Uuid::new_v4().simple());
    let body = test_body(&event_id, Utc::now());
    let claimed = queue::store::insert_claimed(
        &state.pool,
        id.as_str(),
        &event_id,
        TEST_EVENT,
        &body,
        state.lease_ms,
    )
    .await?
    .ok_or(ApiError::NotFound("webhook"))?;
    let delivery_id = claimed.id.clone();
    state
        .deliverer
        .deliver(claimed)
        .await
        .map_err(|e| ApiError::unrecorded(&delivery_id, &e))?;
    let delivery = queue::store::get(&state.pool, id.as_str(), &delivery_id)
        .await?
        .ok_or(ApiError::NotFound("delivery"))?;
    Ok(HttpResponse::Ok().json(delivery))
}
