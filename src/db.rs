//! The connection pool and the embedded migrations.
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Creates the database if it does not exist, then applies the migrations.
pub async fn prepare(database_url: &str) -> anyhow::Result<()> {
    let exists = Postgres::database_exists(database_url)
        .await
        .context("could not reach Postgres (DATABASE_URL)")?;
    if !exists {
        Postgres::create_database(database_url)
            .await
            .context("could not create the database named in DATABASE_URL")?;
        tracing::info!("created the database");
    }
    let pool = connect(database_url, 2).await?;
    MIGRATOR.run(&pool).await.context("applying migrations")?;
    pool.close().await;
    Ok(())
}

pub async fn connect(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    connect_with_timeout(database_url, max_connections, None).await
}

/// The service's pools: every statement on them is cancelled by Postgres
/// after `statement_timeout` (`DATABASE_STATEMENT_TIMEOUT_MS`), so a query
/// stuck behind a lock or a saturated server fails (and is retried) instead
/// of holding a worker or a request for good. Migrations go without one.
pub async fn connect_with_timeout(
    database_url: &str,
    max_connections: u32,
    statement_timeout: Option<Duration>,
) -> anyhow::Result<PgPool> {
    let mut options = PgConnectOptions::from_str(database_url)
        .context("DATABASE_URL is not a valid Postgres URL")?;
    if let Some(timeout) = statement_timeout {
        options = with_statement_timeout(options, timeout);
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("could not connect to Postgres (DATABASE_URL)")
}

pub fn with_statement_timeout(options: PgConnectOptions, timeout: Duration) -> PgConnectOptions {
    options.options([("statement_timeout", format!("{}ms", timeout.as_millis()))])
}
