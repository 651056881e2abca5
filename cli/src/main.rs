//! `cim-nats`: look at the event streams and read models of any domain built with cim-nats,
//! without its code (it reads the framework's headers; bodies are shown as JSON).
//!
//! ```text
//! cim-nats status [--json]
//! cim-nats events --domain bank [--aggregate ID] [--type T] [--entity K] [--correlation C]
//!                 [--from SEQ | --since TIME] [--limit N] [--follow] [--json]
//! cim-nats aggregate DOMAIN ID [--json]
//! cim-nats dlq list [--stream S] [--consumer C] [--json] | show SEQ | parked [--json]
//!              | redrive SEQ [--yes] | discard SEQ [--yes]
//! cim-nats projection list [--json] | lag NAME [--json] | rebuild NAME [--yes] [--json]
//! ```
//!
//! The infrastructure domain's topology has a tool of its own beside it, `cim-infrastructure`
//! (`src/bin/cim_infrastructure.rs`), so that this one knows no domain.
//!
//! Connection options as the `nats` CLI names them: `--server`/`NATS_URL`, `--user`,
//! `--password`, `--token`, `--creds`, `--nkey`, `--tlscert`, `--tlskey`, `--tlsca`. Every
//! failure is one line on standard error and exit status 1.

mod aggregate;
mod connection;
mod dlq;
mod events;
mod output;
mod projection;
mod rebuild;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use connection::Connection;

pub(crate) use connection::Error;

#[derive(Debug, Parser)]
#[command(
    name = "cim-nats",
    version,
    about = "Look at the event streams and read models of domains built with cim-nats"
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The server, each event stream, its consumers, the read models and the dead letters.
    Status {
        /// One JSON document instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// A stream's events, filtered; `--follow` to keep reading new ones.
    Events(events::Args),
    /// Dead letters: list, show, redrive (handled again by the running subscriber), discard.
    Dlq(dlq::Args),
    /// Read models: list them, one's checkpoint and lag, or rebuild one (by its running
    /// service).
    #[command(subcommand)]
    Projection(projection::Action),
    /// One aggregate's history, read through the store (literal subjects, no consumer).
    Aggregate {
        /// The domain (its stream is `{DOMAIN}_EVENTS` unless `--stream` says otherwise).
        domain: String,
        /// The aggregate's id.
        id: String,
        /// The stream, when not `{DOMAIN}_EVENTS`.
        #[arg(long)]
        stream: Option<String>,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

async fn run(cli: Cli) -> Result<(), Error> {
    let (client, denied) = cli.connection.connect("cim-nats").await?;
    // A refusal by the server's permissions ends the command at once, naming the subject.
    denied
        .guard(command(client, cli.command, cli.connection.timeout))
        .await
}

async fn command(client: async_nats::Client, command: Command, timeout: u64) -> Result<(), Error> {
    match command {
        Command::Status { json } => status::run(&client, json).await,
        Command::Events(args) => events::run(&client, args).await,
        Command::Dlq(args) => dlq::run(&client, args, timeout).await,
        Command::Projection(action) => projection::run(&client, action, timeout).await,
        Command::Aggregate {
            domain,
            id,
            stream,
            json,
        } => aggregate::run(&client, &domain, &id, stream, json).await,
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cim-nats: {e}");
            ExitCode::FAILURE
        }
    }
}
