//! The real binary, as operators run it: crashes, restarts, several
//! instances on one database, graceful shutdown, the `publish` subcommand.
#[path = "api/fault_proxy.rs"]
mod fault_proxy;
#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::PgPool;

use helpers::{KEY, Receiver, Reply, database_url};

const BIN: &str = env!("CARGO_BIN_EXE_smartdrop-webhooks");

struct Service {
    child: Child,
    base: String,
}

impl Service {
    async fn start(pool: &PgPool, env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(BIN);
        command
            .env_clear()
            .env("DATABASE_URL", database_url(pool))
            .env("PORT", port.to_string())
            .env("ADMIN_API_KEY", KEY)
            .env("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
            .env("WEBHOOK_RETRY_POLL_MS", "50")
            .env("WEBHOOK_RETRY_BASE_MS", "200")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        for (k, v) in env {
            command.env(k, v);
        }
        let service = Self {
            child: command.spawn().expect("binary starts"),
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = helpers::http_client();
        loop {
            if let Ok(r) = client.get(format!("{}/health", service.base)).send().await
                && r.status() == 200
            {
                return service;
            }
            assert!(Instant::now() < deadline, "service did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn create_webhook(&self, url: &str) -> String {
        let response = helpers::http_client()
            .post(format!("{}/api/v1/webhooks", self.base))
            .bearer_auth(KEY)
            .json(&json!({"url": url, "events": ["*"]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        response.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and returns the exit status and how long the exit took.
    async fn terminate(mut self) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn publish_many(pool: &PgPool, n: i32, prefix: &str) {
    sqlx::query("SELECT webhook_publish('pool.created', jsonb_build_object('i', g), $2 || g) FROM generate_series(1, $1) g")
        .bind(n)
        .bind(prefix)
        .execute(pool)
        .await
        .unwrap();
}

async fn wait_all_succeeded(pool: &PgPool, n: i64, deadline: Duration) {
    let start = Instant::now();
    loop {
        let done: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'success'")
                .fetch_one(pool)
                .await
                .unwrap();
        if done == n {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "{done} of {n} deliveries succeeded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn distinct(receiver: &Receiver, header: &str) -> HashSet<String> {
    receiver
        .received()
        .iter()
        .map(|r| r.header(header).to_owned())
        .collect()
}

#[sqlx::test]
async fn events_published_while_the_service_is_stopped_are_all_delivered_after_it_starts(
    pool: PgPool,
) {
    let receiver = Receiver::start().await;
    let service = Service::start(&pool, &[]).await;
    service.create_webhook(&receiver.url).await;
    let (status, _) = service.terminate().await;
    assert!(status.success());
    publish_many(&pool, 100, "offline-").await;
    let _service = Service::start(&pool, &[]).await;
    receiver.wait_for(100, Duration::from_secs(20)).await;
    wait_all_succeeded(&pool, 100, Duration::from_secs(10)).await;
    assert_eq!(distinct(&receiver, "webhook-id").len(), 100);
}

#[sqlx::test]
async fn a_kill_9_mid_delivery_loses_nothing(pool: PgPool) {
    let receiver = Receiver::start().await;
    // The first five requests are held open far past the kill.
    receiver.script((0..5).map(|_| Reply::status(200).delayed(Duration::from_secs(30))));
    let env = [("WEBHOOK_TIMEOUT_MS", "2000"), ("WEBHOOK_LEASE_MS", "3000")];
    let service = Service::start(&pool, &env).await;
    service.create_webhook(&receiver.url).await;
    publish_many(&pool, 5, "crash-").await;
    receiver.wait_for(5, Duration::from_secs(10)).await;
    service.kill_9();
    let restarted_at = Instant::now();
    let _service = Service::start(&pool, &env).await;
    wait_all_succeeded(&pool, 5, Duration::from_secs(20)).await;
    println!(
        "all 5 redelivered {:?} after the restart began",
        restarted_at.elapsed()
    );
    let got = receiver.received();
    assert_eq!(
        got.len(),
        10,
        "each event once before the crash and once after"
    );
    assert_eq!(
        distinct(&receiver, "webhook-id").len(),
        5,
        "redelivered under the same webhook-id"
    );
}

#[sqlx::test]
async fn three_instances_deliver_1000_events_none_missing_none_twice(pool: PgPool) {
    let receiver = Receiver::start().await;
    let services = [
        Service::start(&pool, &[]).await,
        Service::start(&pool, &[]).await,
        Service::start(&pool, &[]).await,
    ];
    services[0].create_webhook(&receiver.url).await;
    for batch in 0..10 {
        publish_many(&pool, 100, &format!("multi-{batch}-")).await;
    }
    receiver.wait_for(1000, Duration::from_secs(60)).await;
    receiver
        .assert_stays_at(1000, Duration::from_millis(500))
        .await;
    assert_eq!(
        distinct(&receiver, "webhook-id").len(),
        1000,
        "no delivery sent twice"
    );
    let events: HashSet<String> = receiver
        .received()
        .iter()
        .map(|r| r.json()["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(events.len(), 1000, "no event missing");
    wait_all_succeeded(&pool, 1000, Duration::from_secs(10)).await;
}

#[sqlx::test]
async fn one_pipeline_connection_is_enough_the_listener_has_its_own(pool: PgPool) {
    let receiver = Receiver::start().await;
    let service = Service::start(&pool, &[("DATABASE_MAX_CONNECTIONS", "1")]).await;
    service.create_webhook(&receiver.url).await;
    publish_many(&pool, 20, "one-conn-").await;
    wait_all_succeeded(&pool, 20, Duration::from_secs(15)).await;
    let listening: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        listening, 1,
        "the LISTEN connection is up beside the pipeline's"
    );
}

#[sqlx::test]
async fn sigterm_finishes_in_flight_sends_exits_0_and_the_next_start_delivers_the_rest(
    pool: PgPool,
) {
    let receiver = Receiver::start().await;
    receiver.script((0..5).map(|_| Reply::status(200).delayed(Duration::from_millis(1500))));
    let env = [
        ("WEBHOOK_TIMEOUT_MS", "3000"),
        ("WEBHOOK_DELIVERY_CONCURRENCY", "5"), // one webhook may use 5; a sixth slot is kept for others
    ];
    let service = Service::start(&pool, &env).await;
    service.create_webhook(&receiver.url).await;
    publish_many(&pool, 20, "term-").await;
    receiver.wait_for(5, Duration::from_secs(10)).await;
    let (status, took) = service.terminate().await;
    println!("SIGTERM → exit in {took:?}");
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_millis(3000 + 5000), "took {took:?}");
    let done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'success'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(done, 5, "the in-flight sends finished and were recorded");
    let leased: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE lease_token IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(leased, 0, "no lease left behind");
    let _service = Service::start(&pool, &env).await;
    wait_all_succeeded(&pool, 20, Duration::from_secs(20)).await;
    assert_eq!(receiver.received().len(), 20);
}

#[sqlx::test]
async fn sigterm_while_results_cannot_be_recorded_exits_in_time_and_gives_no_lease_back(
    pool: PgPool,
) {
    let receiver = Receiver::start().await;
    receiver.always(Reply::status(200).delayed(Duration::from_millis(800)));
    let env = [("WEBHOOK_TIMEOUT_MS", "2000"), ("WEBHOOK_LEASE_MS", "4000")];
    let service = Service::start(&pool, &env).await;
    service.create_webhook(&receiver.url).await;
    publish_many(&pool, 3, "unrecorded-").await;
    receiver.wait_for(3, Duration::from_secs(10)).await;
    // The three sends are in flight. Recording their results now waits
    // forever, as it would on a database that stopped answering.
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE webhook_delivery_attempts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let (status, took) = service.terminate().await;
    println!("SIGTERM with recording blocked → exit in {took:?}");
    assert!(status.success(), "exit status {status:?}");
    // WEBHOOK_TIMEOUT_MS + the drain margin + the grace, and a second to spare.
    assert!(
        took < Duration::from_millis(2000 + 2000 + 3000 + 1000),
        "took {took:?}"
    );
    // Nothing was given back (that clears the token): those deliveries were
    // sent, and a lease given back would have them sent again at once.
    let still_leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries
         WHERE status = 'pending' AND lease_token IS NOT NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(still_leased, 3);
    locker.rollback().await.unwrap();
    // At least once: what was not recorded goes again after its lease.
    let _service = Service::start(&pool, &env).await;
    wait_all_succeeded(&pool, 3, Duration::from_secs(20)).await;
    let sent = receiver.received().len();
    assert!((3..=6).contains(&sent), "{sent} requests for 3 deliveries");
}

#[sqlx::test]
async fn sigterm_while_a_receiver_hangs_exits_0_within_the_timeout_and_the_next_start_delivers_those_events(
    pool: PgPool,
) {
    let receiver = Receiver::start().await;
    receiver.script((0..3).map(|_| Reply::status(200).delayed(Duration::from_secs(30))));
    let env = [("WEBHOOK_TIMEOUT_MS", "1000")];
    let service = Service::start(&pool, &env).await;
    service.create_webhook(&receiver.url).await;
    publish_many(&pool, 3, "hang-").await;
    receiver.wait_for(3, Duration::from_secs(10)).await;
    let (status, took) = service.terminate().await;
    assert!(status.success());
    assert!(took < Duration::from_millis(1000 + 5000), "took {took:?}");
    // The timed-out attempts are recorded as retryable, and the next start sends them.
    let _service = Service::start(&pool, &env).await;
    wait_all_succeeded(&pool, 3, Duration::from_secs(20)).await;
}

#[sqlx::test]
async fn the_publish_subcommand_goes_through_the_same_intake(pool: PgPool) {
    let receiver = Receiver::start().await;
    let _service = Service::start(&pool, &[]).await;
    _service.create_webhook(&receiver.url).await;
    let out = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", database_url(&pool))
        .args([
            "publish",
            "price.alert",
            r#"{"symbol":"SDT","amount":123456789012345678901234567890,"price":1.10}"#,
            "--event-id",
            "cli-1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli-1");
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    // Numbers exactly as given (Postgres parses the text; no float on the way).
    let body = String::from_utf8(got[0].body.clone()).unwrap();
    assert!(
        body.ends_with(
            r#""data":{"price": 1.10, "amount": 123456789012345678901234567890, "symbol": "SDT"}}"#
        ),
        "{body}"
    );
    let bad = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", database_url(&pool))
        .args(["publish", "nope.type", "{}"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown event type"));
}

/// `publish --file -` with `ndjson` on its stdin.
fn publish_stdin(pool: &PgPool, ndjson: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", database_url(pool))
        .args(["publish", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(ndjson).unwrap();
    child.wait_with_output().unwrap()
}

#[sqlx::test]
async fn publish_checks_the_catalogue_like_the_http_intake(pool: PgPool) {
    sqlx::query(
        r#"UPDATE webhook_event_types SET schema = '{"type": "object", "properties": {"symbol": {"type": "string"}}}'
           WHERE name = 'price.alert'"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE webhook_event_types SET archived_at = now() WHERE name = 'pool.closed'")
        .execute(&pool)
        .await
        .unwrap();
    let publish = |args: &[&str]| {
        Command::new(BIN)
            .env_clear()
            .env("DATABASE_URL", database_url(&pool))
            .arg("publish")
            .args(args)
            .output()
            .unwrap()
    };
    let bad = publish(&["price.alert", r#"{"symbol": 5}"#]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("data/symbol"), "{stderr}");
    let archived = publish(&["pool.closed", "{}"]);
    assert!(!archived.status.success());
    assert!(String::from_utf8_lossy(&archived.stderr).contains("archived"));
    assert!(
        publish(&["price.alert", r#"{"symbol": "SDT"}"#])
            .status
            .success()
    );

    let out = publish_stdin(
        &pool,
        b"{\"event\":\"price.alert\",\"data\":{\"symbol\":\"A\"}}\n{\"event\":\"price.alert\",\"data\":{\"symbol\":[]}}\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("data/symbol"),
        "{stderr}"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        stored, 1,
        "only the valid single publish; the file's batch is all or nothing"
    );
}

#[sqlx::test]
async fn custom_header_values_never_reach_the_log_even_at_trace(pool: PgPool) {
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500)]);
    let log = std::env::temp_dir().join(format!("headers-log-{}.txt", std::process::id()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", database_url(&pool))
        .env("PORT", port.to_string())
        .env("ADMIN_API_KEY", KEY)
        .env("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
        .env("WEBHOOK_RETRY_BASE_MS", "200")
        .env("LOG_LEVEL", "trace")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = helpers::http_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !matches!(client.get(format!("{base}/health")).send().await, Ok(r) if r.status() == 200) {
        assert!(Instant::now() < deadline, "service did not become healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let created = client
        .post(format!("{base}/api/v1/webhooks"))
        .bearer_auth(KEY)
        .json(&json!({"url": receiver.url, "events": ["*"], "headers": {"X-Api-Key": "hdr-never-logged-42"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    sqlx::query("SELECT webhook_publish('pool.created', '{}')")
        .execute(&pool)
        .await
        .unwrap();
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got[1].header("x-api-key"), "hdr-never-logged-42");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    assert!(text.contains("TRACE"), "the log was written at trace level");
    assert!(
        !text.contains("hdr-never-logged-42"),
        "a header value was logged"
    );
}

#[sqlx::test]
async fn a_crash_before_the_group_commits_acknowledges_nothing_and_writes_nothing(pool: PgPool) {
    let service = Service::start(&pool, &[]).await;
    // Hold the intake's write inside Postgres, then kill the service there.
    let mut held = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE webhook_events IN EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .unwrap();
    let request = helpers::http_client()
        .post(format!("{}/api/v1/events", service.base))
        .bearer_auth(KEY)
        .json(&json!({"event": "pool.created", "event_id": "in-flight", "data": {}}))
        .send();
    let request = tokio::spawn(request);
    helpers::wait_lock_waiters(&pool, 1).await;
    service.kill_9();
    let answer = request.await.unwrap();
    assert!(answer.is_err(), "acknowledged: {answer:?}");
    held.commit().await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 0, "the event was not half-written");
}

#[sqlx::test]
async fn publish_reads_ndjson_from_a_file_or_stdin_in_batches(pool: PgPool) {
    let receiver = Receiver::start().await;
    let service = Service::start(&pool, &[]).await;
    service.create_webhook(&receiver.url).await;
    let mut lines = String::new();
    for i in 0..2500 {
        lines.push_str(&format!(
            "{{\"event\":\"pool.created\",\"event_id\":\"nd-{i}\",\"data\":{{\"amount\":123456789012345678901234567890,\"i\":{i}}}}}\n"
        ));
        if i == 10 {
            lines.push('\n');
        }
    }
    let file = std::env::temp_dir().join(format!("events-{}.ndjson", std::process::id()));
    std::fs::write(&file, &lines).unwrap();
    let out = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", database_url(&pool))
        .args(["publish", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(ids.len(), 2500);
    assert_eq!(ids[0], "nd-0");
    assert_eq!(ids[2499], "nd-2499");
    receiver.wait_for(2500, Duration::from_secs(30)).await;
    let body = String::from_utf8(receiver.received()[0].body.clone()).unwrap();
    assert!(body.contains("123456789012345678901234567890"), "{body}");

    // stdin; a bad line stops it, naming the line; the batch holding it is
    // not written.
    let out = publish_stdin(
        &pool,
        b"{\"event\":\"pool.created\",\"event_id\":\"in-1\",\"data\":{}}\n\
          {\"event\":\"pool.exploded\",\"event_id\":\"in-2\",\"data\":{}}\n",
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 2: unknown event type"), "{stderr}");
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_events WHERE event_id IN ('in-1', 'in-2')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 0);
}

#[test]
fn help_never_prints_secrets_from_the_environment() {
    let out = Command::new(BIN)
        .env_clear()
        .env("DATABASE_URL", "postgres://app:hunter2-db@db.internal/prod")
        .env("ADMIN_API_KEY", "hunter2-admin")
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("DATABASE_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}

#[test]
fn an_invalid_setting_stops_the_service_naming_the_variable() {
    for (var, value) in [
        ("WEBHOOK_MAX_ATTEMPTS", "zero"),
        ("WEBHOOK_RETRY_FACTOR", "0.5"),
        ("PORT", "99999"),
        ("WEBHOOK_RETRY_JITTER", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("WEBHOOK_LEASE_MS", "10"),
        // bounds: each of these used to panic, overflow or wrap at run time
        ("WEBHOOK_RETRY_MAX_MS", "9223372036854775807"),
        ("WEBHOOK_TIMEOUT_MS", "18446744073709551615"),
        ("WEBHOOK_RETENTION_DAYS", "4294967295"),
        ("WEBHOOK_LEASE_MS", "18446744073709551615"),
        ("WEBHOOK_RATELIMIT_WINDOW", "18446744073709551615"),
    ] {
        let out = Command::new(BIN)
            .env_clear()
            .env(var, value)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}

/// DATABASE_URL for the service, through `proxy` instead of straight to Postgres.
fn through(pool: &PgPool, proxy: &fault_proxy::FaultProxy) -> String {
    database_url(pool).replace("127.0.0.1:5432", &proxy.addr.to_string())
}

async fn upstream() -> std::net::SocketAddr {
    "127.0.0.1:5432".parse().unwrap()
}

async fn health_of(service: &Service) -> u16 {
    match helpers::http_client()
        .get(format!("{}/health", service.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

async fn wait_health(service: &Service, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = health_of(service).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/health stayed {got}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every webhook-id the receiver got, and how many came more than once.
fn ids_and_duplicates(receiver: &Receiver) -> (HashSet<String>, usize) {
    let mut ids = HashSet::new();
    let mut duplicates = 0;
    for r in receiver.received() {
        if !ids.insert(r.header("webhook-id").to_owned()) {
            duplicates += 1;
        }
    }
    (ids, duplicates)
}

const FAULT_ENV: [(&str, &str); 3] = [
    ("WEBHOOK_RETRY_POLL_MS", "200"),
    ("DATABASE_STATEMENT_TIMEOUT_MS", "2000"),
    ("WEBHOOK_TIMEOUT_MS", "2000"),
];

/// A service whose every database connection goes through a fault proxy,
/// with one webhook on a fresh receiver.
async fn behind_proxy(
    pool: &PgPool,
    extra: &[(&str, &str)],
) -> (fault_proxy::FaultProxy, Receiver, Service) {
    let proxy = fault_proxy::FaultProxy::start(upstream().await).await;
    let receiver = Receiver::start().await;
    let url = through(pool, &proxy);
    let mut env = FAULT_ENV.to_vec();
    env.push(("DATABASE_URL", url.as_str()));
    env.extend_from_slice(extra);
    let service = Service::start(pool, &env).await;
    service.create_webhook(&receiver.url).await;
    (proxy, receiver, service)
}

#[sqlx::test]
async fn a_database_frozen_for_20_s_under_load_loses_nothing_and_sends_nothing_twice(pool: PgPool) {
    let (proxy, receiver, service) = behind_proxy(&pool, &[]).await;
    publish_many(&pool, 100, "before-").await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    proxy.freeze();
    let frozen_at = Instant::now();
    // The indexer keeps publishing (straight to Postgres) during the fault.
    publish_many(&pool, 100, "during-").await;
    wait_health(&service, 503, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(frozen_at.elapsed())).await;
    proxy.thaw();
    wait_all_succeeded(&pool, 200, Duration::from_secs(60)).await;
    wait_health(&service, 200, Duration::from_secs(15)).await;
    let (ids, duplicates) = ids_and_duplicates(&receiver);
    assert_eq!(ids.len(), 200);
    assert_eq!(duplicates, 0, "no lease expired during a 20 s freeze");
}

#[sqlx::test]
async fn every_connection_cut_under_load_loses_nothing_and_sends_nothing_twice(pool: PgPool) {
    let (proxy, receiver, service) = behind_proxy(&pool, &[]).await;
    publish_many(&pool, 300, "cut-").await;
    receiver.wait_for(30, Duration::from_secs(10)).await;
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    publish_many(&pool, 100, "after-cut-").await;
    wait_all_succeeded(&pool, 400, Duration::from_secs(60)).await;
    wait_health(&service, 200, Duration::from_secs(15)).await;
    let (ids, duplicates) = ids_and_duplicates(&receiver);
    assert_eq!(ids.len(), 400);
    assert_eq!(duplicates, 0);
}

#[sqlx::test]
async fn connections_that_go_silent_for_good_are_given_up_and_delivery_resumes_on_new_ones(
    pool: PgPool,
) {
    // The held fan-out commits in Postgres after the lock is gone, but its
    // answer is lost with the connection: what it leased goes out when the
    // lease ends, as after a claim whose answer is lost.
    let (proxy, receiver, service) = behind_proxy(&pool, &[("WEBHOOK_LEASE_MS", "5000")]).await;
    publish_many(&pool, 20, "before-").await;
    wait_all_succeeded(&pool, 20, Duration::from_secs(20)).await;
    // Hold the service's next write of deliveries (the fan-out of the event
    // published now) inside Postgres, so a statement is certainly in flight
    // on a connection when that connection goes silent.
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE webhook_deliveries IN EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    publish_many(&pool, 1, "held-").await;
    helpers::wait_lock_waiters(&pool, 1).await;
    proxy.strand();
    locker.commit().await.unwrap();
    let stranded_at = Instant::now();
    publish_many(&pool, 50, "after-").await;
    wait_all_succeeded(&pool, 71, Duration::from_secs(60)).await;
    println!(
        "every open connection silent for good → delivering again after {:?}",
        stranded_at.elapsed()
    );
    wait_health(&service, 200, Duration::from_secs(45)).await;
    let (ids, duplicates) = ids_and_duplicates(&receiver);
    assert_eq!(ids.len(), 71);
    assert_eq!(duplicates, 0);
}

#[sqlx::test]
async fn sigterm_with_the_database_frozen_exits_within_the_timeout_and_a_few_seconds(pool: PgPool) {
    let (proxy, receiver, service) = behind_proxy(&pool, &[("WEBHOOK_LEASE_MS", "3000")]).await;
    publish_many(&pool, 20, "frozen-term-").await;
    receiver.wait_for(1, Duration::from_secs(10)).await;
    proxy.freeze();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, took) = service.terminate().await;
    println!("SIGTERM with the database frozen → exit in {took:?}");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_millis(2000 + 5000 + 1000),
        "took {took:?}"
    );
    proxy.thaw();
    // What was not recorded goes again on the next start, after its lease.
    let _service = Service::start(
        &pool,
        &[("WEBHOOK_TIMEOUT_MS", "2000"), ("WEBHOOK_LEASE_MS", "3000")],
    )
    .await;
    wait_all_succeeded(&pool, 20, Duration::from_secs(30)).await;
}

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[sqlx::test]
async fn retries_follow_the_database_clock_when_the_host_clock_runs_an_hour_ahead(pool: PgPool) {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "{FAKETIME} is missing: scripts/test installs it (apt-get install faketime)"
    );
    let receiver = Receiver::start().await;
    receiver.script([Reply::status(500)]);
    let env = [
        // The service's wall clock runs an hour ahead of the database's.
        ("LD_PRELOAD", FAKETIME),
        ("FAKETIME", "+1h"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ("WEBHOOK_RETRY_BASE_MS", "300"),
        ("WEBHOOK_RETRY_JITTER", "false"),
        ("WEBHOOK_RETRY_POLL_MS", "100"),
    ];
    let service = Service::start(&pool, &env).await;
    service.create_webhook(&receiver.url).await;
    publish_many(&pool, 1, "skew-").await;
    // Retried 300 ms after the failure on the database's clock (an hour
    // later on the host's, which used to be what counted).
    let got = receiver.wait_for(2, Duration::from_secs(15)).await;
    let gap = got[1].at - got[0].at;
    assert!(gap < Duration::from_secs(5), "retried after {gap:?}");
    wait_all_succeeded(&pool, 1, Duration::from_secs(5)).await;
}
