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
    /// Publish an event exactly as the indexer would (`webhook_publish`),
    /// or many from NDJSON with `--file`.
    Publish {
        /// A catalogue type such as `pool.created`.
        #[arg(required_unless_present = "file")]
        event_type: Option<String>,
        /// The event's `data` as a JSON value.
        #[arg(required_unless_present = "file")]
        json: Option<String>,
        /// Idempotency key; generated (`evt_…`) when absent.
        #[arg(long, conflicts_with = "file")]
        event_id: Option<String>,
        /// NDJSON, one `{"event", "event_id"?, "occurred_at"?, "data"}` per
        /// line, from a file or `-` (stdin). Sent in batches of 1,000 through
        /// the HTTP intake's path, each batch all or nothing; prints one
        /// event_id per line.
        #[arg(long, conflicts_with_all = ["event_type", "json"])]
        file: Option<std::path::PathBuf>,
    },
    /// Print the OpenAPI document.
    Openapi,
}
