//! A handler that panics answers `500 internal_error` like any unexpected
//! failure. Without this, actix-web lets the panic unwind through the
//! connection's task: the client gets an empty reply and the other
//! connections of that worker thread go with it. Panics are bugs (input is
//! validated and durations are checked), so this is the last line, not a
//! way to report errors.
use std::panic::AssertUnwindSafe;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use futures_util::FutureExt;

use super::error::ApiError;

pub async fn catch_panic(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    // The call goes inside the future, so a panic while it is set up (routing,
    // extractors) is caught as well as one while it is polled.
    match AssertUnwindSafe(async move { next.call(req).await })
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            // An error (not a response) because the request cannot be kept
            // for one: routing needs it unshared. actix-web answers an error
            // with its `error_response`, the usual 500 body.
            Err(ApiError::Unexpected(anyhow::anyhow!("handler panicked: {what}")).into())
        }
    }
}
