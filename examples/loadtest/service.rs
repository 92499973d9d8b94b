//! The service under test: the real release binary in its own process, on a
//! fresh database, so its CPU time and peak RSS can be read from /proc.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEY: &str = "loadtest-admin-key";

pub struct Service {
    child: Child,
    pub base: String,
    started_cpu: f64,
}

/// Builds the service binary in the harness's own profile (release for
/// measurements, debug for the CI smoke run) and returns its path;
/// `LOADTEST_BIN` names another binary instead.
pub fn binary() -> String {
    if let Ok(bin) = std::env::var("LOADTEST_BIN") {
        return bin;
    }
    let (flag, dir) = if cfg!(debug_assertions) {
        (None, "debug")
    } else {
        (Some("--release"), "release")
    };
    let mut args = vec!["build", "--quiet", "--bin", "smartdrop-webhooks"];
    args.extend(flag);
    let status = Command::new("cargo")
        .args(&args)
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the service failed");
    format!(
        "{}/target/{dir}/smartdrop-webhooks",
        env!("CARGO_MANIFEST_DIR")
    )
}

impl Service {
    pub async fn start(bin: &str, database_url: &str, env: &[(&str, String)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new(bin);
        command
            .env_clear()
            .env("DATABASE_URL", database_url)
            .env("PORT", port.to_string())
            .env("ADMIN_API_KEY", KEY)
            .env("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
            .env("WEBHOOK_RATELIMIT_MAX", "100000000")
            // LOADTEST_SERVICE_LOG: the service's log level (its stderr is shown).
            .env(
                "LOG_LEVEL",
                std::env::var("LOADTEST_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("service starts");
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(client.get(format!("{base}/health")).send().await, Ok(r) if r.status() == 200)
        {
            assert!(Instant::now() < deadline, "service did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut service = Self {
            child,
            base,
            started_cpu: 0.0,
        };
        service.started_cpu = service.cpu_seconds();
        service
    }

    /// User + system CPU seconds of the service process so far.
    pub fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    pub fn cpu_since_start(&self) -> f64 {
        self.cpu_seconds() - self.started_cpu
    }

    /// Peak resident set size in MB (VmHWM).
    pub fn peak_rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    }

    pub async fn register(&self, client: &reqwest::Client, url: &str) -> String {
        self.register_for(client, url, "*").await
    }

    /// Registers a webhook for one event type (or pattern).
    pub async fn register_for(&self, client: &reqwest::Client, url: &str, events: &str) -> String {
        let response = client
            .post(format!("{}/api/v1/webhooks", self.base))
            .bearer_auth(KEY)
            .json(&serde_json::json!({"url": url, "events": [events]}))
            .send()
            .await
            .expect("register");
        assert_eq!(
            response.status(),
            201,
            "{}",
            response.text().await.unwrap_or_default()
        );
        let v: serde_json::Value = response.json().await.unwrap();
        v["id"].as_str().unwrap().to_owned()
    }

    /// SIGTERM, and the exit status once it stopped (a clean exit is 0).
    pub fn stop(mut self) {
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let status = self.child.wait();
        let took = started.elapsed();
        if took > Duration::from_secs(2) || !status.as_ref().is_ok_and(|s| s.success()) {
            eprintln!("service stop took {took:?}, exit {status:?}");
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
