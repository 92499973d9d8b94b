//! The test harness: the real app on 127.0.0.1:0 against the per-test
//! database, and real HTTP receivers on loopback that record what arrives.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use clap::Parser;
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use smartdrop_webhooks::cli::Cli;
use smartdrop_webhooks::config::Config;
use smartdrop_webhooks::startup::Application;

pub const KEY: &str = "test-admin-key";

/// reqwest is built with rustls and no default crypto provider (see Cargo.toml).
/// The single number a SQL statement returns.
/// Waits until at least `n` backends of this database wait on a lock (a
/// statement the test holds inside Postgres), or panics after 10 s.
pub async fn wait_lock_waiters(pool: &PgPool, n: i64) {
    let started = Instant::now();
    while count(
        pool,
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .await
        < n
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "fewer than {n} statements waited on a lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

pub fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub fn database_url(pool: &PgPool) -> String {
    let o = pool.connect_options();
    format!(
        "postgres://{}@{}:{}/{}",
        o.get_username(),
        o.get_host(),
        o.get_port(),
        o.get_database().expect("per-test database")
    )
}

/// Defaults for tests: private targets allowed (receivers are on loopback),
/// short retry delays without jitter, fast polling.
pub fn test_config(pool: &PgPool) -> Config {
    let mut config =
        Cli::try_parse_from(["smartdrop-webhooks", "--database-url", &database_url(pool)])
            .expect("defaults parse")
            .config;
    config.port = 0;
    config.admin_api_key = Some(KEY.to_owned().into());
    config.webhook_allow_private_targets = true;
    config.webhook_retry_base_ms = 200;
    config.webhook_retry_factor = 2.0;
    config.webhook_retry_jitter = false;
    config.webhook_retry_poll_ms = 50;
    config.webhook_timeout_ms = 2000;
    config.webhook_ratelimit_max = 10_000;
    config.webhook_test_ratelimit_max = 10_000;
    config.webhook_events_ratelimit_max = 10_000;
    config
}

/// The test configuration without a database (for checks that need none).
pub fn test_config_without_pool() -> Config {
    let mut config = Cli::try_parse_from(["smartdrop-webhooks"])
        .expect("defaults parse")
        .config;
    config.admin_api_key = Some(KEY.to_owned().into());
    config
}

pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub client: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Stops the app when a test ends without calling `stop`, so its database
/// sessions close and sqlx::test can drop the test database at once.
impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApp {
    pub async fn spawn(pool: PgPool) -> Self {
        Self::spawn_with(pool, |_| {}).await
    }

    pub async fn spawn_with(pool: PgPool, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config(&pool);
        tweak(&mut config);
        config.validate().expect("valid test config");
        let app = Application::build(config, pool.clone(), KEY).expect("app builds");
        let address = format!("http://127.0.0.1:{}", app.port());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        Self {
            address,
            pool,
            client: http_client(),
            shutdown,
            handle: Some(handle),
        }
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.expect("app task").expect("app stopped cleanly");
        }
    }

    /// The status of the open `GET /health`.
    pub async fn health_status(&self) -> u16 {
        self.client
            .get(self.url("/health"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
    }

    pub async fn patch(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
    }

    /// The open `GET /metrics` text.
    pub async fn metrics_text(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// Registers a webhook and returns the create response.
    pub async fn create_webhook(&self, url: &str, events: &[&str]) -> Value {
        let response = self
            .post(
                "/api/v1/webhooks",
                serde_json::json!({"url": url, "events": events}),
            )
            .await;
        assert_eq!(response.status(), 201);
        response.json().await.unwrap()
    }

    /// Publishes with the indexer's SQL in a committed transaction.
    pub async fn publish_sql(
        &self,
        event_type: &str,
        data: Value,
        event_id: Option<&str>,
    ) -> String {
        sqlx::query_scalar::<_, String>("SELECT (webhook_publish($1, $2, $3)).event_id")
            .bind(event_type)
            .bind(data)
            .bind(event_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    pub async fn deliveries(&self, webhook_id: &str) -> Vec<Value> {
        let page: Value = self
            .get(&format!(
                "/api/v1/webhooks/{webhook_id}/deliveries?limit=200"
            ))
            .await
            .json()
            .await
            .unwrap();
        page["data"].as_array().unwrap().clone()
    }

    /// Polls the delivery list until `done` holds, or panics at the deadline.
    pub async fn wait_deliveries(
        &self,
        webhook_id: &str,
        deadline: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let list = self.deliveries(webhook_id).await;
            if done(&list) {
                return list;
            }
            assert!(
                start.elapsed() < deadline,
                "deliveries never reached the expected state: {list:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub delay: Duration,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: vec![],
            delay: Duration::ZERO,
            body: b"ok".to_vec(),
        }
    }

    pub fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The sender's end of the TCP connection (a reused connection keeps it).
    pub peer: Option<std::net::SocketAddr>,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct ReceiverState {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    fallback: Mutex<Option<Reply>>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: std::sync::atomic::AtomicUsize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

/// A real HTTP server on loopback that records every request and answers
/// from a script (then a fallback, then 200).
pub struct Receiver {
    pub url: String,
    state: Arc<ReceiverState>,
}

async fn record(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<ReceiverState>>,
) -> HttpResponse {
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in req.headers() {
        headers.append(
            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    use std::sync::atomic::Ordering::SeqCst;
    let now_in_flight = state.in_flight.fetch_add(1, SeqCst) + 1;
    state.max_in_flight.fetch_max(now_in_flight, SeqCst);
    state.received.lock().unwrap().push(Received {
        headers,
        body: body.to_vec(),
        at: Instant::now(),
        peer: req.peer_addr(),
    });
    let reply = state.script.lock().unwrap().pop_front();
    let reply = reply
        .or_else(|| state.fallback.lock().unwrap().clone())
        .unwrap_or(Reply::status(200));
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    state.in_flight.fetch_sub(1, SeqCst);
    let mut response =
        HttpResponse::build(actix_web::http::StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in reply.headers {
        response.insert_header((name, value));
    }
    response.body(reply.body)
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(ReceiverState::default());
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(record))
        })
        .workers(2)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        tokio::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}/hook"),
            state,
        }
    }

    /// Answers the next requests with these replies, in order.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    /// Answers every unscripted request with this reply.
    pub fn always(&self, reply: Reply) {
        *self.state.fallback.lock().unwrap() = Some(reply);
    }

    /// The most requests this receiver was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.state
            .max_in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < deadline,
                "expected {n} requests, got {} within {deadline:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits `quiet` and asserts nothing more arrived beyond `n`.
    pub async fn assert_stays_at(&self, n: usize, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        assert_eq!(self.received().len(), n, "unexpected extra requests");
    }
}

/// A loopback URL where nothing listens (connection refused).
pub fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/hook")
}

/// The value of an unlabelled series in Prometheus text, if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
