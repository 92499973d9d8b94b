//! A known history, seeded row by row, and every reporting figure checked
//! against values worked out by hand (in the comments).
use actix_web::{App, test as atest};
use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use sqlx::PgPool;

use smartdrop_webhooks::{api, startup};

use crate::helpers::{KEY, Receiver, Reply, TestApp, test_config};

/// webhook_id, deliveries, success, pending, failed, success_rate, retry_rate,
/// p50, p95, last_success_at, last_failure_at, consecutive_failures.
type HealthRow = (
    String,
    i64,
    i64,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    i64,
);

struct Seeded {
    h: DateTime<Utc>,
    a: String,
    b: String,
    c: String,
}

fn at(h: DateTime<Utc>, hours: i64, minutes: i64) -> DateTime<Utc> {
    h + Duration::hours(hours) + Duration::minutes(minutes)
}

/// H = the start of the current hour.
/// A: a1 success (1 attempt: 200, 100 ms, at H-2h+10m)
///    a2 success (500 300 ms at H-3h+10m, then 200 50 ms at H-3h+11m)
///    a3 failed (timeout 5000 ms at H-2h+20m and H-2h+21m, 503 20 ms at H-2h+25m)
///    a4 pending, never attempted, due since 5 minutes ago, created at H
///    a_old success 48 h ago (outside a 24 h window)
/// B: b2 success (200 60 ms at H-5h+5m), b1 failed (404 40 ms at H-1h+5m),
///    b3 pending (500 80 ms at H-1h+10m, next try in an hour)
/// C: nothing.
async fn seed(pool: &PgPool) -> Seeded {
    let h: DateTime<Utc> = sqlx::query_scalar("SELECT date_trunc('hour', now())")
        .fetch_one(pool)
        .await
        .unwrap();
    // the history's days for the rows below (the migration made today's on)
    sqlx::query("SELECT webhook_history_prepare((now() AT TIME ZONE 'UTC')::date - 3, (now() AT TIME ZONE 'UTC')::date)")
        .execute(pool)
        .await
        .unwrap();
    let webhook = |url: &'static str| {
        sqlx::query_scalar::<_, String>(
            "INSERT INTO webhooks (url, events, secret) VALUES ($1, '{*}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') RETURNING id",
        )
        .bind(url)
        .fetch_one(pool)
    };
    let (a, b, c) = (
        webhook("https://a.example/hook").await.unwrap(),
        webhook("https://b.example/hook").await.unwrap(),
        webhook("https://c.example/hook").await.unwrap(),
    );
    let delivery = |id: &'static str,
                    wh: &String,
                    status: &'static str,
                    attempts: i32,
                    created: DateTime<Utc>,
                    next: DateTime<Utc>| {
        sqlx::query(
            "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, body, status, attempts, created_at, next_retry_at, done_at)
             VALUES ($1, $2, $1, 'pool.created', '{}', $3, $4, $5, $6, CASE WHEN $3 <> 'pending' THEN $5 END)",
        )
        .bind(id)
        .bind(wh.clone())
        .bind(status)
        .bind(attempts)
        .bind(created)
        .bind(next)
        .execute(pool)
    };
    let later = h + Duration::hours(1);
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .unwrap();
    #[rustfmt::skip]
    let deliveries = [
        ("dlv_a1", &a, "success", 1, at(h, -2, 10), later),
        ("dlv_a2", &a, "success", 2, at(h, -3, 10), later),
        ("dlv_a3", &a, "failed", 3, at(h, -2, 20), later),
        ("dlv_a4", &a, "pending", 0, h, now - Duration::minutes(5)),
        ("dlv_aold", &a, "success", 1, at(h, -48, 0), later),
        ("dlv_b1", &b, "failed", 1, at(h, -1, 5), later),
        ("dlv_b2", &b, "success", 1, at(h, -5, 5), later),
        ("dlv_b3", &b, "pending", 1, at(h, -1, 10), now + Duration::hours(1)),
    ];
    for (id, webhook, status, attempts, created, next) in deliveries {
        delivery(id, webhook, status, attempts, created, next)
            .await
            .unwrap();
    }
    let attempt = |d: &'static str,
                   wh: &String,
                   n: i32,
                   started: DateTime<Utc>,
                   ms: i32,
                   status: Option<i32>,
                   kind: Option<&'static str>| {
        let error = match (status, kind) {
            (Some(s), _) if !(200..300).contains(&s) => Some(format!("HTTP {s}")),
            (None, Some(k)) => Some(format!("{k} error")),
            _ => None,
        };
        sqlx::query(
            "INSERT INTO webhook_delivery_attempts (delivery_id, webhook_id, attempt, started_at, duration_ms, response_status, error_kind, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(d)
        .bind(wh.clone())
        .bind(n)
        .bind(started)
        .bind(ms)
        .bind(status)
        .bind(kind)
        .bind(error)
        .execute(pool)
    };
    #[rustfmt::skip]
    let attempts = [
        ("dlv_a1", &a, 1, at(h, -2, 10), 100, Some(200), None),
        ("dlv_a2", &a, 1, at(h, -3, 10), 300, Some(500), Some("http_status")),
        ("dlv_a2", &a, 2, at(h, -3, 11), 50, Some(200), None),
        ("dlv_a3", &a, 1, at(h, -2, 20), 5000, None, Some("timeout")),
        ("dlv_a3", &a, 2, at(h, -2, 21), 5000, None, Some("timeout")),
        ("dlv_a3", &a, 3, at(h, -2, 25), 20, Some(503), Some("http_status")),
        ("dlv_aold", &a, 1, at(h, -48, 0), 10, Some(200), None),
        ("dlv_b2", &b, 1, at(h, -5, 5), 60, Some(200), None),
        ("dlv_b1", &b, 1, at(h, -1, 5), 40, Some(404), Some("http_status")),
        ("dlv_b3", &b, 1, at(h, -1, 10), 80, Some(500), Some("http_status")),
    ];
    for (id, webhook, n, started, ms, status, kind) in attempts {
        attempt(id, webhook, n, started, ms, status, kind)
            .await
            .unwrap();
    }
    Seeded { h, a, b, c }
}

fn close(value: &Value, expected: f64) {
    let v = value
        .as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {value}"));
    assert!((v - expected).abs() < 1e-6, "{v} != {expected}");
}

/// deliveries, success, pending, failed
fn counts(row: &Value) -> [i64; 4] {
    ["deliveries", "success", "pending", "failed"].map(|k| row[k].as_i64().unwrap())
}

fn ts(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

/// Calls /api/v1/stats on the handlers alone (no delivery loop may touch the
/// seeded rows), through the real route table.
async fn get_stats(pool: &PgPool, path: &str) -> (u16, Value) {
    let metrics = std::sync::Arc::new(smartdrop_webhooks::metrics::Metrics::new());
    let state = startup::api_state(&test_config(pool), pool, KEY, metrics).unwrap();
    let app = atest::init_service(App::new().app_data(state).configure(api::configure)).await;
    let request = atest::TestRequest::get()
        .uri(path)
        .insert_header(("Authorization", format!("Bearer {KEY}")))
        .to_request();
    let response = atest::call_service(&app, request).await;
    let status = response.status().as_u16();
    (status, atest::read_body_json(response).await)
}

#[sqlx::test]
async fn the_health_function_and_view_match_the_hand_worked_figures(pool: PgPool) {
    let s = seed(&pool).await;
    let rows: Vec<HealthRow> =
        sqlx::query_as(
            "SELECT webhook_id, deliveries, success, pending, failed, success_rate, retry_rate, p50_ms, p95_ms,
                    last_success_at, last_failure_at, consecutive_failures
             FROM webhook_health_24h ORDER BY consecutive_failures DESC",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    // A: 4 deliveries in the window (a_old is 48 h old); 2 success, 1 pending, 1 failed.
    // success rate 2/3; retry rate 2 retried (a2, a3) / 3 attempted; durations in the
    // window 20, 50, 100, 300, 5000, 5000 → p50 (100+300)/2 = 200, p95 at rank 4.75 = 5000.
    // Last success a1 at H-2h+10m; three failed attempts since (a3) → 3 consecutive.
    let a = &rows[0];
    assert_eq!(a.0, s.a);
    assert_eq!((a.1, a.2, a.3, a.4), (4, 2, 1, 1));
    assert!((a.5.unwrap() - 2.0 / 3.0).abs() < 1e-9 && (a.6.unwrap() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!((a.7, a.8), (Some(200.0), Some(5000.0)));
    assert_eq!(
        (a.9, a.10, a.11),
        (Some(at(s.h, -2, 10)), Some(at(s.h, -2, 25)), 3)
    );
    // B: 3 deliveries; 1/1/1; success rate 1/2; nothing retried → 0; durations 40, 60, 80
    // → p50 60, p95 at rank 1.9 = 60 + 0.9·20 = 78. Last success H-5h+5m, then 2 failures.
    let b = &rows[1];
    assert_eq!(b.0, s.b);
    assert_eq!((b.1, b.2, b.3, b.4), (3, 1, 1, 1));
    assert_eq!((b.5, b.6), (Some(0.5), Some(0.0)));
    assert_eq!(b.7, Some(60.0));
    assert!((b.8.unwrap() - 78.0).abs() < 1e-9);
    assert_eq!(
        (b.9, b.10, b.11),
        (Some(at(s.h, -5, 5)), Some(at(s.h, -1, 10)), 2)
    );
    // C: nothing at all.
    let c = &rows[2];
    assert_eq!(c.0, s.c);
    assert_eq!(
        (c.1, c.2, c.3, c.4, c.5, c.6, c.7, c.8, c.9, c.10, c.11),
        (0, 0, 0, 0, None, None, None, None, None, None, 0)
    );

    // A 72 h window takes a_old in: 5 deliveries, 3 successes.
    let wide: (i64, i64) = sqlx::query_as(
        "SELECT deliveries, success FROM webhook_health(now() - interval '72 hours', $1)",
    )
    .bind(&s.a)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(wide, (5, 3));

    let backlog: (i64, Option<f64>) =
        sqlx::query_as("SELECT due, oldest_due_age_seconds FROM webhook_due_backlog")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(backlog.0, 1, "only a4 is due");
    assert!((299.0..320.0).contains(&backlog.1.unwrap()), "{backlog:?}");

    let hourly: Vec<(DateTime<Utc>, String, String, i64)> = sqlx::query_as(
        "SELECT hour, webhook_id, status, deliveries FROM webhook_delivery_volume_hourly ORDER BY hour, webhook_id, status",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(hourly.len(), 8, "{hourly:?}");
    assert_eq!(
        hourly[0],
        (at(s.h, -48, 0), s.a.clone(), "success".into(), 1)
    );

    let reasons: Vec<(String, i64)> =
        sqlx::query_as("SELECT reason, count FROM webhook_failure_reasons_24h")
            .fetch_all(&pool)
            .await
            .unwrap();
    let reasons: Vec<(&str, i64)> = reasons.iter().map(|(r, n)| (r.as_str(), *n)).collect();
    assert_eq!(
        reasons,
        [
            ("HTTP 500", 2),
            ("timeout", 2),
            ("HTTP 404", 1),
            ("HTTP 503", 1)
        ]
    );
}

#[sqlx::test]
async fn the_stats_api_serves_the_same_figures(pool: PgPool) {
    let s = seed(&pool).await;
    let (status, stats) = get_stats(&pool, "/api/v1/stats?window=24h").await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["window"], "24h");
    // Totals: 7 deliveries in the window (3 success, 2 pending, 2 failed); success rate
    // 3/5; 6 attempted, 2 retried; 9 attempts: 20 40 50 60 80 100 300 5000 5000 → p50 80,
    // p95 at rank 7.6 = 5000.
    let t = &stats["totals"];
    assert_eq!(counts(t), [7, 3, 2, 2]);
    assert_eq!(t["attempts"], 9);
    close(&t["success_rate"], 0.6);
    close(&t["retry_rate"], 1.0 / 3.0);
    close(&t["p50_ms"], 80.0);
    close(&t["p95_ms"], 5000.0);
    assert_eq!(stats["backlog"]["due"], 1);

    let ids: Vec<&str> = stats["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [s.a.as_str(), s.b.as_str(), s.c.as_str()],
        "failing first"
    );
    let a = &stats["webhooks"][0];
    assert_eq!(counts(a), [4, 2, 1, 1]);
    close(&a["success_rate"], 2.0 / 3.0);
    close(&a["p50_ms"], 200.0);
    assert_eq!(ts(&a["last_success_at"]), at(s.h, -2, 10));
    assert_eq!(a["consecutive_failures"], 3);
    assert_eq!(stats["webhooks"][2]["success_rate"], Value::Null);

    // Hourly: H-5 b2 ✓; H-3 a2 ✓; H-2 a1 ✓ + a3 ✗; H-1 b1 ✗ + b3 …; H a4 ….
    let hourly: Vec<(DateTime<Utc>, i64, i64, i64)> = stats["hourly"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                ts(&r["hour"]),
                r["success"].as_i64().unwrap(),
                r["pending"].as_i64().unwrap(),
                r["failed"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        hourly,
        [
            (at(s.h, -5, 0), 1, 0, 0),
            (at(s.h, -3, 0), 1, 0, 0),
            (at(s.h, -2, 0), 1, 0, 1),
            (at(s.h, -1, 0), 0, 1, 1),
            (s.h, 0, 1, 0),
        ]
    );
    let reasons: Vec<(&str, i64)> = stats["failure_reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["reason"].as_str().unwrap(), r["count"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("HTTP 500", 2),
            ("timeout", 2),
            ("HTTP 404", 1),
            ("HTTP 503", 1)
        ]
    );
    assert_eq!(
        ts(&stats["failure_reasons"][0]["last_seen_at"]),
        at(s.h, -1, 10)
    );
    let recent: Vec<(&str, i64)> = stats["recent_failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["delivery_id"].as_str().unwrap(),
                r["attempt"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        recent,
        [
            ("dlv_b3", 1),
            ("dlv_b1", 1),
            ("dlv_a3", 3),
            ("dlv_a3", 2),
            ("dlv_a3", 1),
            ("dlv_a2", 1)
        ]
    );

    // One webhook: B alone.
    let (status, b) = get_stats(&pool, &format!("/api/v1/webhooks/{}/stats?window=24h", s.b)).await;
    assert_eq!(status, 200);
    assert_eq!(b["webhooks"].as_array().unwrap().len(), 1);
    assert_eq!(b["totals"]["deliveries"], 3);
    close(&b["totals"]["p95_ms"], 78.0);
    assert_eq!(b["recent_failures"].as_array().unwrap().len(), 2);

    // 1 h window: only what was created or attempted since an hour ago.
    let (_, narrow) = get_stats(&pool, "/api/v1/stats?window=1h").await;
    assert!(narrow["totals"]["deliveries"].as_i64().unwrap() <= 3);

    for bad in ["window=1w", "window=0h", "window=", "colour=red"] {
        let (status, error) = get_stats(&pool, &format!("/api/v1/stats?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {error}");
    }
    let (status, _) = get_stats(
        &pool,
        "/api/v1/webhooks/wh_0123456789abcdef0123456789abcdef/stats",
    )
    .await;
    assert_eq!(status, 404);
}

fn counter(samples: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .samples
        .iter()
        .filter(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

async fn scrape(app: &TestApp) -> prometheus_parse::Scrape {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text")
}

#[sqlx::test]
async fn metrics_parse_as_prometheus_text_and_move_with_deliveries(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(404)]);
    let app = TestApp::spawn_with(pool, |c| c.webhook_max_attempts = 2).await;
    let id = app.create_webhook(&receiver.url, &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = scrape(&app).await;
    assert_eq!(
        counter(
            &before,
            "webhook_deliveries_total",
            Some(("outcome", "success"))
        ),
        0.0
    );

    // Event 1: 500 then 404 → one retry then failed. Event 2: 200.
    app.publish_sql("pool.created", serde_json::json!({}), Some("m-1"))
        .await;
    app.wait_deliveries(&id, std::time::Duration::from_secs(10), |l| {
        l.len() == 1 && l[0]["status"] == "failed"
    })
    .await;
    app.publish_sql("pool.created", serde_json::json!({}), Some("m-2"))
        .await;
    app.wait_deliveries(&id, std::time::Duration::from_secs(10), |l| {
        l.len() == 2 && l[0]["status"] == "success"
    })
    .await;

    // The queue gauges come from a background refresh (every 250 ms here),
    // and an outcome is counted once its recording statement has returned,
    // a moment after the row reads `success`: wait for both to settle.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut after = scrape(&app).await;
    let settled = |m: &prometheus_parse::Scrape| {
        counter(m, "webhook_due_backlog", None) == 0.0
            && counter(m, "webhook_in_flight_deliveries", None) == 0.0
            && counter(m, "webhook_deliveries_total", Some(("outcome", "success"))) >= 1.0
    };
    while !settled(&after) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        after = scrape(&app).await;
    }
    assert_eq!(
        counter(
            &after,
            "webhook_deliveries_total",
            Some(("outcome", "success"))
        ),
        1.0
    );
    assert_eq!(
        counter(
            &after,
            "webhook_deliveries_total",
            Some(("outcome", "retry"))
        ),
        1.0
    );
    assert_eq!(
        counter(
            &after,
            "webhook_deliveries_total",
            Some(("outcome", "failed"))
        ),
        1.0
    );
    assert_eq!(
        counter(&after, "webhook_events_dispatched_total", None),
        2.0
    );
    assert_eq!(
        counter(&after, "webhook_deliveries_created_total", None),
        2.0
    );
    assert_eq!(counter(&after, "webhook_in_flight_deliveries", None), 0.0);
    assert_eq!(counter(&after, "webhook_due_backlog", None), 0.0);
    let histogram = after
        .samples
        .iter()
        .find(|s| s.metric == "webhook_attempt_duration_seconds")
        .expect("latency histogram");
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(
                buckets.last().unwrap().count,
                3.0,
                "three attempts observed"
            );
        }
        other => panic!("not a histogram: {other:?}"),
    }
}

#[sqlx::test]
async fn the_reader_role_sees_the_reports_and_the_log_but_no_secret(pool: PgPool) {
    seed(&pool).await;
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/webhook_reader.sql"
    ))
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(script.clone()))
        .execute(&pool)
        .await
        .unwrap();
    // Idempotent: a second run (after an upgrade) changes nothing.
    sqlx::raw_sql(sqlx::AssertSqlSafe(script))
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET ROLE webhook_reader")
        .execute(&mut *conn)
        .await
        .unwrap();
    for allowed in [
        "SELECT count(*) FROM webhook_health_24h",
        "SELECT count(*) FROM webhook_health(now() - interval '7 days')",
        "SELECT count(*) FROM webhook_failure_reasons_24h",
        "SELECT count(*) FROM webhook_due_backlog",
        "SELECT count(*) FROM webhook_open_circuits",
        "SELECT count(*) FROM webhook_deliveries",
        "SELECT count(*) FROM webhook_delivery_attempts",
        "SELECT count(id) + count(url) + count(disabled_reason) FROM webhooks",
    ] {
        let n: Result<i64, _> = sqlx::query_scalar(allowed).fetch_one(&mut *conn).await;
        assert!(n.is_ok(), "{allowed}: {n:?}");
    }
    for denied in [
        "SELECT count(secret) FROM webhooks",
        "SELECT count(previous_secret) FROM webhooks",
        "SELECT * FROM webhooks",
        "UPDATE webhook_deliveries SET attempts = 0",
        "SELECT webhook_publish('pool.created', '{}'::jsonb)",
    ] {
        let err = sqlx::query(denied)
            .execute(&mut *conn)
            .await
            .expect_err(denied);
        assert!(
            err.to_string().contains("permission denied"),
            "{denied}: {err}"
        );
    }
    sqlx::query("RESET ROLE").execute(&mut *conn).await.unwrap();
}
