//! Request extraction that fails through `ApiError`: JSON bodies (bounded,
//! field named in every error), query strings and unmatched routes.
use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The batch intake's bound: 1,000 events of a few KiB each.
pub const MAX_BATCH_BODY_BYTES: usize = 8 * 1024 * 1024;

/// A JSON body of at most `LIMIT` bytes; type errors name the offending
/// field (`events[1]: …`).
pub struct ApiJson<T, const LIMIT: usize = MAX_BODY_BYTES>(pub T);

/// A JSON body that may be left out: an empty body is `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + 'static, const LIMIT: usize> FromRequest for ApiJson<T, LIMIT> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_json::<T>(req, payload, LIMIT);
        Box::pin(async move {
            body.await?.map(ApiJson).ok_or_else(|| {
                ApiError::InvalidJson("the request body must be a JSON object".into())
            })
        })
    }
}

impl<T: DeserializeOwned + Default + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_json::<T>(req, payload, MAX_BODY_BYTES);
        Box::pin(async move { Ok(OptionalJson(body.await?.unwrap_or_default())) })
    }
}

/// Reads and parses a bounded JSON body; `None` when the body is empty.
fn read_json<T: DeserializeOwned + 'static>(
    req: &HttpRequest,
    payload: &mut Payload,
    limit: usize,
) -> Pin<Box<dyn Future<Output = Result<Option<T>, ApiError>>>> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase());
    let declared_len = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut payload = payload.take();
    Box::pin(async move {
        if let Some(ct) = content_type
            && !(ct.starts_with("application/json") || ct.contains("+json"))
        {
            return Err(ApiError::UnsupportedMediaType);
        }
        if declared_len.is_some_and(|n| n > limit) {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::InvalidJson(format!("could not read the body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::PayloadTooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        if body.is_empty() {
            return Ok(None);
        }
        let de = &mut serde_json::Deserializer::from_slice(&body);
        serde_path_to_error::deserialize(de).map(Some).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                ApiError::InvalidJson(format!("malformed JSON: {inner}"))
            } else if path == "." {
                ApiError::Validation(inner.to_string())
            } else {
                ApiError::Validation(format!("{path}: {inner}"))
            }
        })
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|e, _| ApiError::Validation(format!("query string: {e}")).into())
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|_, _| ApiError::NotFound("resource").into())
}

/// Unknown routes answer in the same JSON shape.
pub async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("route"))
}
