//! Hostile or broken input: clear errors that name what is wrong, and nothing lost.

mod support;

use async_nats::HeaderMap;
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{
    AggregateId, EventId, EventStore, ExpectedVersion, NewEvent, ReadFrom, StoreErrorKind,
};
use futures::StreamExt;

fn event(payload: Vec<u8>) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Placed".into(),
        schema_version: 1,
        entity_kind: "order".into(),
        routing_subject: "shop.order.placed".into(),
        payload: payload.into(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
}

#[test]
fn ids_that_could_widen_or_escape_a_subject_are_refused() {
    for bad in [
        "a.b",
        "*",
        ">",
        "a*",
        "a>",
        "a b",
        " a",
        "a\t",
        "",
        "a\r\nPUB x 1",
    ] {
        let err = AggregateId::new(bad).unwrap_err();
        assert_eq!(err.value(), bad);
        assert!(err.to_string().contains("invalid subject token"), "{err}");
        assert!(serde_json::from_value::<AggregateId>(serde_json::json!(bad)).is_err());
    }
}

#[tokio::test]
async fn a_payload_over_max_payload_is_refused_before_it_is_sent() {
    let (_server, client) = support::server().await;
    let max = client.server_info().max_payload;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("shop"))
        .await
        .unwrap();
    let id = AggregateId::new("big").unwrap();
    let err = store
        .append(
            &id,
            ExpectedVersion::NoStream,
            vec![event(vec![b'x'; max + 1])],
        )
        .await
        .unwrap_err();
    match err.kind() {
        StoreErrorKind::PayloadTooLarge { size, max: m } => {
            assert!(*size > max);
            assert_eq!(*m, max);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(err.to_string().contains("max_payload"), "{err}");
    assert_eq!(store.aggregate_version(&id).await.unwrap(), None);
    // The store is still usable.
    store
        .append(&id, ExpectedVersion::NoStream, vec![event(b"{}".to_vec())])
        .await
        .unwrap();
}

#[tokio::test]
async fn foreign_messages_are_errors_naming_their_sequence_and_reading_goes_on() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("shop"))
        .await
        .unwrap();
    let id = AggregateId::new("o1").unwrap();
    store
        .append(&id, ExpectedVersion::NoStream, vec![event(b"{}".to_vec())])
        .await
        .unwrap();

    // Another client writes into the stream: no headers at all, then a bad version header.
    let js = async_nats::jetstream::new(client.clone());
    js.publish("shop.order.placed.o2", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", EventId::new().to_string().as_str());
    headers.insert("Cim-Event-Type", "Placed");
    headers.insert("Cim-Aggregate-Version", "one");
    js.publish_with_headers("shop.order.placed.o3", headers, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    store
        .append(
            &AggregateId::new("o4").unwrap(),
            ExpectedVersion::NoStream,
            vec![event(b"{}".to_vec())],
        )
        .await
        .unwrap();

    let items: Vec<_> = store.stream(ReadFrom::Start).collect().await;
    assert_eq!(
        items.len(),
        4,
        "one item per message, the bad ones included"
    );
    assert!(items[0].is_ok() && items[3].is_ok());
    for (item, seq, needle) in [
        (&items[1], 2, "Cim-Event-Type is missing"),
        (&items[2], 3, "Cim-Aggregate-Version"),
    ] {
        let err = item.as_ref().unwrap_err();
        match err.kind() {
            StoreErrorKind::Decode { sequence, reason } => {
                assert_eq!(*sequence, seq);
                assert!(reason.contains(needle), "{reason}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
        assert!(
            err.to_string().contains(&format!("sequence {seq}")),
            "{err}"
        );
    }
    // read_all stops at the first bad message, with the same error.
    let err = store.read_all().await.unwrap_err();
    assert!(matches!(
        err.kind(),
        StoreErrorKind::Decode { sequence: 2, .. }
    ));
    // The aggregate of a foreign message cannot be loaded, and says why.
    let err = store
        .read_aggregate(&AggregateId::new("o2").unwrap(), 0)
        .await
        .unwrap_err();
    assert!(matches!(
        err.kind(),
        StoreErrorKind::Decode { sequence: 2, .. }
    ));
    // Appending to it is refused too: its version cannot be known.
    let err = store
        .append(
            &AggregateId::new("o3").unwrap(),
            ExpectedVersion::Any,
            vec![event(b"{}".to_vec())],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), StoreErrorKind::Decode { sequence: 3, .. }),
        "{err}"
    );
    // Others are unaffected.
    assert_eq!(store.read_aggregate(&id, 0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_aggregate_id_in_a_subject_cannot_reach_another_aggregate() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("shop"))
        .await
        .unwrap();
    let a = AggregateId::new("a").unwrap();
    store
        .append(&a, ExpectedVersion::NoStream, vec![event(b"{}".to_vec())])
        .await
        .unwrap();
    // "a" is a prefix of "ab" but their subjects are distinct: no cross-talk.
    let ab = AggregateId::new("ab").unwrap();
    assert_eq!(store.aggregate_version(&ab).await.unwrap(), None);
    assert!(store.read_aggregate(&ab, 0).await.unwrap().is_empty());
    store
        .append(&ab, ExpectedVersion::NoStream, vec![event(b"{}".to_vec())])
        .await
        .unwrap();
    assert_eq!(store.read_aggregate(&a, 0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_header_repeated_with_different_values_is_refused() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("shop"))
        .await
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", EventId::new().to_string().as_str());
    headers.insert("Cim-Event-Type", "Placed");
    headers.append("Cim-Aggregate-Version", "1");
    headers.append("Cim-Aggregate-Version", "7");
    async_nats::jetstream::new(client)
        .publish_with_headers("shop.order.placed.twice", headers, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let items: Vec<_> = store.stream(ReadFrom::Start).collect().await;
    assert_eq!(items.len(), 1);
    let err = items[0].as_ref().unwrap_err();
    assert!(
        err.to_string()
            .contains("Cim-Aggregate-Version appears several times"),
        "{err}"
    );
}

#[tokio::test]
async fn an_entity_kind_the_subject_does_not_name_is_refused_on_append_and_on_read() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("shop"))
        .await
        .unwrap();
    // Appending: refused before anything is sent.
    let mut wrong = event(b"{}".to_vec());
    wrong.entity_kind = "invoice".into();
    let err = store
        .append(
            &AggregateId::new("o1").unwrap(),
            ExpectedVersion::NoStream,
            vec![wrong],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), StoreErrorKind::InvalidAppend(_)),
        "{err}"
    );
    assert!(err.to_string().contains("\"invoice\""), "{err}");
    // Stored by another client: an unreadable event naming its sequence.
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", EventId::new().to_string().as_str());
    headers.insert("Cim-Event-Type", "Placed");
    headers.insert("Cim-Aggregate-Type", "invoice");
    headers.insert("Cim-Aggregate-Version", "1");
    async_nats::jetstream::new(client)
        .publish_with_headers("shop.order.placed.o2", headers, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let items: Vec<_> = store.stream(ReadFrom::Start).collect().await;
    assert_eq!(items.len(), 1, "the refused append stored nothing");
    let err = items[0].as_ref().unwrap_err();
    assert!(
        matches!(err.kind(), StoreErrorKind::Decode { sequence: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("another entity kind"), "{err}");
}
