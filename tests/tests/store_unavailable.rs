//! "No responders" from the server: a missing stream is `StreamNotFound`; a stream that exists
//! but takes nothing (no leader, its servers down, its subjects changed) is `Unavailable`,
//! which `StoreError::is_transient` marks as worth retrying.

mod support;

use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{AggregateId, EventId, EventStore, ExpectedVersion, NewEvent, StoreErrorKind};

fn opened() -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Opened".into(),
        schema_version: 1,
        entity_kind: "account".into(),
        routing_subject: "bank.account.opened".into(),
        payload: bytes::Bytes::from_static(b"{}"),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
}

#[tokio::test]
async fn a_stream_that_takes_nothing_is_unavailable_and_a_deleted_one_not_found() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    let id = AggregateId::new("a-1").unwrap();
    store
        .append(&id, ExpectedVersion::NoStream, vec![opened()])
        .await
        .unwrap();

    // The stream stays, but no longer captures the store's subjects: nothing answers a publish.
    let js = async_nats::jetstream::new(client.clone());
    let mut config = js
        .get_stream("BANK_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.subjects = vec!["elsewhere.>".to_owned()];
    js.update_stream(config).await.unwrap();
    let other = AggregateId::new("a-2").unwrap();
    let err = store
        .append(&other, ExpectedVersion::NoStream, vec![opened()])
        .await
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        StoreErrorKind::Unavailable {
            stream: "BANK_EVENTS".to_owned()
        },
        "{err}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains("BANK_EVENTS"), "{err}");

    // Deleted: not found, and not worth retrying as is.
    js.delete_stream("BANK_EVENTS").await.unwrap();
    let err = store
        .append(&other, ExpectedVersion::NoStream, vec![opened()])
        .await
        .unwrap_err();
    assert_eq!(*err.kind(), StoreErrorKind::StreamNotFound, "{err}");
    assert!(!err.is_transient());
    let err = store.read_aggregate(&id, 0).await.unwrap_err();
    assert_eq!(*err.kind(), StoreErrorKind::StreamNotFound, "{err}");
    let err = store.last_sequence().await.unwrap_err();
    assert_eq!(*err.kind(), StoreErrorKind::StreamNotFound, "{err}");
}

/// The server is gone under an open store: loads and appends fail after the store's timeout
/// saying the client is not connected (a transient error), not blaming permissions.
#[tokio::test]
async fn with_the_server_down_errors_say_the_client_is_not_connected() {
    let (mut server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    let id = AggregateId::new("a-1").unwrap();
    store
        .append(&id, ExpectedVersion::NoStream, vec![opened()])
        .await
        .unwrap();
    server.kill();
    let (load, append) = tokio::join!(
        store.read_aggregate(&id, 0),
        store.append(&id, ExpectedVersion::Exact(1), vec![opened()])
    );
    for err in [load.unwrap_err(), append.unwrap_err()] {
        assert!(matches!(err.kind(), StoreErrorKind::Connection), "{err}");
        assert!(err.is_transient());
        let text = err.to_string();
        assert!(text.contains("not connected"), "{text}");
        assert!(!text.contains("permitted"), "{text}");
    }
}
