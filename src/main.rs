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
            event_type,
            json,
            event_id,
        } => publish(&cli.config, &event_type, &json, event_id).await,
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
    let mut conn = pool.acquire().await?;
    let event_id = intake::publish(&mut conn, event_type, &data, event_id.as_deref(), None).await?;
    println!("{event_id}");
    Ok(())
}
