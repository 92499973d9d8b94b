//! GET /stats and /webhooks/{id}/stats: the reporting figures as JSON.
use actix_web::{HttpResponse, web};
use chrono::Utc;
use serde::Deserialize;

use super::ApiState;
use super::error::ApiError;
use super::webhooks::parse_id;
use crate::reporting::{Stats, store};
use crate::webhooks;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WindowQuery {
    /// `<n>m`, `<n>h` or `<n>d`, from 1m to 90d (default `24h`).
    pub window: Option<String>,
}

/// Parses `15m`, `24h`, `7d` into a duration (1 minute to 90 days).
pub fn parse_window(raw: &str) -> Option<chrono::Duration> {
    // Split off the last character, not the last byte: the input is arbitrary UTF-8.
    let unit = raw.chars().last()?;
    let n: i64 = raw[..raw.len() - unit.len_utf8()]
        .parse()
        .ok()
        .filter(|n| *n > 0)?;
    // The checked constructors: `9999999999999d` is out of chrono's range
    // (the unchecked ones panic).
    let d = match unit {
        'm' => chrono::Duration::try_minutes(n),
        'h' => chrono::Duration::try_hours(n),
        'd' => chrono::Duration::try_days(n),
        _ => None,
    }?;
    (d <= chrono::Duration::days(90)).then_some(d)
}

async fn stats(
    state: &ApiState,
    window: Option<String>,
    only: Option<&str>,
) -> Result<Stats, ApiError> {
    let window = window.unwrap_or_else(|| "24h".into());
    let span = parse_window(&window).ok_or_else(|| {
        ApiError::Validation("window: must look like 15m, 24h or 7d (1m to 90d)".into())
    })?;
    let now = Utc::now();
    let since = now - span;
    let pool = &state.pool;
    let (totals, backlog, webhooks, hourly, failure_reasons, recent_failures) = tokio::try_join!(
        store::totals(pool, since, only),
        store::backlog(pool),
        store::health(pool, since, only),
        store::hourly(pool, since, only),
        store::failure_reasons(pool, since, only),
        store::recent_failures(pool, since, only),
    )?;
    let (open_circuits, disabled_webhooks, set_aside_events) = tokio::try_join!(
        store::open_circuits(pool, only),
        store::disabled(pool, only),
        store::set_aside(pool, only),
    )?;
    Ok(Stats {
        window,
        since,
        generated_at: now,
        totals,
        backlog,
        webhooks,
        hourly,
        failure_reasons,
        recent_failures,
        open_circuits,
        disabled_webhooks,
        set_aside_events,
    })
}

#[utoipa::path(get, path = "/api/v1/stats", operation_id = "getStats", tag = "reporting", params(WindowQuery),
    responses((status = 200, body = Stats), (status = 400, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn all(
    state: web::Data<ApiState>,
    query: web::Query<WindowQuery>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(stats(&state, query.into_inner().window, None).await?))
}

/// The same figures for one webhook (`backlog` stays service-wide).
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/stats", operation_id = "getWebhookStats", tag = "reporting", params(WindowQuery),
    responses((status = 200, body = Stats), (status = 404, body = super::error::ErrorBody)),
    security(("bearer" = [])))]
pub async fn one(
    state: web::Data<ApiState>,
    path: web::Path<String>,
    query: web::Query<WindowQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    webhooks::store::get(&state.pool, id.as_str())
        .await?
        .ok_or(ApiError::NotFound("webhook"))?;
    Ok(HttpResponse::Ok().json(stats(&state, query.into_inner().window, Some(id.as_str())).await?))
}

#[cfg(test)]
mod tests {
    use super::parse_window;

    #[test]
    fn windows_parse_within_bounds() {
        assert_eq!(parse_window("24h"), Some(chrono::Duration::hours(24)));
        assert_eq!(parse_window("7d"), Some(chrono::Duration::days(7)));
        assert_eq!(parse_window("15m"), Some(chrono::Duration::minutes(15)));
        for bad in [
            "",
            "h",
            "0h",
            "-1h",
            "91d",
            "24",
            "1w",
            "1.5h",
            "ééh",
            "\u{80}",
            "1é",
            "é",
            "9999999999999d",
            "9223372036854775807m",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }
}
