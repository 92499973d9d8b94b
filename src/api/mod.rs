//! The actix-web adapter. Handlers are thin: extract → parse into domain
//! types → entry point or store → JSON. `configure` is the only route table,
//! shared by `startup` and the tests.
pub mod access_log;
pub mod catch_panic;
pub mod dashboard;
pub mod deliveries;
pub mod error;
pub mod event_types;
pub mod events;
pub mod extract;
pub mod guard;
pub mod health;
pub mod openapi;
pub mod page;
pub mod rate_limit;
pub mod recovery;
pub mod stats;
pub mod webhooks;

use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::web;
use sqlx::PgPool;

use crate::delivery::Deliverer;
use crate::metrics::Metrics;
use guard::AdminKey;
use rate_limit::IpLimiter;

pub struct RateLimits {
    pub management: IpLimiter,
    pub test: IpLimiter,
    /// `POST /events`: a producer's budget, apart from the management API's.
    pub events: IpLimiter,
}

/// Shared by every handler; built once by `startup`.
pub struct ApiState {
    pub pool: PgPool,
    /// One connection of its own for `/health`'s probe: requests holding
    /// every connection of `pool` must not turn the health check red.
    pub health_pool: PgPool,
    /// The HTTP intake: events go through group commit, not `pool`.
    pub publisher: crate::intake::Publisher,
    /// The event-type catalogue the intake checks against (its cache is
    /// refreshed when the API changes it).
    pub catalogue: Arc<crate::catalogue::Catalogue>,
    pub deliverer: Deliverer,
    pub metrics: Arc<Metrics>,
    pub admin_key: AdminKey,
    pub limits: RateLimits,
    pub trust_proxy: bool,
    pub allow_private_targets: bool,
    pub lease_ms: i64,
    /// How long the claim loop may go without reaching the database before
    /// `/health` calls the pipeline stuck.
    pub pipeline_stale: std::time::Duration,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(extract::query_config())
        .app_data(extract::path_config())
        .route("/health", web::get().to(health::health))
        .route("/openapi.json", web::get().to(openapi::serve))
        .route("/metrics", web::get().to(health::metrics))
        .route("/dashboard", web::get().to(dashboard::page))
        .service(
            web::scope("/api/v1")
                .wrap(from_fn(guard::guard))
                .route("/webhooks", web::post().to(webhooks::create))
                .route("/webhooks", web::get().to(webhooks::list))
                .route("/webhooks/{id}", web::get().to(webhooks::get))
                .route("/webhooks/{id}", web::patch().to(webhooks::patch))
                .route("/webhooks/{id}", web::delete().to(webhooks::delete))
                .route("/webhooks/{id}/recover", web::post().to(recovery::recover))
                .route("/webhooks/{id}/replay", web::post().to(recovery::replay))
                .route(
                    "/webhooks/{id}/rotate-secret",
                    web::post().to(webhooks::rotate_secret),
                )
                .route("/webhooks/{id}/test", web::post().to(webhooks::test))
                .route("/webhooks/{id}/deliveries", web::get().to(deliveries::list))
                .route(
                    "/webhooks/{id}/deliveries/{delivery_id}",
                    web::get().to(deliveries::get),
                )
                .route(
                    "/webhooks/{id}/deliveries/{delivery_id}/retry",
                    web::post().to(deliveries::retry),
                )
                .route("/event-types", web::get().to(event_types::list))
                .route("/event-types", web::post().to(event_types::create))
                .route("/event-types/{name}", web::patch().to(event_types::patch))
                .route("/event-types/{name}", web::delete().to(event_types::delete))
                .route("/events", web::post().to(events::publish))
                .route("/events/batch", web::post().to(events::publish_batch))
                .route("/stats", web::get().to(stats::all))
                .route("/webhooks/{id}/stats", web::get().to(stats::one))
                .default_service(web::to(extract::not_found)),
        )
        .default_service(web::to(extract::not_found));
}
