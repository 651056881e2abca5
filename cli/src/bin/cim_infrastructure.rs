//! `cim-infrastructure`: the infrastructure domain's tool, beside the generic `cim-nats`.
//!
//! ```text
//! cim-infrastructure topology [--format table|dot|mermaid|json] [--infrastructure ID]
//! ```
//!
//! It reads the topology read model as any NATS client can (the pointer `topology` in bucket
//! `READ_MODELS`, then the rows of its live bucket): a running service keeps the model
//! current, the tool only reads it. Connection options as `cim-nats` takes them (`--server` /
//! `NATS_URL`, `--user`, `--password`, `--token`, `--creds`, `--nkey`, TLS); every failure is
//! one line on standard error and exit status 1.

#[path = "../connection.rs"]
mod connection;

use std::process::ExitCode;

use cim_infrastructure_nats::domain::InfrastructureId;
use cim_infrastructure_nats::projections::{read_topology, Topology};
use clap::{Parser, Subcommand, ValueEnum};
use comfy_table::{presets, Table};
use connection::{Connection, Error};

#[derive(Debug, Parser)]
#[command(
    name = "cim-infrastructure",
    version,
    about = "The infrastructure domain's topology, from its read model in JetStream KV"
)]
struct Cli {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Machines, their networks, links and software, and the networks: as a table, Graphviz
    /// DOT, Mermaid or JSON.
    Topology {
        /// The output.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Only this infrastructure (its id).
        #[arg(long)]
        infrastructure: Option<String>,
    },
}

/// How the topology is printed.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// Tables of machines and networks.
    Table,
    /// Graphviz DOT (`dot -Tsvg`).
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
    /// The whole topology as one JSON document.
    Json,
}

fn tables(topology: &Topology, sequence: u64) -> String {
    let mut machines = Table::new();
    machines.load_preset(presets::NOTHING);
    machines.set_header([
        "hostname", "type", "system", "cpus", "memory", "networks", "links", "software",
    ]);
    let mut resources = topology.active_compute_resources();
    resources.sort_by(|a, b| a.hostname.as_str().cmp(b.hostname.as_str()));
    for r in &resources {
        let links = topology.connections_of(r.id);
        let networks = topology.network_names_of(r.id);
        let software: Vec<String> = topology
            .software_on(r.id)
            .iter()
            .map(|s| format!("{} {}", s.name, s.version))
            .collect();
        machines.add_row(vec![
            r.hostname.as_str().to_owned(),
            format!("{:?}", r.resource_type),
            r.system.to_string(),
            r.capabilities.cpu_cores.to_string(),
            format!("{} GB", r.capabilities.memory_mb / 1024),
            networks.join(", "),
            links.len().to_string(),
            software.join(", "),
        ]);
    }
    let mut nets = Table::new();
    nets.load_preset(presets::NOTHING);
    nets.set_header(["network", "cidr", "machines", "links"]);
    let mut networks = topology.active_networks();
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    for n in &networks {
        nets.add_row(vec![
            n.name.clone(),
            n.cidr.to_string(),
            topology.resources_on_network(n.id).len().to_string(),
            topology.connections_on(n.id).len().to_string(),
        ]);
    }
    format!(
        "topology as of stream sequence {sequence}: {} machines, {} networks\n\nmachines\n{machines}\n\nnetworks\n{nets}",
        resources.len(),
        networks.len()
    )
}

async fn run(cli: Cli) -> Result<(), Error> {
    let (client, denied) = cli.connection.connect("cim-infrastructure").await?;
    denied.guard(command(client, cli.command)).await
}

async fn command(client: async_nats::Client, command: Command) -> Result<(), Error> {
    match command {
        Command::Topology {
            format,
            infrastructure,
        } => {
            let (mut topology, sequence) = read_topology(&client).await.map_err(|e| {
                format!("the topology read model cannot be read (is a service running it?): {e}")
            })?;
            if let Some(id) = infrastructure {
                let id: InfrastructureId = id
                    .parse()
                    .map_err(|e| format!("infrastructure id {id:?}: {e}"))?;
                topology = topology.of_infrastructure(id);
            }
            match format {
                Format::Table => println!("{}", tables(&topology, sequence.0)),
                Format::Dot => print!("{}", topology.to_dot()),
                Format::Mermaid => print!("{}", topology.to_mermaid()),
                Format::Json => println!("{}", serde_json::to_string(&topology)?),
            }
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cim-infrastructure: {e}");
            ExitCode::FAILURE
        }
    }
}
