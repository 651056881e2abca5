//! One conformance suite, run against both stores: JetStream (on a server the test starts) and
//! in memory. Same inputs, same results, same errors.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::memory::InMemoryEventStore;
use cim_nats::testing::NatsServer;
use cim_nats::{
    AggregateId, EventId, EventStore, ExpectedVersion, NewEvent, ReadFrom, StoreErrorKind,
    StreamSequence,
};
use futures::TryStreamExt;

fn event(operation: &'static str) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: operation.to_uppercase().into(),
        schema_version: 1,
        entity_kind: "order".into(),
        routing_subject: format!("shop.order.{operation}").into(),
        payload: format!("{{\"op\":\"{operation}\"}}").into_bytes().into(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: Some("conformance".to_owned()),
    }
}

fn id(s: &str) -> AggregateId {
    AggregateId::new(s).unwrap()
}

fn conflict(err: &cim_nats::StoreError) -> (ExpectedVersion, Option<u64>) {
    match err.kind() {
        StoreErrorKind::WrongExpectedVersion {
            expected, actual, ..
        } => (*expected, *actual),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn expected_versions(store: Arc<dyn EventStore>) {
    let a = id("a");
    // Exact(0) and NoStream both mean "new".
    let r = store
        .append(&a, ExpectedVersion::Exact(0), vec![event("placed")])
        .await
        .unwrap();
    assert_eq!(r.version, 1);
    let err = store
        .append(&a, ExpectedVersion::NoStream, vec![event("paid")])
        .await
        .unwrap_err();
    assert_eq!(conflict(&err), (ExpectedVersion::NoStream, Some(1)));
    let err = store
        .append(&a, ExpectedVersion::Exact(5), vec![event("paid")])
        .await
        .unwrap_err();
    assert_eq!(conflict(&err), (ExpectedVersion::Exact(5), Some(1)));
    let err = store
        .append(&id("new"), ExpectedVersion::Exact(1), vec![event("paid")])
        .await
        .unwrap_err();
    assert_eq!(conflict(&err), (ExpectedVersion::Exact(1), None));
    assert_eq!(
        store
            .append(&a, ExpectedVersion::Exact(1), vec![event("paid")])
            .await
            .unwrap()
            .version,
        2
    );
    assert_eq!(
        store
            .append(&a, ExpectedVersion::Any, vec![event("shipped")])
            .await
            .unwrap()
            .version,
        3
    );
    assert_eq!(store.aggregate_version(&a).await.unwrap(), Some(3));
    assert_eq!(store.aggregate_version(&id("none")).await.unwrap(), None);
}

async fn reads_are_ordered_and_filtered(store: Arc<dyn EventStore>) {
    let (a, b) = (id("a"), id("b"));
    store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![event("placed"), event("paid")],
        )
        .await
        .unwrap();
    store
        .append(&b, ExpectedVersion::NoStream, vec![event("placed")])
        .await
        .unwrap();
    let shipped = store
        .append(&a, ExpectedVersion::Exact(2), vec![event("shipped")])
        .await
        .unwrap();

    let events = store.read_aggregate(&a, 0).await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["PLACED", "PAID", "SHIPPED"]);
    assert!(events.iter().all(|e| e.aggregate_id == a));
    assert_eq!(events[2].subject, "shop.order.shipped.a");
    assert_eq!(events[2].stream_sequence, shipped.sequences[0]);
    let later = store.read_aggregate(&a, 2).await.unwrap();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].aggregate_version, 3);
    assert!(store
        .read_aggregate(&id("none"), 0)
        .await
        .unwrap()
        .is_empty());

    let all = store.read_all().await.unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.stream_sequence.0).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let from3: Vec<_> = store
        .stream(ReadFrom::Sequence(StreamSequence(3)))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(from3.len(), 2);
    assert_eq!(from3[0].aggregate_id, b);
    let future: Vec<_> = store
        .stream(ReadFrom::Time(
            chrono::Utc::now() + chrono::Duration::hours(1),
        ))
        .try_collect()
        .await
        .unwrap();
    assert!(future.is_empty());
    let past: Vec<_> = store
        .stream(ReadFrom::Time(
            chrono::Utc::now() - chrono::Duration::hours(1),
        ))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(past.len(), 4);
    assert_eq!(store.last_sequence().await.unwrap(), StreamSequence(4));
}

async fn batches_are_all_or_nothing(store: Arc<dyn EventStore>) {
    let a = id("a");
    store
        .append(&a, ExpectedVersion::NoStream, vec![event("placed")])
        .await
        .unwrap();
    let err = store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![event("paid"), event("shipped")],
        )
        .await
        .unwrap_err();
    assert_eq!(conflict(&err), (ExpectedVersion::NoStream, Some(1)));
    assert_eq!(store.last_sequence().await.unwrap(), StreamSequence(1));
    let r = store
        .append(
            &a,
            ExpectedVersion::Exact(1),
            vec![event("paid"), event("shipped"), event("delivered")],
        )
        .await
        .unwrap();
    assert_eq!(r.version, 4);
    assert_eq!(
        r.sequences,
        [StreamSequence(2), StreamSequence(3), StreamSequence(4)]
    );
}

async fn retries_are_recognised(store: Arc<dyn EventStore>) {
    let a = id("a");
    let one = vec![event("placed")];
    let two = vec![event("paid"), event("shipped")];
    let first = store
        .append(&a, ExpectedVersion::NoStream, one.clone())
        .await
        .unwrap();
    let second = store
        .append(&a, ExpectedVersion::Exact(1), two.clone())
        .await
        .unwrap();
    // Retried after later events were stored: still the original result.
    let again = store
        .append(&a, ExpectedVersion::NoStream, one)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!((again.sequences, again.version), (first.sequences, 1));
    let again = store
        .append(&a, ExpectedVersion::Exact(1), two)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!((again.sequences, again.version), (second.sequences, 3));
    assert_eq!(store.read_all().await.unwrap().len(), 3, "one copy of each");
}

async fn bad_appends_are_refused(store: Arc<dyn EventStore>) {
    let a = id("a");
    let err = store
        .append(&a, ExpectedVersion::Any, vec![])
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), StoreErrorKind::InvalidAppend(_)),
        "{err}"
    );
    let too_many: Vec<_> = (0..1001).map(|_| event("placed")).collect();
    let err = store
        .append(&a, ExpectedVersion::Any, too_many)
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), StoreErrorKind::InvalidAppend(_)),
        "{err}"
    );
    let mut wild = event("placed");
    wild.routing_subject = "shop.*.placed".into();
    let err = store
        .append(&a, ExpectedVersion::Any, vec![wild])
        .await
        .unwrap_err();
    assert_eq!(*err.kind(), StoreErrorKind::InvalidSubject, "{err}");
    let mut other_domain = event("placed");
    other_domain.routing_subject = "billing.invoice.sent".into();
    let err = store
        .append(
            &a,
            ExpectedVersion::Any,
            vec![event("placed"), other_domain],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), StoreErrorKind::InvalidAppend(_)),
        "{err}"
    );
    // An event id already used by another aggregate's event.
    let placed = event("placed");
    store
        .append(&a, ExpectedVersion::NoStream, vec![placed.clone()])
        .await
        .unwrap();
    let err = store
        .append(&id("b"), ExpectedVersion::NoStream, vec![placed])
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), StoreErrorKind::InvalidAppend(_)),
        "{err}"
    );
    // The same id for another event of the same aggregate (e.g. an identity reused for two
    // commands) is refused, not taken for a retry.
    let mut impostor = event("placed");
    impostor.event_id = store.read_all().await.unwrap()[0].event_id;
    impostor.payload = bytes::Bytes::from_static(b"{\"op\":\"other\"}");
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(1),
        ExpectedVersion::Any,
    ] {
        let err = store
            .append(&a, expected, vec![impostor.clone()])
            .await
            .unwrap_err();
        assert!(
            matches!(err.kind(), StoreErrorKind::InvalidAppend(r) if r.contains("already used")),
            "{expected}: {err}"
        );
    }
    assert_eq!(store.read_all().await.unwrap().len(), 1);
}

async fn concurrent_writers(store: Arc<dyn EventStore>) {
    let a = id("hot");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while mine.len() < 10 {
                let v = store.aggregate_version(&a).await.unwrap().unwrap_or(0);
                match store
                    .append(&a, ExpectedVersion::from_loaded(v), vec![event("paid")])
                    .await
                {
                    Ok(r) => mine.push(r.version),
                    Err(e) => {
                        conflict(&e);
                    }
                }
            }
            mine
        }));
    }
    let mut versions = HashSet::new();
    for t in tasks {
        for v in t.await.unwrap() {
            assert!(versions.insert(v), "version {v} given twice");
        }
    }
    assert_eq!(versions.len(), 80);
    let events = store.read_aggregate(&a, 0).await.unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e.aggregate_version)
            .collect::<Vec<_>>(),
        (1..=80).collect::<Vec<_>>()
    );
}

async fn routed_reads_find_every_event(store: Arc<dyn EventStore>) {
    let a = id("a");
    store
        .append(
            &a,
            ExpectedVersion::NoStream,
            vec![event("placed"), event("paid"), event("shipped")],
        )
        .await
        .unwrap();
    let all = ["shop.order.placed", "shop.order.paid", "shop.order.shipped"];
    for hint in [&all[..], &all[..1], &all[1..], &[]] {
        let events = store
            .read_aggregate_routed(&a, hint, 0, StreamSequence(0))
            .await
            .unwrap();
        assert_eq!(
            events
                .iter()
                .map(|e| e.aggregate_version)
                .collect::<Vec<_>>(),
            [1, 2, 3],
            "with hint {hint:?}"
        );
    }
    let later = store
        .read_aggregate_routed(&a, &all, 1, StreamSequence(0))
        .await
        .unwrap();
    assert_eq!(later.len(), 2);
    let after_seq = store
        .read_aggregate_routed(&a, &all, 2, later[0].stream_sequence)
        .await
        .unwrap();
    assert_eq!(after_seq.len(), 1);
    assert_eq!(after_seq[0].event_type, "SHIPPED");
}

macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod jetstream {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let server = NatsServer::start().unwrap();
                    let client = server.connect().await.unwrap();
                    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("shop"))
                        .await
                        .unwrap();
                    super::$scenario(Arc::new(store)).await;
                }
            )*
        }
        mod memory {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(Arc::new(InMemoryEventStore::new())).await;
                }
            )*
        }
    };
}

conformance!(
    expected_versions,
    reads_are_ordered_and_filtered,
    batches_are_all_or_nothing,
    retries_are_recognised,
    bad_appends_are_refused,
    concurrent_writers,
    routed_reads_find_every_event,
);
