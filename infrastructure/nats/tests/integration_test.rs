//! The seed's integration tests, by name, against a nats-server each test starts itself (no
//! `--ignored`, no server on localhost:4222 assumed).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_domain_infrastructure::{
    Cidr, ComputeResourceSpec, ComputeType, ConnectionKind, ConnectionSpec, Hostname,
    InfrastructureAggregate, InfrastructureEvent, InfrastructureId, NetworkSpec,
    ResourceCapabilities, ResourceId, SystemArchitecture,
};
use cim_infrastructure_nats::{
    event_store::{EventStoreConfig, JetStreamEventStore},
    projections::ProjectionManager,
    publisher::EventPublisher,
    subjects::subjects,
    subscriber::{EventSubscriberBuilder, FnEventHandler},
    AggregateId, EventStore, ExpectedVersion, MessageIdentity, NatsEvent, StoredEvent,
    StreamSequence,
};
use cim_nats::jetstream::ProjectionOptions;
use cim_nats::testing::{wait_until, NatsServer};
use cim_nats::Repository;

const WAIT: Duration = Duration::from_secs(30);

fn server_spec(name: &str) -> ComputeResourceSpec {
    ComputeResourceSpec {
        id: ResourceId::new(),
        resource_type: ComputeType::VirtualMachine,
        hostname: Hostname::new(name).unwrap(),
        system: SystemArchitecture::new("x86_64-linux").unwrap(),
        capabilities: ResourceCapabilities::default(),
    }
}

/// Publishes the events of each command of a small infrastructure (two servers on one network,
/// connected), command by command, and returns the aggregate and the last stream sequence.
async fn build_small_infrastructure(
    publisher: &EventPublisher,
) -> (InfrastructureAggregate, StreamSequence) {
    let infra_id = InfrastructureId::new();
    let id: AggregateId = infra_id.into();
    let mut aggregate = InfrastructureAggregate::new(infra_id);
    let web = server_spec("web01");
    let db = server_spec("db01");
    let lan = NetworkSpec::new("lan", Cidr::new("10.1.0.0/24").unwrap()).unwrap();
    let link = ConnectionSpec::new(web.id, db.id, lan.id, ConnectionKind::Ethernet).unwrap();
    let mut batches = Vec::new();
    for command in 0..4 {
        // One identity per command: its message id keys the event ids.
        let identity = MessageIdentity::new_from_user("integration");
        let events = match command {
            0 => aggregate.handle_register_compute_resource(web.clone(), &identity),
            1 => aggregate.handle_register_compute_resource(db.clone(), &identity),
            2 => aggregate.handle_define_network(lan.clone(), &identity),
            _ => aggregate.handle_establish_connection(link.clone(), &identity),
        }
        .unwrap();
        batches.push((events, identity));
    }
    let mut version = 0;
    let mut last = StreamSequence(0);
    for (events, identity) in batches {
        let result = publisher
            .publish_events(
                &id,
                ExpectedVersion::from_loaded(version),
                &events,
                &identity,
            )
            .await
            .unwrap();
        version = result.version;
        last = result.last_sequence().unwrap();
    }
    (aggregate, last)
}

async fn setup() -> (
    NatsServer,
    async_nats::Client,
    Arc<JetStreamEventStore>,
    EventPublisher,
) {
    let server = NatsServer::start().unwrap();
    let client = server.connect().await.unwrap();
    let store = Arc::new(
        JetStreamEventStore::new(client.clone(), EventStoreConfig::default())
            .await
            .unwrap(),
    );
    let publisher = EventPublisher::new(client.clone(), Arc::clone(&store) as Arc<dyn EventStore>);
    (server, client, store, publisher)
}

#[tokio::test]
async fn test_complete_event_workflow() {
    let (_server, _client, store, publisher) = setup().await;
    let (aggregate, _) = build_small_infrastructure(&publisher).await;
    let infra_id = aggregate.id().unwrap();
    let id: AggregateId = infra_id.into();

    // Stored: every event, in order, with gap-free versions, on the seed's subjects.
    let stored = store.read_aggregate(&id, 0).await.unwrap();
    let types: Vec<&str> = stored.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "ComputeResourceRegistered",
            "ComputeResourceRegistered",
            "NetworkDefined",
            "ConnectionEstablished"
        ]
    );
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.aggregate_version, i as u64 + 1);
        assert!(
            e.subject.ends_with(&format!(".{infra_id}")),
            "{}",
            e.subject
        );
        assert_eq!(e.actor.as_deref(), Some("integration"));
    }
    assert!(stored[0]
        .subject
        .starts_with("infrastructure.compute.registered."));
    assert!(stored[3]
        .subject
        .starts_with("infrastructure.connection.established."));

    // Retrieved: decoding gives back the very events, and a repository rebuilds the same state.
    let decoded: Vec<InfrastructureEvent> = stored.iter().map(|e| e.decode().unwrap()).collect();
    assert!(decoded.iter().all(|e| e.event_id().is_some()));
    let repo =
        Repository::<InfrastructureAggregate>::new(Arc::clone(&store) as Arc<dyn EventStore>);
    let loaded = repo.load(&id).await.unwrap();
    assert_eq!(loaded.version, 4);
    assert_eq!(loaded.state, aggregate);

    // Publishing the first event again (a retry) stores nothing new; another event at a taken
    // version is a conflict.
    let again = publisher.publish(&decoded[0], id.clone(), 1).await.unwrap();
    assert!(again.duplicate);
    let err = publisher
        .publish(&decoded[1], id.clone(), 1)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wrong expected version"), "{err}");
    assert_eq!(store.read_aggregate(&id, 0).await.unwrap().len(), 4);
}

#[tokio::test]
async fn test_event_projection() {
    let (_server, _client, store, publisher) = setup().await;
    let live = ProjectionManager::start(&store, ProjectionOptions::default())
        .await
        .unwrap();
    let (_, last) = build_small_infrastructure(&publisher).await;
    let (_, last2) = build_small_infrastructure(&publisher).await;
    assert!(last2 > last);
    live.wait_for(last2, WAIT).await.unwrap();
    let topology = live.get_topology().await;
    assert_eq!(topology.active_compute_resources().len(), 4);
    assert_eq!(topology.active_networks().len(), 2);
    assert_eq!(topology.active_connections().len(), 2);
    assert!(topology.resource_by_hostname("web01").is_some());

    // The seed's way: rebuild from every stored event; same read model.
    let manager = ProjectionManager::new();
    manager
        .rebuild(store.read_all().await.unwrap())
        .await
        .unwrap();
    let rebuilt = manager.get_topology().await;
    assert_eq!(rebuilt.active_compute_resources().len(), 4);
    assert_eq!(rebuilt.to_dot(), topology.to_dot());
    live.shutdown().await.unwrap();
}

#[tokio::test]
async fn test_event_subscription() {
    let (_server, client, _store, publisher) = setup().await;
    let received = Arc::new(Mutex::new(Vec::<StoredEvent>::new()));
    let handler = {
        let received = Arc::clone(&received);
        Arc::new(FnEventHandler::new(move |event: StoredEvent| {
            received.lock().unwrap().push(event);
            Ok(())
        }))
    };
    let handle = EventSubscriberBuilder::new()
        .client(client)
        .subject(subjects::all_compute_events())
        .handler(handler)
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    build_small_infrastructure(&publisher).await;
    wait_until(WAIT, "the two compute events", || async {
        received.lock().unwrap().len() >= 2
    })
    .await;
    handle.shutdown().await.unwrap();
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 2, "only compute events, each once");
    assert!(received
        .iter()
        .all(|e| e.event_type == "ComputeResourceRegistered"));
    assert!(received[0].stream_sequence < received[1].stream_sequence);
}

#[tokio::test]
async fn test_event_replay() {
    let (_server, _client, store, publisher) = setup().await;
    let (mut aggregate, _) = build_small_infrastructure(&publisher).await;
    let infra_id = aggregate.id().unwrap();
    let id: AggregateId = infra_id.into();
    // Decommission a connected resource: the connection is severed in the same command.
    let web = aggregate
        .resource_by_hostname(&Hostname::new("web01").unwrap())
        .unwrap()
        .id();
    let identity = MessageIdentity::new_from_user("integration");
    let events = aggregate
        .handle_decommission_compute_resource(web, &identity)
        .unwrap();
    assert_eq!(events.len(), 2);
    publisher
        .publish_events(&id, ExpectedVersion::Exact(4), &events, &identity)
        .await
        .unwrap();

    // Replay every event of the stream into a fresh aggregate: the same state.
    let mut replayed = InfrastructureAggregate::default();
    for stored in store.read_all().await.unwrap() {
        let event: InfrastructureEvent = stored.decode().unwrap();
        cim_nats::Aggregate::apply(&mut replayed, &event);
    }
    assert_eq!(replayed, aggregate);
    assert!(replayed.is_decommissioned(web));
    assert_eq!(replayed.connections().len(), 0);
    assert_eq!(InfrastructureEvent::DOMAIN, "infrastructure");
}
