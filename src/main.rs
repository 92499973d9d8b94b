use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use smartdrop_webhooks::cli::{Cli, Command};
use smartdrop_webhooks::config::Config;
use smartdrop_webhooks::{api, db, intake, shutdown, startup, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = cli.config.validate() {
        eprintln!("{e}");
        return ExitCode::from(2);
    }
    telemetry::init(cli.config.log_format, &cli.config.log_level);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Migrate => db::prepare(&cli.config.database_url).await,
        Command::Publish {
            file: Some(file), ..
        } => publish_file(&cli.config, &file).await,
        Command::Publish {
            event_type: Some(event_type),
            json: Some(json),
            event_id,
            ..
        } => publish(&cli.config, &event_type, &json, event_id).await,
        Command::Publish { .. } => unreachable!("clap requires a type and data, or --file"),
        Command::Openapi => {
            println!("{}", api::openapi::document());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "exiting");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    db::prepare(&config.database_url).await?;
    let pool = db::connect_with_timeout(
        &config.database_url,
        config.database_max_connections,
        Some(config.statement_timeout()),
    )
    .await?;
    let key = startup::admin_key(&config);
    let app = startup::Application::build(config, pool, &key)?;
    app.run_until_stopped(shutdown::on_signal()).await
}

async fn publish(
    config: &Config,
    event_type: &str,
    json: &str,
    event_id: Option<String>,
) -> anyhow::Result<()> {
    // Kept as text: Postgres parses it, so numbers keep every digit.
    let data: Box<serde_json::value::RawValue> =
        serde_json::from_str(json).context("JSON argument is not valid JSON")?;
    let pool = db::connect(&config.database_url, 1).await?;
    // The HTTP intake's checks (archived types, JSON Schemas); the SQL
    // statement then refuses what the database refuses.
    let catalogue = smartdrop_webhooks::catalogue::Catalogue::new(
        pool.clone(),
        config.statement_timeout() + db::NO_ANSWER_MARGIN,
    );
    if let Err((_, refusal)) = catalogue
        .check(std::iter::once((event_type, data.get())))
        .await?
    {
        anyhow::bail!("event type {event_type}: {refusal}");
    }
    let mut conn = pool.acquire().await?;
    let event_id = intake::publish(&mut conn, event_type, &data, event_id.as_deref(), None).await?;
    println!("{event_id}");
    Ok(())
}

/// Publishes NDJSON events in batches through the intake's group-commit
/// path. Stops at the first invalid line, naming it; the batches before it
/// are written (their event_ids printed), the one holding it is not.
async fn publish_file(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = if file == std::path::Path::new("-") {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(file)
                .await
                .with_context(|| format!("opening {}", file.display()))?,
        )
    };
    let options = std::str::FromStr::from_str(&config.database_url)
        .context("DATABASE_URL is not a valid Postgres URL")?;
    let options = intake::connect_options(db::with_statement_timeout(
        options,
        config.statement_timeout(),
    ));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .context("could not connect to Postgres (DATABASE_URL)")?;
    let publisher = intake::Publisher::start(
        pool,
        1,
        config.statement_timeout() + db::NO_ANSWER_MARGIN,
        config.webhook_fanout_chunk as i64,
        std::sync::Arc::new(smartdrop_webhooks::metrics::Metrics::new()),
    );
    let mut lines = BufReader::new(input).lines();
    let mut stdout = tokio::io::stdout();
    let (mut batch, mut numbers) = (Vec::new(), Vec::new());
    let mut line_no = 0usize;
    let mut published = 0usize;
    loop {
        let line = lines.next_line().await.context("reading the events")?;
        if let Some(line) = &line {
            line_no += 1;
            if !line.trim().is_empty() {
                let event: api::events::PublishEvent =
                    serde_json::from_str(line).with_context(|| {
                        format!("line {line_no}: not an event ({published} published before it)")
                    })?;
                batch.push(event.into_new());
                numbers.push(line_no);
            }
        }
        if batch.len() == intake::MAX_BATCH || (line.is_none() && !batch.is_empty()) {
            let accepted = publisher
                .publish(std::mem::take(&mut batch))
                .await
                .map_err(|e| match e {
                    intake::Refused::Invalid { index, error } => anyhow::anyhow!(
                        "line {}: {error} ({published} published before its batch)",
                        numbers[index]
                    ),
                    e => anyhow::Error::new(e)
                        .context(format!("{published} published before the failing batch")),
                })?;
            numbers.clear();
            let mut out = String::new();
            for a in &accepted {
                out.push_str(&a.event_id);
                out.push('\n');
            }
            stdout.write_all(out.as_bytes()).await?;
            published += accepted.len();
        }
        if line.is_none() {
            stdout.flush().await?;
            return Ok(());
        }
    }
}
