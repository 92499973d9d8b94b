//! The OpenAPI document, generated from the handlers and types at compile
//! time (no build step, nothing downloaded). Served at /openapi.json and
//! printed by the `openapi` subcommand.
use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{deliveries, error, events, health, page, stats, webhooks};
use crate::{queue, reporting};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "smartdrop-webhooks", description = "Postgres-native webhook delivery for the SmartDrop indexer"),
    paths(
        health::health,
        webhooks::create, webhooks::list, webhooks::get, webhooks::patch, webhooks::delete,
        webhooks::rotate_secret, webhooks::test,
        deliveries::list, deliveries::get, deliveries::retry,
        events::publish, events::event_types,
        stats::all, stats::one,
    ),
    components(schemas(
        error::ErrorBody, webhooks::CreateWebhook, webhooks::PatchWebhook, webhooks::WebhookView,
        webhooks::WebhookWithSecret, webhooks::RotateSecret, webhooks::RotatedSecret, queue::Delivery, queue::Attempt, deliveries::DeliveryDetail,
        events::PublishEvent, events::Published, events::EventTypes, events::EventType, health::Health,
        page::Page<webhooks::WebhookView>, page::Page<queue::Delivery>,
        reporting::Stats, reporting::Totals, reporting::Backlog, reporting::WebhookHealth,
        reporting::HourlyVolume, reporting::FailureReason, reporting::RecentFailure,
        reporting::OpenCircuit, reporting::DisabledWebhook,
        queue::endpoints::CircuitView, queue::breaker::Circuit, crate::webhooks::Ordering,
    )),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}
