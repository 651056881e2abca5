//! The thin slice: one event through a real JetStream server and back, every field intact.

mod support;

use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{
    AggregateId, EventId, EventStore, EventStoreExt, ExpectedVersion, MessageIdentity, NatsEvent,
    NewEvent, StoreErrorKind,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

/// A small event enum, routed by the derive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, NatsEvent)]
#[nats_event(domain = "slice", aggregate = "machine")]
enum SliceEvent {
    #[nats_event(operation = "registered")]
    Registered {
        #[nats_event(event_id)]
        event_id: EventId,
        host: String,
    },
    #[nats_event(operation = "retired")]
    Retired {
        #[nats_event(event_id)]
        event_id: EventId,
    },
}

#[test]
fn the_derive_routes_the_slice_events() {
    assert_eq!(SliceEvent::DOMAIN, "slice");
    assert_eq!(
        SliceEvent::SUBJECTS,
        ["slice.machine.registered", "slice.machine.retired"]
    );
    assert_eq!(SliceEvent::DOMAIN_WILDCARD, "slice.>");
    assert_eq!(
        SliceEvent::entity_wildcard("machine"),
        Some("slice.machine.>")
    );
}

#[tokio::test]
async fn one_event_round_trips_through_jetstream() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("slice"))
        .await
        .expect("store");
    // Creating the stream again is idempotent.
    JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("slice"))
        .await
        .expect("second store on the same stream");

    let machine = AggregateId::from(uuid::Uuid::now_v7());
    let identity = MessageIdentity::new_from_user("tester");
    let event = SliceEvent::Registered {
        event_id: EventId::new(),
        host: "server01".to_owned(),
    };
    let new = NewEvent::from_event(&event)
        .unwrap()
        .with_identity(&identity);
    let appended = store
        .append(&machine, ExpectedVersion::NoStream, vec![new.clone()])
        .await
        .expect("append");
    assert_eq!(appended.version, 1);
    assert!(!appended.duplicate);
    assert_eq!(appended.sequences.len(), 1);

    let stored = store.read_aggregate(&machine, 0).await.expect("read");
    assert_eq!(stored.len(), 1);
    let s = &stored[0];
    assert_eq!(Some(s.event_id), event.event_id());
    assert_eq!(s.event_type, "Registered");
    assert_eq!(s.schema_version, 1);
    assert_eq!(s.subject, format!("slice.machine.registered.{machine}"));
    assert_eq!(s.entity_kind, "machine");
    assert_eq!(s.aggregate_id, machine);
    assert_eq!(s.aggregate_version, 1);
    assert_eq!(s.stream_sequence, appended.sequences[0]);
    // The timestamp travels in RFC 3339 with microseconds.
    assert_eq!(
        s.timestamp.timestamp_micros(),
        new.timestamp.timestamp_micros()
    );
    assert_eq!(s.correlation_id, Some(identity.correlation_id));
    assert_eq!(s.causation_id, Some(identity.message_id.into()));
    assert_eq!(s.actor.as_deref(), Some("tester"));
    assert_eq!(s.payload, new.payload);
    assert_eq!(s.decode::<SliceEvent>().unwrap(), event);

    // The raw message carries the wire format's headers, readable by any client.
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("SLICE_EVENTS").await.unwrap();
    let raw = stream.get_raw_message(s.stream_sequence.0).await.unwrap();
    let headers = raw.headers;
    assert_eq!(
        headers.get("Nats-Msg-Id").unwrap().as_str(),
        s.event_id.to_string()
    );
    assert_eq!(
        headers.get("Cim-Event-Type").unwrap().as_str(),
        "Registered"
    );
    assert_eq!(
        headers.get("Cim-Aggregate-Id").unwrap().as_str(),
        machine.as_str()
    );
    assert_eq!(headers.get("Cim-Aggregate-Version").unwrap().as_str(), "1");
    assert_eq!(
        headers.get("Content-Type").unwrap().as_str(),
        "application/json"
    );

    // And the whole-stream read sees the same event.
    let all: Vec<_> = store
        .stream(cim_nats::ReadFrom::Start)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all, stored);
    assert_eq!(store.read_all().await.unwrap(), stored);
    assert_eq!(store.aggregate_version(&machine).await.unwrap(), Some(1));
}

#[tokio::test]
async fn second_event_needs_the_right_expected_version() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("slice"))
        .await
        .unwrap();
    let machine = AggregateId::new("m-1").unwrap();
    let first = SliceEvent::Registered {
        event_id: EventId::new(),
        host: "a".into(),
    };
    store
        .append(
            &machine,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_event(&first).unwrap()],
        )
        .await
        .unwrap();
    let retired = SliceEvent::Retired {
        event_id: EventId::new(),
    };
    let err = store
        .append(
            &machine,
            ExpectedVersion::NoStream,
            vec![NewEvent::from_event(&retired).unwrap()],
        )
        .await
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        StoreErrorKind::WrongExpectedVersion {
            aggregate_id: machine.clone(),
            expected: ExpectedVersion::NoStream,
            actual: Some(1)
        }
    );
    // The message names the aggregate.
    assert!(err.to_string().contains(machine.as_str()), "{err}");
    let ok = store
        .append(
            &machine,
            ExpectedVersion::Exact(1),
            vec![NewEvent::from_event(&retired).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(ok.version, 2);
    let versions: Vec<u64> = store
        .read_aggregate(&machine, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.aggregate_version)
        .collect();
    assert_eq!(versions, [1, 2]);
}

#[tokio::test]
async fn typed_reads_name_the_sequence_of_what_they_cannot_decode() {
    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("slice"))
        .await
        .unwrap();
    let machine = AggregateId::new("m-typed").unwrap();
    let identity = MessageIdentity::new_from_user("tester");
    let events = [
        SliceEvent::Registered {
            event_id: EventId::new(),
            host: "h".into(),
        },
        SliceEvent::Retired {
            event_id: EventId::new(),
        },
    ];
    store
        .append_events(
            &machine,
            ExpectedVersion::NoStream,
            &events,
            Some(&identity),
        )
        .await
        .unwrap();
    let loaded = store.load_events::<SliceEvent>(&machine, 0).await.unwrap();
    // The events as appended, with the ids the store gave them (each its stored id).
    let expected: Vec<SliceEvent> = events
        .iter()
        .zip(&loaded)
        .map(|(e, l)| {
            let mut e = e.clone();
            cim_nats::NatsEvent::set_event_id(&mut e, l.stored.event_id);
            e
        })
        .collect();
    assert_eq!(
        loaded.iter().map(|e| e.event.clone()).collect::<Vec<_>>(),
        expected
    );
    assert_eq!(loaded[1].version(), 2);

    // An event type the enum does not know, and a payload that is not JSON.
    let mut unknown = NewEvent::from_event(&events[0]).unwrap();
    unknown.event_id = EventId::new();
    unknown.event_type = "Exploded".into();
    let mut garbage = NewEvent::from_event(&events[1]).unwrap();
    garbage.event_id = EventId::new();
    garbage.payload = bytes::Bytes::from_static(b"{not json");
    store
        .append(&machine, ExpectedVersion::Exact(2), vec![unknown])
        .await
        .unwrap();
    store
        .append(&machine, ExpectedVersion::Exact(3), vec![garbage])
        .await
        .unwrap();
    let err = store
        .load_events::<SliceEvent>(&machine, 0)
        .await
        .unwrap_err();
    match err.kind() {
        StoreErrorKind::Decode { sequence, .. } => {
            assert_eq!(*sequence, 3);
            // The cause is kept as the error's source, and shown.
            let source = std::error::Error::source(&err).expect("the decode error's cause");
            assert!(
                source
                    .to_string()
                    .contains("unknown event type \"Exploded\""),
                "{source}"
            );
            assert!(err.to_string().contains("unknown event type"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    let items: Vec<_> = futures::StreamExt::collect::<Vec<_>>(
        store.stream_events::<SliceEvent>(cim_nats::ReadFrom::Start),
    )
    .await;
    assert_eq!(items.len(), 4);
    assert!(items[0].is_ok() && items[1].is_ok());
    let err = items[3].as_ref().unwrap_err();
    assert!(
        matches!(err.kind(), StoreErrorKind::Decode { sequence: 4, .. })
            && err.to_string().contains("invalid payload"),
        "{err}"
    );
}
