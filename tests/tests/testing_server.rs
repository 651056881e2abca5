//! The test-server helper: random ports, own store, kill and restart, cleanup, cluster.

use std::time::Duration;

use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::{NatsCluster, NatsServer};
use cim_nats::{AggregateId, EventStore, ExpectedVersion, NewEvent};

fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: cim_nats::EventId::new(),
        event_type: "Ticked".into(),
        schema_version: 1,
        entity_kind: "clock".into(),
        routing_subject: "probe.clock.ticked".into(),
        payload: format!("{{\"n\":{n}}}").into_bytes().into(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
}

#[tokio::test]
async fn servers_get_their_own_ports_and_directories_and_clean_up() {
    let a = NatsServer::start().unwrap();
    let b = NatsServer::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    assert!(a.binary().version.as_str() >= "2.12.1");
    let dir = a.dir().to_path_buf();
    assert!(dir.exists());
    drop(a);
    assert!(!dir.exists(), "the store directory is removed on drop");
}

#[tokio::test]
async fn a_killed_server_restarts_on_the_same_port_with_its_data() {
    let mut server = NatsServer::start().unwrap();
    let port = server.port();
    let client = server.connect().await.unwrap();
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("probe"))
        .await
        .unwrap();
    let id = AggregateId::new("c1").unwrap();
    store
        .append(&id, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();

    server.kill();
    assert!(!server.is_running());
    server.restart().unwrap();
    assert_eq!(server.port(), port);

    let client = server.connect().await.unwrap();
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("probe"))
        .await
        .unwrap();
    let events = store.read_aggregate(&id, 0).await.unwrap();
    assert_eq!(
        events.len(),
        1,
        "the event acknowledged before the kill survives it"
    );

    server.stop();
    assert!(!server.is_running());
}

#[tokio::test]
async fn three_servers_form_a_jetstream_cluster() {
    let cluster = NatsCluster::start(3).unwrap();
    cluster
        .wait_for_jetstream(Duration::from_secs(30))
        .await
        .unwrap();
    let client = async_nats::connect(cluster.urls()).await.unwrap();
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("probe").with_replicas(3))
        .await
        .unwrap();
    let id = AggregateId::new("c1").unwrap();
    let result = store
        .append(&id, ExpectedVersion::NoStream, vec![event(1)])
        .await
        .unwrap();
    assert_eq!(result.version, 1);
    assert_eq!(store.aggregate_version(&id).await.unwrap(), Some(1));
}
