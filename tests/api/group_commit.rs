//! The HTTP intake's group commit and the batch endpoint: concurrent
//! requests share transactions and each gets its own answer, one bad event
//! fails alone, a batch is all or nothing.
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Receiver, TestApp, count};

const WAIT: Duration = Duration::from_secs(10);

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Holds the intake's writes in Postgres (a lock on `webhook_events`) until
/// both committers wait on it, so the requests sent meanwhile queue up and
/// are written as groups once `release` is called.
struct Held(sqlx::Transaction<'static, sqlx::Postgres>);

impl Held {
    async fn start(pool: &PgPool) -> Self {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE webhook_events IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .unwrap();
        Self(tx)
    }

    async fn until_waiting(&self, pool: &PgPool, n: i64) {
        crate::helpers::wait_lock_waiters(pool, n).await;
    }

    async fn release(self) {
        self.0.commit().await.unwrap();
    }
}

/// A request in flight of its own (not borrowing the app), to spawn.
fn send(app: &TestApp, path: &str, body: &Value) -> tokio::task::JoinHandle<(u16, Value)> {
    let request = app
        .client
        .post(app.url(path))
        .bearer_auth(crate::helpers::KEY)
        .json(body)
        .send();
    tokio::spawn(async move { answer(request.await.unwrap()).await })
}

fn event(id: &str) -> Value {
    json!({"event": "pool.created", "event_id": id, "data": {"id": id}})
}

/// Sends `bodies` to `path` concurrently while the writers are held, so
/// they gather into groups; returns the answers in the order of `bodies`.
async fn grouped(app: &TestApp, path: &str, bodies: Vec<Value>) -> Vec<(u16, Value)> {
    let held = Held::start(&app.pool).await;
    // Two requests occupy the two committers, which wait on the lock...
    let first: Vec<_> = (0..2)
        .map(|i| send(app, "/api/v1/events", &event(&format!("opener-{i}"))))
        .collect();
    held.until_waiting(&app.pool, 2).await;
    // ...so these queue behind them and are written as groups after.
    let requests: Vec<_> = bodies.iter().map(|body| send(app, path, body)).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.release().await;
    for opener in first {
        assert_eq!(opener.await.unwrap().0, 202);
    }
    let mut answers = vec![];
    for r in requests {
        answers.push(r.await.unwrap());
    }
    answers
}

#[sqlx::test]
async fn concurrent_requests_share_transactions_and_each_gets_its_own_result(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["pool.*"]).await;
    app.create_webhook(&receiver.url, &["pool.created"]).await;
    let bodies = (0..40).map(|i| event(&format!("g-{i}"))).collect();
    let answers = grouped(&app, "/api/v1/events", bodies).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 202, "{body}");
        assert_eq!(body["event_id"], format!("g-{i}"));
        assert_eq!(body["deliveries"], 2, "{body}");
    }
    // Events written by one transaction share its xmin.
    let transactions = count(
        &app.pool,
        "SELECT count(DISTINCT xmin::text) FROM webhook_events WHERE event_id LIKE 'g-%'",
    )
    .await;
    assert!(
        transactions <= 4,
        "40 requests took {transactions} transactions"
    );
    receiver.wait_for(84, WAIT).await;
    receiver
        .assert_stays_at(84, Duration::from_millis(300))
        .await;
}

#[sqlx::test]
async fn one_bad_event_in_a_group_fails_alone(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["*"]).await;
    let mut bodies: Vec<Value> = (0..10).map(|i| event(&format!("ok-{i}"))).collect();
    // Refused before writing: an unknown type, a long event_id, a NUL.
    bodies.insert(
        2,
        json!({"event": "pool.exploded", "event_id": "bad-type", "data": {}}),
    );
    bodies.insert(
        4,
        json!({"event": "pool.created", "event_id": "x".repeat(256), "data": {}}),
    );
    bodies.insert(
        6,
        json!({"event": "pool.created", "event_id": "bad-nul", "data": {"s": "a\u{0}b"}}),
    );
    // Refused by Postgres itself, inside the shared transaction: a number
    // beyond what `numeric` holds. Valid JSON, so only the write finds it.
    let overflow =
        r#"{"event": "pool.created", "event_id": "bad-number", "data": {"n": 1e1000000}}"#;
    bodies.insert(
        8,
        serde_json::from_str::<Value>(r#"{"placeholder": true}"#).unwrap(),
    );
    let mut answers = vec![];
    let held = Held::start(&app.pool).await;
    let openers: Vec<_> = (0..2)
        .map(|i| send(&app, "/api/v1/events", &event(&format!("opener-{i}"))))
        .collect();
    held.until_waiting(&app.pool, 2).await;
    let mut requests = vec![];
    for body in bodies {
        let request = if body.get("placeholder").is_some() {
            app.client
                .post(app.url("/api/v1/events"))
                .bearer_auth(crate::helpers::KEY)
                .header("content-type", "application/json")
                .body(overflow)
                .send()
        } else {
            app.client
                .post(app.url("/api/v1/events"))
                .bearer_auth(crate::helpers::KEY)
                .json(&body)
                .send()
        };
        requests.push(tokio::spawn(
            async move { answer(request.await.unwrap()).await },
        ));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    held.release().await;
    for r in requests {
        answers.push(r.await.unwrap());
    }
    for opener in openers {
        assert_eq!(opener.await.unwrap().0, 202);
    }
    let bad = |i: usize, needle: &str| {
        let (status, body) = &answers[i];
        assert_eq!(*status, 400, "request {i}: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(needle), "request {i}: {message}");
    };
    bad(2, "event: unknown event type `pool.exploded`");
    bad(4, "event_id: must be 1 to 255 characters");
    bad(6, "data: must not contain the NUL character");
    bad(8, "a value could not be stored");
    let good: Vec<&(u16, Value)> = answers
        .iter()
        .enumerate()
        .filter(|(i, _)| ![2, 4, 6, 8].contains(i))
        .map(|(_, a)| a)
        .collect();
    assert_eq!(good.len(), 10);
    for (status, body) in good {
        assert_eq!(*status, 202, "{body}");
        assert_eq!(body["deliveries"], 1, "{body}");
    }
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'bad-%'"
        )
        .await,
        0
    );
    receiver.wait_for(12, WAIT).await;
}

fn batch(ids: &[&str]) -> Value {
    json!({"events": ids.iter().map(|id| event(id)).collect::<Vec<_>>()})
}

#[sqlx::test]
async fn a_batch_is_written_all_or_nothing_and_answers_in_request_order(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["pool.created"]).await;
    let mut body = batch(&["b-0", "b-1", "b-2", "b-3"]);
    body["events"][3]["event"] = json!("pool.exploded");
    let (status, error) = answer(app.post("/api/v1/events/batch", body.clone()).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        error["message"],
        "events[3].event: unknown event type `pool.exploded` (see GET /api/v1/event-types)"
    );
    body["events"][3]["event"] = json!("pool.created");
    body["events"][1]["data"] = json!({"s": "\u{0}"});
    let (status, error) = answer(app.post("/api/v1/events/batch", body.clone()).await).await;
    assert_eq!(status, 400);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1].data: must not contain the NUL character"),
        "{error}"
    );
    // Refused by Postgres in the write itself: still nothing of it stored.
    let overflow = r#"{"events": [
        {"event": "pool.created", "event_id": "b-0", "data": {}},
        {"event": "pool.created", "event_id": "b-1", "data": {"n": 1e1000000}}]}"#;
    let response = app
        .client
        .post(app.url("/api/v1/events/batch"))
        .bearer_auth(crate::helpers::KEY)
        .header("content-type", "application/json")
        .body(overflow)
        .send()
        .await
        .unwrap();
    let (status, error) = answer(response).await;
    assert_eq!(status, 400);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("events[1]: a value could not be stored"),
        "{error}"
    );
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM webhook_events").await,
        0
    );

    // A generated id for the one without, the others as given, in order.
    let mut body = batch(&["b-0", "b-1", "b-2"]);
    body["events"][1]
        .as_object_mut()
        .unwrap()
        .remove("event_id");
    body["events"][2]["event"] = json!("price.alert");
    let (status, published) = answer(app.post("/api/v1/events/batch", body.clone()).await).await;
    assert_eq!(status, 202, "{published}");
    let results = published["events"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], json!({"event_id": "b-0", "deliveries": 1}));
    assert!(results[1]["event_id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(results[1]["deliveries"], 1);
    assert_eq!(
        results[2],
        json!({"event_id": "b-2", "deliveries": 0}),
        "no subscriber"
    );
    receiver.wait_for(2, WAIT).await;

    // Idempotent per event_id: the same batch again writes nothing more.
    body["events"][1]["event_id"] = results[1]["event_id"].clone();
    let (status, again) = answer(app.post("/api/v1/events/batch", body).await).await;
    assert_eq!(status, 202);
    for (i, r) in again["events"].as_array().unwrap().iter().enumerate() {
        assert_eq!(r["event_id"], results[i]["event_id"]);
        assert_eq!(r["deliveries"], 0);
    }
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM webhook_events").await,
        3
    );
    receiver
        .assert_stays_at(2, Duration::from_millis(300))
        .await;
}

#[sqlx::test]
async fn a_batch_outside_its_bounds_is_a_400_or_a_413(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let (status, error) = answer(
        app.post("/api/v1/events/batch", json!({"events": []}))
            .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        error["message"],
        "events: must hold 1 to 1000 events, not 0"
    );
    let ids: Vec<String> = (0..1001).map(|i| format!("e-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (status, error) = answer(app.post("/api/v1/events/batch", batch(&ids)).await).await;
    assert_eq!(status, 400);
    assert_eq!(
        error["message"],
        "events: must hold 1 to 1000 events, not 1001"
    );
    let (status, _) = answer(app.post("/api/v1/events/batch", batch(&ids[..1000])).await).await;
    assert_eq!(status, 202);
    let (status, error) = answer(
        app.post("/api/v1/events/batch", json!({"events": [], "extra": 1}))
            .await,
    )
    .await;
    assert_eq!(status, 400, "{error}");
    let big = "x".repeat(9 * 1024 * 1024);
    let (status, _) = answer(
        app.post(
            "/api/v1/events/batch",
            json!({"events": [{"event": "pool.created", "data": {"s": big}}]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 413);
}

#[sqlx::test]
async fn the_same_event_id_twice_in_one_group_is_written_once(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["*"]).await;
    let bodies = [event("twice"), event("twice"), batch(&["twice", "once"])];
    let answers = grouped(&app, "/api/v1/events", bodies[..2].to_vec()).await;
    let created: i64 = answers
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, 202, "{body}");
            assert_eq!(body["event_id"], "twice");
            body["deliveries"].as_i64().unwrap()
        })
        .sum();
    assert_eq!(created, 1, "counted once: {answers:?}");
    let (status, body) = answer(app.post("/api/v1/events/batch", bodies[2].clone()).await).await;
    assert_eq!(status, 202);
    assert_eq!(
        body["events"],
        json!([{"event_id": "twice", "deliveries": 0}, {"event_id": "once", "deliveries": 1}])
    );
    receiver.wait_for(4, WAIT).await;
    receiver
        .assert_stays_at(4, Duration::from_millis(300))
        .await;
}

#[sqlx::test]
async fn a_type_removed_after_the_intake_saw_it_is_still_refused_alone(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    sqlx::query(
        "INSERT INTO webhook_event_types (name, description) VALUES ('pool.fleeting', 'x')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let fleeting = json!({"event": "pool.fleeting", "event_id": "f-1", "data": {}});
    let (status, _) = answer(app.post("/api/v1/events", fleeting).await).await;
    assert_eq!(status, 202);
    // The intake now knows the type; remove it (and its event) behind its back.
    for sql in [
        "DELETE FROM webhook_events",
        "DELETE FROM webhook_event_types WHERE name = 'pool.fleeting'",
    ] {
        sqlx::query(sql).execute(&app.pool).await.unwrap();
    }
    let answers = grouped(
        &app,
        "/api/v1/events",
        vec![
            json!({"event": "pool.fleeting", "event_id": "f-2", "data": {}}),
            event("kept"),
        ],
    )
    .await;
    assert_eq!(answers[0].0, 400, "{:?}", answers[0]);
    assert_eq!(
        answers[0].1["message"],
        "event: unknown event type `pool.fleeting` (see GET /api/v1/event-types)"
    );
    assert_eq!(answers[1].0, 202, "{:?}", answers[1]);
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM webhook_events WHERE event_id IN ('f-2', 'kept')"
        )
        .await,
        1
    );
}

#[sqlx::test]
async fn a_repeat_of_an_event_still_waiting_for_the_sweep_is_fanned_out_and_counted(pool: PgPool) {
    use smartdrop_webhooks::intake::{Accepted, NewEvent, Publisher};
    // The publisher alone, no pipeline: nothing sweeps behind its back.
    sqlx::query("INSERT INTO webhooks (url, events, secret) SELECT 'http://127.0.0.1:9/' || g, '{pool.*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' FROM generate_series(1, 3) g")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("SELECT webhook_publish('pool.created', '{\"n\": 1}', 'waiting')")
        .execute(&pool)
        .await
        .unwrap();
    let publisher = Publisher::start(
        pool.clone(),
        1,
        Duration::from_secs(10),
        5_000,
        std::sync::Arc::new(smartdrop_webhooks::metrics::Metrics::new()),
    );
    let event = |id: &str| NewEvent {
        event_type: "pool.created".into(),
        event_id: Some(id.into()),
        occurred_at: None,
        data: serde_json::value::RawValue::from_string(r#"{"n": 2}"#.into()).unwrap(),
    };
    let accepted = publisher
        .publish(vec![event("waiting"), event("new")])
        .await
        .unwrap();
    assert_eq!(
        accepted,
        [
            Accepted {
                event_id: "waiting".into(),
                deliveries: 3
            },
            Accepted {
                event_id: "new".into(),
                deliveries: 3
            },
        ]
    );
    let again = publisher.publish(vec![event("waiting")]).await.unwrap();
    assert_eq!(again[0].deliveries, 0, "fanned out once");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM webhook_events WHERE dispatched_at IS NULL"
        )
        .await,
        0
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM webhook_deliveries").await,
        6
    );
    // The first publish's data wins, as through SQL.
    let body: String = sqlx::query_scalar(
        "SELECT webhook_delivery_body(body, event_seq) FROM webhook_deliveries WHERE event_id = 'waiting' LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(body.ends_with(r#""data":{"n": 1}}"#), "{body}");
}

#[sqlx::test]
async fn producers_waiting_on_the_database_do_not_hold_the_management_api(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    // Every intake write waits on a lock; far more producers than the API's
    // pool has connections are stuck behind it.
    let held = Held::start(&app.pool).await;
    let producers: Vec<_> = (0..20)
        .map(|i| send(&app, "/api/v1/events", &event(&format!("stuck-{i}"))))
        .collect();
    held.until_waiting(&app.pool, 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // With the intake on the API's pool this waited for a connection and
    // answered 503 after the pool's timeout.
    let listed = app.get("/api/v1/webhooks").await;
    assert_eq!(listed.status(), 200);
    held.release().await;
    for p in producers {
        assert_eq!(p.await.unwrap().0, 202);
    }
}

#[sqlx::test]
async fn a_group_the_database_gives_up_on_is_a_503_for_every_request_in_it(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |c| c.database_statement_timeout_ms = 300).await;
    // Postgres cancels the held writes (statement timeout, class 57): nothing
    // was written, and each request may be sent again.
    let held = Held::start(&app.pool).await;
    let requests: Vec<_> = (0..6)
        .map(|i| send(&app, "/api/v1/events", &event(&format!("cancelled-{i}"))))
        .collect();
    for r in requests {
        let (status, body) = r.await.unwrap();
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "service_unavailable", "{body}");
    }
    held.release().await;
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM webhook_events").await,
        0
    );
    let (status, _) = answer(app.post("/api/v1/events", event("again")).await).await;
    assert_eq!(status, 202);
}
