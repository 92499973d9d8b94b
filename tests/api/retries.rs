//! Retry semantics, measured: short delays (base 200 ms, factor 2, no jitter,
//! 50 ms poll), checked against the attempt log's timestamps.
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Receiver, Reply, TestApp, refused_url};

const WAIT: Duration = Duration::from_secs(15);

async fn spawn(pool: PgPool) -> TestApp {
    TestApp::spawn_with(pool, |c| {
        c.webhook_max_attempts = 3;
        c.webhook_timeout_ms = 400;
    })
    .await
}

async fn detail(app: &TestApp, webhook: &str, delivery: &str) -> Value {
    let response = app
        .get(&format!("/api/v1/webhooks/{webhook}/deliveries/{delivery}"))
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Publishes one event to a webhook at `url` and waits for a final state.
async fn deliver_once(app: &TestApp, url: &str) -> (String, Value) {
    let id = app.create_webhook(url, &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.publish_sql("pool.assets_locked", json!({"n": 1}), None)
        .await;
    let list = app
        .wait_deliveries(&id, WAIT, |l| l.len() == 1 && l[0]["status"] != "pending")
        .await;
    let d = detail(app, &id, list[0]["id"].as_str().unwrap()).await;
    (id, d)
}

/// Gaps between the end of one attempt and the start of the next.
fn gaps_ms(delivery: &Value) -> Vec<i64> {
    let log = delivery["attempt_log"].as_array().unwrap();
    log.windows(2)
        .map(|w| {
            let start = |a: &Value| {
                a["started_at"]
                    .as_str()
                    .unwrap()
                    .parse::<DateTime<Utc>>()
                    .unwrap()
            };
            let ended = start(&w[0])
                + chrono::Duration::milliseconds(w[0]["duration_ms"].as_i64().unwrap());
            (start(&w[1]) - ended).num_milliseconds()
        })
        .collect()
}

fn assert_policy_delays(delivery: &Value) {
    let gaps = gaps_ms(delivery);
    assert_eq!(gaps.len(), 2, "{delivery:#}");
    for (gap, expected) in gaps.iter().zip([200, 400]) {
        assert!(
            (expected - 5..expected + 300).contains(gap),
            "gap {gap} ms, expected about {expected} ms: {gaps:?}"
        );
    }
}

async fn retried_until_exhausted(pool: PgPool, reply: Reply) -> Value {
    let receiver = Receiver::start().await;
    receiver.always(reply);
    let app = spawn(pool).await;
    let (_, d) = deliver_once(&app, &receiver.url).await;
    assert_eq!(d["status"], "failed", "{d:#}");
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["attempt_log"].as_array().unwrap().len(), 3);
    assert_eq!(receiver.received().len(), 3);
    assert_policy_delays(&d);
    d
}

#[sqlx::test]
async fn a_500_is_retried_at_the_policy_delays_until_max_attempts(pool: PgPool) {
    let d = retried_until_exhausted(pool, Reply::status(500)).await;
    assert_eq!(d["response_status"], 500);
    assert_eq!(d["last_error"], "HTTP 500");
    assert_eq!(d["next_retry_at"], Value::Null);
    for (i, a) in d["attempt_log"].as_array().unwrap().iter().enumerate() {
        assert_eq!(a["attempt"], i as i64 + 1);
        assert_eq!(a["response_status"], 500);
        assert_eq!(a["error"], "HTTP 500");
        assert!(a["duration_ms"].is_i64() && a["started_at"].is_string());
    }
}

#[sqlx::test]
async fn a_408_is_retried(pool: PgPool) {
    retried_until_exhausted(pool, Reply::status(408)).await;
}

#[sqlx::test]
async fn a_429_without_retry_after_is_retried(pool: PgPool) {
    retried_until_exhausted(pool, Reply::status(429)).await;
}

#[sqlx::test]
async fn a_timeout_is_retried(pool: PgPool) {
    let d = retried_until_exhausted(pool, Reply::status(200).delayed(Duration::from_secs(2))).await;
    assert_eq!(d["response_status"], Value::Null);
    assert!(
        d["last_error"].as_str().unwrap().contains("timed out"),
        "{d:#}"
    );
    for a in d["attempt_log"].as_array().unwrap() {
        let ms = a["duration_ms"].as_i64().unwrap();
        assert!(
            (390..1000).contains(&ms),
            "attempt took {ms} ms with a 400 ms timeout"
        );
    }
}

#[sqlx::test]
async fn stored_errors_never_carry_the_url_s_path_query_or_credentials(pool: PgPool) {
    // A Slack-style URL whose path and query are the credential.
    let url = refused_url().replace(
        "/hook",
        "/services/T0000/B0000/XXXXSECRETPATH?token=hunter2query",
    );
    let app = spawn(pool).await;
    let (_, d) = deliver_once(&app, &url).await;
    let text = d.to_string();
    assert!(text.contains("connection failed"), "{d:#}");
    for secret in ["XXXXSECRETPATH", "hunter2query", "/services/"] {
        assert!(!text.contains(secret), "{secret} leaked: {d:#}");
    }
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(last_error, '') FROM webhook_deliveries
         UNION ALL SELECT coalesce(error, '') FROM webhook_delivery_attempts",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(
        stored
            .iter()
            .all(|e| !e.contains("SECRETPATH") && !e.contains("hunter2")),
        "{stored:?}"
    );
}

#[sqlx::test]
async fn a_refused_connection_is_retried(pool: PgPool) {
    let app = spawn(pool).await;
    let (_, d) = deliver_once(&app, &refused_url()).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"], 3);
    assert!(
        d["last_error"]
            .as_str()
            .unwrap()
            .contains("connection failed"),
        "{d:#}"
    );
    assert_policy_delays(&d);
}

#[sqlx::test]
async fn a_retry_that_succeeds_ends_in_success(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(502)]);
    let app = spawn(pool).await;
    let (_, d) = deliver_once(&app, &receiver.url).await;
    assert_eq!(d["status"], "success");
    assert_eq!(d["attempts"], 2);
    assert_eq!(d["response_status"], 200);
    assert_eq!(d["last_error"], Value::Null);
    let statuses: Vec<i64> = d["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["response_status"].as_i64().unwrap())
        .collect();
    assert_eq!(statuses, [502, 200]);
}

#[sqlx::test]
async fn client_errors_and_redirects_fail_after_one_attempt(pool: PgPool) {
    let target = Receiver::start().await;
    let app = spawn(pool).await;
    for reply in [
        Reply::status(400),
        Reply::status(404),
        Reply::status(410),
        Reply::status(302).header("location", &target.url),
    ] {
        let receiver = Receiver::start().await;
        receiver.always(reply.clone());
        let (id, d) = deliver_once(&app, &receiver.url).await;
        assert_eq!(d["status"], "failed", "{reply:?}");
        assert_eq!(d["attempts"], 1);
        assert_eq!(d["response_status"], reply.status);
        receiver
            .assert_stays_at(1, Duration::from_millis(700))
            .await;
        assert_eq!(app.deliveries(&id).await[0]["attempts"], 1);
        app.delete(&format!("/api/v1/webhooks/{id}")).await;
    }
    assert!(
        target.received().is_empty(),
        "the redirect target is never requested"
    );
}

#[sqlx::test]
async fn retry_after_is_honoured(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([
        Reply::status(429).header("retry-after", "1"),
        Reply::status(503).header("retry-after", "1"),
    ]);
    let app = spawn(pool).await;
    let (_, d) = deliver_once(&app, &receiver.url).await;
    assert_eq!(d["status"], "success");
    for gap in gaps_ms(&d) {
        assert!(
            (995..1400).contains(&gap),
            "gap {gap} ms after Retry-After: 1"
        );
    }
}

#[sqlx::test]
async fn a_failed_delivery_can_be_retried_by_hand(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(404)]);
    let app = spawn(pool).await;
    let (id, d) = deliver_once(&app, &receiver.url).await;
    assert_eq!(d["status"], "failed");
    let failed: Value = app
        .get(&format!("/api/v1/webhooks/{id}/deliveries?status=failed"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    let none: Value = app
        .get(&format!("/api/v1/webhooks/{id}/deliveries?status=success"))
        .await
        .json()
        .await
        .unwrap();
    assert!(none["data"].as_array().unwrap().is_empty());
    assert_eq!(
        app.get(&format!("/api/v1/webhooks/{id}/deliveries?status=bogus"))
            .await
            .status(),
        400
    );

    let delivery_id = d["id"].as_str().unwrap();
    let retried = app
        .post_empty(&format!(
            "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry"
        ))
        .await;
    assert_eq!(retried.status(), 200);
    let retried: Value = retried.json().await.unwrap();
    assert_eq!(retried["status"], "success");
    assert_eq!(retried["attempts"], 2);
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body);
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    let again = app
        .post_empty(&format!(
            "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry"
        ))
        .await;
    assert_eq!(again.status(), 409);
}

#[sqlx::test]
async fn a_binary_answer_with_nul_bytes_is_recorded(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(200).body(b"\x00\x1f\x8b binary \x00")]);
    let app = spawn(pool).await;
    let (_, d) = deliver_once(&app, &receiver.url).await;
    assert_eq!(d["status"], "success", "{d:#}");
    let excerpt = d["attempt_log"][0]["response_excerpt"].as_str().unwrap();
    assert!(
        excerpt.contains("binary") && !excerpt.contains('\0'),
        "{excerpt:?}"
    );
    assert_eq!(
        receiver.received().len(),
        1,
        "recorded once, not sent again"
    );
}

#[sqlx::test]
async fn a_failed_delivery_of_an_inactive_webhook_is_not_retried_by_hand(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(404)]);
    let app = spawn(pool).await;
    let (id, d) = deliver_once(&app, &receiver.url).await;
    app.patch(&format!("/api/v1/webhooks/{id}"), json!({"active": false}))
        .await;
    let path = format!(
        "/api/v1/webhooks/{id}/deliveries/{}/retry",
        d["id"].as_str().unwrap()
    );
    let refused = app.post_empty(&path).await;
    assert_eq!(refused.status(), 409);
    let error: Value = refused.json().await.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains("inactive"),
        "{error}"
    );
    assert_eq!(receiver.received().len(), 1);
    app.patch(&format!("/api/v1/webhooks/{id}"), json!({"active": true}))
        .await;
    assert_eq!(app.post_empty(&path).await.status(), 200);
    assert_eq!(receiver.received().len(), 2);
}
