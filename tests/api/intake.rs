use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Receiver, TestApp};

const WAIT: Duration = Duration::from_secs(10);

fn event_ids(receiver: &Receiver) -> Vec<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
        .collect()
}

#[sqlx::test]
async fn a_rolled_back_publish_delivers_nothing(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["*"]).await;
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SELECT webhook_publish('pool.created', '{}'::jsonb, 'rolled-back')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // A committed marker published afterwards proves the pipeline ran.
    app.publish_sql("pool.closed", json!({}), Some("marker"))
        .await;
    receiver.wait_for(1, WAIT).await;
    receiver
        .assert_stays_at(1, Duration::from_millis(300))
        .await;
    assert_eq!(event_ids(&receiver), ["marker"]);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_events WHERE event_id = 'rolled-back'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, 0);
}

#[sqlx::test]
async fn the_same_event_id_twice_delivers_once(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["*"]).await;
    let first = app
        .publish_sql("pool.created", json!({"n": 1}), Some("dup-1"))
        .await;
    receiver.wait_for(1, WAIT).await;
    let second = app
        .publish_sql("pool.created", json!({"n": 2}), Some("dup-1"))
        .await;
    assert_eq!(first, second);
    // The duplicate also arrives through the HTTP intake: no new deliveries.
    let http: Value = app
        .post(
            "/api/v1/events",
            json!({"event": "pool.created", "event_id": "dup-1", "data": {}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(http["deliveries"], 0);
    app.publish_sql("pool.closed", json!({}), Some("marker"))
        .await;
    receiver.wait_for(2, WAIT).await;
    receiver
        .assert_stays_at(2, Duration::from_millis(300))
        .await;
    assert_eq!(event_ids(&receiver), ["dup-1", "marker"]);
    assert_eq!(
        receiver.received()[0].json()["data"],
        json!({"n": 1}),
        "the first publish wins"
    );
}

#[sqlx::test]
async fn an_unknown_type_fails_the_publishing_statement(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let err = sqlx::query("SELECT webhook_publish('pool.exploded', '{}'::jsonb)")
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown event type \"pool.exploded\""),
        "{err}"
    );
    let err = sqlx::query("INSERT INTO webhook_events (event_type, data) VALUES ('nope', '{}')")
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown event type"), "{err}");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    let response = app
        .post(
            "/api/v1/events",
            json!({"event": "pool.exploded", "data": {}}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert!(
        error["message"].as_str().unwrap().starts_with("event:"),
        "{error}"
    );
    // The type is checked before the event_id: a wrong type with an id that
    // is already stored is refused, not answered with the stored event.
    app.publish_sql("pool.created", json!({}), Some("known-1"))
        .await;
    let reused = app
        .post(
            "/api/v1/events",
            json!({"event": "pool.exploded", "event_id": "known-1", "data": {}}),
        )
        .await;
    assert_eq!(reused.status(), 400);
    let err = sqlx::query("SELECT webhook_publish('pool.exploded', '{}'::jsonb, 'known-1')")
        .execute(&app.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unknown event type"), "{err}");
}

/// The `data` member of a delivered body, byte for byte.
fn raw_data(received: &crate::helpers::Received) -> String {
    let text = String::from_utf8(received.body.clone()).unwrap();
    let start = text.find("\"data\":").unwrap() + "\"data\":".len();
    text[start..text.len() - 1].to_owned()
}

#[sqlx::test]
async fn numbers_arrive_as_the_producer_wrote_them_through_http_as_through_sql(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["*"]).await;
    // A token amount in base units (beyond f64 and u128), a price with its
    // trailing zero, and a number smaller than f64 rounds exactly.
    let data = r#"{"amount": 123456789012345678901234567890123456789, "price": 1.10, "tiny": 0.1000000000000000000000000000000000001}"#;
    sqlx::query("SELECT webhook_publish('pool.created', $1::jsonb, 'exact-sql')")
        .bind(data)
        .execute(&app.pool)
        .await
        .unwrap();
    let response = app
        .client
        .post(app.url("/api/v1/events"))
        .bearer_auth(crate::helpers::KEY)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"event": "pool.created", "event_id": "exact-http", "data": {data}}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let got = receiver.wait_for(2, WAIT).await;
    let by_id = |id: &str| {
        got.iter()
            .find(|r| r.json()["event_id"] == id)
            .map(raw_data)
            .unwrap()
    };
    let (http, sql) = (by_id("exact-http"), by_id("exact-sql"));
    assert_eq!(http, sql);
    for exact in [
        "123456789012345678901234567890123456789",
        "1.10",
        "0.1000000000000000000000000000000000001",
    ] {
        assert!(http.contains(exact), "{exact} not in {http}");
    }
}

#[sqlx::test]
async fn a_plain_insert_and_the_http_intake_are_delivered_too(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["*"]).await;
    sqlx::query("INSERT INTO webhook_events (event_type, event_id, data) VALUES ('pool.created', 'plain-1', '{\"x\": 1}')")
        .execute(&app.pool)
        .await
        .unwrap();
    let response = app
        .post(
            "/api/v1/events",
            json!({"event": "price.alert", "event_id": "http-1", "occurred_at": "2026-06-25T12:00:00Z", "data": {"p": 2}}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let published: Value = response.json().await.unwrap();
    assert_eq!(published, json!({"event_id": "http-1", "deliveries": 1}));
    let generated: Value = app
        .post(
            "/api/v1/events",
            json!({"event": "pool.closed", "data": {}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(generated["event_id"].as_str().unwrap().starts_with("evt_"));
    receiver.wait_for(3, WAIT).await;
    let mut ids = event_ids(&receiver);
    ids.sort();
    assert_eq!(&ids[1..], ["http-1", "plain-1"]);
    let http = receiver
        .received()
        .into_iter()
        .find(|r| r.json()["event_id"] == "http-1")
        .unwrap();
    assert_eq!(http.json()["occurred_at"], "2026-06-25T12:00:00.000Z");
    for bad in [
        json!({"event": "pool.created"}),
        json!({"event": "pool.created", "data": {}, "event_id": ""}),
        json!({"event": "pool.created", "data": {}, "occurred_at": "yesterday"}),
        json!({"event": "pool.created", "data": {}, "extra": true}),
    ] {
        assert_eq!(
            app.post("/api/v1/events", bad.clone()).await.status(),
            400,
            "{bad}"
        );
    }
}

#[sqlx::test]
async fn events_committed_while_the_service_is_down_are_swept_on_start(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool.clone()).await;
    app.create_webhook(&receiver.url, &["*"]).await;
    app.stop().await;
    for i in 0..20 {
        sqlx::query("SELECT webhook_publish('pool.created', '{}'::jsonb, $1)")
            .bind(format!("offline-{i}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    let _app = TestApp::spawn(pool).await;
    receiver.wait_for(20, WAIT).await;
    receiver
        .assert_stays_at(20, Duration::from_millis(200))
        .await;
}

#[sqlx::test]
async fn a_plain_insert_of_a_known_event_id_is_skipped_without_failing_the_transaction(
    pool: PgPool,
) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["*"]).await;
    let insert = "INSERT INTO webhook_events (event_type, event_id, data) VALUES ('pool.created', 'plain-dup', '{}')";
    sqlx::query(insert).execute(&app.pool).await.unwrap();
    receiver.wait_for(1, WAIT).await;
    let mut tx = app.pool.begin().await.unwrap();
    let again = sqlx::query(insert).execute(&mut *tx).await.unwrap();
    assert_eq!(again.rows_affected(), 0, "skipped, not an error");
    sqlx::query("SELECT webhook_publish('pool.closed', '{}', 'after-dup')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    receiver.wait_for(2, WAIT).await;
    receiver
        .assert_stays_at(2, Duration::from_millis(300))
        .await;
    assert_eq!(event_ids(&receiver), ["plain-dup", "after-dup"]);
}
