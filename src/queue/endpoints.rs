//! SQL for `webhook_endpoint_state`: each webhook's breaker, throttle and
//! readiness as the completer and the webhook resource change them (the claim
//! reads and moves them in `webhook_claim`). Rows are locked in webhook_id
//! order, as the fan-out trigger does, so writers queue and never deadlock.
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

use super::breaker::{BreakerState, Circuit};

/// A webhook's circuit as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CircuitView {
    pub state: Circuit,
    /// Failed attempts since the last success.
    pub consecutive_failures: i32,
    /// Open: when the probe may go; half-open: when the probe's lease ends.
    pub open_until: Option<DateTime<Utc>>,
}

impl CircuitView {
    pub fn from_parts(
        state: Option<&str>,
        failures: Option<i32>,
        open_until: Option<DateTime<Utc>>,
    ) -> Self {
        let state = Circuit::parse(state.unwrap_or("closed"));
        Self {
            state,
            consecutive_failures: failures.unwrap_or(0),
            open_until: open_until.filter(|_| state != Circuit::Closed),
        }
    }
}

/// A locked state row and what the completer needs to know of its webhook.
pub struct Locked {
    pub webhook_id: String,
    pub breaker: BreakerState,
    pub fifo: bool,
}

pub async fn lock(conn: &mut PgConnection, webhook_ids: &[String]) -> sqlx::Result<Vec<Locked>> {
    let rows = sqlx::query!(
        r#"
        SELECT s.webhook_id, s.circuit, s.consecutive_failures, s.open_until, s.cooldown_ms,
               s.opened_at, w.ordering = 'fifo' AS "fifo!"
        FROM webhook_endpoint_state s JOIN webhooks w ON w.id = s.webhook_id
        WHERE s.webhook_id = ANY($1)
        ORDER BY s.webhook_id
        FOR UPDATE OF s
        "#,
        webhook_ids,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Locked {
            webhook_id: r.webhook_id,
            breaker: BreakerState {
                circuit: Circuit::parse(&r.circuit),
                consecutive_failures: r.consecutive_failures,
                open_until: r.open_until,
                cooldown_ms: r.cooldown_ms,
                opened_at: r.opened_at,
            },
            fifo: r.fifo,
        })
        .collect())
}

/// What the completer writes back for one webhook.
pub struct Update {
    pub webhook_id: String,
    pub breaker: BreakerState,
    /// Set ready_at to exactly this (opened: the end of the cool-down).
    pub ready_at: Option<DateTime<Utc>>,
    /// Lower ready_at to this (a retry scheduled).
    pub wake_by: Option<DateTime<Utc>>,
    /// Make it ready now (closed circuit, FIFO head done).
    pub wake_now: bool,
}

pub async fn write(conn: &mut PgConnection, updates: &[Update]) -> sqlx::Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut ids = vec![];
    let mut circuits = vec![];
    let mut failures = vec![];
    let mut open_until: Vec<Option<DateTime<Utc>>> = vec![];
    let mut cooldown: Vec<Option<i64>> = vec![];
    let mut opened_at: Vec<Option<DateTime<Utc>>> = vec![];
    let mut ready_at: Vec<Option<DateTime<Utc>>> = vec![];
    let mut wake_in_ms: Vec<Option<i64>> = vec![];
    let mut wake_now = vec![];
    for u in updates {
        ids.push(u.webhook_id.clone());
        circuits.push(u.breaker.circuit.as_str().to_owned());
        failures.push(u.breaker.consecutive_failures);
        open_until.push(u.breaker.open_until);
        cooldown.push(u.breaker.cooldown_ms);
        opened_at.push(u.breaker.opened_at);
        ready_at.push(u.ready_at);
        wake_in_ms.push(u.wake_by.map(super::retry::from_now_ms));
        wake_now.push(u.wake_now);
    }
    sqlx::query!(
        r#"
        UPDATE webhook_endpoint_state s
        SET circuit = u.circuit, consecutive_failures = u.failures, open_until = u.open_until,
            cooldown_ms = u.cooldown_ms, opened_at = u.opened_at,
            ready_at = CASE WHEN u.wake_now THEN now()
                            WHEN u.ready_at IS NOT NULL THEN u.ready_at
                            ELSE least(s.ready_at, now() + make_interval(secs => u.wake_in_ms / 1000.0)) END
        FROM unnest($1::text[], $2::text[], $3::int4[], $4::timestamptz[], $5::int8[],
                    $6::timestamptz[], $7::timestamptz[], $8::int8[], $9::bool[])
            AS u(webhook_id, circuit, failures, open_until, cooldown_ms, opened_at, ready_at, wake_in_ms, wake_now)
        WHERE s.webhook_id = u.webhook_id
        "#,
        &ids,
        &circuits,
        &failures,
        &open_until as &[Option<DateTime<Utc>>],
        &cooldown as &[Option<i64>],
        &opened_at as &[Option<DateTime<Utc>>],
        &ready_at as &[Option<DateTime<Utc>>],
        &wake_in_ms as &[Option<i64>],
        &wake_now,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Defers an opened circuit's pending deliveries to the end of its cool-down,
/// in one statement; no attempt is used.
pub async fn defer(
    conn: &mut PgConnection,
    webhook_id: &str,
    until: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"
        UPDATE webhook_deliveries SET next_retry_at = $2
        WHERE webhook_id = $1 AND status = 'pending' AND lease_token IS NULL AND next_retry_at < $2
        "#,
        webhook_id,
        until,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// After a circuit closes, what was deferred up to `horizon` is due at once:
/// the backlog flows at full speed.
pub async fn undefer(
    conn: &mut PgConnection,
    webhook_id: &str,
    horizon: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let done = sqlx::query!(
        r#"
        UPDATE webhook_deliveries SET next_retry_at = now()
        WHERE webhook_id = $1 AND status = 'pending' AND lease_token IS NULL
          AND next_retry_at > now() AND next_retry_at <= $2
        "#,
        webhook_id,
        horizon,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Closes the circuit (re-enabling a webhook): what it had deferred is due at
/// once.
pub async fn reset(conn: &mut PgConnection, webhook_id: &str) -> sqlx::Result<()> {
    let horizon = sqlx::query_scalar!(
        r#"
        WITH old AS (
            SELECT webhook_id, open_until FROM webhook_endpoint_state WHERE webhook_id = $1 FOR UPDATE
        )
        UPDATE webhook_endpoint_state s
        SET circuit = 'closed', consecutive_failures = 0, open_until = NULL, cooldown_ms = NULL,
            opened_at = NULL, ready_at = now()
        FROM old WHERE s.webhook_id = old.webhook_id
        RETURNING old.open_until
        "#,
        webhook_id,
    )
    .fetch_optional(&mut *conn)
    .await?
    .flatten();
    if let Some(horizon) = horizon {
        undefer(conn, webhook_id, horizon).await?;
    }
    Ok(())
}

/// Makes a webhook's pending deliveries follow publish order (FIFO) or not.
pub async fn set_ordering(
    conn: &mut PgConnection,
    webhook_id: &str,
    fifo: bool,
) -> sqlx::Result<()> {
    sqlx::query!(
        r#"
        UPDATE webhook_deliveries d
        -- (its event's row; by event_id only for a delivery from before
        -- migration 14, which has none: min() since an event_id is unique
        -- per week partition only, migration 18)
        SET fifo_seq = CASE WHEN $2 THEN coalesce(d.event_seq, (SELECT min(e.id) FROM webhook_events e
                                                                 WHERE e.event_id = d.event_id)) END
        WHERE d.webhook_id = $1 AND d.status = 'pending'
        "#,
        webhook_id,
        fifo,
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "UPDATE webhook_endpoint_state SET ready_at = now() WHERE webhook_id = $1",
        webhook_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Circuits that are not closed, across all instances (the gauge).
pub async fn open_count(pool: &sqlx::PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM webhook_endpoint_state s JOIN webhooks w ON w.id = s.webhook_id
           WHERE s.circuit <> 'closed' AND w.active"#
    )
    .fetch_one(pool)
    .await
}
