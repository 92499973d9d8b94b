use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{KEY, Receiver, TestApp};

#[sqlx::test]
async fn the_request_after_the_limit_gets_429_with_retry_after(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |c| {
        c.webhook_ratelimit_max = 5;
        c.webhook_ratelimit_window = 60;
    })
    .await;
    for remaining in (0..5).rev() {
        let ok = app.get("/api/v1/webhooks").await;
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["x-ratelimit-limit"], "5");
        assert_eq!(
            ok.headers()["x-ratelimit-remaining"],
            remaining.to_string().as_str()
        );
        assert!(ok.headers().contains_key("x-ratelimit-reset"));
    }
    let limited = app.get("/api/v1/webhooks").await;
    assert_eq!(limited.status(), 429);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry_after), "{retry_after}");
    assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
    let reset: u64 = limited.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset >= retry_after);
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Unauthenticated requests count too, and are limited the same way.
    let anonymous = app
        .client
        .get(app.url("/api/v1/webhooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 429);
    // Open endpoints are not limited.
    assert_eq!(app.health_status().await, 200);
}

#[sqlx::test]
async fn x_forwarded_for_does_not_escape_the_limit_unless_the_proxy_is_trusted(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), |c| c.webhook_ratelimit_max = 2).await;
    let with_xff = |ip: &'static str| {
        app.client
            .get(app.url("/api/v1/webhooks"))
            .bearer_auth(KEY)
            .header("x-forwarded-for", ip)
            .send()
    };
    assert_eq!(with_xff("198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(with_xff("198.51.100.2").await.unwrap().status(), 200);
    assert_eq!(with_xff("198.51.100.3").await.unwrap().status(), 429);
    app.stop().await;

    let trusted = TestApp::spawn_with(pool, |c| {
        c.webhook_ratelimit_max = 2;
        c.webhook_trust_proxy = true;
    })
    .await;
    let with_xff = |ip: &'static str| {
        trusted
            .client
            .get(trusted.url("/api/v1/webhooks"))
            .bearer_auth(KEY)
            .header("x-forwarded-for", ip)
            .send()
    };
    assert_eq!(with_xff("198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(with_xff("198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(with_xff("198.51.100.1").await.unwrap().status(), 429);
    // The right-most hop is the one the trusted proxy saw.
    assert_eq!(
        with_xff("198.51.100.1, 198.51.100.9")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(with_xff("198.51.100.2").await.unwrap().status(), 200);
    // An unparsable last hop falls back to the TCP peer; the client-written hop
    // before it never counts.
    let statuses = [
        with_xff("198.51.100.77, garbage").await.unwrap().status(),
        with_xff("198.51.100.78, garbage").await.unwrap().status(),
        with_xff("198.51.100.79, garbage").await.unwrap().status(),
    ];
    assert_eq!(
        statuses,
        [200, 200, 429],
        "all three share the peer's budget"
    );
    // host:port form, as some proxies write it.
    assert_eq!(with_xff("198.51.100.5:4711").await.unwrap().status(), 200);
    assert_eq!(with_xff("198.51.100.5").await.unwrap().status(), 200);
    assert_eq!(
        with_xff("198.51.100.5").await.unwrap().status(),
        429,
        "the same client"
    );
}

#[sqlx::test]
async fn test_sends_have_their_own_tighter_limit(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(pool, |c| {
        c.webhook_test_ratelimit_max = 5;
        c.webhook_test_ratelimit_window = 60;
    })
    .await;
    let id = app.create_webhook(&receiver.url, &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..5 {
        assert_eq!(
            app.post_empty(&format!("/api/v1/webhooks/{id}/test"))
                .await
                .status(),
            200
        );
    }
    let limited = app.post_empty(&format!("/api/v1/webhooks/{id}/test")).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(limited.headers()["x-ratelimit-limit"], "5");
    assert_eq!(receiver.received().len(), 5);
    // The management budget is separate.
    assert_eq!(
        app.get(&format!("/api/v1/webhooks/{id}")).await.status(),
        200
    );
}

#[sqlx::test]
async fn publishing_events_has_its_own_producer_budget(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |c| {
        c.webhook_ratelimit_max = 2;
        c.webhook_events_ratelimit_max = 5;
    })
    .await;
    // More events than the whole management budget: a producer is not held
    // to the management API's pace.
    for i in 0..5 {
        let published = app
            .post(
                "/api/v1/events",
                json!({"event": "pool.created", "event_id": format!("budget-{i}"), "data": {}}),
            )
            .await;
        assert_eq!(published.status(), 202);
    }
    let limited = app
        .post(
            "/api/v1/events",
            json!({"event": "pool.created", "data": {}}),
        )
        .await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["x-ratelimit-limit"], "5");
    // ...and the management budget was not touched by them.
    assert_eq!(app.get("/api/v1/webhooks").await.status(), 200);
    assert_eq!(app.get("/api/v1/webhooks").await.status(), 200);
    assert_eq!(app.get("/api/v1/webhooks").await.status(), 429);
}
