//! Operator features: payload filters, custom headers, recover, replay, and
//! the event-type catalogue over HTTP (JSON Schema, archiving).
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Receiver, Reply, TestApp, count};

fn now_minus(secs: i64) -> String {
    (Utc::now() - chrono::Duration::seconds(secs)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn create(app: &TestApp, body: Value) -> Value {
    let r = app.post("/api/v1/webhooks", body).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    body
}

async fn refused(r: reqwest::Response, status: u16) -> String {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    body["message"].as_str().unwrap().to_owned()
}

async fn publish(app: &TestApp, event: &str, data: Value) -> reqwest::Response {
    app.post("/api/v1/events", json!({"event": event, "data": data}))
        .await
}

#[sqlx::test]
async fn the_filter_sql_gives_the_known_answers(pool: PgPool) {
    for (filter, data, matches) in [
        (
            json!({"pool_id": "p1"}),
            json!({"pool_id": "p1", "x": 1}),
            true,
        ),
        (json!({"pool_id": "p1"}), json!({"pool_id": "p2"}), false),
        (
            json!({"pool_id": ["p1", "p2"]}),
            json!({"pool_id": "p2"}),
            true,
        ),
        (
            json!({"pool_id": ["p1", "p2"], "asset": "SDT"}),
            json!({"pool_id": "p2", "asset": "SDT"}),
            true,
        ),
        (
            json!({"pool_id": ["p1", "p2"], "asset": "SDT"}),
            json!({"pool_id": "p2", "asset": "ETH"}),
            false,
        ),
        (
            json!({"pool_id": "p1", "asset": "SDT"}),
            json!({"pool_id": "p1"}),
            false,
        ),
        (json!({"n": 1}), json!({"n": 1.0}), true),
        (json!({"n": [1, 2]}), json!({"n": 2.00}), true),
        (json!({"n": 1}), json!({"n": "1"}), false),
        (json!({"ok": true}), json!({"ok": true}), true),
        (json!({"ok": true}), json!({"ok": "true"}), false),
        (json!({"k": null}), json!({"k": null}), true),
        (json!({"k": null}), json!({}), false),
        (json!({"k": "a"}), json!({"k": ["a"]}), false),
        (json!({"k": ["a"]}), json!({"k": ["a"]}), false),
        (json!({"k": "a"}), json!({"k": {"a": 1}}), false),
        (json!({"k": "a"}), json!(["k"]), false),
        (json!({"k": "a"}), json!("k"), false),
    ] {
        let (got, indexed): (bool, bool) = sqlx::query_as(
            "SELECT webhook_filter_matches($1, $2), webhook_filter_terms($1) && webhook_data_terms($2)",
        )
        .bind(&filter)
        .bind(&data)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(got, matches, "{filter} against {data}");
        // The index never loses a match: every match shares a term.
        assert!(
            !matches || indexed,
            "{filter} against {data}: no shared term"
        );
    }
}

#[sqlx::test]
async fn the_two_subscription_tests_in_sql_agree(pool: PgPool) {
    // Unfiltered webhooks are matched by migration 12's pattern test,
    // filtered ones (and replay) by webhook_patterns_for: same answers.
    let disagree: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM unnest($1::text[]) p, unnest($2::text[]) t
         WHERE (ARRAY[p] && webhook_patterns_for(t)) IS DISTINCT FROM
               ('*' = p OR t = p OR (right(p, 2) = '.*' AND starts_with(t, left(p, -1))))",
    )
    .bind(vec![
        "*",
        "pool.*",
        "pool.created",
        "price.*",
        "a.*",
        "a.b.*",
        "a.b.c",
        "a.b.c.*",
    ])
    .bind(vec![
        "pool.created",
        "pool.closed",
        "price.alert",
        "a.b.c",
        "a.b",
        "a.bc.d",
    ])
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(disagree, 0);
}

#[sqlx::test]
async fn filtered_webhooks_get_only_matching_events_and_no_rows_for_the_rest(pool: PgPool) {
    let filtered = Receiver::start().await;
    let all = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    let hook = create(
        &app,
        json!({"url": filtered.url, "events": ["pool.*"], "filter": {"pool_id": ["p1", "p2"], "asset": "SDT"}}),
    )
    .await;
    assert_eq!(
        hook["filter"],
        json!({"pool_id": ["p1", "p2"], "asset": "SDT"})
    );
    let id = hook["id"].as_str().unwrap().to_owned();
    create(&app, json!({"url": all.url, "events": ["*"]})).await;

    let events = [
        (
            "pool.created",
            json!({"pool_id": "p1", "asset": "SDT"}),
            true,
        ),
        (
            "pool.created",
            json!({"pool_id": "p3", "asset": "SDT"}),
            false,
        ),
        (
            "pool.closed",
            json!({"pool_id": "p2", "asset": "SDT", "extra": 1}),
            true,
        ),
        (
            "pool.closed",
            json!({"pool_id": "p2", "asset": "ETH"}),
            false,
        ),
        ("pool.closed", json!({"pool_id": "p2"}), false),
        (
            "price.alert",
            json!({"pool_id": "p1", "asset": "SDT"}),
            false,
        ),
    ];
    let mut expected = vec![];
    for (i, (event, data, matches)) in events.iter().enumerate() {
        // Both intakes: the HTTP one fans out in its own statement, the SQL
        // one through the sweep.
        if i % 2 == 0 {
            assert_eq!(publish(&app, event, data.clone()).await.status(), 202);
        } else {
            app.publish_sql(event, data.clone(), None).await;
        }
        if *matches {
            expected.push(data.clone());
        }
    }
    all.wait_for(events.len(), Duration::from_secs(10)).await;
    let got = filtered
        .wait_for(expected.len(), Duration::from_secs(10))
        .await;
    filtered
        .assert_stays_at(expected.len(), Duration::from_millis(300))
        .await;
    let mut got: Vec<Value> = got.iter().map(|r| r.json()["data"].clone()).collect();
    got.sort_by_key(|d| d.to_string());
    expected.sort_by_key(|d| d.to_string());
    assert_eq!(got, expected);
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE webhook_id = $1")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows, 2, "a non-matching event creates no delivery row");

    // Removing the filter: every event of its types again.
    let r = app
        .patch(&format!("/api/v1/webhooks/{id}"), json!({"filter": null}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["filter"], Value::Null);
    app.publish_sql("pool.created", json!({"pool_id": "p9"}), None)
        .await;
    filtered.wait_for(3, Duration::from_secs(10)).await;
}

#[sqlx::test]
async fn bad_filters_are_refused_naming_the_path_and_nothing_is_created(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for (filter, says) in [
        (json!("p1"), "filter: must be an object"),
        (
            json!({"pool_id": {"in": ["p1"]}}),
            "filter.pool_id: must be a string, number, boolean or null",
        ),
        (
            json!({"pool_id": []}),
            "filter.pool_id: must list at least one value",
        ),
        (json!({"pool_id": ["p1", ["p2"]]}), "filter.pool_id[1]:"),
        (
            Value::Object((0..21).map(|i| (format!("k{i}"), json!(1))).collect()),
            "filter: at most 20 keys",
        ),
        (
            json!({"k": (0..101).collect::<Vec<_>>()}),
            "filter.k: at most 100 values",
        ),
    ] {
        let r = app
            .post(
                "/api/v1/webhooks",
                json!({"url": "https://example.com/h", "events": ["*"], "filter": filter}),
            )
            .await;
        let message = refused(r, 400).await;
        assert!(message.contains(says), "{filter}: {message}");
    }
    assert_eq!(count(&app.pool, "SELECT count(*) FROM webhooks").await, 0);
    // `{}` is no filter.
    let hook = create(
        &app,
        json!({"url": "https://example.com/h", "events": ["*"], "filter": {}}),
    )
    .await;
    assert_eq!(hook["filter"], Value::Null);
}

#[sqlx::test]
async fn a_filtered_fan_out_looks_up_webhooks_by_index(pool: PgPool) {
    // 2,000 webhooks, each on its own pool.
    sqlx::query(
        "INSERT INTO webhooks (url, events, secret, filter)
         SELECT 'https://example.com/' || i, '{pool.*}', 'whsec_x', jsonb_build_object('pool_id', 'p' || i)
         FROM generate_series(1, 2000) i",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE webhooks")
        .execute(&pool)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT w.id FROM webhooks w
         WHERE w.active AND w.filter IS NOT NULL
           AND webhook_filter_terms(w.filter) && webhook_data_terms('{\"pool_id\": \"p7\", \"asset\": \"SDT\"}')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        plan.iter().any(|l| l.contains("webhooks_filter_terms_idx")),
        "{plan:#?}"
    );
    let fanned: Vec<(String, i64)> = sqlx::query_as(
        "SELECT f.event_id, f.deliveries FROM webhook_fan_out(ARRAY[jsonb_populate_record(NULL::webhook_events,
            '{\"id\": 1, \"event_id\": \"evt_a\", \"event_type\": \"pool.created\", \"data\": {\"pool_id\": \"p7\"}}')]) f",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(fanned, vec![("evt_a".to_owned(), 1)]);
}

#[sqlx::test]
async fn custom_headers_are_sent_on_every_attempt_and_returned(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500)]);
    let app = TestApp::spawn(pool).await;
    let hook = create(
        &app,
        json!({"url": receiver.url, "events": ["*"], "headers": {"X-Api-Key": "gw-token-1", "X-Tenant": "t1"}}),
    )
    .await;
    assert_eq!(
        hook["headers"],
        json!({"X-Api-Key": "gw-token-1", "X-Tenant": "t1"})
    );
    let id = hook["id"].as_str().unwrap();
    app.publish_sql("pool.created", json!({}), None).await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    for r in &got {
        assert_eq!(r.header("x-api-key"), "gw-token-1");
        assert_eq!(r.header("x-tenant"), "t1");
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.header("webhook-signature").starts_with("v1,"));
    }
    let fetched: Value = app
        .get(&format!("/api/v1/webhooks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["headers"]["X-Api-Key"], "gw-token-1");
    // Replaced as a whole; null removes them.
    let r = app
        .patch(
            &format!("/api/v1/webhooks/{id}"),
            json!({"headers": {"X-Other": "2"}}),
        )
        .await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["headers"],
        json!({"X-Other": "2"})
    );
    let r = app
        .patch(&format!("/api/v1/webhooks/{id}"), json!({"headers": null}))
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["headers"], json!({}));
    // The test endpoint sends them too.
    app.patch(
        &format!("/api/v1/webhooks/{id}"),
        json!({"headers": {"X-Test": "yes"}}),
    )
    .await;
    let r = app
        .post(&format!("/api/v1/webhooks/{id}/test"), json!({}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(receiver.received().last().unwrap().header("x-test"), "yes");
}

#[sqlx::test]
async fn forbidden_header_names_and_values_are_refused(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    for (headers, says) in [
        (
            json!({"Host": "evil.example"}),
            "headers.Host: cannot be set",
        ),
        (json!({"Content-Length": "0"}), "cannot be set"),
        (json!({"content-type": "text/plain"}), "cannot be set"),
        (json!({"Transfer-Encoding": "chunked"}), "cannot be set"),
        (json!({"Connection": "close"}), "cannot be set"),
        (json!({"X-SmartDrop-Signature": "forged"}), "cannot be set"),
        (json!({"webhook-signature": "v1,forged"}), "cannot be set"),
        (json!({"Bad Name": "x"}), "not a valid header name"),
        (
            json!({"X-A": "a\r\nX-Injected: 1"}),
            "headers.X-A: the value must not contain CR or LF",
        ),
        (json!({"X-A": "line\nbreak"}), "CR or LF"),
        (json!({"X-A": "x".repeat(1025)}), "at most 1024 bytes"),
        (json!({"X-A": 5}), "must be a string"),
    ] {
        let r = app
            .post(
                "/api/v1/webhooks",
                json!({"url": "https://example.com/h", "events": ["*"], "headers": headers}),
            )
            .await;
        let message = refused(r, 400).await;
        assert!(message.contains(says), "{headers}: {message}");
    }
    assert_eq!(count(&app.pool, "SELECT count(*) FROM webhooks").await, 0);
}

#[sqlx::test]
async fn recover_requeues_failed_deliveries_with_a_fresh_schedule_once(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(503));
    let app = TestApp::spawn_with(pool, |c| c.webhook_max_attempts = 2).await;
    let id = app.create_webhook(&receiver.url, &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let since = now_minus(5);
    for i in 0..3 {
        app.publish_sql("pool.created", json!({"i": i}), None).await;
    }
    let failed = |l: &[Value]| l.len() == 3 && l.iter().all(|d| d["status"] == "failed");
    app.wait_deliveries(&id, Duration::from_secs(10), failed)
        .await;

    // Nothing in a window before them.
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/recover"),
            json!({"since": now_minus(3600), "until": since}),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"requeued": 0}));

    // The endpoint is back: all three go out again, with a full schedule
    // (two more attempts each when the first of them fails).
    receiver.always(Reply::status(200));
    receiver.script([Reply::status(500), Reply::status(500), Reply::status(500)]);
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/recover"),
            json!({"since": since}),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"requeued": 3}));
    let again = app
        .post(
            &format!("/api/v1/webhooks/{id}/recover"),
            json!({"since": since}),
        )
        .await;
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        json!({"requeued": 0}),
        "a second call finds nothing failed"
    );
    let done = |l: &[Value]| l.iter().all(|d| d["status"] == "success");
    let list = app
        .wait_deliveries(&id, Duration::from_secs(10), done)
        .await;
    for d in &list {
        assert_eq!(d["attempts"], 4, "two before, two in the new schedule: {d}");
    }
    let detail: Value = app
        .get(&format!(
            "/api/v1/webhooks/{id}/deliveries/{}",
            list[0]["id"].as_str().unwrap()
        ))
        .await
        .json()
        .await
        .unwrap();
    let numbers: Vec<i64> = detail["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4], "the attempt log keeps counting");

    // Nothing failed now: nothing to requeue.
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/recover"),
            json!({"since": since}),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"requeued": 0}));
}

#[sqlx::test]
async fn recover_and_replay_refuse_bad_windows_unknown_and_inactive_webhooks(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let id = app.create_webhook("https://example.com/h", &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for action in ["recover", "replay"] {
        let path = format!("/api/v1/webhooks/{id}/{action}");
        let message = refused(
            app.post(
                &path,
                json!({"since": now_minus(0), "until": now_minus(60)}),
            )
            .await,
            400,
        )
        .await;
        assert!(message.contains("since: must be before until"), "{message}");
        assert_eq!(
            app.post(&path, json!({"until": now_minus(0)}))
                .await
                .status(),
            400
        );
        assert_eq!(
            app.post(&path, json!({"since": "yesterday"}))
                .await
                .status(),
            400
        );
        assert_eq!(
            app.post(&path, json!({"since": now_minus(60), "extra": 1}))
                .await
                .status(),
            400
        );
        let unknown = format!("/api/v1/webhooks/wh_{}/{action}", "0".repeat(32));
        assert_eq!(
            app.post(&unknown, json!({"since": now_minus(60)}))
                .await
                .status(),
            404
        );
    }
    app.patch(&format!("/api/v1/webhooks/{id}"), json!({"active": false}))
        .await;
    for action in ["recover", "replay"] {
        let path = format!("/api/v1/webhooks/{id}/{action}");
        let message = refused(app.post(&path, json!({"since": now_minus(60)})).await, 409).await;
        assert!(message.contains("inactive"), "{message}");
    }
}

#[sqlx::test]
async fn replay_sends_a_late_webhook_what_it_missed_once_with_the_same_bytes(pool: PgPool) {
    let early = Receiver::start().await;
    let late = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&early.url, &["*"]).await;
    let since = now_minus(5);
    for i in 0..4 {
        let pool_id = if i % 2 == 0 { "p1" } else { "p2" };
        app.publish_sql(
            "pool.created",
            json!({"pool_id": pool_id, "amount": 1_000_000_000_000_000i64, "i": i}),
            None,
        )
        .await;
    }
    app.publish_sql("price.alert", json!({"pool_id": "p1"}), None)
        .await;
    let originals = early.wait_for(5, Duration::from_secs(10)).await;

    // Registered after the fact: pool events of p1 only.
    let hook = create(
        &app,
        json!({"url": late.url, "events": ["pool.*"], "filter": {"pool_id": "p1"}}),
    )
    .await;
    let id = hook["id"].as_str().unwrap();
    // An empty window creates nothing.
    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/replay"),
            json!({"since": now_minus(3600), "until": since}),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"created": 0}));

    let r = app
        .post(
            &format!("/api/v1/webhooks/{id}/replay"),
            json!({"since": since}),
        )
        .await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"created": 2}));
    let got = late.wait_for(2, Duration::from_secs(10)).await;
    for r in &got {
        let event_id = r.json()["event_id"].as_str().unwrap().to_owned();
        let original = originals
            .iter()
            .find(|o| o.json()["event_id"] == event_id.as_str())
            .unwrap();
        assert_eq!(
            r.body, original.body,
            "the replayed body is the original's, byte for byte"
        );
        assert_eq!(r.json()["data"]["pool_id"], "p1");
    }
    let again = app
        .post(
            &format!("/api/v1/webhooks/{id}/replay"),
            json!({"since": since}),
        )
        .await;
    assert_eq!(
        again.json::<Value>().await.unwrap(),
        json!({"created": 0}),
        "idempotent"
    );
    late.assert_stays_at(2, Duration::from_millis(300)).await;
    let listed = app.deliveries(id).await;
    assert_eq!(
        listed.len(),
        2,
        "replayed deliveries are listed like any other"
    );
}

#[sqlx::test]
async fn event_types_are_managed_over_http_with_schemas_and_archiving(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    let schema = json!({
        "type": "object",
        "required": ["pool_id", "amount"],
        "properties": {"pool_id": {"type": "string"}, "amount": {"type": "string", "pattern": "^[0-9]+$"}}
    });
    let r = app
        .post(
            "/api/v1/event-types",
            json!({"name": "pool.migrated", "description": "a pool moved", "schema": schema}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["schema"], schema);
    assert_eq!(created["archived"], false);
    // Taken, badly named, not a schema.
    let r = app
        .post(
            "/api/v1/event-types",
            json!({"name": "pool.migrated", "description": ""}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let message = refused(
        app.post(
            "/api/v1/event-types",
            json!({"name": "Pool", "description": ""}),
        )
        .await,
        400,
    )
    .await;
    assert!(message.starts_with("name:"), "{message}");
    let message = refused(
        app.post(
            "/api/v1/event-types",
            json!({"name": "pool.x", "description": "", "schema": {"type": "nope"}}),
        )
        .await,
        400,
    )
    .await;
    assert!(message.starts_with("schema:"), "{message}");
    let listed: Value = app.get("/api/v1/event-types").await.json().await.unwrap();
    let listed = listed["data"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|t| t["name"] == "pool.migrated" && t["schema"] == schema)
    );

    let id = app.create_webhook(&receiver.url, &["pool.migrated"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The schema holds over HTTP, naming the failing path.
    let message = refused(
        publish(&app, "pool.migrated", json!({"pool_id": "p1", "amount": 5})).await,
        400,
    )
    .await;
    assert!(message.starts_with("data/amount: "), "{message}");
    let message = refused(
        app.post(
            "/api/v1/events/batch",
            json!({"events": [
                {"event": "pool.migrated", "data": {"pool_id": "p1", "amount": "5"}},
                {"event": "pool.migrated", "data": {"amount": "5"}}
            ]}),
        )
        .await,
        400,
    )
    .await;
    assert!(message.starts_with("events[1].data: "), "{message}");
    assert!(message.contains("pool_id"), "{message}");
    assert_eq!(
        count(&app.pool, "SELECT count(*) FROM webhook_events").await,
        0
    );
    assert_eq!(
        publish(
            &app,
            "pool.migrated",
            json!({"pool_id": "p1", "amount": "5"})
        )
        .await
        .status(),
        202
    );
    receiver.wait_for(1, Duration::from_secs(10)).await;
    // Not the SQL intake's business (see the README).
    app.publish_sql("pool.migrated", json!({"amount": 5}), None)
        .await;
    receiver.wait_for(2, Duration::from_secs(10)).await;

    // Archived: no new events (HTTP or SQL), no new subscriptions; the
    // existing subscription stays.
    let r = app
        .patch(
            "/api/v1/event-types/pool.migrated",
            json!({"archived": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["archived"], true);
    let message = refused(
        publish(
            &app,
            "pool.migrated",
            json!({"pool_id": "p1", "amount": "5"}),
        )
        .await,
        400,
    )
    .await;
    assert!(message.contains("archived"), "{message}");
    let sql = sqlx::query("SELECT webhook_publish('pool.migrated', '{}')")
        .execute(&app.pool)
        .await;
    assert!(sql.unwrap_err().to_string().contains("archived"));
    let message = refused(
        app.post(
            "/api/v1/webhooks",
            json!({"url": "https://example.com/h", "events": ["pool.migrated"]}),
        )
        .await,
        400,
    )
    .await;
    assert!(message.contains("archived"), "{message}");
    let r = app
        .patch(
            &format!("/api/v1/webhooks/{id}"),
            json!({"events": ["pool.migrated", "pool.created"]}),
        )
        .await;
    assert_eq!(r.status(), 200, "a webhook keeps the archived type it had");

    // Types are archived, not deleted; unknown ones are 404.
    let message = refused(app.delete("/api/v1/event-types/pool.migrated").await, 405).await;
    assert!(message.contains("archive"), "{message}");
    assert_eq!(
        app.patch("/api/v1/event-types/pool.nope", json!({"archived": true}))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.patch("/api/v1/event-types/pool.migrated", json!({}))
            .await
            .status(),
        400
    );
    // Back from the archive, schema removed.
    let r = app
        .patch(
            "/api/v1/event-types/pool.migrated",
            json!({"archived": false, "schema": null}),
        )
        .await;
    assert_eq!(r.json::<Value>().await.unwrap()["schema"], Value::Null);
    assert_eq!(
        publish(&app, "pool.migrated", json!({"anything": true}))
            .await
            .status(),
        202
    );
}

#[sqlx::test]
async fn a_catalogue_the_database_cannot_show_in_time_is_a_503_not_a_hang(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |c| c.database_statement_timeout_ms = 300).await;
    let mut holder = app.pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *holder).await.unwrap();
    sqlx::query("LOCK TABLE webhook_event_types IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let r = publish(&app, "pool.created", json!({})).await;
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    sqlx::query("ROLLBACK").execute(&mut *holder).await.unwrap();
    assert_eq!(publish(&app, "pool.created", json!({})).await.status(), 202);
}

#[sqlx::test]
async fn concurrent_replays_of_one_webhook_create_each_delivery_once(pool: PgPool) {
    let late = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    let since = now_minus(5);
    // 2,500 events fanned out to nobody (three replay chunks).
    sqlx::query("SELECT count(webhook_publish('pool.created', jsonb_build_object('i', g))) FROM generate_series(1, 2500) g")
        .execute(&app.pool)
        .await
        .unwrap();
    let swept = |pool: PgPool| async move {
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM webhook_events WHERE dispatched_at IS NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    swept(app.pool.clone()).await;
    let hook = create(&app, json!({"url": late.url, "events": ["*"]})).await;
    let id = hook["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/webhooks/{id}/replay");
    let calls: Vec<_> = (0..4)
        .map(|_| app.post(&path, json!({"since": since})))
        .collect();
    let mut created = 0;
    for r in futures_util::future::join_all(calls).await {
        assert_eq!(r.status(), 202);
        created += r.json::<Value>().await.unwrap()["created"]
            .as_i64()
            .unwrap();
    }
    assert_eq!(
        created, 2500,
        "four concurrent replays create each delivery once"
    );
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT event_id) - count(*) FROM webhook_deliveries WHERE webhook_id = $1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows, 0, "no event twice");
}
