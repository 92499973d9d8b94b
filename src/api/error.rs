//! The one API error type and its mapping to HTTP. Every error body is
//! `{"error": "<kind>", "message": "<what is wrong>"}`.
//!
//! Adding an error: 1/ add the variant, 2/ give it a status and a kind below,
//! 3/ return it from the handler. Nothing a client sends may become
//! `Unexpected` (the opaque 500).
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::domain::InvalidField;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    InvalidJson(String),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("missing or invalid bearer token: send Authorization: Bearer <ADMIN_API_KEY>")]
    Unauthorized,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotAllowed(String),
    #[error("rate limit exceeded; retry after {0} s")]
    RateLimited(u64),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Unexpected(#[source] anyhow::Error),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable kind.
    pub error: &'static str,
    /// What is wrong, naming the field where there is one.
    pub message: String,
}

impl ApiError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Validation(_) => "validation_error",
            Self::InvalidJson(_) => "invalid_json",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Unauthorized => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::Conflict(_) => "conflict",
            Self::NotAllowed(_) => "method_not_allowed",
            Self::RateLimited(_) => "rate_limited",
            Self::Unavailable(_) => "service_unavailable",
            Self::Unexpected(_) => "internal_error",
        }
    }
}

impl ApiError {
    /// An attempt was made but its result could not be written. Not a 500:
    /// the database is what failed, and the client must not repeat the call
    /// (the delivery is sent again by itself when its lease expires).
    pub fn unrecorded(delivery_id: &str, e: &anyhow::Error) -> Self {
        tracing::warn!(delivery = %delivery_id, error = %format!("{e:#}"), "an attempt made through the API could not be recorded");
        Self::Unavailable(format!(
            "the attempt for delivery {delivery_id} was made but its result could not be recorded; \
             the delivery is sent again when its lease expires (check it with GET …/deliveries/{delivery_id})"
        ))
    }
}

impl From<InvalidField> for ApiError {
    fn from(e: InvalidField) -> Self {
        Self::Validation(e.to_string())
    }
}

/// A stage's database work that did not finish: nothing was acknowledged,
/// so the client may send the request again.
impl From<&crate::db::Interrupted> for ApiError {
    fn from(e: &crate::db::Interrupted) -> Self {
        use crate::db::Interrupted;
        match e {
            Interrupted::Database(e) => {
                Self::from_db(e).unwrap_or_else(|| Self::Unexpected(anyhow::anyhow!("{e}")))
            }
            Interrupted::NoAnswer(_) => {
                Self::Unavailable("the database did not answer in time; retry later".into())
            }
            Interrupted::ShuttingDown => {
                Self::Unavailable("the service is shutting down; retry later".into())
            }
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::from_db(&e).unwrap_or_else(|| Self::Unexpected(e.into()))
    }
}

impl ApiError {
    /// What a database error means to the client, unless it is unexpected.
    fn from_db(e: &sqlx::Error) -> Option<Self> {
        // SQLSTATE class 22 (data exception): Postgres refused a value the
        // client sent, e.g. a NUL character in text or jsonb.
        if let Some(db) = e.as_database_error()
            && db.code().is_some_and(|c| c.starts_with("22"))
        {
            return Some(Self::Validation(format!(
                "a value could not be stored: {}",
                db.message()
            )));
        }
        // A foreign key that vanished under us: the webhook was deleted while
        // this request ran. The client can retry (and will then get a 404).
        if e.as_database_error().and_then(|d| d.code()).as_deref() == Some("23503") {
            return Some(Self::Conflict(
                "the webhook was deleted while this request ran".into(),
            ));
        }
        // Classes that mean "try again": 08 connection exception, 40
        // transaction rollback (serialization failure, deadlock), 53
        // insufficient resources, 57 operator intervention (a statement
        // timeout, the server shutting down or restarting).
        if let Some(db) = e.as_database_error()
            && db
                .code()
                .is_some_and(|c| ["08", "40", "53", "57"].iter().any(|k| c.starts_with(k)))
        {
            return Some(Self::Unavailable(format!(
                "the database could not complete the request ({}); retry later",
                db.message()
            )));
        }
        match e {
            // The pool could not hand out a connection: the database is down
            // or saturated; the client may retry.
            sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => Some(
                Self::Unavailable("the database is unavailable; retry later".into()),
            ),
            _ => None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Validation(_) | Self::InvalidJson(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::NotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Unexpected(e) = self {
            // `{:#}` prints the cause chain on one line (no backtrace).
            tracing::error!(error = %format!("{e:#}"), "request failed");
        }
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, Self::Unauthorized) {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if matches!(self, Self::Unavailable(_)) {
            response.insert_header(("Retry-After", "1"));
        }
        response.json(ErrorBody {
            error: self.kind(),
            message: self.to_string(),
        })
    }
}
