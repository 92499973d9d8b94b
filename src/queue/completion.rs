//! Recording finished attempts. One statement records the batch (fenced on the
//! leases); then, only for endpoints where something happened (a failure, a
//! retry, a FIFO head done, a circuit not at rest), one transaction takes
//! their state rows in webhook_id order, moves each breaker, defers or frees
//! its backlog, and wakes the claim for rows that became due. The common case,
//! successes on a healthy endpoint, costs the one statement. The instance that
//! records a transition is the only one that sees it, so each is reported
//! once.
//!
//! Should the second step fail, nothing is stranded: a retry's webhook wakes
//! at the latest when the lease of that attempt would have ended (the claim
//! never sleeps a webhook past its earliest pending row, leased rows
//! included).
use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection};

use super::breaker::{self, BreakerConfig, Change};
use super::endpoints::{self, Update};
use super::{Finished, NextState, store};

#[derive(Debug, Default)]
pub struct Completed {
    /// Deliveries whose attempt was recorded (the others had lost their lease).
    pub recorded: HashSet<String>,
    /// Breaker transitions, per webhook, in the order they happened.
    pub changes: Vec<(String, Change)>,
    /// Webhooks whose endpoint answered 410 Gone.
    pub gone: Vec<String>,
}

pub async fn complete(
    conn: &mut PgConnection,
    batch: &[Finished],
    config: &BreakerConfig,
) -> sqlx::Result<Completed> {
    let recorded = store::finish_many(conn, batch).await?;
    let mut done = Completed {
        recorded: recorded.iter().map(|r| r.id.clone()).collect(),
        ..Completed::default()
    };
    // Attempts that may move a breaker or wake a webhook.
    let eventful: HashSet<&str> = batch
        .iter()
        .filter(|f| f.next != NextState::Success)
        .map(|f| f.id.as_str())
        .collect();
    let mut webhook_ids: Vec<String> = recorded
        .iter()
        .filter(|r| !r.at_rest || eventful.contains(r.id.as_str()))
        .map(|r| r.webhook_id.clone())
        .collect();
    webhook_ids.sort();
    webhook_ids.dedup();
    if webhook_ids.is_empty() {
        return Ok(done);
    }
    let mut tx = conn.begin().await?;
    let locked = endpoints::lock(&mut tx, &webhook_ids).await?;
    let now = Utc::now();
    let mut updates = vec![];
    for endpoint in locked {
        let mut state = endpoint.breaker.clone();
        let mut last: Option<Change> = None;
        let mut closed_horizon: Option<DateTime<Utc>> = None;
        let mut wake_by: Option<DateTime<Utc>> = None;
        let mut any = false;
        let attempts = batch
            .iter()
            .filter(|f| f.webhook_id == endpoint.webhook_id && done.recorded.contains(&f.id));
        for f in attempts {
            any = true;
            let status = f.attempt.response_status;
            if status == Some(410) && !done.gone.contains(&f.webhook_id) {
                done.gone.push(f.webhook_id.clone());
            }
            if let NextState::Retry { at } = f.next {
                wake_by = Some(wake_by.map_or(at, |w| w.min(at)));
            }
            let success = status.is_some_and(|s| (200..300).contains(&s));
            let (next, change) = breaker::on_attempt(&state, success, f.probe, now, config);
            if let Some(change) = change {
                if change == Change::Closed {
                    closed_horizon = state.open_until;
                }
                done.changes
                    .push((endpoint.webhook_id.clone(), change.clone()));
                last = Some(change);
            }
            state = next;
        }
        if !any {
            continue;
        }
        let opened_until = match last {
            Some(Change::Opened { until }) => Some(until),
            _ => None,
        };
        if let Some(until) = opened_until {
            endpoints::defer(&mut tx, &endpoint.webhook_id, until).await?;
        }
        let closed = last == Some(Change::Closed);
        if let (true, Some(horizon)) = (closed, closed_horizon) {
            endpoints::undefer(&mut tx, &endpoint.webhook_id, horizon).await?;
        }
        let wake_now = endpoint.fifo || closed;
        if state != endpoint.breaker || wake_by.is_some() || wake_now {
            updates.push(Update {
                webhook_id: endpoint.webhook_id,
                breaker: state,
                ready_at: opened_until,
                wake_by,
                wake_now,
            });
        }
    }
    let wake = updates.iter().any(|u| u.wake_now);
    endpoints::write(&mut tx, &updates).await?;
    if wake {
        // A FIFO head finished or a circuit closed: rows are due now, on
        // every instance's claim (delivered on commit).
        sqlx::query!("SELECT pg_notify('webhook_deliveries', '')")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(done)
}
