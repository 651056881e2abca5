//! `cim-nats`: look at the event streams and read models of any domain built with cim-nats,
//! without its code (it reads the framework's headers; bodies are shown as JSON).
//!
//! ```text
//! cim-nats status [--json]
//! cim-nats events --domain bank [--aggregate ID] [--type T] [--entity K] [--correlation C]
//!                 [--from SEQ | --since TIME] [--limit N] [--follow] [--json]
//! cim-nats aggregate DOMAIN ID [--json]
//! cim-nats dlq list [--stream S] [--consumer C] [--json] | show SEQ | redrive SEQ | discard SEQ
//! ```
//!
//! Connection options as the `nats` CLI names them: `--server`/`NATS_URL`, `--user`,
//! `--password`, `--token`, `--creds`, `--nkey`, `--tlscert`, `--tlskey`, `--tlsca`. Every
//! failure is one line on standard error and exit status 1.

mod aggregate;
mod dlq;
mod events;
mod output;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// What went wrong, as one line.
type Error = Box<dyn std::error::Error + Send + Sync>;

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

/// How to reach the server (the `nats` CLI's names).
#[derive(Debug, clap::Args)]
struct Connection {
    /// The server's URL(s), comma-separated.
    #[arg(
        long,
        short = 's',
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    server: String,
    /// User name.
    #[arg(long, env = "NATS_USER", global = true)]
    user: Option<String>,
    /// Password.
    #[arg(long, env = "NATS_PASSWORD", global = true)]
    password: Option<String>,
    /// Token.
    #[arg(long, env = "NATS_TOKEN", global = true)]
    token: Option<String>,
    /// A credentials file (JWT and nkey seed).
    #[arg(long, env = "NATS_CREDS", global = true)]
    creds: Option<PathBuf>,
    /// A file holding an nkey seed.
    #[arg(long, env = "NATS_NKEY", global = true)]
    nkey: Option<PathBuf>,
    /// Client certificate (PEM), with --tlskey.
    #[arg(long, env = "NATS_CERT", global = true)]
    tlscert: Option<PathBuf>,
    /// Client key (PEM), with --tlscert.
    #[arg(long, env = "NATS_KEY", global = true)]
    tlskey: Option<PathBuf>,
    /// Certificate authority (PEM) to trust.
    #[arg(long, env = "NATS_CA", global = true)]
    tlsca: Option<PathBuf>,
    /// How long to wait for the server, in seconds.
    #[arg(long, default_value_t = 5, global = true)]
    timeout: u64,
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

impl Connection {
    async fn connect(&self) -> Result<async_nats::Client, Error> {
        let mut options = async_nats::ConnectOptions::new()
            .name("cim-nats")
            .connection_timeout(Duration::from_secs(self.timeout))
            .request_timeout(Some(Duration::from_secs(self.timeout)));
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        } else if self.user.is_some() || self.password.is_some() {
            return Err("--user and --password go together".into());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(creds) = &self.creds {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| format!("credentials file {}: {e}", creds.display()))?;
        }
        if let Some(nkey) = &self.nkey {
            let seed = tokio::fs::read_to_string(nkey)
                .await
                .map_err(|e| format!("nkey file {}: {e}", nkey.display()))?;
            options = options.nkey(seed.trim().to_owned());
        }
        match (&self.tlscert, &self.tlskey) {
            (Some(cert), Some(key)) => {
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => return Err("--tlscert and --tlskey go together".into()),
        }
        if let Some(ca) = &self.tlsca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        let servers: Vec<String> = self.server.split(',').map(str::to_owned).collect();
        let connecting = options.connect(servers.as_slice());
        match tokio::time::timeout(Duration::from_secs(self.timeout), connecting).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(format!("cannot connect to {}: {e}", self.server).into()),
            Err(_) => Err(format!(
                "cannot connect to {}: no server answered within {} s",
                self.server, self.timeout
            )
            .into()),
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    let client = cli.connection.connect().await?;
    match cli.command {
        Command::Status { json } => status::run(&client, json).await,
        Command::Events(args) => events::run(&client, args).await,
        Command::Dlq(args) => dlq::run(&client, args, cli.connection.timeout).await,
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
