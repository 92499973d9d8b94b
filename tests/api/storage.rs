//! Lean storage: what a delivery costs the database, and migrations that
//! carry a live database's data forward.
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use smartdrop_webhooks::db::MIGRATOR;

use crate::helpers::{Receiver, Reply, TestApp, count};

/// The last migration before the body moved onto the event.
const BEFORE_BODY_ONCE: i64 = 20261129000013;
const OLD: &str = "wh_0123456789abcdef0123456789abcdef";

/// A webhook row as the migrations up to 13 define it (no app code involved).
async fn insert_webhook(pool: &PgPool, id: &str, url: &str) {
    sqlx::query(
        "INSERT INTO webhooks (id, url, events, secret)
         VALUES ($1, $2, '{*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')",
    )
    .bind(id)
    .bind(url)
    .execute(pool)
    .await
    .unwrap();
}

async fn old_body(pool: &PgPool, event_id: &str) -> String {
    sqlx::query_scalar("SELECT body FROM webhook_deliveries WHERE event_id = $1 LIMIT 1")
        .bind(event_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn received_body(r: &crate::helpers::Received) -> String {
    String::from_utf8(r.body.clone()).unwrap()
}

/// A database built and used by the migrations before this issue (each
/// delivery holding its own body) is migrated in place: the pending delivery
/// is still sent with its bytes, the history is still listed with its
/// attempts, a failed one can be retried, an event still waiting for the
/// sweep is fanned out the new way, and replaying the old events to a new
/// webhook sends the bytes the old fan-out stored.
#[sqlx::test(migrations = false)]
async fn a_database_from_the_earlier_migrations_keeps_its_deliveries_and_history(pool: PgPool) {
    MIGRATOR.run_to(BEFORE_BODY_ONCE, &pool).await.unwrap();
    let receiver = Receiver::start().await;
    insert_webhook(&pool, OLD, &receiver.url).await;
    for (id, n) in [("evt_done", 1), ("evt_failed", 2), ("evt_pending", 3)] {
        sqlx::query("SELECT webhook_publish('pool.created', $1, $2)")
            .bind(json!({"n": n}))
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
    }
    // The old sweep: fan out and mark dispatched, as migrations 12-13 did.
    sqlx::query(
        "WITH ev AS (SELECT e FROM webhook_events e WHERE dispatched_at IS NULL FOR UPDATE),
              marked AS (UPDATE webhook_events e SET dispatched_at = now() FROM ev WHERE e.id = (ev.e).id)
         SELECT * FROM webhook_fan_out(ARRAY(SELECT ev.e FROM ev))",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE webhook_deliveries SET
             status = CASE event_id WHEN 'evt_done' THEN 'success' ELSE 'failed' END,
             attempts = CASE event_id WHEN 'evt_done' THEN 1 ELSE 3 END,
             response_status = CASE event_id WHEN 'evt_done' THEN 200 ELSE 500 END,
             last_attempt_at = now()
         WHERE event_id IN ('evt_done', 'evt_failed')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO webhook_delivery_attempts
             (delivery_id, webhook_id, attempt, started_at, duration_ms, response_status)
         SELECT d.id, d.webhook_id, a, now(), 5, d.response_status
         FROM webhook_deliveries d, generate_series(1, d.attempts) a
         WHERE d.event_id IN ('evt_done', 'evt_failed')",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Not due yet: it must survive the migration as a pending row.
    sqlx::query(
        "UPDATE webhook_deliveries SET next_retry_at = now() + interval '1 hour'
         WHERE event_id = 'evt_pending'",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Published, not yet swept.
    sqlx::query("SELECT webhook_publish('pool.created', '{\"n\": 4}', 'evt_waiting')")
        .execute(&pool)
        .await
        .unwrap();
    let bodies: Vec<String> = futures_util::future::join_all(
        ["evt_done", "evt_failed", "evt_pending"].map(|e| old_body(&pool, e)),
    )
    .await;

    MIGRATOR.run(&pool).await.unwrap();
    // The old rows keep their own bodies; nothing was rewritten.
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM webhook_deliveries WHERE body IS NULL"
        )
        .await,
        0
    );
    sqlx::query(
        "UPDATE webhook_deliveries SET next_retry_at = now() WHERE event_id = 'evt_pending'",
    )
    .execute(&pool)
    .await
    .unwrap();
    receiver.always(Reply::status(200));
    let app = TestApp::spawn(pool.clone()).await;

    // The pending delivery and the waiting event arrive; pending with its bytes.
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let sent: Vec<String> = got.iter().map(received_body).collect();
    assert!(sent.contains(&bodies[2]), "{sent:?}");
    let waiting = sent
        .iter()
        .find(|b| b.contains("evt_waiting"))
        .expect("the waiting event");
    assert!(waiting.ends_with(r#""data":{"n": 4}}"#), "{waiting}");
    assert_eq!(
        count(&pool, "SELECT count(*) FROM webhook_deliveries WHERE event_id = 'evt_waiting' AND body IS NULL AND event_seq IS NOT NULL").await,
        1,
        "a new delivery references its event's body"
    );

    // History: all four listed, the old attempts in the log.
    let list = app
        .wait_deliveries(OLD, Duration::from_secs(10), |l| {
            l.len() == 4 && l.iter().filter(|d| d["status"] == "success").count() == 3
        })
        .await;
    let failed = list.iter().find(|d| d["event_id"] == "evt_failed").unwrap();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["attempts"], 3);
    let detail: Value = app
        .get(&format!(
            "/api/v1/webhooks/{OLD}/deliveries/{}",
            failed["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        detail["attempt_log"].as_array().unwrap().len(),
        3,
        "{detail}"
    );

    // A manual retry of the old failed delivery sends its stored bytes.
    let retried = app
        .post_empty(&format!(
            "/api/v1/webhooks/{OLD}/deliveries/{}/retry",
            failed["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(retried.status(), 200);
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(received_body(&got[2]), bodies[1]);

    // Replay to a webhook created after the migration: the old events had no
    // stored body; the bytes are those the old fan-out wrote.
    let late = Receiver::start().await;
    late.always(Reply::status(200));
    let id = app.create_webhook(&late.url, &["pool.created"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let replayed: Value = app
        .post(
            &format!("/api/v1/webhooks/{id}/replay"),
            json!({"since": "2000-01-01T00:00:00Z"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(replayed["created"], 4, "{replayed}");
    let got = late.wait_for(4, Duration::from_secs(10)).await;
    let mut sent: Vec<String> = got.iter().map(received_body).collect();
    sent.retain(|b| !b.contains("evt_waiting"));
    sent.sort();
    let mut expected = bodies.clone();
    expected.sort();
    assert_eq!(sent, expected);
    app.stop().await;
}

/// One large event fanned out to many webhooks stores its body once: the
/// database grows by about one copy, not one per delivery; every receiver
/// gets the same bytes.
#[sqlx::test]
async fn a_large_event_to_many_webhooks_stores_its_body_once(pool: PgPool) {
    const WEBHOOKS: usize = 40;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(200));
    let app = TestApp::spawn(pool.clone()).await;
    for _ in 0..WEBHOOKS {
        app.create_webhook(&receiver.url, &["pool.created"]).await;
    }
    // ~200 KiB that compresses poorly, so TOAST cannot hide the copies.
    let pad: String = (0..200 * 1024 / 32)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let size = "SELECT (pg_total_relation_size('webhook_deliveries')
                        + pg_total_relation_size('webhook_events'))::bigint";
    let before = count(&pool, size).await;
    app.publish_sql("pool.created", json!({"pad": pad}), Some("evt_big"))
        .await;
    let got = receiver.wait_for(WEBHOOKS, Duration::from_secs(20)).await;
    let grown = count(&pool, size).await - before;
    let first = &got[0].body;
    assert!(first.len() > 200 * 1024);
    assert!(got.iter().all(|r| &r.body == first), "bodies differ");
    // One copy is ~110 KiB compressed; 40 copies would be ~4.4 MB.
    assert!(
        grown < 1024 * 1024,
        "the tables grew by {grown} bytes for one event to {WEBHOOKS} webhooks"
    );
    app.stop().await;
}
