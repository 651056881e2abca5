//! The publisher: sequence semantics (a version is taken once; the same event again is a
//! retry), atomic publishing of one command's events with its identity, and one copy of each
//! event (written through the store only).

mod support;

use std::sync::Arc;
use std::time::Duration;

use cim_nats::memory::InMemoryEventStore;
use cim_nats::{
    AggregateId, EventPublisher, EventStore, ExpectedVersion, MessageIdentity, StoreErrorKind,
};
use futures::StreamExt;
use support::subscriber::{self as fx, CartEvent};

/// The same checks on any store.
async fn sequence_semantics(publisher: &EventPublisher) {
    let store = publisher.store();
    let cart = AggregateId::new("seq-1").unwrap();
    let created = CartEvent::Created { n: 1 };

    let first = publisher.publish(&created, cart.clone(), 1).await.unwrap();
    assert_eq!(first.version, 1);
    assert!(!first.duplicate);

    // The same event at the same version: a retry, stored once.
    let again = publisher.publish(&created, cart.clone(), 1).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequences, first.sequences);
    assert_eq!(store.read_aggregate(&cart, 0).await.unwrap().len(), 1);

    // Another event at a version already taken: a conflict.
    let other = CartEvent::ItemAdded {
        n: 1,
        sku: "x".to_owned(),
    };
    let err = publisher
        .publish(&other, cart.clone(), 1)
        .await
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        StoreErrorKind::WrongExpectedVersion {
            aggregate_id: cart.clone(),
            expected: ExpectedVersion::NoStream,
            actual: Some(1)
        }
    );
    // A gap is a conflict too.
    let err = publisher
        .publish(&other, cart.clone(), 3)
        .await
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        StoreErrorKind::WrongExpectedVersion {
            aggregate_id: cart.clone(),
            expected: ExpectedVersion::Exact(2),
            actual: Some(1)
        }
    );
    // The next version is fine, and so is its retry.
    let second = publisher.publish(&other, cart.clone(), 2).await.unwrap();
    assert_eq!(second.version, 2);
    assert!(
        publisher
            .publish(&other, cart.clone(), 2)
            .await
            .unwrap()
            .duplicate
    );
    // Version 0 does not exist.
    let err = publisher
        .publish(&other, cart.clone(), 0)
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), StoreErrorKind::InvalidAppend(_)));

    let stored = store.read_aggregate(&cart, 0).await.unwrap();
    let events: Vec<CartEvent> = stored.iter().map(|e| e.decode().unwrap()).collect();
    assert_eq!(events, vec![created, other]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_takes_each_version_once_and_recognises_retries_on_jetstream() {
    let (_server, client) = support::server().await;
    let (_store, publisher) = fx::shop(&client).await;
    assert!(publisher.client().is_some());
    sequence_semantics(&publisher).await;
}

#[tokio::test]
async fn publish_takes_each_version_once_and_recognises_retries_in_memory() {
    let publisher = EventPublisher::from_store(Arc::new(InMemoryEventStore::new()));
    sequence_semantics(&publisher).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_of_one_command_are_published_atomically_with_its_identity() {
    let (_server, client) = support::server().await;
    let (store, publisher) = fx::shop(&client).await;
    let cart = AggregateId::new("cmd-1").unwrap();
    let command = MessageIdentity::new_from_user("alice");
    let events = vec![fx::cart_event(1), fx::cart_event(2), fx::cart_event(3)];

    let result = publisher
        .publish_events(&cart, ExpectedVersion::NoStream, &events, &command)
        .await
        .unwrap();
    assert_eq!(result.version, 3);
    assert_eq!(result.sequences.len(), 3);
    // The same command again (a retry): nothing new.
    let retry = publisher
        .publish_events(&cart, ExpectedVersion::NoStream, &events, &command)
        .await
        .unwrap();
    assert!(retry.duplicate);
    assert_eq!(retry.sequences, result.sequences);
    // Another command expecting the same version: a conflict, and nothing of it is stored.
    let other = MessageIdentity::new_from_user("bob");
    let err = publisher
        .publish_events(&cart, ExpectedVersion::NoStream, &events[..2], &other)
        .await
        .unwrap_err();
    assert!(matches!(
        err.kind(),
        StoreErrorKind::WrongExpectedVersion {
            actual: Some(3),
            ..
        }
    ));

    let stored = store.read_aggregate(&cart, 0).await.unwrap();
    assert_eq!(stored.len(), 3);
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.aggregate_version, i as u64 + 1);
        assert_eq!(e.correlation_id, Some(command.correlation_id));
        assert_eq!(e.causation_id, Some(command.message_id.into()));
        assert_eq!(e.actor.as_deref(), Some("alice"));
        assert_eq!(e.decode::<CartEvent>().unwrap(), events[i]);
    }

    // With an identity, one event at a time.
    let next = fx::cart_event(4);
    let r = publisher
        .publish_with_identity(&next, cart.clone(), 4, &command.caused())
        .await
        .unwrap();
    assert_eq!(r.version, 4);
    let last = store.read_aggregate(&cart, 3).await.unwrap().remove(0);
    assert_eq!(last.correlation_id, Some(command.correlation_id));
    assert_eq!(last.actor.as_deref(), Some("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_written_once_and_never_also_on_core_nats() {
    let (_server, client) = support::server().await;
    let (store, publisher) = fx::shop(&client).await;
    // Everything on the wire, as any core NATS subscriber would see it.
    let mut wire = client.subscribe(">").await.unwrap();
    client.flush().await.unwrap();

    let cart = AggregateId::new("once").unwrap();
    publisher
        .publish(&fx::cart_event(1), cart.clone(), 1)
        .await
        .unwrap();
    publisher
        .publish(&fx::cart_event(2), cart.clone(), 2)
        .await
        .unwrap();
    // A marker after them (outside the stream): once it arrives, everything published before
    // it has too.
    client.publish("marker.end", "end".into()).await.unwrap();
    let mut subjects = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), wire.next())
            .await
            .expect("the marker")
            .unwrap();
        if message.subject.as_str() == "marker.end" {
            break;
        }
        if message.subject.starts_with("shop.") {
            subjects.push(message.subject.to_string());
        }
    }
    assert_eq!(
        subjects,
        [
            "shop.cart.created.once".to_owned(),
            "shop.cart.item_added.once".to_owned()
        ],
        "each event exactly once on the wire"
    );
    assert_eq!(store.last_sequence().await.unwrap().0, 2);
}
