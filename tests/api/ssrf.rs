use std::time::Duration;

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Receiver, TestApp};

#[sqlx::test]
async fn internal_targets_are_refused_at_registration_unless_allowed(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), |c| c.webhook_allow_private_targets = false).await;
    for url in [
        "http://127.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://10.0.0.1/hook",
        "http://0.0.0.0/hook",
        "http://192.168.1.10:8080/hook",
        "http://localhost:3000/hook",
    ] {
        let response = app
            .post("/api/v1/webhooks", json!({"url": url, "events": ["*"]}))
            .await;
        assert_eq!(response.status(), 400, "{url}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "validation_error");
        assert!(
            error["message"].as_str().unwrap().starts_with("url:"),
            "{error}"
        );
    }
    let id = app
        .create_webhook("https://93.184.216.34/hook", &["*"])
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .patch(
            &format!("/api/v1/webhooks/{id}"),
            json!({"url": "http://10.1.2.3/x"}),
        )
        .await;
    assert_eq!(response.status(), 400);
    app.stop().await;

    let allowed = TestApp::spawn(pool).await;
    allowed
        .create_webhook("http://127.0.0.1/hook", &["*"])
        .await;
    allowed.create_webhook("http://[::1]/hook", &["*"]).await;
}

#[sqlx::test]
async fn the_sender_refuses_internal_addresses_it_would_connect_to(pool: PgPool) {
    // Registered while allowed (or written by SQL), sent while forbidden: the
    // literal and the name that resolves to loopback are both refused.
    let receiver = Receiver::start().await;
    let port = receiver
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let app = TestApp::spawn_with(pool, |c| c.webhook_allow_private_targets = false).await;
    for url in [
        receiver.url.clone(),
        format!("http://localhost:{port}/hook"),
    ] {
        let id: String = sqlx::query_scalar("INSERT INTO webhooks (url, events, secret) VALUES ($1, '{*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') RETURNING id")
            .bind(&url)
            .fetch_one(&app.pool)
            .await
            .unwrap();
        app.publish_sql("pool.created", json!({}), None).await;
        let list = app
            .wait_deliveries(&id, Duration::from_secs(10), |l| {
                l.len() == 1 && l[0]["status"] == "failed"
            })
            .await;
        assert_eq!(list[0]["attempts"], 1, "not retried: {url}");
        assert!(
            list[0]["last_error"]
                .as_str()
                .unwrap()
                .contains("refused to connect"),
            "{:?}",
            list[0]
        );
        sqlx::query("DELETE FROM webhooks")
            .execute(&app.pool)
            .await
            .unwrap();
    }
    assert!(receiver.received().is_empty());
}
