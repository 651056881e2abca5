//! Reads leave nothing behind, and limits refuse rather than drop.

mod support;

use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{AggregateId, EventId, EventStore, ExpectedVersion, NewEvent, StoreErrorKind};
use futures::StreamExt;

fn event() -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Noted".into(),
        schema_version: 1,
        entity_kind: "note".into(),
        routing_subject: "memo.note.noted".into(),
        payload: bytes::Bytes::from_static(b"{}"),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_aggregate_loads_create_no_consumer() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("memo"))
        .await
        .unwrap();
    for a in 0..100 {
        let id = AggregateId::new(format!("n{a}")).unwrap();
        store
            .append(&id, ExpectedVersion::NoStream, vec![event(), event()])
            .await
            .unwrap();
    }
    let js = async_nats::jetstream::new(client);
    let consumers = || async {
        js.get_stream("MEMO_EVENTS")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .consumer_count
    };
    let before = consumers().await;
    let loads = futures::stream::iter(0..10_000)
        .map(|i| {
            let store = store.clone();
            async move {
                let id = AggregateId::new(format!("n{}", i % 100)).unwrap();
                store.read_aggregate(&id, 0).await.unwrap().len()
            }
        })
        .buffer_unordered(32)
        .fold(0usize, |n, len| async move {
            assert_eq!(len, 2);
            n + 1
        })
        .await;
    assert_eq!(loads, 10_000);
    store.read_all().await.unwrap();
    assert_eq!(consumers().await, before, "no consumer is left behind");
    assert_eq!(before, 0);
}

#[tokio::test]
async fn a_full_stream_refuses_appends_and_keeps_its_history() {
    let (_server, client) = support::server().await;
    let config = StoreConfig {
        max_messages: Some(3),
        ..StoreConfig::for_domain("memo")
    };
    let store = JetStreamEventStore::new(client, config).await.unwrap();
    let id = AggregateId::new("full").unwrap();
    store
        .append(
            &id,
            ExpectedVersion::NoStream,
            vec![event(), event(), event()],
        )
        .await
        .unwrap();
    let err = store
        .append(&id, ExpectedVersion::Exact(3), vec![event()])
        .await
        .unwrap_err();
    assert_eq!(*err.kind(), StoreErrorKind::StreamFull, "{err}");
    let events = store.read_aggregate(&id, 0).await.unwrap();
    assert_eq!(events.len(), 3, "nothing old was dropped to make room");
    assert_eq!(events[0].aggregate_version, 1);
}
