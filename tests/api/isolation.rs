//! Endpoint isolation: one endpoint's trouble is its own. Fair shares of the
//! send slots, the circuit breaker, auto-disable, the throttle and FIFO, each
//! against real receivers (and, for what must hold across instances, two
//! service instances on one database).
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Receiver, Reply, TestApp, count, metric};

/// Publishes `n` events of `event_type` in one committed statement, in order
/// (`data.i` = 0..n).
async fn publish_many(pool: &PgPool, event_type: &str, n: i64) {
    sqlx::query("SELECT count(webhook_publish($1, jsonb_build_object('i', g))) FROM generate_series(0, $2 - 1) g")
        .bind(event_type)
        .bind(n)
        .execute(pool)
        .await
        .unwrap();
}

async fn create(app: &TestApp, body: Value) -> Value {
    let response = app.post("/api/v1/webhooks", body).await;
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn webhook(app: &TestApp, id: &str) -> Value {
    app.get(&format!("/api/v1/webhooks/{id}"))
        .await
        .json()
        .await
        .unwrap()
}

/// Polls the webhook until `done` holds, or panics at the deadline.
async fn wait_webhook(
    app: &TestApp,
    id: &str,
    deadline: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let start = Instant::now();
    loop {
        let w = webhook(app, id).await;
        if done(&w) {
            return w;
        }
        assert!(
            start.elapsed() < deadline,
            "webhook never reached the expected state: {w:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A receiver that always answers `reply`, a webhook on every type for it,
/// and `n` events published.
async fn endpoint_answering(app: &TestApp, reply: Reply, n: i64) -> (Receiver, String) {
    let receiver = Receiver::start().await;
    receiver.always(reply);
    let id = create(app, json!({"url": receiver.url, "events": ["*"]})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    publish_many(&app.pool, "pool.created", n).await;
    (receiver, id)
}

async fn metrics(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

/// The queue gauges are refreshed in the background (every 250 ms in tests):
/// waits until the scrape shows `line`.
async fn metrics_showing(app: &TestApp, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = metrics(app).await;
        if text.contains(line) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[sqlx::test]
async fn a_hanging_neighbour_does_not_delay_another_webhook(pool: PgPool) {
    // The breaker is out of the way: fair shares alone must do it.
    let app = TestApp::spawn_with(pool.clone(), |c| {
        c.webhook_timeout_ms = 1000;
        c.webhook_retry_base_ms = 300;
        c.webhook_retry_poll_ms = 100;
        c.webhook_breaker_threshold = 1_000_000;
    })
    .await;
    let hanging = Receiver::start().await;
    hanging.always(Reply::status(200).delayed(Duration::from_secs(30)));
    let healthy = Receiver::start().await;
    create(
        &app,
        json!({"url": hanging.url, "events": ["pool.created"]}),
    )
    .await;
    create(&app, json!({"url": healthy.url, "events": ["price.alert"]})).await;
    publish_many(&pool, "pool.created", 2000).await;
    hanging.wait_for(20, Duration::from_secs(10)).await;

    let mut commits = vec![];
    for i in 0..20 {
        let id = format!("fresh-{i}");
        app.publish_sql("price.alert", json!({"i": i}), Some(&id))
            .await;
        commits.push((id, Instant::now()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let arrived = healthy.wait_for(20, Duration::from_secs(10)).await;
    let mut latencies: Vec<f64> = commits
        .iter()
        .map(|(id, at)| {
            let got = arrived
                .iter()
                .find(|r| r.json()["event_id"] == *id)
                .expect("every fresh event arrived");
            got.at.saturating_duration_since(*at).as_secs_f64() * 1000.0
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let p95 = percentile(&latencies, 0.95);
    println!(
        "commit → arrival beside a hanging neighbour: p50 {:.1} ms, p95 {p95:.1} ms",
        percentile(&latencies, 0.5)
    );
    assert!(p95 < 300.0, "p95 {p95:.1} ms");
    let due = count(&pool, "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending' AND event_type = 'pool.created'").await;
    assert!(
        due > 1500,
        "the neighbour still had its backlog ({due} pending)"
    );
    // The hanging endpoint holds only its share: of the 64 + 8 slots, the
    // reserve stays free. (Sends in flight, read from the service: leased rows
    // also count sends that ended and wait for their results' batch write.)
    let in_flight = metric(&app.metrics_text().await, "webhook_in_flight_deliveries").unwrap();
    assert!(
        (1.0..=64.0).contains(&in_flight),
        "{in_flight} sends in flight to the hanging endpoint"
    );
}

#[sqlx::test]
async fn the_breaker_opens_defers_without_attempts_probes_and_closes_and_the_backlog_arrives(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(pool.clone(), |c| {
        c.webhook_breaker_threshold = 5;
        c.webhook_breaker_cooldown_ms = 1500;
        // Few sends in flight, so few can start between the fifth failure
        // and its recording (which opens the circuit).
        c.webhook_delivery_concurrency = 2;
        c.webhook_max_attempts = 10;
        c.webhook_retry_base_ms = 100;
    })
    .await;
    let (receiver, id) = endpoint_answering(&app, Reply::status(500), 50).await;

    let open = wait_webhook(&app, &id, Duration::from_secs(10), |w| {
        w["circuit"]["state"] == "open"
    })
    .await;
    assert!(open["circuit"]["consecutive_failures"].as_i64().unwrap() >= 5);
    assert!(open["circuit"]["open_until"].is_string());
    assert!(open["active"].as_bool().unwrap());
    let metrics = metrics_showing(&app, "webhook_circuit_open 1").await;
    assert!(metrics.contains("webhook_circuit_open 1"), "{metrics}");

    // What was in flight when it opened is recorded within moments; after
    // that, nothing is attempted until the cool-down ends.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts_at_open = count(&pool, "SELECT count(*) FROM webhook_delivery_attempts").await;
    // The threshold, plus what was in flight or already failed but not yet
    // recorded when the fifth failure was.
    assert!(
        attempts_at_open <= 15,
        "{attempts_at_open} attempts before the circuit opened"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let attempts_later = count(&pool, "SELECT count(*) FROM webhook_delivery_attempts").await;
    assert_eq!(
        attempts_later, attempts_at_open,
        "nothing is attempted while open"
    );
    let deferred = count(
        &pool,
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'pending' AND attempts = 0",
    )
    .await;
    assert!(
        deferred >= 35,
        "{deferred} deliveries deferred without an attempt"
    );

    // The endpoint comes back: the probe closes the circuit and the whole backlog arrives.
    receiver.always(Reply::status(200));
    let list = app
        .wait_deliveries(&id, Duration::from_secs(15), |l| {
            l.len() == 50 && l.iter().all(|d| d["status"] == "success")
        })
        .await;
    assert!(list.iter().all(|d| d["attempts"].as_i64().unwrap() <= 4));
    let closed = webhook(&app, &id).await;
    assert_eq!(closed["circuit"]["state"], "closed");
    assert_eq!(closed["circuit"]["consecutive_failures"], 0);
    let failed_attempts = count(
        &pool,
        "SELECT count(*) FROM webhook_delivery_attempts WHERE NOT succeeded",
    )
    .await;
    assert!(
        failed_attempts < 20,
        "{failed_attempts} failed attempts for 50 deliveries (10 each without the breaker)"
    );
}

#[sqlx::test]
async fn an_endpoint_answering_410_gone_is_disabled_with_a_reason_and_can_be_re_enabled(
    pool: PgPool,
) {
    let app = TestApp::spawn_with(pool.clone(), |c| c.webhook_delivery_concurrency = 2).await;
    let (receiver, id) = endpoint_answering(&app, Reply::status(410), 20).await;
    let disabled = wait_webhook(&app, &id, Duration::from_secs(10), |w| w["active"] == false).await;
    let reason = disabled["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("410 Gone"), "{reason}");
    assert!(disabled["disabled_at"].is_string());
    let list = app
        .wait_deliveries(&id, Duration::from_secs(5), |l| {
            l.len() == 20 && l.iter().all(|d| d["status"] == "failed")
        })
        .await;
    assert!(
        list.iter()
            .any(|d| d["last_error"].as_str().unwrap().contains("disabled"))
    );
    let sent = receiver.received().len();
    assert!(sent < 20, "{sent} requests: the rest were not sent");
    publish_many(&pool, "price.alert", 3).await;
    receiver
        .assert_stays_at(sent, Duration::from_millis(500))
        .await;
    let metrics = metrics(&app).await;
    assert!(
        metrics.contains(r#"webhook_disabled_total{reason="gone"} 1"#),
        "{metrics}"
    );
    let stats: Value = app.get("/api/v1/stats").await.json().await.unwrap();
    assert_eq!(stats["disabled_webhooks"][0]["webhook_id"], id.as_str());

    receiver.always(Reply::status(200));
    let back: Value = app
        .patch(&format!("/api/v1/webhooks/{id}"), json!({"active": true}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(back["active"], true);
    assert!(back["disabled_reason"].is_null() && back["disabled_at"].is_null());
    assert_eq!(back["circuit"]["state"], "closed");
    app.publish_sql("pool.closed", json!({}), Some("after-re-enable"))
        .await;
    receiver.wait_for(sent + 1, Duration::from_secs(5)).await;
}

#[sqlx::test]
async fn a_circuit_open_with_no_success_for_disable_after_disables_the_webhook(pool: PgPool) {
    let app = TestApp::spawn_with(pool.clone(), |c| {
        c.webhook_breaker_threshold = 2;
        c.webhook_breaker_cooldown_ms = 200;
        c.webhook_disable_after_s = 2;
        c.webhook_max_attempts = 100;
        c.webhook_delivery_concurrency = 2;
    })
    .await;
    let (_receiver, id) = endpoint_answering(&app, Reply::status(503), 5).await;
    let started = Instant::now();
    let disabled = wait_webhook(&app, &id, Duration::from_secs(15), |w| w["active"] == false).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before WEBHOOK_DISABLE_AFTER_S"
    );
    let reason = disabled["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("circuit stayed open"), "{reason}");
    app.wait_deliveries(&id, Duration::from_secs(5), |l| {
        l.iter().all(|d| d["status"] == "failed")
    })
    .await;
    let metrics = metrics(&app).await;
    assert!(
        metrics.contains(r#"webhook_disabled_total{reason="circuit_open"} 1"#),
        "{metrics}"
    );
}

#[sqlx::test]
async fn rate_limit_holds_across_two_instances(pool: PgPool) {
    let one = TestApp::spawn(pool.clone()).await;
    let two = TestApp::spawn(pool.clone()).await;
    let receiver = Receiver::start().await;
    let created = create(
        &one,
        json!({"url": receiver.url, "events": ["*"], "rate_limit": 20}),
    )
    .await;
    assert_eq!(created["rate_limit"], 20);
    publish_many(&pool, "pool.created", 100).await;
    let arrived = receiver.wait_for(100, Duration::from_secs(20)).await;
    let first = arrived[0].at;
    let offsets: Vec<f64> = arrived
        .iter()
        .map(|r| r.at.duration_since(first).as_secs_f64())
        .collect();
    let span = *offsets.last().unwrap();
    // A burst of one second's worth (20), then one every 1/20 s: the 100th
    // cannot arrive before (100 − 20) / 20 = 4 s.
    println!("100 deliveries at 20/s over two instances: {span:.2} s");
    assert!(span >= 0.9 * 4.0, "span {span:.2} s");
    for (j, at) in offsets.iter().enumerate() {
        let earliest = (j as f64 + 1.0 - 20.0) / 20.0;
        assert!(
            *at >= earliest - 0.1,
            "delivery {j} at {at:.3} s, the limit allows it from {earliest:.3} s"
        );
    }
    let id = created["id"].as_str().unwrap();
    let list = one
        .wait_deliveries(id, Duration::from_secs(5), |l| {
            l.len() == 100 && l.iter().all(|d| d["status"] == "success")
        })
        .await;
    assert!(list.iter().all(|d| d["attempts"] == 1), "no attempt wasted");
    assert_eq!(receiver.received().len(), 100);
    drop(two);
}

#[sqlx::test]
async fn fifo_holds_across_two_instances_with_a_failing_head_retried_first(pool: PgPool) {
    let tweak = |c: &mut smartdrop_webhooks::config::Config| {
        c.webhook_retry_base_ms = 200;
    };
    let one = TestApp::spawn_with(pool.clone(), tweak).await;
    let _two = TestApp::spawn_with(pool.clone(), tweak).await;
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500).delayed(Duration::from_millis(20))]);
    receiver.always(Reply::status(200).delayed(Duration::from_millis(20)));
    let created = create(
        &one,
        json!({"url": receiver.url, "events": ["*"], "ordering": "fifo"}),
    )
    .await;
    assert_eq!(created["ordering"], "fifo");
    publish_many(&pool, "pool.created", 30).await;
    let arrived = receiver.wait_for(31, Duration::from_secs(20)).await;
    let order: Vec<i64> = arrived
        .iter()
        .map(|r| r.json()["data"]["i"].as_i64().unwrap())
        .collect();
    let mut expected = vec![0];
    expected.extend(0..30);
    assert_eq!(
        order, expected,
        "strict publish order, the failing head retried first"
    );
    assert_eq!(receiver.max_in_flight(), 1, "never two in flight");
}

#[sqlx::test]
async fn isolation_options_are_validated_shown_and_changed(pool: PgPool) {
    let app = TestApp::spawn(pool.clone()).await;
    for (body, field) in [
        (
            json!({"url": "http://127.0.0.1:9/x", "events": ["*"], "rate_limit": 0}),
            "rate_limit",
        ),
        (
            json!({"url": "http://127.0.0.1:9/x", "events": ["*"], "rate_limit": 100001}),
            "rate_limit",
        ),
        (
            json!({"url": "http://127.0.0.1:9/x", "events": ["*"], "ordering": "random"}),
            "ordering",
        ),
    ] {
        let response = app.post("/api/v1/webhooks", body).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    let created = create(
        &app,
        json!({"url": "http://127.0.0.1:9/x", "events": ["*"]}),
    )
    .await;
    assert_eq!(created["rate_limit"], Value::Null);
    assert_eq!(created["ordering"], "unordered");
    assert_eq!(created["disabled_reason"], Value::Null);
    assert_eq!(created["disabled_at"], Value::Null);
    assert_eq!(
        created["circuit"],
        json!({"state": "closed", "consecutive_failures": 0, "open_until": null})
    );
    let id = created["id"].as_str().unwrap();
    let path = format!("/api/v1/webhooks/{id}");
    let changed: Value = app
        .patch(&path, json!({"rate_limit": 5, "ordering": "fifo"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (changed["rate_limit"].clone(), changed["ordering"].clone()),
        (json!(5), json!("fifo"))
    );
    let cleared: Value = app
        .patch(&path, json!({"rate_limit": null}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cleared["rate_limit"], Value::Null);
    assert_eq!(cleared["ordering"], "fifo");
    let listed: Value = app.get("/api/v1/webhooks").await.json().await.unwrap();
    assert_eq!(listed["data"][0]["circuit"]["state"], "closed");
}

/// (tat, now, want) → (allowed, new tat, next cell at)
type GcraCase<'a> = (Option<&'a str>, &'a str, i32, i32, &'a str, &'a str);

/// GCRA known answers: rate 10/s, burst 10.
#[sqlx::test]
async fn the_throttle_follows_gcra(pool: PgPool) {
    let t0 = "2026-01-01T00:00:00Z";
    let cases: [GcraCase; 5] = [
        (
            None,
            t0,
            25,
            10,
            "2026-01-01T00:00:01Z",
            "2026-01-01T00:00:00.1Z",
        ),
        (
            Some("2026-01-01T00:00:01Z"),
            t0,
            5,
            0,
            "2026-01-01T00:00:01Z",
            "2026-01-01T00:00:00.1Z",
        ),
        (
            Some("2026-01-01T00:00:01Z"),
            "2026-01-01T00:00:00.1Z",
            5,
            1,
            "2026-01-01T00:00:01.1Z",
            "2026-01-01T00:00:00.2Z",
        ),
        (
            Some("2026-01-01T00:00:00.3Z"),
            t0,
            25,
            7,
            "2026-01-01T00:00:01Z",
            "2026-01-01T00:00:00.1Z",
        ),
        (
            Some("2025-12-31T00:00:00Z"),
            t0,
            3,
            3,
            "2026-01-01T00:00:00.3Z",
            "2025-12-31T23:59:59.4Z",
        ),
    ];
    for (tat, now, want, allowed, new_tat, next_at) in cases {
        let row: (i32, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
            "SELECT allowed, new_tat, next_at FROM webhook_gcra($1::timestamptz, $2::timestamptz, 10, $3)",
        )
        .bind(tat)
        .bind(now)
        .bind(want)
        .fetch_one(&pool)
        .await
        .unwrap();
        let at = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
        assert_eq!(
            row,
            (allowed, at(new_tat), at(next_at)),
            "tat {tat:?}, now {now}, want {want}"
        );
    }
}
