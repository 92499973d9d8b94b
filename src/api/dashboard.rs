//! GET /dashboard: one page embedded in the binary (no CDN, nothing fetched at
//! run time). It asks for the admin key, keeps it in memory only, and reads
//! the JSON API.
use actix_web::HttpResponse;

const PAGE: &str = include_str!("dashboard.html");

#[utoipa::path(get, path = "/dashboard", operation_id = "getDashboard", tag = "operations",
    responses((status = 200, content_type = "text/html", body = String,
        description = "the admin page; it asks for the key and reads the JSON API")))]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
        ))
        .body(PAGE)
}
