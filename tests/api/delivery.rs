use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use sqlx::PgPool;

use crate::helpers::{Receiver, Reply, TestApp};

const WAIT: Duration = Duration::from_secs(10);

/// GitHub-style verification, written here with the hmac/sha2 crates and not
/// with the service's own signing module.
fn github_style_ok(secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    expected == hex_sig
}

#[sqlx::test]
async fn a_committed_publish_arrives_signed_in_both_schemes(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    let created = app
        .create_webhook(&receiver.url, &["pool.assets_locked"])
        .await;
    let secret = created["secret"].as_str().unwrap();
    let event_id = app
        .publish_sql(
            "pool.assets_locked",
            json!({"pool_id": "p1", "amount": "12.5"}),
            Some("idx-1"),
        )
        .await;
    assert_eq!(event_id, "idx-1");

    let got = receiver.wait_for(1, WAIT).await;
    let r = &got[0];
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("user-agent"), "SmartDrop-Webhooks/1.0");
    assert_eq!(r.header("x-smartdrop-event"), "pool.assets_locked");
    let delivery_id = r.header("x-smartdrop-delivery");
    assert!(delivery_id.starts_with("dlv_"));
    assert_eq!(r.header("webhook-id"), delivery_id);
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 30);

    // The spec's reference library verifies the Standard Webhooks signature.
    let verifier = standardwebhooks::Webhook::new(secret).unwrap();
    verifier
        .verify(&r.body, &r.headers)
        .expect("standardwebhooks verifies");
    assert!(github_style_ok(
        secret,
        &r.body,
        r.header("x-smartdrop-signature")
    ));
    let mut tampered = r.body.clone();
    tampered.push(b' ');
    assert!(verifier.verify(&tampered, &r.headers).is_err());
    assert!(!github_style_ok(
        secret,
        &tampered,
        r.header("x-smartdrop-signature")
    ));

    let body = r.json();
    assert_eq!(body["event"], "pool.assets_locked");
    assert_eq!(body["event_id"], "idx-1");
    assert_eq!(body["data"], json!({"pool_id": "p1", "amount": "12.5"}));
    let occurred = body["occurred_at"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(occurred).is_ok() && occurred.ends_with('Z'),
        "{occurred}"
    );
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 4);

    let list = app
        .wait_deliveries(created["id"].as_str().unwrap(), WAIT, |l| {
            l.len() == 1 && l[0]["status"] == "success"
        })
        .await;
    assert_eq!(list[0]["id"], delivery_id);
    assert_eq!(list[0]["attempts"], 1);
    assert_eq!(list[0]["response_status"], 200);
}

#[sqlx::test]
async fn the_body_and_webhook_id_are_identical_on_every_attempt(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500), Reply::status(503)]);
    let app = TestApp::spawn(pool).await;
    let created = app.create_webhook(&receiver.url, &["*"]).await;
    app.publish_sql(
        "price.alert",
        json!({"symbol": "SDT", "price": 1.25, "nested": {"a": [1, 2]}}),
        None,
    )
    .await;
    let got = receiver.wait_for(3, WAIT).await;
    assert!(got.iter().all(|r| r.body == got[0].body));
    assert!(
        got.iter()
            .all(|r| r.header("webhook-id") == got[0].header("webhook-id"))
    );
    let verifier = standardwebhooks::Webhook::new(created["secret"].as_str().unwrap()).unwrap();
    for r in &got {
        verifier.verify(&r.body, &r.headers).unwrap();
    }
}

#[sqlx::test]
async fn subscriptions_receive_exactly_the_events_they_match(pool: PgPool) {
    let all = Receiver::start().await;
    let pool_only = Receiver::start().await;
    let exact = Receiver::start().await;
    let inactive = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&all.url, &["*"]).await;
    app.create_webhook(&pool_only.url, &["pool.*"]).await;
    app.create_webhook(&exact.url, &["price.alert", "pool.closed"])
        .await;
    let off = app.create_webhook(&inactive.url, &["*"]).await;
    let off_id = off["id"].as_str().unwrap();
    app.patch(
        &format!("/api/v1/webhooks/{off_id}"),
        json!({"active": false}),
    )
    .await;

    for t in [
        "pool.created",
        "pool.assets_locked",
        "price.alert",
        "pool.closed",
        "pool.rewards_distributed",
    ] {
        app.publish_sql(t, json!({}), None).await;
    }
    let events = |r: &Receiver| -> Vec<String> {
        let mut v: Vec<String> = r
            .received()
            .iter()
            .map(|x| x.json()["event"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    all.wait_for(5, WAIT).await;
    pool_only.wait_for(4, WAIT).await;
    exact.wait_for(2, WAIT).await;
    all.assert_stays_at(5, Duration::from_millis(300)).await;
    assert_eq!(
        events(&pool_only),
        [
            "pool.assets_locked",
            "pool.closed",
            "pool.created",
            "pool.rewards_distributed"
        ]
    );
    assert_eq!(events(&exact), ["pool.closed", "price.alert"]);
    assert_eq!(pool_only.received().len(), 4);
    assert!(inactive.received().is_empty());
    assert!(
        app.deliveries(off_id).await.is_empty(),
        "inactive webhooks get no deliveries"
    );
}

#[sqlx::test]
async fn pending_deliveries_of_a_deactivated_or_deleted_webhook_are_not_sent(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(500));
    let app = TestApp::spawn_with(pool, |c| c.webhook_retry_base_ms = 1500).await;
    let a = app.create_webhook(&receiver.url, &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let b = app
        .create_webhook(&format!("{}/b", receiver.url), &["*"])
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.publish_sql("pool.created", json!({}), None).await;
    receiver.wait_for(2, WAIT).await;
    // Both are now pending a retry in 1.5 s.
    app.patch(&format!("/api/v1/webhooks/{a}"), json!({"active": false}))
        .await;
    assert_eq!(
        app.delete(&format!("/api/v1/webhooks/{b}")).await.status(),
        204
    );
    let list = app
        .wait_deliveries(&a, WAIT, |l| l[0]["status"] == "failed")
        .await;
    assert_eq!(list[0]["attempts"], 1);
    assert!(list[0]["last_error"].as_str().unwrap().contains("inactive"));
    receiver
        .assert_stays_at(2, Duration::from_millis(500))
        .await;
}

#[sqlx::test]
async fn test_endpoint_answers_with_the_delivery_after_its_first_attempt(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    let created = app.create_webhook(&receiver.url, &["price.alert"]).await;
    let id = created["id"].as_str().unwrap();
    let response = app.post_empty(&format!("/api/v1/webhooks/{id}/test")).await;
    assert_eq!(response.status(), 200);
    let delivery: Value = response.json().await.unwrap();
    assert_eq!(delivery["status"], "success");
    assert_eq!(delivery["response_status"], 200);
    assert_eq!(delivery["attempts"], 1);
    assert_eq!(delivery["last_error"], Value::Null);
    assert!(delivery["duration_ms"].is_i64());
    assert_eq!(delivery["event"], "pool.assets_locked");
    let got = receiver.received();
    assert_eq!(got.len(), 1, "sent before the response");
    assert_eq!(got[0].json()["event"], "pool.assets_locked");
    standardwebhooks::Webhook::new(created["secret"].as_str().unwrap())
        .unwrap()
        .verify(&got[0].body, &got[0].headers)
        .unwrap();

    receiver.script([Reply::status(500)]);
    let failed: Value = app
        .post_empty(&format!("/api/v1/webhooks/{id}/test"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failed["status"], "pending");
    assert_eq!(failed["response_status"], 500);
    assert_eq!(failed["last_error"], "HTTP 500");
}

#[sqlx::test]
async fn median_commit_to_arrival_latency_is_low_when_idle(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["*"]).await;
    let mut latencies = vec![];
    for i in 0..100 {
        let mut tx = app.pool.begin().await.unwrap();
        sqlx::query("SELECT webhook_publish('pool.created', '{}'::jsonb)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let committed = Instant::now();
        let got = receiver.wait_for(i + 1, WAIT).await;
        latencies.push(got[i].at.saturating_duration_since(committed));
    }
    latencies.sort();
    let median = latencies[50];
    println!(
        "commit → arrival over 100 events: p50 {median:?}, p90 {:?}, max {:?}",
        latencies[90], latencies[99]
    );
    assert!(median < Duration::from_millis(50), "median {median:?}");
}

#[sqlx::test]
async fn a_rotation_with_overlap_signs_with_both_secrets_until_it_ends(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    let created = app.create_webhook(&receiver.url, &["*"]).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let rotate = format!("/api/v1/webhooks/{id}/rotate-secret");
    let old = created["secret"].as_str().unwrap().to_owned();
    let verifies = |secret: &str, r: &crate::helpers::Received| {
        standardwebhooks::Webhook::new(secret)
            .unwrap()
            .verify(&r.body, &r.headers)
            .is_ok()
    };
    let mut published = 0;
    let mut deliver = async |event_id: &str| {
        app.publish_sql("pool.created", json!({}), Some(event_id))
            .await;
        published += 1;
        receiver
            .wait_for(published, WAIT)
            .await
            .into_iter()
            .find(|r| r.json()["event_id"] == event_id)
            .unwrap()
    };

    // No body: a generated secret, and the old one overlaps for a day.
    let rotated: Value = app.post_empty(&rotate).await.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let until = chrono::DateTime::parse_from_rfc3339(
        rotated["previous_secret_expires_at"].as_str().unwrap(),
    )
    .unwrap();
    let left = until.with_timezone(&chrono::Utc) - chrono::Utc::now();
    assert!(
        left > chrono::Duration::hours(23) && left <= chrono::Duration::hours(24),
        "{left}"
    );
    assert!(
        !rotated.to_string().contains(&old),
        "the old secret is never shown again"
    );
    let r = deliver("rot-1").await;
    assert_eq!(r.header("webhook-signature").split(' ').count(), 2);
    assert!(r.header("webhook-signature").starts_with("v1,"));
    assert!(verifies(&old, &r), "a receiver still on the old secret");
    assert!(verifies(&new, &r), "a receiver already on the new one");
    assert!(github_style_ok(
        &new,
        &r.body,
        r.header("x-smartdrop-signature")
    ));
    assert!(!github_style_ok(
        &old,
        &r.body,
        r.header("x-smartdrop-signature")
    ));

    // A rotation during an overlap replaces the older secret.
    let third: Value = app
        .post(&rotate, json!({"overlap_s": 3}))
        .await
        .json()
        .await
        .unwrap();
    let third = third["secret"].as_str().unwrap().to_owned();
    let r = deliver("rot-2").await;
    assert!(verifies(&third, &r) && verifies(&new, &r));
    assert!(
        !verifies(&old, &r),
        "only the secret replaced last overlaps"
    );

    // When the overlap ends, only the current secret signs.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let r = deliver("rot-3").await;
    assert_eq!(r.header("webhook-signature").split(' ').count(), 1);
    assert!(verifies(&third, &r) && !verifies(&new, &r));

    // A chosen secret with no overlap: a hard cut-over.
    let chosen = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let cut: Value = app
        .post(&rotate, json!({"secret": chosen, "overlap_s": 0}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cut["secret"], chosen);
    assert_eq!(cut["previous_secret_expires_at"], Value::Null);
    let r = deliver("rot-4").await;
    assert_eq!(r.header("webhook-signature").split(' ').count(), 1);
    assert!(verifies(chosen, &r) && !verifies(&third, &r));

    for bad in [
        json!({"overlap_s": 604_801}),
        json!({"overlap_s": -1}),
        json!({"secret": "supersecretvalue1234"}),
        json!({"overlap": 10}),
    ] {
        assert_eq!(app.post(&rotate, bad.clone()).await.status(), 400, "{bad}");
    }
    assert_eq!(
        app.post_empty("/api/v1/webhooks/wh_00000000000000000000000000000000/rotate-secret")
            .await
            .status(),
        404
    );
}

#[sqlx::test]
async fn a_long_answer_is_drained_so_the_connection_is_reused(pool: PgPool) {
    let receiver = Receiver::start().await;
    // Far longer than the 4 KiB excerpt (and than what the client buffers on
    // its own), shorter than the 64 KiB drain limit.
    receiver.always(Reply::status(200).body(&[b'x'; 60_000]));
    let app = TestApp::spawn(pool).await;
    app.create_webhook(&receiver.url, &["*"]).await;
    for n in 1..=3 {
        app.publish_sql("pool.created", json!({"n": n}), None).await;
        receiver.wait_for(n, WAIT).await;
    }
    let peers: Vec<_> = receiver.received().iter().map(|r| r.peer).collect();
    assert!(peers[0].is_some());
    assert!(
        peers.windows(2).all(|w| w[0] == w[1]),
        "one connection for all three: {peers:?}"
    );
}

#[sqlx::test]
async fn a_test_send_whose_result_cannot_be_recorded_is_a_503_and_is_not_sent_twice(pool: PgPool) {
    let receiver = Receiver::start().await;
    let app = TestApp::spawn_with(pool.clone(), |c| c.database_statement_timeout_ms = 300).await;
    let id = app.create_webhook(&receiver.url, &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Recording the attempt waits on this lock until the statement timeout.
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE webhook_delivery_attempts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let response = app.post_empty(&format!("/api/v1/webhooks/{id}/test")).await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], "service_unavailable");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("could not be recorded"),
        "{error}"
    );
    locker.rollback().await.unwrap();
    // Sent once; not again because of the failure (its lease still holds it).
    assert_eq!(receiver.received().len(), 1);
    receiver
        .assert_stays_at(1, Duration::from_millis(500))
        .await;
    let list: Value = app
        .get(&format!("/api/v1/webhooks/{id}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["status"], "pending", "{list}");
}
