//! The dashboard in a real browser: Debian's headless Chromium, driven by
//! playwright-core (tests/browser/dashboard.mjs), against the running service
//! with deliveries that really happened. Saves tests/artifacts/dashboard.png.
#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use helpers::{KEY, Receiver, Reply, TestApp};

#[sqlx::test]
async fn the_dashboard_shows_the_seeded_webhooks_in_chromium(pool: PgPool) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/browser/node_modules/playwright-core")
            .exists(),
        "run `npm ci --prefix tests/browser` (and `apt-get install chromium`) first; .ci/run does both"
    );
    let ok = Receiver::start().await;
    let broken = Receiver::start().await;
    broken.always(Reply::status(500));
    // The broken endpoint's sixth failure opens its circuit (all six are
    // attempted first, so none stays pending).
    let app = TestApp::spawn_with(pool, |c| {
        c.webhook_max_attempts = 1;
        c.webhook_breaker_threshold = 6;
    })
    .await;
    let pools = app.create_webhook(&ok.url, &["pool.*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let everything = app.create_webhook(&broken.url, &["*"]).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let prices = app
        .create_webhook(&format!("{}/prices", ok.url), &["price.alert"])
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for i in 0..4 {
        app.publish_sql("pool.created", json!({"pool": i}), None)
            .await;
    }
    for i in 0..2 {
        app.publish_sql("price.alert", json!({"alert": i}), None)
            .await;
    }
    let done = |n: usize| {
        move |l: &[serde_json::Value]| l.len() == n && l.iter().all(|d| d["status"] != "pending")
    };
    app.wait_deliveries(&pools, Duration::from_secs(10), done(4))
        .await;
    app.wait_deliveries(&everything, Duration::from_secs(10), done(6))
        .await;
    app.wait_deliveries(&prices, Duration::from_secs(10), done(2))
        .await;

    // The prices webhook was disabled by the service (as after a 410).
    sqlx::query("UPDATE webhooks SET active = false, disabled_at = now(), disabled_reason = 'The endpoint answered 410 Gone, which says it will not come back.' WHERE id = $1")
        .bind(&prices)
        .execute(&app.pool)
        .await
        .unwrap();

    // Settings the page shows (header names, never values), and a receiver
    // that is back for the actions (retry, test, recover) the script takes.
    let patched = app
        .patch(
            &format!("/api/v1/webhooks/{everything}"),
            json!({"headers": {"X-Api-Key": "hdr-secret-value"}, "filter": {"pool_id": ["p1"]}, "rate_limit": 50}),
        )
        .await;
    assert_eq!(patched.status(), 200);
    broken.always(Reply::status(200));

    // Worked out by hand: the broken endpoint failed all 6 (one attempt each),
    // the two healthy ones succeeded every time. Failing first, then by URL.
    let expected = json!({
        "open_circuit": broken.url,
        "disabled": format!("{}/prices", ok.url),
        "order": [everything, pools, prices],
        "header_value": "hdr-secret-value",
        // 6 failed, one of them retried from the page first.
        "recoverable": 5,
        "webhooks": [
            {"id": everything, "deliveries": 6, "success": 0, "pending": 0, "failed": 6, "success_rate": "0.0%", "consecutive_failures": 6},
            {"id": pools, "deliveries": 4, "success": 4, "pending": 0, "failed": 0, "success_rate": "100.0%", "consecutive_failures": 0},
            {"id": prices, "deliveries": 2, "success": 2, "pending": 0, "failed": 0, "success_rate": "100.0%", "consecutive_failures": 0},
        ]
    });
    let artifacts = root.join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let expected_path = artifacts.join("dashboard-expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    let screenshot = artifacts.join("dashboard.png");
    let out = tokio::process::Command::new("node")
        .current_dir(root.join("tests/browser"))
        .arg("dashboard.mjs")
        .arg(&app.address)
        .arg(KEY)
        .arg(&expected_path)
        .arg(&screenshot)
        .output()
        .await
        .expect("node runs");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(screenshot.exists());
}

/// Runs tests/browser/verify.mjs (the README's JavaScript example, with the
/// `standardwebhooks` npm package) on a delivery file; returns stdout or the error.
async fn verify_with_node(root: &Path, file: &Path) -> Result<String, String> {
    let out = tokio::process::Command::new("node")
        .current_dir(root.join("tests/browser"))
        .arg("verify.mjs")
        .arg(file)
        .output()
        .await
        .expect("node runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[sqlx::test]
async fn a_real_delivery_verifies_with_the_javascript_standardwebhooks_library(pool: PgPool) {
    use base64::Engine;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        root.join("tests/browser/node_modules/standardwebhooks")
            .exists(),
        "run `npm ci --prefix tests/browser` first"
    );
    let receiver = Receiver::start().await;
    let app = TestApp::spawn(pool).await;
    let secret = app.create_webhook(&receiver.url, &["*"]).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    app.publish_sql(
        "pool.rewards_distributed",
        json!({"pool_id": "p9", "amount": "3.5"}),
        Some("js-1"),
    )
    .await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let headers: serde_json::Map<String, serde_json::Value> = got[0]
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap())))
        .collect();
    let artifacts = root.join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let write = |name: &str, body: &[u8]| {
        let path = artifacts.join(name);
        let engine = base64::engine::general_purpose::STANDARD;
        let file =
            json!({"secret": secret, "body_base64": engine.encode(body), "headers": headers});
        std::fs::write(&path, file.to_string()).unwrap();
        path
    };
    let genuine = write("delivery.json", &got[0].body);
    assert_eq!(
        verify_with_node(root, &genuine).await,
        Ok("js-1".to_owned())
    );
    let mut tampered_body = got[0].body.clone();
    tampered_body.extend_from_slice(b" ");
    let tampered = write("delivery-tampered.json", &tampered_body);
    assert!(
        verify_with_node(root, &tampered).await.is_err(),
        "a tampered body must not verify"
    );
}
