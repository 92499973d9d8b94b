//! Lean storage: what a delivery costs the database, and migrations that
//! carry a live database's data forward.
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use smartdrop_webhooks::db::MIGRATOR;
use smartdrop_webhooks::storage::{self, Dropped};

use crate::helpers::{Receiver, Reply, TestApp, count, metric};

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

/// An event to more webhooks than a fan-out transaction may write goes out
/// in chunks (several transactions), each webhook once; through the HTTP
/// intake too, whose answer counts the webhooks the sweep will write for.
#[sqlx::test]
async fn an_event_to_more_webhooks_than_a_chunk_fans_out_in_chunks_once(pool: PgPool) {
    const WEBHOOKS: usize = 35;
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(200));
    let app = TestApp::spawn_with(pool.clone(), |c| c.webhook_fanout_chunk = 10).await;
    for _ in 0..WEBHOOKS {
        app.create_webhook(&receiver.url, &["pool.created"]).await;
    }
    app.publish_sql("pool.created", json!({"n": 1}), Some("evt_sql"))
        .await;
    let published: Value = app
        .post(
            "/api/v1/events",
            json!({"event": "pool.created", "event_id": "evt_http", "data": {"n": 2}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(published["deliveries"], WEBHOOKS, "{published}");
    receiver
        .wait_for(2 * WEBHOOKS, Duration::from_secs(20))
        .await;
    receiver
        .assert_stays_at(2 * WEBHOOKS, Duration::from_millis(300))
        .await;
    for event in ["evt_sql", "evt_http"] {
        let (rows, webhooks, transactions): (i64, i64, i64) = sqlx::query_as(
            // created_at is the writing transaction's start: one per chunk
            "SELECT count(*), count(DISTINCT webhook_id), count(DISTINCT created_at)
             FROM webhook_deliveries WHERE event_id = $1",
        )
        .bind(event)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(
            (rows, webhooks),
            (WEBHOOKS as i64, WEBHOOKS as i64),
            "{event}"
        );
        assert!(transactions >= 4, "{event}: {transactions} transactions");
    }
    app.stop().await;
}

/// Fan-out fails for one event every time (a trigger stands for a statement
/// timeout or a full disk): the events behind it are delivered, it is set
/// aside after three failures (in /stats and /metrics), and once the cause
/// is gone `webhook_retry_fan_out` sends it.
#[sqlx::test]
async fn an_event_whose_fan_out_keeps_failing_is_set_aside_and_the_rest_go_on(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(200));
    sqlx::raw_sql(
        "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.event_id = 'evt_poison' THEN RAISE EXCEPTION 'no room for evt_poison'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER poison BEFORE INSERT ON webhook_deliveries
             FOR EACH ROW EXECUTE FUNCTION poison();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let app = TestApp::spawn(pool.clone()).await;
    app.create_webhook(&receiver.url, &["pool.created"]).await;
    let mut tx = pool.begin().await.unwrap();
    for id in ["evt_before", "evt_poison", "evt_after"] {
        sqlx::query("SELECT webhook_publish('pool.created', '{}', $1)")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();

    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let sent: Vec<String> = got.iter().map(received_body).collect();
    assert!(sent.iter().any(|b| b.contains("evt_before")), "{sent:?}");
    assert!(sent.iter().any(|b| b.contains("evt_after")), "{sent:?}");
    let start = std::time::Instant::now();
    let stats = loop {
        let stats: Value = app.get("/api/v1/stats").await.json().await.unwrap();
        if !stats["set_aside_events"].as_array().unwrap().is_empty() {
            break stats;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{stats}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let aside = &stats["set_aside_events"][0];
    assert_eq!(aside["event_id"], "evt_poison");
    assert_eq!(aside["failures"], 3);
    assert!(
        aside["error"]
            .as_str()
            .unwrap()
            .contains("no room for evt_poison"),
        "{aside}"
    );
    let start = std::time::Instant::now();
    loop {
        let text = app.metrics_text().await;
        if metric(&text, "webhook_events_set_aside") == Some(1.0) {
            assert_eq!(metric(&text, "webhook_events_set_aside_total"), Some(1.0));
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver
        .assert_stays_at(2, Duration::from_millis(300))
        .await;

    // The cause fixed, by hand: it goes out once.
    sqlx::query("DROP TRIGGER poison ON webhook_deliveries")
        .execute(&pool)
        .await
        .unwrap();
    let retried: i64 = sqlx::query_scalar("SELECT webhook_retry_fan_out('evt_poison')")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(retried, 1);
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert!(received_body(&got[2]).contains("evt_poison"));
    let stats: Value = app.get("/api/v1/stats").await.json().await.unwrap();
    assert_eq!(stats["set_aside_events"], json!([]));
    receiver
        .assert_stays_at(3, Duration::from_millis(300))
        .await;
    app.stop().await;
}

/// Fresh deliveries leave the fan-out already leased to this instance's
/// senders (no claim, no second write before the send), within their fair
/// share; a FIFO webhook's wait for the claim, which keeps them in order.
#[sqlx::test]
async fn fresh_deliveries_leave_the_fan_out_leased_except_where_the_claim_decides(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(200));
    let app = TestApp::spawn(pool.clone()).await;
    app.create_webhook(&receiver.url, &["pool.created"]).await;
    let fifo = app
        .post(
            "/api/v1/webhooks",
            json!({"url": receiver.url, "events": ["pool.created"], "ordering": "fifo"}),
        )
        .await;
    assert_eq!(fifo.status(), 201);
    let mut tx = pool.begin().await.unwrap();
    for i in 0..10 {
        sqlx::query("SELECT webhook_publish('pool.created', jsonb_build_object('i', $1::int))")
            .bind(i)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    receiver.wait_for(20, Duration::from_secs(10)).await;
    let text = app.metrics_text().await;
    assert_eq!(
        metric(&text, "webhook_deliveries_leased_at_fan_out_total"),
        Some(10.0),
        "{text}"
    );
    receiver
        .assert_stays_at(20, Duration::from_millis(300))
        .await;
    app.stop().await;
}

/// The state of the week partition the events of this test are in.
async fn retention_of(pool: &PgPool, week: &str) -> Option<Dropped> {
    let listed = storage::expired(pool, 30).await.unwrap();
    if !listed.iter().any(|p| p == week) {
        return None;
    }
    Some(storage::drop_partition(pool, week, 30).await.unwrap())
}

/// Events are dropped a week at a time, and only a week nothing needs any
/// more: not while the ids are still handed out in it, not while an event in
/// it waits for its fan-out, not while a delivery in the queue needs its
/// body. After the drop the history is still listed; a hand retry of a
/// delivery whose event is gone answers 409 and recover leaves it alone;
/// publishing goes on in the next week.
#[sqlx::test]
async fn retention_drops_a_week_of_events_only_when_nothing_needs_it(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(200));
    let app = TestApp::spawn(pool.clone()).await;
    let hook = app.create_webhook(&receiver.url, &["pool.created"]).await;
    let hook_id = hook["id"].as_str().unwrap().to_owned();
    for id in ["e_done", "e_failed", "e_aside"] {
        app.publish_sql("pool.created", json!({}), Some(id)).await;
    }
    receiver.wait_for(3, Duration::from_secs(10)).await;
    app.wait_deliveries(&hook_id, Duration::from_secs(10), |l| {
        l.len() == 3 && l.iter().all(|d| d["status"] == "success")
    })
    .await;
    let week: String = sqlx::query_scalar(
        "SELECT tableoid::regclass::text FROM webhook_events WHERE event_id = 'e_done'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // The week's state, made as the service would leave it: one delivery a
    // dead letter, one event set aside before its fan-out, one delivery
    // waiting a day for its retry.
    sqlx::raw_sql(
        "UPDATE webhook_deliveries SET status = 'failed' WHERE event_id = 'e_failed';
         UPDATE webhook_events SET dispatched_at = NULL, set_aside_at = now(), fan_out_failures = 3
         WHERE event_id = 'e_aside';
         INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, event_seq, next_retry_at)
         SELECT d.webhook_id, d.event_id, d.event_type, d.event_seq, now() + interval '1 day'
         FROM webhook_deliveries d WHERE d.event_id = 'e_done';",
    )
    .execute(&pool)
    .await
    .unwrap();
    let failed_id: String = sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries WHERE event_id = 'e_failed' AND status = 'failed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();

    // Accepted 40 days ago, but the ids are still handed out in this week:
    // not listed.
    sqlx::query("UPDATE webhook_events SET created_at = created_at - interval '40 days'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(retention_of(&pool, &week).await, None);
    // A week on (the next week's partition made, the ids moved there, as
    // the hourly round does): listed, but kept while something needs it.
    sqlx::query("SELECT webhook_events_prepare((now() AT TIME ZONE 'UTC')::date + 7, (now() AT TIME ZONE 'UTC')::date + 7)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT setval('webhook_events_id_seq', webhook_events_week_base((now() AT TIME ZONE 'UTC')::date + 7), false)")
        .execute(&pool)
        .await
        .unwrap();
    let Some(Dropped::Kept(why)) = retention_of(&pool, &week).await else {
        panic!("the week with a set-aside event was not kept");
    };
    assert_eq!(why, "1 events wait for their fan-out or are set aside");
    // The set-aside event retried by hand goes out; then the delivery that
    // waits for its retry still holds the week.
    let retried: i64 = sqlx::query_scalar("SELECT webhook_retry_fan_out('e_aside')")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(retried, 1);
    receiver.wait_for(4, Duration::from_secs(10)).await;
    // (its result recorded: only the one waiting for its retry is queued)
    app.wait_deliveries(&hook_id, Duration::from_secs(10), |l| {
        l.len() == 5 && l.iter().filter(|d| d["status"] == "pending").count() == 1
    })
    .await;
    let Some(Dropped::Kept(why)) = retention_of(&pool, &week).await else {
        panic!("the week a queued delivery needs was not kept");
    };
    assert_eq!(why, "1 deliveries in the queue need their events");
    // Due now, it is sent with its event's body; then the week goes, whole.
    sqlx::query("UPDATE webhook_deliveries SET next_retry_at = now() WHERE status = 'pending'")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE webhook_endpoint_state SET ready_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_notify('webhook_deliveries', '')")
        .execute(&pool)
        .await
        .unwrap();
    let got = receiver.wait_for(5, Duration::from_secs(15)).await;
    assert!(received_body(&got[4]).contains("e_done"));
    app.wait_deliveries(&hook_id, Duration::from_secs(10), |l| {
        l.len() == 5 && l.iter().all(|d| d["status"] != "pending")
    })
    .await;
    let bounds = smartdrop_webhooks::db::Bounds::new(
        Duration::from_secs(5),
        tokio_util::sync::CancellationToken::new(),
    );
    storage::maintain(&pool, 30, &bounds).await;
    let gone: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NULL")
        .bind(&week)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(gone, "{week} was not dropped");
    assert_eq!(count(&pool, "SELECT count(*) FROM webhook_events").await, 0);

    // The history stays listed; its bodies are gone.
    assert_eq!(app.deliveries(&hook_id).await.len(), 5);
    let retry = app
        .post_empty(&format!(
            "/api/v1/webhooks/{hook_id}/deliveries/{failed_id}/retry"
        ))
        .await;
    assert_eq!(retry.status(), 409);
    let error: Value = retry.json().await.unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("past WEBHOOK_RETENTION_DAYS"),
        "{error}"
    );
    let recovered: Value = app
        .post(
            &format!("/api/v1/webhooks/{hook_id}/recover"),
            json!({"since": "2020-01-01T00:00:00Z"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(recovered["requeued"], 0);
    receiver
        .assert_stays_at(5, Duration::from_millis(300))
        .await;

    // Publishing goes on, in the next week's partition.
    app.publish_sql("pool.created", json!({}), Some("e_after"))
        .await;
    let got = receiver.wait_for(6, Duration::from_secs(10)).await;
    assert!(received_body(&got[5]).contains("e_after"));
    app.stop().await;
}
