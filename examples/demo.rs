//! The demo: a small data centre, event-sourced on NATS JetStream.
//!
//! It starts its own nats-server (or uses the one at `NATS_URL`), builds an infrastructure of a
//! dozen machines on three networks through the repository (every command's events stored
//! atomically, with optimistic concurrency), decommissions a connected machine, shows a
//! subscriber's live log and the topology read model, writes `topology.dot` and `topology.mmd`,
//! and replays the stream to show it rebuilds the very same topology.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use cim_domain_infrastructure::{
    Cidr, ComputeResourceSpec, ComputeType, ConnectionKind, ConnectionSpec, Hostname,
    InfrastructureAggregate, InfrastructureCommand, InfrastructureEvent, InfrastructureId,
    NetworkId, NetworkSpec, PolicyRule, PolicyScope, ResourceCapabilities, ResourceId,
    SoftwareConfiguration, SystemArchitecture,
};
use cim_infrastructure_nats::event_store::{EventStoreConfig, JetStreamEventStore};
use cim_infrastructure_nats::projections::{ProjectionManager, Topology};
use cim_infrastructure_nats::subjects::subjects;
use cim_infrastructure_nats::subscriber::{EventSubscriberBuilder, TypedHandler};
use cim_infrastructure_nats::{AggregateId, Envelope, EventStore, MessageIdentity, StreamSequence};
use cim_nats::jetstream::{KvSnapshotStore, ProjectionOptions};
use cim_nats::testing::NatsServer;
use cim_nats::Repository;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Names learned from the events, so the live log can say "web-01" rather than an id.
#[derive(Default)]
struct Names(Mutex<HashMap<String, String>>);

impl Names {
    fn learn(&self, id: impl ToString, name: impl ToString) {
        if let Ok(mut names) = self.0.lock() {
            names.insert(id.to_string(), name.to_string());
        }
    }

    fn of(&self, id: impl ToString) -> String {
        let id = id.to_string();
        self.0
            .lock()
            .ok()
            .and_then(|names| names.get(&id).cloned())
            .unwrap_or(id)
    }

    /// One line of the live log for an event.
    fn describe(&self, event: &InfrastructureEvent) -> String {
        use InfrastructureEvent as E;
        match event {
            E::ComputeResourceRegistered { resource, .. } => {
                self.learn(resource.id, &resource.hostname);
                format!(
                    "{} ({:?}, {})",
                    resource.hostname, resource.resource_type, resource.system
                )
            }
            E::ComputeResourceDecommissioned { resource_id, .. } => self.of(resource_id),
            E::NetworkDefined { network, .. } => {
                self.learn(network.id, &network.name);
                format!("{} {}", network.name, network.cidr)
            }
            E::ConnectionEstablished { connection, .. } => {
                let line = format!(
                    "{} -> {} on {}",
                    self.of(connection.from),
                    self.of(connection.to),
                    self.of(connection.network)
                );
                self.learn(connection.id, &line);
                line
            }
            E::ConnectionSevered { connection_id, .. } => self.of(connection_id),
            E::SoftwareConfigured { software, .. } => {
                let line = format!(
                    "{} {} on {}",
                    software.name,
                    software.version,
                    self.of(software.resource)
                );
                self.learn(software.id, &line);
                line
            }
            E::SoftwareRemoved { software_id, .. } => self.of(software_id),
            E::PolicySet { policy, .. } => policy.name.clone(),
            other => other.event_type().to_owned(),
        }
    }
}

use cim_infrastructure_nats::NatsEvent;

struct Plan {
    infra: InfrastructureId,
    commands: Vec<InfrastructureCommand>,
    doomed: ResourceId,
}

fn machine(
    name: &str,
    kind: ComputeType,
    system: &str,
    cpu: u32,
    memory_gb: u64,
) -> Result<ComputeResourceSpec, Error> {
    Ok(
        ComputeResourceSpec::new(kind, Hostname::new(name)?, SystemArchitecture::new(system)?)
            .with_capabilities(ResourceCapabilities {
                cpu_cores: cpu,
                memory_mb: memory_gb * 1024,
                storage_gb: 100,
                ..ResourceCapabilities::default()
            }),
    )
}

/// The commands that build the data centre, each with its own identity (one conversation).
fn plan() -> Result<Plan, Error> {
    let infra = InfrastructureId::new();
    let operator = MessageIdentity::new_from_user("ops@datacentre");
    let mut commands = Vec::new();
    let next = || operator.caused();

    let nets = [
        NetworkSpec::new("management", Cidr::new("10.0.0.0/24")?)?,
        NetworkSpec::new("storage", Cidr::new("10.0.10.0/24")?)?,
        NetworkSpec::new("public", Cidr::new("2001:db8:100::/64")?)?,
    ];
    let [mgmt, storage, public]: [NetworkId; 3] = [nets[0].id, nets[1].id, nets[2].id];
    for spec in nets {
        commands.push(InfrastructureCommand::DefineNetwork {
            infrastructure_id: infra,
            spec,
            identity: next(),
        });
    }
    use ComputeType::{Container, Physical, VirtualMachine};
    let machines = vec![
        machine("lb-01", VirtualMachine, "x86_64-linux", 2, 4)?,
        machine("web-01", VirtualMachine, "x86_64-linux", 4, 8)?,
        machine("web-02", VirtualMachine, "x86_64-linux", 4, 8)?,
        machine("web-03", VirtualMachine, "aarch64-linux", 4, 8)?,
        machine("api-01", Container, "x86_64-linux", 2, 4)?,
        machine("api-02", Container, "x86_64-linux", 2, 4)?,
        machine("db-01", Physical, "x86_64-linux", 32, 256)?,
        machine("db-02", Physical, "x86_64-linux", 32, 256)?,
        machine("cache-01", Container, "aarch64-linux", 2, 16)?,
        machine("nas-01", Physical, "x86_64-freebsd", 8, 64)?,
        machine("ci-01", Physical, "aarch64-darwin", 12, 32)?,
        machine("mon-01", VirtualMachine, "x86_64-linux", 2, 8)?,
    ];
    let id = |name: &str| {
        machines
            .iter()
            .find(|m| m.hostname.as_str() == name)
            .map(|m| m.id)
            .ok_or_else(|| format!("no machine {name}"))
    };
    let links = [
        ("lb-01", "web-01", public),
        ("lb-01", "web-02", public),
        ("lb-01", "web-03", public),
        ("web-01", "api-01", mgmt),
        ("web-02", "api-01", mgmt),
        ("web-03", "api-02", mgmt),
        ("api-01", "db-01", mgmt),
        ("api-02", "db-02", mgmt),
        ("api-01", "cache-01", mgmt),
        ("db-01", "nas-01", storage),
        ("db-02", "nas-01", storage),
        ("mon-01", "db-01", mgmt),
        ("mon-01", "web-03", mgmt),
    ];
    let mut resolved = Vec::new();
    for (from, to, net) in links {
        resolved.push(ConnectionSpec::new(
            id(from)?,
            id(to)?,
            net,
            ConnectionKind::Ethernet,
        )?);
    }
    let doomed = id("web-03")?;
    let software = [
        ("lb-01", "haproxy", "2.9"),
        ("web-01", "nginx", "1.27"),
        ("web-02", "nginx", "1.27"),
        ("web-03", "nginx", "1.27"),
        ("db-01", "postgresql", "17"),
        ("db-02", "postgresql", "17"),
        ("cache-01", "redis", "7.4"),
    ];
    let mut configs = Vec::new();
    for (on, name, version) in software {
        configs.push(SoftwareConfiguration::new(id(on)?, name, version)?);
    }
    for spec in machines {
        commands.push(InfrastructureCommand::RegisterComputeResource {
            infrastructure_id: infra,
            spec,
            identity: next(),
        });
    }
    for spec in resolved {
        commands.push(InfrastructureCommand::EstablishConnection {
            infrastructure_id: infra,
            spec,
            identity: next(),
        });
    }
    for configuration in configs {
        commands.push(InfrastructureCommand::ConfigureSoftware {
            infrastructure_id: infra,
            configuration,
            identity: next(),
        });
    }
    commands.push(InfrastructureCommand::SetPolicy {
        infrastructure_id: infra,
        rule: PolicyRule::new(
            "ssh-keys-only",
            PolicyScope::Infrastructure,
            "deny password_auth",
        )?,
        identity: next(),
    });
    Ok(Plan {
        infra,
        commands,
        doomed,
    })
}

fn print_table(topology: &Topology) {
    println!(
        "\n{:<10} {:<15} {:<15} {:>5} {:>8}  {:<28} {:>5}  software (version)",
        "hostname", "type", "system", "cpus", "memory", "networks", "links"
    );
    println!("{}", "-".repeat(120));
    let mut resources = topology.active_compute_resources();
    resources.sort_by(|a, b| a.hostname.as_str().cmp(b.hostname.as_str()));
    for r in resources {
        let links = topology.connections_of(r.id);
        let networks = topology.network_names_of(r.id);
        let software: Vec<String> = topology
            .software_on(r.id)
            .iter()
            .map(|s| format!("{} ({})", s.name, s.version))
            .collect();
        println!(
            "{:<10} {:<15} {:<15} {:>5} {:>6}GB  {:<28} {:>5}  {}",
            r.hostname.as_str(),
            format!("{:?}", r.resource_type),
            r.system.to_string(),
            r.capabilities.cpu_cores,
            r.capabilities.memory_mb / 1024,
            networks.join(","),
            links.len(),
            software.join(",")
        );
    }
    let mut networks = topology.active_networks();
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    println!();
    for n in networks {
        println!(
            "network {:<11} {:<20} {} machines, {} links",
            n.name,
            n.cidr.to_string(),
            topology.resources_on_network(n.id).len(),
            topology.connections_on(n.id).len()
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let started = Instant::now();
    // A server: NATS_URL, or our own for the length of the run.
    let (server, url) = match std::env::var("NATS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = NatsServer::start()?;
            println!(
                "started nats-server {} with JetStream at {} (store {})",
                server.binary().version,
                server.url(),
                server.dir().display()
            );
            let url = server.url();
            (Some(server), url)
        }
    };
    let client = async_nats::connect(url.as_str()).await?;
    let store =
        Arc::new(JetStreamEventStore::new(client.clone(), EventStoreConfig::default()).await?);
    println!(
        "event store: stream {} on {:?}",
        store.stream_name(),
        store.config().subjects
    );

    // The live log: a subscriber on every infrastructure event, decoded into the domain enum.
    let seen = Arc::new(AtomicU64::new(0));
    let names = Arc::new(Names::default());
    let handler = {
        let seen = Arc::clone(&seen);
        Arc::new(TypedHandler::new(
            move |e: Envelope<InfrastructureEvent>| {
                let seen = Arc::clone(&seen);
                let names = Arc::clone(&names);
                async move {
                    println!(
                        "  live  #{:<4} v{:<3} {:<42} {}",
                        e.sequence(),
                        e.version(),
                        e.stored.subject.rsplit_once('.').map_or("", |(s, _)| s),
                        names.describe(&e.event)
                    );
                    seen.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        ))
    };
    let subscription = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject(subjects::all_events())
        .handler(handler)
        .max_in_flight(1)
        .build()?
        .subscribe()
        .await?;

    // The read model, kept up to date from the stream with its checkpoint in KV.
    let topology = ProjectionManager::start(&store, ProjectionOptions::default()).await?;

    // Commands go through the repository: load (snapshot + events), decide, append atomically
    // with the loaded version as the expected version.
    let snapshots =
        Arc::new(KvSnapshotStore::new(client.clone(), "INFRASTRUCTURE_SNAPSHOTS").await?);
    let repo =
        Repository::<InfrastructureAggregate>::new(Arc::clone(&store) as Arc<dyn EventStore>)
            .with_snapshots(snapshots, 25)
            .with_cache(100);
    let plan = plan()?;
    let id: AggregateId = plan.infra.into();
    println!(
        "\nbuilding infrastructure {} ({} commands)",
        plan.infra,
        plan.commands.len()
    );
    let mut last = StreamSequence(0);
    let mut events = 0;
    for command in plan.commands {
        let outcome = repo.execute(&id, command).await?;
        events += outcome.events.len();
        last = last.max(outcome.last_sequence());
    }
    let decommission = InfrastructureCommand::DecommissionComputeResource {
        infrastructure_id: plan.infra,
        resource: plan.doomed,
        identity: MessageIdentity::new_from_user("ops@datacentre"),
    };
    let outcome = repo.execute(&id, decommission).await?;
    println!(
        "decommissioned web-03: {} events in one atomic append ({})",
        outcome.events.len(),
        outcome
            .events
            .iter()
            .map(|e| e.event_type())
            .collect::<Vec<_>>()
            .join(", ")
    );
    events += outcome.events.len();
    last = last.max(outcome.last_sequence());

    // Hostnames are unique across every infrastructure: each registration is stored with its
    // hostname's reservation, checked by the server. Another infrastructure cannot take web-01.
    let other = InfrastructureId::new();
    let twin = InfrastructureCommand::RegisterComputeResource {
        infrastructure_id: other,
        spec: ComputeResourceSpec::new(
            ComputeType::VirtualMachine,
            Hostname::new("web-01")?,
            SystemArchitecture::new("x86_64-linux")?,
        ),
        identity: MessageIdentity::new_from_user("ops@datacentre"),
    };
    match repo.execute(&other.into(), twin).await {
        Err(refused) => {
            println!("registering web-01 on infrastructure {other}: refused: {refused}")
        }
        Ok(_) => return Err("web-01 was registered on two infrastructures".into()),
    }

    // Read your own writes: wait until the projection and the log have seen the last event.
    topology.wait_for(last, Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.load(Ordering::SeqCst) < events as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    subscription.shutdown().await?;

    let live = topology.get_topology().await.of_infrastructure(plan.infra);
    println!(
        "\ntopology of {}: {} active machines, {} networks, {} connections ({} events, aggregate version {})",
        plan.infra,
        live.active_compute_resources().len(),
        live.active_networks().len(),
        live.active_connections().len(),
        events,
        outcome.version
    );
    print_table(&live);
    let here = std::env::current_dir()?;
    let (dot, mmd) = (here.join("topology.dot"), here.join("topology.mmd"));
    std::fs::write(&dot, live.to_dot())?;
    std::fs::write(&mmd, live.to_mermaid())?;
    println!(
        "\nwrote {} (Graphviz: dot -Tsvg {} -o topology.svg)\nwrote {} (Mermaid)",
        dot.display(),
        dot.display(),
        mmd.display()
    );

    // The same model as any NATS client sees it: plain KV reads, no cim-nats code.
    let kv = async_nats::jetstream::new(client.clone());
    let pointer = kv
        .get_key_value("READ_MODELS")
        .await?
        .get("topology")
        .await?
        .ok_or("no pointer to the topology's bucket")?;
    let pointer: serde_json::Value = serde_json::from_slice(&pointer)?;
    let bucket_name = pointer["bucket"]
        .as_str()
        .ok_or("a pointer without a bucket")?;
    let bucket = kv.get_key_value(bucket_name).await?;
    let mut keys = bucket.keys().await?;
    let mut tables = std::collections::BTreeMap::<String, usize>::new();
    while let Some(key) = keys.next().await {
        let key = key?;
        match key.split_once('.') {
            Some((table, _)) if !table.starts_with('_') => {
                *tables.entry(table.to_owned()).or_default() += 1;
            }
            _ => {}
        }
    }
    let web = live
        .resource_by_hostname("web-01")
        .ok_or("web-01 is not in the topology")?;
    let row = bucket
        .get(format!("compute.r.{}", web.id))
        .await?
        .ok_or("web-01 has no row")?;
    println!(
        "read back with a plain KV client from bucket {bucket_name}: {}\n  compute.r.{} = {}",
        tables
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", "),
        web.id,
        String::from_utf8_lossy(&row)
    );

    // Replay: a fresh read model from every stored event, streamed from the store.
    let replay_started = Instant::now();
    let replayed = ProjectionManager::new();
    replayed.rebuild_from(store.as_ref()).await?;
    let rebuilt = replayed.get_topology().await.of_infrastructure(plan.infra);
    let same = rebuilt.to_dot() == live.to_dot();
    println!(
        "replayed {} stored events in {:?}: {}",
        store.last_sequence().await?,
        replay_started.elapsed(),
        if same {
            "the same topology"
        } else {
            "A DIFFERENT TOPOLOGY"
        }
    );
    topology.shutdown().await?;
    if !same {
        return Err("the replay rebuilt another topology".into());
    }
    if server.is_none() {
        // A server of the user's keeps the stream: decommission this run's machines, so that
        // their hostnames (unique across infrastructures) are free for the next run.
        let machines: Vec<ResourceId> = rebuilt
            .active_compute_resources()
            .iter()
            .map(|r| r.id)
            .collect();
        for resource in &machines {
            repo.execute(
                &id,
                InfrastructureCommand::DecommissionComputeResource {
                    infrastructure_id: plan.infra,
                    resource: *resource,
                    identity: MessageIdentity::new_from_user("ops@datacentre"),
                },
            )
            .await?;
        }
        println!(
            "decommissioned this run's {} machines on the server at NATS_URL: their hostnames \
             are free for the next run",
            machines.len()
        );
    }
    println!("done in {:?}", started.elapsed());
    Ok(())
}
