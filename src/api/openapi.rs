//! The OpenAPI document, generated from the handlers and types at compile
//! time (no build step, nothing downloaded). Served at /openapi.json and
//! printed by the `openapi` subcommand.
use actix_web::HttpResponse;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    dashboard, deliveries, error, event_types, events, health, page, recovery, stats, webhooks,
};
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

/// What every operation shares, written once instead of on each handler:
/// a description on every response; under `/api/v1` the statuses the guard,
/// the extractors and the error mapping can answer with for any operation
/// (401, 429, 400 for a query or body, 413 and 415 for a body, 503); the
/// path parameters; and links from the responses that carry an id to the
/// operations that take it, so generated clients and stateful fuzzers can
/// follow them.
struct Contract;

/// Statuses any `/api/v1` operation may answer with, and why.
const COMMON: [(&str, &str); 4] = [
    (
        "400",
        "Invalid input: an unknown or malformed query parameter, or a body that fails validation (the message names the field)",
    ),
    (
        "401",
        "Missing or wrong `Authorization: Bearer <ADMIN_API_KEY>`",
    ),
    ("429", "Rate limited for this client IP; see `Retry-After`"),
    (
        "503",
        "The database is unavailable or busy; try again (see `Retry-After`)",
    ),
];
/// Statuses an operation with a request body may also answer with.
const WITH_BODY: [(&str, &str); 2] = [
    ("413", "The body is larger than 256 KiB"),
    ("415", "The body is not `application/json`"),
];

fn describe(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "Created",
        "202" => "Accepted: committed, delivered asynchronously",
        "204" => "Done; no content",
        "404" => "Not found (unknown or malformed id)",
        "409" => "Conflict with the current state",
        _ => "See the error body",
    }
}

/// The operations a response of `operation_id` links to (each link named
/// after its target), and how their parameters come from that response.
/// Only from responses that always carry the id (a list may be empty).
fn links_from(
    operation_id: &str,
) -> (
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
) {
    const WEBHOOK_OPS: &[&str] = &[
        "getWebhook",
        "updateWebhook",
        "deleteWebhook",
        "rotateWebhookSecret",
        "testWebhook",
        "listDeliveries",
        "getWebhookStats",
    ];
    const BY_ID: &[(&str, &str)] = &[("id", "$response.body#/id")];
    const DELIVERY: &[(&str, &str)] = &[
        ("id", "$request.path.id"),
        ("delivery_id", "$response.body#/id"),
    ];
    match operation_id {
        "createWebhook" | "getWebhook" | "updateWebhook" | "rotateWebhookSecret" => {
            (WEBHOOK_OPS, BY_ID)
        }
        "testWebhook" | "retryDelivery" => (&["getDelivery", "retryDelivery"], DELIVERY),
        _ => (&[], &[]),
    }
}

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::link::LinkBuilder;
        use utoipa::openapi::path::{Parameter, ParameterIn};
        use utoipa::openapi::schema::{Object, Type};
        use utoipa::openapi::{Content, Ref, RefOr, Required, ResponseBuilder};

        let error = || Content::new(Some(RefOr::Ref(Ref::from_schema_name("ErrorBody"))));
        for (path, item) in openapi.paths.paths.iter_mut() {
            let api = path.starts_with("/api/v1");
            let path_params: Vec<&str> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .collect();
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let responses = &mut operation.responses.responses;
                if api {
                    let has_body = operation.request_body.is_some();
                    let extra = COMMON.iter().chain(WITH_BODY.iter().filter(|_| has_body));
                    for (status, why) in extra {
                        responses.entry((*status).to_owned()).or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(*why)
                                    .content("application/json", error())
                                    .build(),
                            )
                        });
                    }
                }
                for (status, response) in responses.iter_mut() {
                    if let RefOr::T(response) = response
                        && response.description.is_empty()
                    {
                        response.description = describe(status).to_owned();
                    }
                }
                let parameters = operation.parameters.get_or_insert_with(Vec::new);
                for name in &path_params {
                    if !parameters.iter().any(|p| {
                        matches!(p, RefOr::T(p) if p.name == *name && p.parameter_in == ParameterIn::Path)
                    }) {
                        let mut p = Parameter::new(*name);
                        p.parameter_in = ParameterIn::Path;
                        p.required = Required::True;
                        p.schema = Some(RefOr::T(Object::with_type(Type::String).into()));
                        parameters.push(RefOr::T(p));
                    }
                }
                if parameters.is_empty() {
                    operation.parameters = None;
                }
                let id = operation.operation_id.clone().unwrap_or_default();
                let (targets, params) = links_from(&id);
                if targets.is_empty() {
                    continue;
                }
                for (status, response) in operation.responses.responses.iter_mut() {
                    let (RefOr::T(response), true) = (response, status.starts_with('2')) else {
                        continue;
                    };
                    for target in targets {
                        let mut link = LinkBuilder::new().operation_id(*target);
                        for (param, expression) in params {
                            link = link.parameter(*param, *expression);
                        }
                        response
                            .links
                            .insert((*target).to_owned(), RefOr::T(link.build()));
                    }
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "smartdrop-webhooks", description = "Postgres-native webhook delivery for the SmartDrop indexer"),
    paths(
        health::health, health::metrics, serve, dashboard::page,
        webhooks::create, webhooks::list, webhooks::get, webhooks::patch, webhooks::delete,
        webhooks::rotate_secret, webhooks::test, recovery::recover, recovery::replay,
        deliveries::list, deliveries::get, deliveries::retry,
        events::publish, events::publish_batch,
        event_types::list, event_types::create, event_types::patch, event_types::delete,
        stats::all, stats::one,
    ),
    components(schemas(
        error::ErrorBody, webhooks::CreateWebhook, webhooks::PatchWebhook, webhooks::WebhookView,
        webhooks::WebhookWithSecret, webhooks::RotateSecret, webhooks::RotatedSecret, queue::Delivery, queue::Attempt, deliveries::DeliveryDetail,
        events::PublishEvent, events::Published, events::PublishBatch, events::PublishedBatch, health::Health,
        event_types::EventTypes, event_types::CreateEventType, event_types::PatchEventType, crate::catalogue::EventType,
        recovery::WindowBody, recovery::RecoverResult, recovery::ReplayResult,
        page::Page<webhooks::WebhookView>, page::Page<queue::Delivery>,
        reporting::Stats, reporting::Totals, reporting::Backlog, reporting::WebhookHealth,
        reporting::HourlyVolume, reporting::FailureReason, reporting::RecentFailure,
        reporting::OpenCircuit, reporting::DisabledWebhook, reporting::SetAsideEvent,
        queue::endpoints::CircuitView, queue::breaker::Circuit, crate::webhooks::Ordering,
    )),
    modifiers(&BearerAuth, &Contract),
)]
pub struct ApiDoc;

pub fn document() -> String {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serializes")
}

#[utoipa::path(get, path = "/openapi.json", operation_id = "getOpenApi", tag = "operations",
    responses((status = 200, content_type = "application/json", body = Object,
        description = "this document")))]
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}
