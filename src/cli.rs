//! Command line: `serve` (the default), `migrate`, `publish`, `openapi`.
use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "smartdrop-webhooks",
    version,
    about = "Postgres-native webhook delivery"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the delivery pipeline (the default).
    Serve,
    /// Create the database if missing, apply the migrations and exit.
    Migrate,
    /// Publish an event exactly as the indexer would (`webhook_publish`).
    Publish {
        /// A catalogue type such as `pool.created`.
        event_type: String,
        /// The event's `data` as a JSON value.
        json: String,
        /// Idempotency key; generated (`evt_…`) when absent.
        #[arg(long)]
        event_id: Option<String>,
    },
    /// Print the OpenAPI document.
    Openapi,
}
