//! The three typed ways into a store, the repository, `EventStoreExt::append_events` and the
//! publisher, go through one encoding (`cim_nats::encode_events`): the same event through each
//! is stored with the same headers and the same id, and the same bad event is refused the same
//! way by each.

mod support;

use std::sync::Arc;

use async_nats::jetstream::message::StreamMessage;
use cim_domain_infrastructure::{InfrastructureAggregate, InfrastructureCommand, InfrastructureId};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::NatsServer;
use cim_nats::{
    Aggregate, EventPublisher, EventStore, EventStoreExt, ExpectedVersion, MessageIdentity,
    Repository, StoreErrorKind,
};

/// One server and store per entry point: the same stream, the same aggregate, three times.
async fn stores(n: usize) -> Vec<(NatsServer, async_nats::Client, JetStreamEventStore)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (server, client) = support::server().await;
        let store =
            JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("infrastructure"))
                .await
                .unwrap();
        out.push((server, client, store));
    }
    out
}

async fn first_message(client: &async_nats::Client) -> StreamMessage {
    async_nats::jetstream::new(client.clone())
        .get_stream("INFRASTRUCTURE_EVENTS")
        .await
        .unwrap()
        .get_raw_message(1)
        .await
        .unwrap()
}

/// The headers of a stored message but its time and its write's batch headers (a registration
/// through the repository is written with its hostname's reservation, as one batch), sorted.
fn headers(message: &StreamMessage) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = message
        .headers
        .iter()
        .filter(|(name, _)| {
            let name: &str = name.as_ref();
            name != "Cim-Timestamp" && !name.starts_with("Nats-Batch-")
        })
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(|v| (AsRef::<str>::as_ref(name).to_owned(), v.as_str().to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_through_each_entry_point_is_stored_the_same() {
    let infra = InfrastructureId::new();
    let identity = MessageIdentity::new_from_user("ops");
    let command = InfrastructureCommand::RegisterComputeResource {
        infrastructure_id: infra,
        spec: support::infra::spec("web"),
        identity: identity.clone(),
    };
    let events = InfrastructureAggregate::default()
        .handle(command.clone())
        .unwrap();
    let mut stores = stores(3).await.into_iter();

    let (_a, client_a, store) = stores.next().unwrap();
    let repo = Repository::<InfrastructureAggregate>::new(store);
    repo.execute(&infra.into(), command).await.unwrap();

    let (_b, client_b, store) = stores.next().unwrap();
    store
        .append_events(&infra.into(), ExpectedVersion::NoStream, &events, None)
        .await
        .unwrap();

    let (_c, client_c, store) = stores.next().unwrap();
    let publisher = EventPublisher::new(client_c.clone(), Arc::new(store) as Arc<dyn EventStore>);
    publisher
        .publish(&events[0], infra.into(), 1)
        .await
        .unwrap();

    let (a, b, c) = (
        first_message(&client_a).await,
        first_message(&client_b).await,
        first_message(&client_c).await,
    );
    assert_eq!(headers(&a), headers(&b), "repository and append_events");
    assert_eq!(headers(&a), headers(&c), "repository and publisher");
    assert_eq!(a.payload, b.payload);
    assert_eq!(a.payload, c.payload);
    assert_eq!(a.subject, c.subject);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_naming_another_aggregate_is_refused_by_each_entry_point() {
    let infra = InfrastructureId::new();
    let other = InfrastructureId::new();
    let identity = MessageIdentity::new_from_user("ops");
    let events = InfrastructureAggregate::default()
        .handle(InfrastructureCommand::RegisterComputeResource {
            infrastructure_id: other,
            spec: support::infra::spec("web"),
            identity,
        })
        .unwrap();
    let (_server, client, store) = stores(1).await.pop().unwrap();
    let by_ext = store
        .append_events(&infra.into(), ExpectedVersion::NoStream, &events, None)
        .await
        .unwrap_err();
    let publisher = EventPublisher::new(client, Arc::new(store.clone()) as Arc<dyn EventStore>);
    let by_publisher = publisher
        .publish(&events[0], infra.into(), 1)
        .await
        .unwrap_err();
    let repo = Repository::<InfrastructureAggregate>::new(store.clone());
    let mut loaded = repo.load(&infra.into()).await.unwrap();
    let mut to_save = events.clone();
    let by_repository = repo
        .save(&mut loaded, &mut to_save, None)
        .await
        .unwrap_err();
    for err in [&by_ext, &by_publisher, &by_repository] {
        assert!(
            matches!(err.kind(), StoreErrorKind::InvalidAppend(_)),
            "{err}"
        );
        assert_eq!(err.to_string(), by_ext.to_string());
    }
    assert_eq!(store.read_all().await.unwrap().len(), 0, "nothing stored");
}
