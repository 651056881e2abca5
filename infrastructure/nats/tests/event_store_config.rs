//! The seed's `EventStoreConfig`: its literal compiles, it maps onto the framework's
//! `StoreConfig`, and a store made with the default creates the stream the seed describes.

use std::time::Duration;

use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy};
use cim_infrastructure_nats::event_store::{
    EventStoreConfig, JetStreamEventStore, SetupErrorKind, Storage, StoreConfig,
};
use cim_nats::testing::NatsServer;

const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The seed's "Event Store Configuration" block, as written.
#[allow(clippy::let_and_return)]
#[rustfmt::skip]
fn seed_configuration() -> EventStoreConfig {
    use cim_infrastructure_nats::event_store::EventStoreConfig;
    use std::time::Duration;

    let config = EventStoreConfig {
        stream_name: "INFRASTRUCTURE_EVENTS".to_string(),
        max_age: Duration::from_secs(365 * 24 * 60 * 60), // 1 year retention
        max_messages: 1_000_000,                            // Max 1M messages
        replicas: 3,                                        // 3 replicas for HA
    };
    config
}

#[test]
fn default_is_the_seed_stream() {
    let config = EventStoreConfig::default();
    assert_eq!(config.stream_name, "INFRASTRUCTURE_EVENTS");
    assert_eq!(config.max_age, YEAR);
    assert_eq!(config.max_messages, 1_000_000);
    assert_eq!(config.replicas, 1);

    let seed = seed_configuration();
    assert_eq!(
        seed,
        EventStoreConfig {
            replicas: 3,
            ..EventStoreConfig::default()
        }
    );
}

#[test]
fn maps_onto_the_store_configuration() {
    let store = StoreConfig::from(seed_configuration());
    assert_eq!(store.stream_name, "INFRASTRUCTURE_EVENTS");
    assert_eq!(store.subjects, ["infrastructure.>"]);
    assert_eq!(store.domain(), "infrastructure");
    assert_eq!(store.max_age, Some(YEAR));
    assert_eq!(store.max_messages, Some(1_000_000));
    assert_eq!(store.max_bytes, None);
    assert_eq!(store.replicas, 3);
    assert_eq!(store.storage, Storage::File);
    assert_eq!(store.duplicate_window, Duration::from_secs(120));
    assert!(store.validate().is_ok());
    assert_eq!(seed_configuration().to_store_config(), store);

    let named = StoreConfig::from(EventStoreConfig {
        stream_name: "INFRA_TEST".into(),
        ..EventStoreConfig::default()
    });
    assert_eq!(named.stream_name, "INFRA_TEST");
    assert_eq!(named.subjects, ["infrastructure.>"]);

    // Zero means no limit, as for the server.
    let unlimited = StoreConfig::from(EventStoreConfig {
        max_age: Duration::ZERO,
        max_messages: 0,
        ..EventStoreConfig::default()
    });
    assert_eq!((unlimited.max_age, unlimited.max_messages), (None, None));

    // Invalid values are reported by the framework's validation.
    let bad = StoreConfig::from(EventStoreConfig {
        stream_name: "has space".into(),
        ..EventStoreConfig::default()
    });
    assert!(bad.validate().is_err());
    let bad = StoreConfig::from(EventStoreConfig {
        replicas: 0,
        ..EventStoreConfig::default()
    });
    assert!(bad.validate().is_err());
}

#[tokio::test]
async fn the_default_store_creates_the_seed_stream() -> Result<(), Box<dyn std::error::Error>> {
    let server = NatsServer::start()?;
    let client = server.connect().await?;

    let store = JetStreamEventStore::new(client.clone(), EventStoreConfig::default()).await?;
    assert_eq!(store.stream_name(), "INFRASTRUCTURE_EVENTS");

    let mut stream = store.context().get_stream("INFRASTRUCTURE_EVENTS").await?;
    let info = stream.info().await?;
    let config = &info.config;
    assert_eq!(config.name, "INFRASTRUCTURE_EVENTS");
    assert_eq!(config.subjects, ["infrastructure.>"]);
    assert_eq!(config.max_age, YEAR);
    assert_eq!(config.max_messages, 1_000_000);
    assert_eq!(config.discard, DiscardPolicy::New);
    assert_eq!(config.retention, RetentionPolicy::Limits);
    assert_eq!(config.num_replicas, 1);

    // Creating the store again is idempotent; other limits are a clear mismatch.
    JetStreamEventStore::new(client.clone(), EventStoreConfig::default()).await?;
    let err = JetStreamEventStore::new(
        client,
        EventStoreConfig {
            max_messages: 5,
            ..EventStoreConfig::default()
        },
    )
    .await
    .expect_err("a stream with other limits must not be accepted");
    match err.kind() {
        SetupErrorKind::StreamConfigMismatch { differences, .. } => {
            assert!(
                differences.iter().any(|d| d.contains("max_messages")),
                "{differences:?}"
            );
        }
        other => panic!("expected a configuration mismatch, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_full_stream_refuses_appends() -> Result<(), Box<dyn std::error::Error>> {
    use cim_domain_infrastructure::{
        ComputeResourceSpec, ComputeType, Hostname, InfrastructureAggregate, InfrastructureId,
        MessageIdentity, SystemArchitecture,
    };
    use cim_infrastructure_nats::event_store::{EventStoreExt, ExpectedVersion, StoreErrorKind};
    use cim_infrastructure_nats::EventStore;

    let server = NatsServer::start()?;
    let client = server.connect().await?;
    let config = EventStoreConfig {
        stream_name: "INFRA_SMALL".into(),
        max_messages: 2,
        ..EventStoreConfig::default()
    };
    let store = JetStreamEventStore::new(client, config).await?;

    let infra_id = InfrastructureId::new();
    let mut aggregate = InfrastructureAggregate::new(infra_id);
    for (version, name) in ["a", "b", "c"].into_iter().enumerate() {
        // Each command has its own identity, hence its own event ids.
        let identity = MessageIdentity::new_from_user("ops");
        let spec = ComputeResourceSpec::new(
            ComputeType::Container,
            Hostname::new(name)?,
            SystemArchitecture::X86_64_LINUX,
        );
        let events = aggregate.handle_register_compute_resource(spec, &identity)?;
        let result = store
            .append_events(
                &infra_id.into(),
                ExpectedVersion::from_loaded(version as u64),
                &events,
                None,
            )
            .await;
        if version < 2 {
            result?;
        } else {
            let err = result.expect_err("the third event exceeds max_messages");
            assert_eq!(err.kind(), &StoreErrorKind::StreamFull);
        }
    }
    // Nothing was dropped to make room.
    let stored = store.read_all().await?;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].stream_sequence.0, 1);
    Ok(())
}
