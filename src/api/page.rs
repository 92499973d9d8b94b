//! Cursor pagination, newest first. The cursor is opaque to clients: the
//! `(created_at, id)` of the last row of the previous page.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::ApiError;

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 200;

#[derive(Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1 to 200 (default 50).
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

pub fn limit(raw: Option<i64>) -> Result<i64, ApiError> {
    match raw.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n),
        _ => Err(ApiError::Validation(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        ))),
    }
}

pub fn decode(cursor: Option<&str>) -> Result<Option<(DateTime<Utc>, String)>, ApiError> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    let invalid =
        || ApiError::Validation("cursor: invalid; pass the next_cursor of a previous page".into());
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    let raw = String::from_utf8(raw).map_err(|_| invalid())?;
    let (micros, id) = raw.split_once('|').ok_or_else(invalid)?;
    let at = DateTime::from_timestamp_micros(micros.parse().map_err(|_| invalid())?)
        .ok_or_else(invalid)?;
    Ok(Some((at, id.to_owned())))
}

/// Trims the extra row fetched to detect a next page and builds the cursor.
pub fn paginate<T, R>(
    mut rows: Vec<R>,
    limit: i64,
    key: impl Fn(&R) -> (DateTime<Utc>, &str),
    view: impl Fn(R) -> T,
) -> Page<T> {
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| {
            let (at, id) = key(r);
            URL_SAFE_NO_PAD.encode(format!("{}|{}", at.timestamp_micros(), id))
        })
    } else {
        None
    };
    Page {
        data: rows.into_iter().map(view).collect(),
        next_cursor,
    }
}
