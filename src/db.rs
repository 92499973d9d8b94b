//! The connection pool and the embedded migrations.
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::BoxFuture;
use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};
use tokio_util::sync::CancellationToken;

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

/// Postgres refused a value (class 22) or a constraint (class 23): the same
/// rows will fail again, but other rows written with them may be fine.
pub fn is_row_error(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}

/// Beyond `statement_timeout`, how long a pipeline loop waits for an answer
/// before it counts the connection as dead. Postgres cancels a slow statement
/// itself; past this margin the server (or the network to it) is not answering.
pub const NO_ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// Once shutdown starts, how much longer a loop's unit of database work may
/// take: enough for a healthy database to finish what it was asked, so its
/// result (a claim, a fan-out) is not thrown away.
const AT_SHUTDOWN: Duration = Duration::from_secs(1);

/// Why a loop's unit of database work did not finish.
#[derive(Debug, thiserror::Error)]
pub enum Interrupted {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("the database did not answer within {} ms; the connection was closed", .0.as_millis())]
    NoAnswer(Duration),
    #[error("shutting down")]
    ShuttingDown,
}

/// Whether a statement failed because a row it was locking or changing moved
/// to another partition (SQLSTATE 40001, a serialization failure): a result
/// committed meanwhile moved the delivery to its day of the history.
pub fn row_moved(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "40001")
}

/// Runs `work` again, up to three times, when it fails with a serialization
/// failure (SQLSTATE 40001). Since the history is partitioned (migration 16),
/// a statement that meets a delivery a committed result has just moved to its
/// day fails this way instead of skipping the row; run again, it sees where
/// the row is now. For statements that may touch rows in flight (deleting a
/// webhook, re-sorting its queue).
pub async fn retry_if_moved<T, F, Fut>(mut work: F) -> sqlx::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = sqlx::Result<T>>,
{
    let mut tries = 1;
    loop {
        match work().await {
            Err(e) if tries < 4 && row_moved(&e) => tries += 1,
            done => return done,
        }
    }
}

impl Interrupted {
    /// The SQLSTATE of the error the database answered with, if it answered.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Interrupted::Database(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// How long a pipeline loop's database work may take, and when to stop.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// `statement_timeout` + [`NO_ANSWER_MARGIN`].
    pub limit: Duration,
    pub shutdown: CancellationToken,
}

impl Bounds {
    pub fn new(statement_timeout: Duration, shutdown: CancellationToken) -> Self {
        Self {
            limit: statement_timeout + NO_ANSWER_MARGIN,
            shutdown,
        }
    }

    /// Runs one unit of a loop's database work on a connection of its own,
    /// bounded from this side: a frozen server or a black-holed network never
    /// answers, and sqlx has no TCP keepalive, so without this the loop would
    /// wait forever. A connection that did not answer is closed, not returned
    /// to the pool (it is mid-protocol; the pool's ping would hang on it).
    /// Shutdown leaves the work [`AT_SHUTDOWN`] more at most.
    pub async fn run<T>(
        &self,
        pool: &PgPool,
        work: impl for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, sqlx::Result<T>>,
    ) -> Result<T, Interrupted> {
        let deadline = tokio::time::Instant::now() + self.limit;
        let acquire = tokio::time::timeout_at(deadline, pool.acquire());
        let mut conn = tokio::select! {
            _ = self.shutdown.cancelled() => return Err(Interrupted::ShuttingDown),
            acquired = acquire => acquired.map_err(|_| Interrupted::NoAnswer(self.limit))??,
        };
        let answered = {
            let work = work(&mut conn);
            tokio::pin!(work);
            let before_shutdown = tokio::select! {
                done = tokio::time::timeout_at(deadline, &mut work) => Some(done),
                _ = self.shutdown.cancelled() => None,
            };
            match before_shutdown {
                Some(done) => done.map_err(|_| Interrupted::NoAnswer(self.limit)),
                None => {
                    let last = deadline.min(tokio::time::Instant::now() + AT_SHUTDOWN);
                    tokio::time::timeout_at(last, &mut work)
                        .await
                        .map_err(|_| Interrupted::ShuttingDown)
                }
            }
        };
        match answered {
            Ok(result) => Ok(result?),
            Err(stopped) => {
                conn.close_on_drop();
                Err(stopped)
            }
        }
    }
}
