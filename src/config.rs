//! Configuration: every knob is an environment variable with a default, read
//! once into typed structs. An invalid value stops the service with a message
//! naming the variable. Depends on nothing else in the crate but `queue::retry`.
use std::time::Duration;

use clap::Args;
use clap::builder::BoolishValueParser;
use secrecy::SecretString;

use crate::queue::breaker::BreakerConfig;
use crate::queue::retry::RetryPolicy;

/// The longest delay any setting may ask for (a year, in ms). Every duration
/// read from the environment has an upper bound, so no time computed from
/// one can overflow (`WEBHOOK_RETRY_MAX_MS` near `i64::MAX` used to panic
/// every worker; `WEBHOOK_RETENTION_DAYS=4294967295` wrapped to −1 and would
/// have purged all history).
pub const MAX_DELAY_MS: u64 = 31_536_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// The service configuration. Field names match the environment variables.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP server binds to.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port the HTTP server binds to (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,
    /// Postgres connection string; the database is created if missing.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@localhost:5432/smartdrop_webhooks",
        // --help must not print a password from the environment
        hide_env_values = true
    )]
    pub database_url: String,
    /// Size of the Postgres connection pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub database_max_connections: u32,
    /// Postgres cancels any statement of the service's pools that runs longer
    /// (a query stuck behind a lock, a saturated server); it is retried, and an
    /// API request gets a 503.
    #[arg(long, env = "DATABASE_STATEMENT_TIMEOUT_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub database_statement_timeout_ms: u64,
    /// Bearer token for /api/v1; generated and printed once at start when unset.
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_api_key: Option<SecretString>,
    /// Total attempts per delivery, the first included.
    #[arg(long, env = "WEBHOOK_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_max_attempts: u32,
    /// First retry delay in milliseconds.
    #[arg(long, env = "WEBHOOK_RETRY_BASE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=MAX_DELAY_MS))]
    pub webhook_retry_base_ms: u64,
    /// Multiplier applied to the delay after each failed attempt.
    #[arg(long, env = "WEBHOOK_RETRY_FACTOR", default_value_t = 2.0)]
    pub webhook_retry_factor: f64,
    /// Upper bound of any retry delay, Retry-After included, in milliseconds.
    #[arg(long, env = "WEBHOOK_RETRY_MAX_MS", default_value_t = 3_600_000, value_parser = clap::value_parser!(u64).range(1..=MAX_DELAY_MS))]
    pub webhook_retry_max_ms: u64,
    /// Equal jitter: a delay in [d/2, d). `false` gives exactly d.
    #[arg(long, env = "WEBHOOK_RETRY_JITTER", default_value = "true", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub webhook_retry_jitter: bool,
    /// Timeout of one delivery request, connect to last byte read, in milliseconds.
    #[arg(long, env = "WEBHOOK_TIMEOUT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub webhook_timeout_ms: u64,
    /// How late a due retry may be picked up, in milliseconds.
    #[arg(long, env = "WEBHOOK_RETRY_POLL_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub webhook_retry_poll_ms: u64,
    /// Deliveries claimed per query.
    #[arg(long, env = "WEBHOOK_RETRY_BATCH", default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub webhook_retry_batch: u32,
    /// Most deliveries one fan-out transaction writes; an event with more
    /// subscribers fans out in chunks of this size, each sent as soon as it
    /// commits.
    #[arg(long, env = "WEBHOOK_FANOUT_CHUNK", default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub webhook_fanout_chunk: u32,
    /// Deliveries in flight at once per instance.
    #[arg(long, env = "WEBHOOK_DELIVERY_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub webhook_delivery_concurrency: u32,
    /// How long a claim is held before another worker may take the delivery over
    /// (default: WEBHOOK_TIMEOUT_MS + 30000).
    #[arg(long, env = "WEBHOOK_LEASE_MS", value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub webhook_lease_ms: Option<u64>,
    /// Management API rate-limit window in seconds.
    #[arg(long, env = "WEBHOOK_RATELIMIT_WINDOW", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub webhook_ratelimit_window: u64,
    /// Management API requests per window per client IP.
    #[arg(long, env = "WEBHOOK_RATELIMIT_MAX", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_ratelimit_max: u32,
    /// `/test` rate-limit window in seconds.
    #[arg(long, env = "WEBHOOK_TEST_RATELIMIT_WINDOW", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub webhook_test_ratelimit_window: u64,
    /// `/test` requests per window per client IP.
    #[arg(long, env = "WEBHOOK_TEST_RATELIMIT_MAX", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_test_ratelimit_max: u32,
    /// `POST /api/v1/events` rate-limit window in seconds (a producer's budget,
    /// apart from the management API's).
    #[arg(long, env = "WEBHOOK_EVENTS_RATELIMIT_WINDOW", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub webhook_events_ratelimit_window: u64,
    /// `POST /api/v1/events` requests per window per client IP.
    #[arg(long, env = "WEBHOOK_EVENTS_RATELIMIT_MAX", default_value_t = 6000, value_parser = clap::value_parser!(u32).range(1..))]
    pub webhook_events_ratelimit_max: u32,
    /// Use the right-most X-Forwarded-For hop as the client IP (behind a proxy).
    #[arg(long, env = "WEBHOOK_TRUST_PROXY", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub webhook_trust_proxy: bool,
    /// Allow webhook URLs on loopback, private, link-local and similar addresses.
    #[arg(long, env = "WEBHOOK_ALLOW_PRIVATE_TARGETS", default_value = "false", value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub webhook_allow_private_targets: bool,
    /// Consecutive failed attempts that open an endpoint's circuit.
    #[arg(long, env = "WEBHOOK_BREAKER_THRESHOLD", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub webhook_breaker_threshold: u32,
    /// First cool-down of an open circuit in milliseconds (doubles on each
    /// failed probe, capped at WEBHOOK_RETRY_MAX_MS).
    #[arg(long, env = "WEBHOOK_BREAKER_COOLDOWN_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..=MAX_DELAY_MS))]
    pub webhook_breaker_cooldown_ms: u64,
    /// A circuit open this many seconds with no success disables the webhook.
    #[arg(long, env = "WEBHOOK_DISABLE_AFTER_S", default_value_t = 432_000, value_parser = clap::value_parser!(u64).range(1..=315_360_000))]
    pub webhook_disable_after_s: u64,
    /// Successful deliveries older than this many days are purged.
    #[arg(long, env = "WEBHOOK_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub webhook_retention_days: u32,
    /// `pretty` or `json`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// A tracing filter such as `info` or `smartdrop_webhooks=debug` (RUST_LOG wins when set).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

fn invalid(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

impl Config {
    /// Cross-field rules that clap's per-value parsers cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.webhook_retry_factor.is_finite() && self.webhook_retry_factor >= 1.0) {
            return Err(invalid("WEBHOOK_RETRY_FACTOR", "must be a number >= 1"));
        }
        if self.webhook_retry_max_ms < self.webhook_retry_base_ms {
            return Err(invalid(
                "WEBHOOK_RETRY_MAX_MS",
                "must be at least WEBHOOK_RETRY_BASE_MS",
            ));
        }
        if self.lease() <= self.timeout() {
            return Err(invalid(
                "WEBHOOK_LEASE_MS",
                "must be longer than WEBHOOK_TIMEOUT_MS, or a live send could be taken over",
            ));
        }
        if url::Url::parse(&self.database_url).is_err() {
            return Err(invalid("DATABASE_URL", "must be a postgres:// URL"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log_level).is_err() {
            return Err(invalid("LOG_LEVEL", "is not a valid tracing filter"));
        }
        Ok(())
    }

    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.database_statement_timeout_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.webhook_timeout_ms)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_millis(
            self.webhook_lease_ms
                .unwrap_or(self.webhook_timeout_ms.saturating_add(30_000)),
        )
    }

    pub fn breaker(&self) -> BreakerConfig {
        BreakerConfig {
            threshold: self.webhook_breaker_threshold,
            cooldown: Duration::from_millis(self.webhook_breaker_cooldown_ms),
            max_cooldown: Duration::from_millis(
                self.webhook_retry_max_ms
                    .max(self.webhook_breaker_cooldown_ms),
            ),
            disable_after: Duration::from_secs(self.webhook_disable_after_s),
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.webhook_max_attempts,
            base_ms: self.webhook_retry_base_ms,
            factor: self.webhook_retry_factor,
            max_ms: self.webhook_retry_max_ms,
            jitter: self.webhook_retry_jitter,
        }
    }
}
