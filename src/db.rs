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
    let options = PgConnectOptions::from_str(database_url)
        .context("DATABASE_URL is not a valid Postgres URL")?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("could not connect to Postgres (DATABASE_URL)")
}
