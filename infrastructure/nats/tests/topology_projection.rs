//! The topology read model: built from the domain's events, queried, drawn, rebuilt from stored
//! events by the `ProjectionManager`, and kept live by a projection runner on a real server.

use std::collections::BTreeSet;
use std::time::Duration;

use cim_domain_infrastructure::{
    Cidr, ComputeResourceSpec, ComputeType, ConnectionKind, ConnectionSpec, EventId, Hostname,
    InfrastructureAggregate, InfrastructureError, InfrastructureEvent, InfrastructureId,
    MessageIdentity, NetworkSpec, PolicyRule, PolicyScope, ResourceCapabilities, ResourceId,
    ResourceStatus, SoftwareConfiguration, SystemArchitecture,
};
use cim_infrastructure_nats::event_store::{
    EventStoreConfig, EventStoreExt, ExpectedVersion, InMemoryEventStore, JetStreamEventStore,
    StoreErrorKind,
};
use cim_infrastructure_nats::projections::{
    ProjectionError, ProjectionManager, ProjectionOptions, Topology, TopologyProjection,
};
use cim_infrastructure_nats::{EventStore, StoredEvent, StreamSequence};
use cim_nats::testing::NatsServer;
use cim_nats::{replay, AggregateId, OnUnreadable, ReadFrom};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The seed's "Read Model Projections" program, as written (it needs a server on
/// localhost:4222, so it is compiled, not run; `seed_program_on_a_live_server` runs its body).
#[allow(dead_code)]
#[rustfmt::skip]
mod seed_projection_program {
    use cim_infrastructure_nats::{
        event_store::{JetStreamEventStore, EventStoreConfig, EventStore},
        projections::ProjectionManager,
    };
    use std::sync::Arc;

    async fn main() -> Result<(), Box<dyn std::error::Error>> {
        let client = async_nats::connect("nats://localhost:4222").await?;

        // Create event store
        let config = EventStoreConfig::default();
        let event_store = Arc::new(
            JetStreamEventStore::new(client.clone(), config).await?
        );

        // Create projection manager
        let projection_manager = ProjectionManager::new();

        // Read all events and project them
        let events = event_store.read_all().await?;
        projection_manager.rebuild(events).await?;

        // Query the topology
        let topology = projection_manager.get_topology().await;

        println!("Active compute resources: {}",
            topology.active_compute_resources().len());
        println!("Active networks: {}",
            topology.active_networks().len());
        println!("Active connections: {}",
            topology.active_connections().len());

        Ok(())
    }
}

/// One infrastructure driven through its aggregate; keeps the events of each command.
struct Infra {
    id: InfrastructureId,
    aggregate: InfrastructureAggregate,
    commands: Vec<Vec<InfrastructureEvent>>,
}

impl Infra {
    fn new() -> Self {
        let id = InfrastructureId::new();
        Self {
            id,
            aggregate: InfrastructureAggregate::new(id),
            commands: Vec::new(),
        }
    }

    /// Runs one command (each with its own identity, so its event ids are its own).
    fn run(
        &mut self,
        command: impl FnOnce(
            &mut InfrastructureAggregate,
            &MessageIdentity,
        ) -> Result<Vec<InfrastructureEvent>, InfrastructureError>,
    ) -> Vec<InfrastructureEvent> {
        let identity = MessageIdentity::new_from_user("ops");
        let events = command(&mut self.aggregate, &identity)
            .unwrap_or_else(|e| panic!("command refused: {e}"));
        self.commands.push(events.clone());
        events
    }

    fn host(&mut self, name: &str, kind: ComputeType, system: SystemArchitecture) -> ResourceId {
        let spec = ComputeResourceSpec::new(kind, Hostname::new(name).unwrap(), system);
        let id = spec.id;
        self.run(|a, i| a.handle_register_compute_resource(spec, i));
        id
    }

    fn events(&self) -> Vec<InfrastructureEvent> {
        self.commands.iter().flatten().cloned().collect()
    }

    fn topology(&self) -> Topology {
        Topology::from_events(&self.events())
    }
}

/// The ids of a small data centre.
#[derive(Clone, Copy)]
struct Ids {
    web: ResourceId,
    db: ResourceId,
    cache: ResourceId,
    lan: cim_domain_infrastructure::NetworkId,
    dmz: cim_domain_infrastructure::NetworkId,
    web_db: cim_domain_infrastructure::ConnectionId,
    web_cache: cim_domain_infrastructure::ConnectionId,
    db_cache: cim_domain_infrastructure::ConnectionId,
}

/// web, db and cache; networks lan and dmz; three connections; software on db; three policies.
fn data_centre(infra: &mut Infra) -> Ids {
    let web = infra.host(
        "web",
        ComputeType::VirtualMachine,
        SystemArchitecture::X86_64_LINUX,
    );
    let db = infra.host(
        "db",
        ComputeType::Physical,
        SystemArchitecture::X86_64_LINUX,
    );
    let cache = infra.host(
        "cache",
        ComputeType::Container,
        SystemArchitecture::AARCH64_LINUX,
    );
    let lan = NetworkSpec::new("lan", Cidr::new("10.0.0.0/24").unwrap()).unwrap();
    let dmz = NetworkSpec::new("dmz", Cidr::new("192.168.10.0/24").unwrap()).unwrap();
    let (lan_id, dmz_id) = (lan.id, dmz.id);
    infra.run(|a, i| a.handle_define_network(lan, i));
    infra.run(|a, i| a.handle_define_network(dmz, i));
    let link = |from, to, network, kind| ConnectionSpec::new(from, to, network, kind).unwrap();
    let web_db = link(web, db, lan_id, ConnectionKind::Ethernet);
    let web_cache = link(web, cache, lan_id, ConnectionKind::Virtual);
    let db_cache = link(db, cache, dmz_id, ConnectionKind::Vpn);
    let ids = Ids {
        web,
        db,
        cache,
        lan: lan_id,
        dmz: dmz_id,
        web_db: web_db.id,
        web_cache: web_cache.id,
        db_cache: db_cache.id,
    };
    for c in [web_db, web_cache, db_cache] {
        infra.run(|a, i| a.handle_establish_connection(c, i));
    }
    let postgres = SoftwareConfiguration::new(db, "postgres", "16.2")
        .unwrap()
        .with_setting("port", "5432");
    infra.run(|a, i| a.handle_configure_software(postgres, i));
    for rule in [
        PolicyRule::new("nightly-backup", PolicyScope::Resource(db), "backup 02:00").unwrap(),
        PolicyRule::new(
            "no-public",
            PolicyScope::Network(lan_id),
            "deny ingress 0/0",
        )
        .unwrap(),
        PolicyRule::new("ssh-keys", PolicyScope::Infrastructure, "deny password").unwrap(),
    ] {
        infra.run(|a, i| a.handle_set_policy(rule, i));
    }
    ids
}

fn ids_of<'a, T: 'a>(
    items: impl IntoIterator<Item = &'a T>,
    id: impl Fn(&T) -> ResourceId,
) -> BTreeSet<ResourceId> {
    items.into_iter().map(id).collect()
}

#[test]
fn counts_and_lookups() {
    let mut infra = Infra::new();
    let ids = data_centre(&mut infra);
    let topology = infra.topology();

    assert_eq!(topology.active_compute_resources().len(), 3);
    assert_eq!(topology.active_networks().len(), 2);
    assert_eq!(topology.active_connections().len(), 3);
    assert_eq!(topology.software().len(), 1);
    assert_eq!(topology.policies().len(), 3);
    assert_eq!(topology.infrastructures(), [infra.id]);
    assert!(topology.decommissioned_resources().is_empty());

    let db = topology
        .resource_by_hostname("db")
        .expect("db by host name");
    assert_eq!(db.id, ids.db);
    assert_eq!(db.infrastructure, infra.id);
    assert_eq!(db.resource_type, ComputeType::Physical);
    assert_eq!(db.system, SystemArchitecture::X86_64_LINUX);
    assert_eq!(db.status, ResourceStatus::Active);
    let hostname = Hostname::new("cache").unwrap();
    assert_eq!(
        topology.resource_by_hostname(&hostname).map(|r| r.id),
        Some(ids.cache)
    );
    assert_eq!(
        topology.resource_by_hostname("WEB").map(|r| r.id),
        Some(ids.web)
    );
    assert!(topology.resource_by_hostname("mail").is_none());

    let lan = topology.network(ids.lan).unwrap();
    assert_eq!(
        (lan.name.as_str(), lan.cidr.to_string()),
        ("lan", "10.0.0.0/24".into())
    );
    assert_eq!(
        ids_of(topology.resources_on_network(ids.lan), |r| r.id),
        [ids.web, ids.db, ids.cache].into()
    );
    assert_eq!(
        ids_of(topology.resources_on_network(ids.dmz), |r| r.id),
        [ids.db, ids.cache].into()
    );
    assert_eq!(topology.connections_of(ids.web).len(), 2);
    assert_eq!(topology.connections_of(ids.db).len(), 2);
    assert_eq!(topology.connections_on(ids.dmz).len(), 1);
    let web_db = topology.connection(ids.web_db).unwrap();
    assert_eq!(
        (web_db.from, web_db.to, web_db.network, web_db.kind),
        (ids.web, ids.db, ids.lan, ConnectionKind::Ethernet)
    );

    let software = topology.software_on(ids.db);
    assert_eq!(software.len(), 1);
    assert_eq!(software[0].name, "postgres");
    assert_eq!(software[0].settings["port"], "5432");
    assert_eq!(
        topology.policies_for(PolicyScope::Resource(ids.db)).len(),
        1
    );
    assert_eq!(topology.policies_for(PolicyScope::Infrastructure).len(), 1);
}

#[test]
fn updates_change_capabilities() {
    let mut infra = Infra::new();
    let ids = data_centre(&mut infra);
    let bigger = ResourceCapabilities {
        cpu_cores: 32,
        memory_mb: 131_072,
        ..ResourceCapabilities::default()
    }
    .with_metadata("rack", "r12");
    let update = bigger.clone();
    infra.run(|a, i| a.handle_update_compute_resource(ids.db, update, i));
    let topology = infra.topology();
    assert_eq!(topology.resource(ids.db).unwrap().capabilities, bigger);
}

#[test]
fn decommission_leaves_the_active_lists_and_severs_connections() {
    let mut infra = Infra::new();
    let ids = data_centre(&mut infra);
    let events = infra.run(|a, i| a.handle_decommission_compute_resource(ids.db, i));
    assert!(matches!(
        events.last(),
        Some(InfrastructureEvent::ComputeResourceDecommissioned { .. })
    ));
    let topology = infra.topology();

    assert_eq!(topology.active_compute_resources().len(), 2);
    assert!(topology
        .active_compute_resources()
        .iter()
        .all(|r| r.id != ids.db));
    let db = topology
        .resource(ids.db)
        .expect("a decommissioned resource is kept");
    assert_eq!(db.status, ResourceStatus::Decommissioned);
    assert_eq!(topology.decommissioned_resources().len(), 1);
    assert!(topology.resource_by_hostname("db").is_none());

    assert!(topology.connections_of(ids.db).is_empty());
    assert_eq!(topology.active_connections().len(), 1);
    assert!(topology.connection(ids.web_cache).is_some());
    assert!(topology.connection(ids.web_db).is_none());
    assert!(topology.connection(ids.db_cache).is_none());
    assert!(topology.software_on(ids.db).is_empty());
    assert!(topology
        .policies_for(PolicyScope::Resource(ids.db))
        .is_empty());
    assert_eq!(topology.policies().len(), 2);
    assert_eq!(
        ids_of(topology.resources_on_network(ids.lan), |r| r.id),
        [ids.web, ids.cache].into()
    );
    assert!(topology.resources_on_network(ids.dmz).is_empty());
    assert_eq!(topology.active_networks().len(), 2);

    // The host name is free again.
    let db2 = infra.host(
        "db",
        ComputeType::Physical,
        SystemArchitecture::X86_64_LINUX,
    );
    let topology = infra.topology();
    assert_eq!(topology.resource_by_hostname("db").map(|r| r.id), Some(db2));
    assert_eq!(topology.resources().len(), 4);

    // A network leaves with its policies once its connections are severed.
    infra.run(|a, i| a.handle_sever_connection(ids.web_cache, i));
    infra.run(|a, i| a.handle_remove_network(ids.lan, i));
    let topology = infra.topology();
    assert!(topology.active_connections().is_empty());
    assert_eq!(topology.active_networks().len(), 1);
    assert!(topology.network(ids.lan).is_none());
    assert!(topology
        .policies_for(PolicyScope::Network(ids.lan))
        .is_empty());
    assert_eq!(topology.policies().len(), 1);
}

#[test]
fn a_bare_decommissioning_still_severs() {
    // The aggregate severs first; the read model does not depend on it.
    let mut infra = Infra::new();
    let ids = data_centre(&mut infra);
    let mut topology = infra.topology();
    topology.apply(&InfrastructureEvent::ComputeResourceDecommissioned {
        event_id: EventId::new(),
        infrastructure_id: infra.id,
        identity: MessageIdentity::new_from_user("ops"),
        resource_id: ids.web,
    });
    assert!(topology.connections_of(ids.web).is_empty());
    assert_eq!(topology.active_connections().len(), 1);
    assert_eq!(topology.active_compute_resources().len(), 2);

    // Events about unknown ids change nothing.
    let before = topology.clone();
    topology.apply(&InfrastructureEvent::ComputeResourceUpdated {
        event_id: EventId::new(),
        infrastructure_id: infra.id,
        identity: MessageIdentity::new_from_user("ops"),
        resource_id: ResourceId::new(),
        capabilities: ResourceCapabilities::default(),
    });
    assert_eq!(topology, before);
}

#[test]
fn several_infrastructures() {
    let (mut a, mut b) = (Infra::new(), Infra::new());
    data_centre(&mut a);
    let ids_b = data_centre(&mut b);
    let events: Vec<_> = a.events().into_iter().chain(b.events()).collect();
    let topology = Topology::from_events(&events);

    let mut both = vec![a.id, b.id];
    both.sort();
    assert_eq!(topology.infrastructures(), both);
    assert_eq!(topology.active_compute_resources().len(), 6);
    assert_eq!(topology.resources_by_hostname("web").len(), 2);
    assert_eq!(topology.of_infrastructure(a.id), a.topology());
    assert_eq!(topology.of_infrastructure(b.id), b.topology());
    assert_eq!(
        topology.resource(ids_b.db).map(|r| r.infrastructure),
        Some(b.id)
    );
    assert!(topology
        .of_infrastructure(InfrastructureId::new())
        .is_empty());
}

fn node(id: ResourceId) -> String {
    format!("r_{}", id.as_uuid().simple())
}

fn balanced(text: &str, open: char, close: char) -> bool {
    let mut depth = 0i64;
    for c in text.chars() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth < 0 {
                return false;
            }
        }
    }
    depth == 0
}

#[test]
fn graphviz() {
    let mut infra = Infra::new();
    let ids = data_centre(&mut infra);
    let dot = infra.topology().to_dot();

    assert!(dot.starts_with("digraph infrastructure {"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
    assert!(balanced(&dot, '{', '}'), "{dot}");
    assert!(balanced(&dot, '[', ']'), "{dot}");
    assert_eq!(dot.matches('"').count() % 2, 0, "{dot}");
    assert!(dot.contains(&format!(
        "subgraph cluster_i_{}",
        infra.id.as_uuid().simple()
    )));
    for host in [
        "web\\nx86_64-linux",
        "db\\nx86_64-linux",
        "cache\\naarch64-linux",
    ] {
        assert!(dot.contains(host), "{host} missing:\n{dot}");
    }
    assert!(dot.contains("lan\\n10.0.0.0/24"), "{dot}");
    let edge = format!("{} -> {} [", node(ids.web), node(ids.db));
    let line = dot
        .lines()
        .find(|l| l.contains(&edge))
        .expect("web -> db edge");
    assert!(line.contains("label=\"ethernet\\nlan\""), "{line}");
    assert!(dot.contains(&format!("{} -> {} [", node(ids.db), node(ids.cache))));
    let connection_edges = dot
        .lines()
        .filter(|l| l.contains(" -> r_") && l.contains("label="))
        .count();
    assert_eq!(connection_edges, 3);

    // A decommissioned resource is grey and has no edges.
    infra.run(|a, i| a.handle_decommission_compute_resource(ids.db, i));
    let dot = infra.topology().to_dot();
    let db_node = dot
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{} [", node(ids.db))))
        .expect("db node");
    assert!(db_node.contains("color=gray") && db_node.contains("(decommissioned)"));
    assert!(!dot.contains(&format!("-> {}", node(ids.db))));
    assert!(!dot.contains(&format!("{} ->", node(ids.db))));
    assert!(balanced(&dot, '{', '}'));

    // Labels are escaped.
    let mut odd = Infra::new();
    let quoted =
        NetworkSpec::new("a \"quoted\" \\ net", Cidr::new("10.9.0.0/16").unwrap()).unwrap();
    odd.run(|a, i| a.handle_define_network(quoted, i));
    let dot = odd.topology().to_dot();
    assert!(dot.contains(r#"a \"quoted\" \\ net"#), "{dot}");
}

#[test]
fn mermaid() {
    let mut infra = Infra::new();
    let ids = data_centre(&mut infra);
    let chart = infra.topology().to_mermaid();

    assert!(chart.starts_with("flowchart LR\n"), "{chart}");
    let subgraphs = chart
        .lines()
        .filter(|l| l.trim_start().starts_with("subgraph "))
        .count();
    let ends = chart.lines().filter(|l| l.trim() == "end").count();
    assert_eq!((subgraphs, ends), (1, 1), "{chart}");
    assert!(
        balanced(&chart, '[', ']') && balanced(&chart, '(', ')'),
        "{chart}"
    );
    for host in [
        "web<br/>x86_64-linux",
        "db<br/>x86_64-linux",
        "cache<br/>aarch64-linux",
    ] {
        assert!(chart.contains(host), "{host} missing:\n{chart}");
    }
    assert!(chart.contains(&format!(
        "{} -->|\"ethernet on lan\"| {}",
        node(ids.web),
        node(ids.db)
    )));
    assert_eq!(chart.matches("-->|").count(), 3);
    assert!(!chart.contains("classDef"));

    infra.run(|a, i| a.handle_decommission_compute_resource(ids.db, i));
    let chart = infra.topology().to_mermaid();
    assert!(chart.contains("classDef decommissioned"));
    assert!(chart.contains(&format!("class {} decommissioned", node(ids.db))));
    assert_eq!(chart.matches("-->|").count(), 1);

    let mut odd = Infra::new();
    let quoted = NetworkSpec::new("say \"hi\" #1", Cidr::new("10.9.0.0/16").unwrap()).unwrap();
    odd.run(|a, i| a.handle_define_network(quoted, i));
    let chart = odd.topology().to_mermaid();
    assert!(chart.contains("say #quot;hi#quot; #35;1"), "{chart}");
}

/// Appends each command's events to `store`, in order; returns the last sequence.
async fn append_all(store: &impl EventStore, infra: &Infra) -> StreamSequence {
    let aggregate: AggregateId = infra.id.into();
    let mut version = store
        .aggregate_version(&aggregate)
        .await
        .unwrap()
        .unwrap_or(0);
    let mut last = StreamSequence(0);
    for events in &infra.commands {
        let result = store
            .append_events(
                &aggregate,
                ExpectedVersion::from_loaded(version),
                events,
                None,
            )
            .await
            .unwrap();
        version = result.version;
        last = result.last_sequence().unwrap();
    }
    last
}

#[test]
fn the_manager_can_be_shared_between_tasks() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<ProjectionManager>();
    shared::<Topology>();
}

#[tokio::test]
async fn rebuild_from_stored_events() -> TestResult {
    let mut infra = Infra::new();
    let ids = data_centre(&mut infra);
    infra.run(|a, i| a.handle_decommission_compute_resource(ids.cache, i));
    let store = InMemoryEventStore::new();
    let last = append_all(&store, &infra).await;

    let manager = ProjectionManager::new();
    assert!(!manager.is_live());
    assert!(manager.get_topology().await.is_empty());
    let events = store.read_all().await?;
    let count = events.len();
    manager.rebuild(events).await?;
    let topology = manager.get_topology().await;
    assert_eq!(topology, infra.topology());
    assert_eq!(topology.active_compute_resources().len(), 2);
    assert_eq!(topology.active_networks().len(), 2);
    assert_eq!(topology.active_connections().len(), 1);
    assert_eq!(manager.last_sequence().await, last);
    assert_eq!(last.0, count as u64);

    // Streaming the store gives the same.
    let streamed = ProjectionManager::default();
    assert_eq!(streamed.rebuild_from(&store).await?, last);
    assert_eq!(streamed.get_topology().await, topology);
    // Read in place, without a copy.
    assert!(streamed.read_topology(|t| *t == topology).await);
    assert_eq!(
        streamed
            .read_topology(|t| t.active_compute_resources().len())
            .await,
        2
    );

    // Rebuilding replaces, it does not add.
    manager.rebuild(store.read_all().await?).await?;
    assert_eq!(manager.get_topology().await, topology);

    // Reads its own writes.
    manager.wait_for(last, Duration::from_secs(1)).await?;
    match manager
        .wait_for(StreamSequence(last.0 + 1), Duration::from_millis(20))
        .await
    {
        Err(ProjectionError::Timeout {
            wanted, reached, ..
        }) => {
            assert_eq!((wanted, reached), (last.0 + 1, last.0));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    // The projection's state survives JSON, as the runner's checkpoint stores it.
    let mut projection = TopologyProjection::default();
    replay(&store, &mut projection, ReadFrom::Start, OnUnreadable::Stop).await?;
    assert_eq!(projection.last_sequence(), last);
    let json = serde_json::to_vec(&projection)?;
    let back: TopologyProjection = serde_json::from_slice(&json)?;
    assert_eq!(back, projection);
    assert_eq!(back.topology(), &topology);
    Ok(())
}

#[tokio::test]
async fn an_unreadable_event_is_an_error_naming_its_sequence() -> TestResult {
    let mut infra = Infra::new();
    data_centre(&mut infra);
    let store = InMemoryEventStore::new();
    append_all(&store, &infra).await;
    let good = store.read_all().await?;
    let manager = ProjectionManager::new();
    manager.rebuild(good.clone()).await?;
    let before = manager.get_topology().await;

    type Corruption = fn(&mut StoredEvent);
    let cases: [(usize, Corruption); 2] = [
        (3, |e| e.event_type = "ComputeResourceExploded".into()),
        (5, |e| e.payload = "not json".into()),
    ];
    for (index, corrupt) in cases {
        let mut events = good.clone();
        corrupt(&mut events[index]);
        let sequence = events[index].stream_sequence.0;
        let err = manager
            .rebuild(events)
            .await
            .expect_err("an unreadable event must stop the rebuild");
        match &err {
            ProjectionError::Unreadable { projection, source } => {
                assert_eq!(projection, "topology");
                assert!(
                    matches!(source.kind(), StoreErrorKind::Decode { sequence: s, .. } if *s == sequence),
                    "{source}"
                );
            }
            other => panic!("expected Unreadable, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&format!("sequence {sequence}")),
            "{err}"
        );
        // All or nothing: the previous topology stays.
        assert_eq!(manager.get_topology().await, before);
    }
    Ok(())
}

#[tokio::test]
async fn seed_program_on_a_live_server() -> TestResult {
    let server = NatsServer::start()?;
    let client = server.connect().await?;
    let store = JetStreamEventStore::new(client.clone(), EventStoreConfig::default()).await?;

    let manager = ProjectionManager::start(&store, ProjectionOptions::default()).await?;
    assert!(manager.is_live());
    assert!(manager.handle().is_some());

    let mut infra = Infra::new();
    let ids = data_centre(&mut infra);
    let mut other = Infra::new();
    other.host(
        "edge",
        ComputeType::Container,
        SystemArchitecture::ARMV7L_LINUX,
    );
    append_all(&store, &other).await;
    let last = append_all(&store, &infra).await;

    manager.wait_for(last, Duration::from_secs(10)).await?;
    assert_eq!(manager.last_sequence().await, last);
    let expected = Topology::from_events(
        &other
            .events()
            .into_iter()
            .chain(infra.events())
            .collect::<Vec<_>>(),
    );
    let live = manager.get_topology().await;
    assert_eq!(live, expected);
    assert_eq!(live.active_compute_resources().len(), 4);

    // The same model, read by a plain KV client: one row per machine, network and connection.
    let js = async_nats::jetstream::new(client.clone());
    let pointer: serde_json::Value = serde_json::from_slice(
        &js.get_key_value("READ_MODELS")
            .await?
            .get("topology")
            .await?
            .ok_or("no pointer")?,
    )?;
    let bucket = js
        .get_key_value(pointer["bucket"].as_str().ok_or("no bucket")?)
        .await?;
    for resource in live.active_compute_resources() {
        let row: serde_json::Value = serde_json::from_slice(
            &bucket
                .get(format!("compute.r.{}", resource.id))
                .await?
                .ok_or("no row")?,
        )?;
        assert_eq!(row["hostname"], resource.hostname.as_str());
        assert_eq!(row["status"], "active");
    }
    for network in live.active_networks() {
        assert!(bucket
            .get(format!("network.r.{}", network.id))
            .await?
            .is_some());
    }
    for connection in live.active_connections() {
        assert!(bucket
            .get(format!("connection.r.{}", connection.id))
            .await?
            .is_some());
    }
    assert_eq!(live.active_networks().len(), 2);
    assert_eq!(live.active_connections().len(), 3);

    // The runner owns a live topology.
    assert!(matches!(
        manager.rebuild(Vec::new()).await,
        Err(ProjectionError::Apply { .. })
    ));

    // The seed's program, on the same stream, reaches the same topology.
    {
        let projection_manager = ProjectionManager::new();
        let events = store.read_all().await?;
        projection_manager.rebuild(events).await?;
        let topology = projection_manager.get_topology().await;
        assert_eq!(topology, live);
        assert_eq!(topology.active_compute_resources().len(), 4);
    }

    // Live events keep coming.
    let before = infra.commands.len();
    infra.run(|a, i| a.handle_decommission_compute_resource(ids.db, i));
    let newer = Infra {
        id: infra.id,
        aggregate: InfrastructureAggregate::default(),
        commands: infra.commands[before..].to_vec(),
    };
    let last = append_all(&store, &newer).await;
    manager.wait_for(last, Duration::from_secs(10)).await?;
    let live = manager.get_topology().await;
    assert!(live.resource_by_hostname("db").is_none());
    assert_eq!(live.active_connections().len(), 1);
    assert_eq!(live.of_infrastructure(infra.id), infra.topology());
    manager.shutdown().await?;

    // A new runner resumes from the checkpoint the last one wrote.
    let resumed = ProjectionManager::start(&store, ProjectionOptions::default()).await?;
    assert_eq!(resumed.last_sequence().await, last);
    resumed.wait_for(last, Duration::from_secs(10)).await?;
    assert_eq!(resumed.get_topology().await, live);
    resumed.shutdown().await?;
    Ok(())
}

/// Version 2 of the topology model (the same rows), to bump the model's version.
struct TopologyV2;

#[async_trait::async_trait]
impl cim_nats::jetstream::KeyedProjection for TopologyV2 {
    type Event = InfrastructureEvent;
    type Row = serde_json::Value;
    const NAME: &'static str = "topology";
    const VERSION: u32 = 2;

    async fn apply(
        &self,
        envelope: &cim_nats::Envelope<InfrastructureEvent>,
        rows: &mut cim_nats::jetstream::Rows<'_, serde_json::Value>,
    ) -> Result<(), ProjectionError> {
        cim_infrastructure_nats::projections::TopologyModel
            .apply(envelope, rows)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_topology_follows_a_new_version_of_the_model() -> TestResult {
    use cim_nats::jetstream::{ReadModelOptions, ReadModelRunner};
    let server = NatsServer::start()?;
    let client = server.connect().await?;
    let store = JetStreamEventStore::new(client.clone(), EventStoreConfig::default()).await?;
    let manager = ProjectionManager::start(&store, ProjectionOptions::default()).await?;
    let mut infra = Infra::new();
    let ids = data_centre(&mut infra);
    let last = append_all(&store, &infra).await;
    manager.wait_for(last, Duration::from_secs(10)).await?;
    assert_eq!(manager.served_bucket().as_deref(), Some("RM_topology_V1"));
    let expected = infra.topology();

    // Version 2 builds in another bucket; the manager serves version 1 meanwhile.
    let v2 = ReadModelRunner::start(
        &store,
        TopologyV2,
        ReadModelOptions {
            retire_after: Duration::from_millis(300),
            ..ReadModelOptions::default()
        },
    )
    .await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !v2.is_live() {
        assert_eq!(manager.get_topology().await, expected);
        assert!(std::time::Instant::now() < deadline, "v2 never went live");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cim_nats::testing::wait_until(Duration::from_secs(10), "the manager to serve v2", || {
        let served = manager.served_bucket();
        async move { served.as_deref() == Some("RM_topology_V2") }
    })
    .await;
    assert_eq!(manager.get_topology().await, expected);
    // The manager's own runner (version 1) saw the switch and stopped.
    cim_nats::testing::wait_until(Duration::from_secs(10), "the v1 runner to stop", || {
        let finished = manager.handle().is_some_and(|h| h.is_finished());
        async move { finished }
    })
    .await;

    // New events reach the served copy through version 2's runner.
    let before = infra.commands.len();
    infra.run(|a, i| a.handle_decommission_compute_resource(ids.db, i));
    let newer = Infra {
        id: infra.id,
        aggregate: InfrastructureAggregate::default(),
        commands: infra.commands[before..].to_vec(),
    };
    let last = append_all(&store, &newer).await;
    manager.wait_for(last, Duration::from_secs(10)).await?;
    assert_eq!(manager.get_topology().await, infra.topology());
    assert!(manager
        .get_topology()
        .await
        .resource_by_hostname("db")
        .is_none());
    v2.shutdown().await?;
    assert!(matches!(
        manager.shutdown().await,
        Err(ProjectionError::Superseded {
            version: 1,
            live: 2,
            ..
        })
    ));
    Ok(())
}
