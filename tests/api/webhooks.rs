use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{KEY, TestApp};

const GOOD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn error_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );
    (status, body)
}

#[sqlx::test]
async fn a_webhook_is_created_read_listed_changed_and_deleted(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let created = app
        .create_webhook("https://example.com/hook", &["pool.*", "price.alert"])
        .await;
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("wh_"));
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(created["events"], json!(["pool.*", "price.alert"]));
    assert_eq!(created["active"], json!(true));
    assert!(
        created["secret_preview"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    for key in ["created_at", "updated_at", "description"] {
        assert!(created.get(key).is_some(), "{key} missing");
    }

    let got: Value = app
        .get(&format!("/api/v1/webhooks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert!(got.get("secret").is_none(), "get must not show the secret");
    assert_eq!(got["secret_preview"], created["secret_preview"]);
    let list: Value = app.get("/api/v1/webhooks").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert!(
        list["data"][0].get("secret").is_none(),
        "list must not show the secret"
    );
    assert!(!list.to_string().contains(&secret[6..]));

    let patched = app
        .patch(
            &format!("/api/v1/webhooks/{id}"),
            json!({"url": "https://example.org/new", "events": ["*"], "active": false, "description": "ops"}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["url"], "https://example.org/new");
    assert_eq!(patched["events"], json!(["*"]));
    assert_eq!(patched["active"], json!(false));
    assert_eq!(patched["description"], "ops");
    assert!(patched.get("secret").is_none());
    let cleared: Value = app
        .patch(
            &format!("/api/v1/webhooks/{id}"),
            json!({"description": null}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["description"], Value::Null);
    assert_eq!(cleared["url"], "https://example.org/new");

    assert_eq!(
        app.delete(&format!("/api/v1/webhooks/{id}")).await.status(),
        204
    );
    assert_eq!(
        app.get(&format!("/api/v1/webhooks/{id}")).await.status(),
        404
    );
    assert_eq!(
        app.delete(&format!("/api/v1/webhooks/{id}")).await.status(),
        404
    );
}

#[sqlx::test]
async fn a_supplied_secret_is_kept_and_rotation_shows_a_new_one_once(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let created: Value = app
        .post(
            "/api/v1/webhooks",
            json!({"url": "https://example.com/h", "events": ["*"], "secret": GOOD_SECRET}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created["secret"], GOOD_SECRET);
    let id = created["id"].as_str().unwrap();
    let rotated = app
        .post_empty(&format!("/api/v1/webhooks/{id}/rotate-secret"))
        .await;
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    let new_secret = rotated["secret"].as_str().unwrap();
    assert!(new_secret.starts_with("whsec_") && new_secret != GOOD_SECRET);
    assert_ne!(rotated["secret_preview"], created["secret_preview"]);
    let stored: String = sqlx::query_scalar("SELECT secret FROM webhooks WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, new_secret);
}

#[sqlx::test]
async fn every_validation_rule_answers_400_naming_the_field(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let long_url = format!("https://example.com/{}", "a".repeat(2048));
    let cases = [
        (json!({"events": ["*"]}), "url"),
        (json!({"url": "not a url", "events": ["*"]}), "url"),
        (json!({"url": "/relative", "events": ["*"]}), "url"),
        (
            json!({"url": "ftp://example.com/x", "events": ["*"]}),
            "url",
        ),
        (json!({"url": long_url, "events": ["*"]}), "url"),
        (json!({"url": 42, "events": ["*"]}), "url"),
        (json!({"url": "https://example.com"}), "events"),
        (
            json!({"url": "https://example.com", "events": []}),
            "events",
        ),
        (
            json!({"url": "https://example.com", "events": ["pool.nope"]}),
            "events[0]",
        ),
        (
            json!({"url": "https://example.com", "events": ["*", "nft.*"]}),
            "events[1]",
        ),
        (
            json!({"url": "https://example.com", "events": ["pool*"]}),
            "events[0]",
        ),
        (
            json!({"url": "https://example.com", "events": ["*", 5]}),
            "events[1]",
        ),
        (
            json!({"url": "https://example.com", "events": "*"}),
            "events",
        ),
        (
            json!({"url": "https://example.com", "events": ["*"], "secret": "short"}),
            "secret",
        ),
        (
            json!({"url": "https://example.com", "events": ["*"], "secret": "supersecretsupersecret"}),
            "secret",
        ),
        (
            json!({"url": "https://example.com", "events": ["*"], "description": "d".repeat(501)}),
            "description",
        ),
        (
            json!({"url": "https://example.com", "events": ["*"], "active": "yes"}),
            "active",
        ),
        (
            json!({"url": "https://example.com", "events": ["*"], "colour": "blue"}),
            "colour",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = error_of(app.post("/api/v1/webhooks", body.clone()).await).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["error"], "validation_error", "{body}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{body} → {error}"
        );
    }
    let (_, error) = error_of(
        app.post(
            "/api/v1/webhooks",
            json!({"url": "https://example.com", "events": ["*"], "secret": "x"}),
        )
        .await,
    )
    .await;
    assert!(
        error["message"].as_str().unwrap().contains("openssl rand"),
        "says how to generate one"
    );
    // Nothing was stored by any of them.
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);

    let id = app.create_webhook("https://example.com/h", &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for body in [
        json!({}),
        json!({"url": "gopher://x"}),
        json!({"events": []}),
        json!({"secret": GOOD_SECRET}),
    ] {
        let (status, _) = error_of(
            app.patch(&format!("/api/v1/webhooks/{id}"), body.clone())
                .await,
        )
        .await;
        assert_eq!(status, 400, "{body}");
    }
}

#[sqlx::test]
async fn malformed_oversize_and_mistyped_bodies_get_clear_4xx(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let raw = |body: &'static str, content_type: &'static str| {
        app.client
            .post(app.url("/api/v1/webhooks"))
            .bearer_auth(KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let (status, error) = error_of(raw("{\"url\": ", "application/json").await.unwrap()).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (400, "invalid_json")
    );
    let (status, _) = error_of(raw("[1, 2]", "application/json").await.unwrap()).await;
    assert_eq!(status, 400);
    let (status, _) = error_of(raw("", "application/json").await.unwrap()).await;
    assert_eq!(status, 400);
    let (status, error) = error_of(
        raw("url=x", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (415, "unsupported_media_type")
    );

    let huge = json!({"url": "https://example.com", "events": ["*"], "description": "x".repeat(300 * 1024)});
    let (status, error) = error_of(app.post("/api/v1/webhooks", huge).await).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (413, "payload_too_large")
    );

    let (status, error) = error_of(app.get("/api/v1/webhooks?limit=0").await).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (400, "validation_error")
    );
    let (status, _) = error_of(app.get("/api/v1/webhooks?limit=abc").await).await;
    assert_eq!(status, 400);
    let (status, _) = error_of(app.get("/api/v1/webhooks?cursor=%%%").await).await;
    assert_eq!(status, 400);
    let (status, _) = error_of(app.get("/api/v1/webhooks?bogus=1").await).await;
    assert_eq!(status, 400);
    let (status, _) = error_of(app.get("/api/v1/nothing-here").await).await;
    assert_eq!(status, 404);
}

#[sqlx::test]
async fn missing_or_wrong_bearer_is_401_on_every_endpoint(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create_webhook("https://example.com/h", &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let d = "dlv_0123456789abcdef0123456789abcdef";
    let endpoints = [
        (reqwest::Method::POST, "/api/v1/webhooks".to_owned()),
        (reqwest::Method::GET, "/api/v1/webhooks".to_owned()),
        (reqwest::Method::GET, format!("/api/v1/webhooks/{id}")),
        (reqwest::Method::PATCH, format!("/api/v1/webhooks/{id}")),
        (reqwest::Method::DELETE, format!("/api/v1/webhooks/{id}")),
        (
            reqwest::Method::POST,
            format!("/api/v1/webhooks/{id}/rotate-secret"),
        ),
        (reqwest::Method::POST, format!("/api/v1/webhooks/{id}/test")),
        (
            reqwest::Method::GET,
            format!("/api/v1/webhooks/{id}/deliveries"),
        ),
        (
            reqwest::Method::GET,
            format!("/api/v1/webhooks/{id}/deliveries/{d}"),
        ),
        (
            reqwest::Method::POST,
            format!("/api/v1/webhooks/{id}/deliveries/{d}/retry"),
        ),
        (reqwest::Method::GET, "/api/v1/event-types".to_owned()),
        (reqwest::Method::POST, "/api/v1/events".to_owned()),
    ];
    for (method, path) in endpoints {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic dGVzdA=="),
            Some(KEY),
        ] {
            let mut request = app.client.request(method.clone(), app.url(&path));
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let (status, error) = error_of(request.send().await.unwrap()).await;
            assert_eq!(status, 401, "{method} {path} with {auth:?}");
            assert_eq!(error["error"], "unauthorized");
        }
    }
    // The webhook is untouched.
    assert_eq!(
        app.get(&format!("/api/v1/webhooks/{id}")).await.status(),
        200
    );
}

#[sqlx::test]
async fn unknown_and_malformed_ids_are_404(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let real = app.create_webhook("https://example.com/h", &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for id in [
        "wh_0123456789abcdef0123456789abcdef",
        "nope",
        "wh_'; DROP TABLE webhooks;--",
        "%F0%9F%92%A5",
    ] {
        let (status, error) = error_of(app.get(&format!("/api/v1/webhooks/{id}")).await).await;
        assert_eq!(
            (status, error["error"].as_str().unwrap()),
            (404, "not_found"),
            "{id}"
        );
        assert_eq!(
            app.patch(&format!("/api/v1/webhooks/{id}"), json!({"active": false}))
                .await
                .status(),
            404
        );
        assert_eq!(
            app.delete(&format!("/api/v1/webhooks/{id}")).await.status(),
            404
        );
        assert_eq!(
            app.post_empty(&format!("/api/v1/webhooks/{id}/rotate-secret"))
                .await
                .status(),
            404
        );
        assert_eq!(
            app.post_empty(&format!("/api/v1/webhooks/{id}/test"))
                .await
                .status(),
            404
        );
        assert_eq!(
            app.get(&format!("/api/v1/webhooks/{id}/deliveries"))
                .await
                .status(),
            404
        );
    }
    for d in ["dlv_0123456789abcdef0123456789abcdef", "bad"] {
        assert_eq!(
            app.get(&format!("/api/v1/webhooks/{real}/deliveries/{d}"))
                .await
                .status(),
            404
        );
        assert_eq!(
            app.post_empty(&format!("/api/v1/webhooks/{real}/deliveries/{d}/retry"))
                .await
                .status(),
            404
        );
    }
}

#[sqlx::test]
async fn listings_page_newest_first_with_a_cursor(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(
            app.create_webhook(&format!("https://example.com/{i}"), &["*"])
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    ids.reverse();
    let mut seen = vec![];
    let mut path = "/api/v1/webhooks?limit=2".to_owned();
    loop {
        let page: Value = app.get(&path).await.json().await.unwrap();
        seen.extend(
            page["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/api/v1/webhooks?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

#[sqlx::test]
async fn the_catalogue_health_and_openapi_are_served(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let types: Value = app.get("/api/v1/event-types").await.json().await.unwrap();
    let names: Vec<&str> = types["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "pool.assets_locked",
            "pool.assets_unlocked",
            "pool.closed",
            "pool.created",
            "pool.rewards_distributed",
            "price.alert"
        ]
    );
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "ok");
    assert!(health["timestamp"].is_string());
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/webhooks",
        "/api/v1/webhooks/{id}",
        "/api/v1/webhooks/{id}/test",
        "/api/v1/webhooks/{id}/deliveries/{delivery_id}/retry",
        "/api/v1/events",
        "/health",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}

#[tokio::test]
async fn health_is_503_when_the_database_is_unreachable() {
    // Nothing listens on port 1: every connection attempt is refused.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(1))
        .connect_lazy("postgres://postgres@127.0.0.1:1/unreachable")
        .unwrap();
    let app = TestApp::spawn(pool).await;
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let body: Value = health.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
}

#[sqlx::test]
async fn a_window_beyond_what_a_clock_can_hold_is_a_400_not_a_dropped_connection(pool: PgPool) {
    // Both used to panic inside chrono: the client got an empty reply.
    let app = TestApp::spawn(pool).await;
    let id = app.create_webhook("http://127.0.0.1:9/x", &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let one = format!("/api/v1/webhooks/{id}/stats");
    for window in [
        "9999999999999d",
        "9223372036854775807m",
        "153722867280912931m",
    ] {
        for path in ["/api/v1/stats", one.as_str()] {
            let (status, error) = error_of(app.get(&format!("{path}?window={window}")).await).await;
            assert_eq!(status, 400, "{path} {window}: {error}");
            assert!(
                error["message"].as_str().unwrap().starts_with("window:"),
                "{error}"
            );
        }
    }
    assert_eq!(app.health_status().await, 200, "the service survived");
}

#[tokio::test]
async fn a_handler_that_panics_answers_500_and_the_connection_lives_on() {
    use actix_web::{App, HttpServer, middleware::from_fn, web};
    // The service's own middleware around a route that panics, as a bug would.
    let server = HttpServer::new(|| {
        App::new()
            .wrap(from_fn(smartdrop_webhooks::api::catch_panic::catch_panic))
            .route(
                "/bug",
                web::get().to(|| async {
                    if std::hint::black_box(true) {
                        panic!("a bug");
                    }
                    "unreachable"
                }),
            )
            .route("/fine", web::get().to(|| async { "fine" }))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    let handle = server.run();
    tokio::spawn(handle);
    // One keep-alive connection for every request.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    for _ in 0..3 {
        let bug = client
            .get(format!("http://{addr}/bug"))
            .send()
            .await
            .expect("an answer, not a dropped connection");
        assert_eq!(bug.status(), 500);
        let body: Value = bug.json().await.unwrap();
        assert_eq!(body["error"], "internal_error", "{body}");
        assert_eq!(
            body["message"], "internal error",
            "the panic is not shown: {body}"
        );
        let fine = client
            .get(format!("http://{addr}/fine"))
            .send()
            .await
            .unwrap();
        assert_eq!(fine.text().await.unwrap(), "fine");
    }
}

#[sqlx::test]
async fn values_postgres_cannot_store_are_a_400_not_a_500(pool: PgPool) {
    // Found by schemathesis: NUL characters, and a multi-byte window unit.
    let app = TestApp::spawn(pool).await;
    let with_nul = json!({"url": "https://example.com", "events": ["*"], "description": "a\u{0}b"});
    let (status, error) = error_of(app.post("/api/v1/webhooks", with_nul).await).await;
    assert_eq!(
        (status, error["error"].as_str().unwrap()),
        (400, "validation_error"),
        "{error}"
    );
    let event = json!({"event": "pool.created", "data": {"k": "v\u{0}"}});
    let (status, error) = error_of(app.post("/api/v1/events", event).await).await;
    assert_eq!(status, 400);
    assert!(
        error["message"].as_str().unwrap().starts_with("data:"),
        "{error}"
    );
    let event = json!({"event": "pool.created", "event_id": "x\u{0}", "data": {}});
    assert_eq!(app.post("/api/v1/events", event).await.status(), 400);
    let (status, _) = error_of(app.get("/api/v1/stats?window=%C2%80").await).await;
    assert_eq!(status, 400);
    assert_eq!(app.health_status().await, 200, "the service survived");
}

#[sqlx::test]
async fn the_url_is_stored_and_echoed_as_given_and_its_limit_counts_characters(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let created = app.create_webhook("https://example.com:8443", &["*"]).await;
    assert_eq!(created["url"], "https://example.com:8443");
    // 2,040 characters of which many are two-byte: within the limit.
    let wide = format!("https://example.com/{}", "é".repeat(2020));
    assert_eq!(wide.chars().count(), 2040);
    let response = app
        .post("/api/v1/webhooks", json!({"url": wide, "events": ["*"]}))
        .await;
    assert_eq!(response.status(), 201);
}

/// Waits until `n` backends of this database wait on a lock in a statement
/// containing `needle`, and returns their pids.
async fn lock_waiters(conn: &mut sqlx::PgConnection, needle: &str, n: usize) -> Vec<i32> {
    for _ in 0..200 {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1",
        )
        .bind(format!("%{needle}%"))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        if pids.len() >= n {
            return pids;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("fewer than {n} backends waited on a lock for {needle}");
}

/// A connection of the test's own, apart from the pool the service uses
/// (whose connections may all be waiting on a lock).
async fn own_connection(pool: &PgPool) -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(&crate::helpers::database_url(pool))
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_database_that_cannot_answer_is_a_503_with_retry_after_not_a_hang_or_a_500(pool: PgPool) {
    use std::time::Duration;
    let app = TestApp::spawn_with(pool.clone(), |c| c.database_statement_timeout_ms = 300).await;
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE webhooks IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    // A statement stuck behind the lock is cancelled by the statement timeout.
    let started = std::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(10), app.get("/api/v1/webhooks"))
        .await
        .expect("answered, not hung");
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_secs(5));
    let (_, error) = error_of(response).await;
    assert_eq!(error["error"], "service_unavailable", "{error}");

    // The server ending the connection (an administrator, a failover) too.
    let app = TestApp::spawn(pool.clone()).await;
    let request = tokio::spawn({
        let url = app.url("/api/v1/webhooks");
        let client = app.client.clone();
        async move {
            client
                .get(url)
                .bearer_auth(crate::helpers::KEY)
                .send()
                .await
                .unwrap()
        }
    });
    // The service's loops wait on the lock too and may hold every connection
    // of the test pool: look from a connection of our own.
    let mut admin = own_connection(&pool).await;
    let pid = lock_waiters(&mut admin, "consecutive_failures AS", 1).await[0];
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&mut admin)
        .await
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("answered, not hung")
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));

    locker.rollback().await.unwrap();
    assert_eq!(app.get("/api/v1/webhooks").await.status(), 200);
}

async fn health_body(app: &TestApp) -> (u16, Value) {
    let response = app.client.get(app.url("/health")).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Polls /health until `done` holds (or 10 s pass) and returns the last answer.
async fn health_until(app: &TestApp, done: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = health_body(app).await;
        if done(status, &body) || std::time::Instant::now() > deadline {
            return (status, body);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[sqlx::test]
async fn health_reports_the_pipeline_and_turns_red_when_claims_cannot_reach_the_database(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(pool.clone(), |c| c.database_statement_timeout_ms = 300).await;
    let (status, body) = health_until(&app, |s, b| s == 200 && b["listener"] == "connected").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["database"], "ok");
    assert!(body["last_claim_age_s"].as_f64().unwrap() < 5.0, "{body}");
    assert_eq!(body["reason"], Value::Null);
    assert_eq!(body["due"], 0);

    // The claim reads webhook_endpoint_state first: with it locked, no claim
    // reaches the database, while `SELECT 1` still answers.
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE webhook_endpoint_state IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let (status, body) = health_until(&app, |s, _| s == 503).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["database"], "ok");
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .starts_with("no claim has reached the database"),
        "{body}"
    );
    locker.rollback().await.unwrap();
    let (status, body) = health_until(&app, |s, _| s == 200).await;
    assert_eq!(status, 200, "green again once claims go through: {body}");
}

#[sqlx::test]
async fn requests_holding_every_api_connection_do_not_turn_health_red(pool: PgPool) {
    // An API pool of two connections.
    let app = TestApp::spawn_with(pool.clone(), |c| c.database_max_connections = 4).await;
    let id = app.create_webhook("http://127.0.0.1:9/x", &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM webhooks WHERE id = $1 FOR UPDATE")
        .bind(&id)
        .execute(&mut *locker)
        .await
        .unwrap();
    // Two changes wait on the row lock, each holding an API connection.
    let patches: Vec<_> = (0..2)
        .map(|n| {
            let request = app
                .client
                .patch(app.url(&format!("/api/v1/webhooks/{id}")))
                .bearer_auth(crate::helpers::KEY)
                .json(&json!({"description": format!("patch {n}")}));
            tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut admin = own_connection(&pool).await;
    lock_waiters(&mut admin, "UPDATE webhooks", 2).await;
    let (status, body) = health_body(&app).await;
    assert_eq!(status, 200, "{body}");
    locker.rollback().await.unwrap();
    for patch in patches {
        assert_eq!(patch.await.unwrap(), 200);
    }
}
