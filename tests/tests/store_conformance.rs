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

fn invalid(err: &cim_nats::StoreError) -> &str {
    match err.kind() {
        StoreErrorKind::InvalidAppend(why) => why,
        other => panic!("expected an invalid append, got {other:?}"),
    }
}

async fn appends_to_several_aggregates(store: Arc<dyn EventStore>) {
    use cim_nats::AggregateAppend as Part;
    let (a, b, c) = (id("a"), id("b"), id("c"));
    store
        .append(&a, ExpectedVersion::NoStream, vec![event("placed")])
        .await
        .unwrap();
    store
        .append(&b, ExpectedVersion::NoStream, vec![event("placed")])
        .await
        .unwrap();
    // Both written, each checked.
    let both = vec![
        Part::new(a.clone(), ExpectedVersion::Exact(1), vec![event("paid")]),
        Part::new(
            b.clone(),
            ExpectedVersion::Exact(1),
            vec![event("paid"), event("shipped")],
        ),
    ];
    let r = store.append_multi(both.clone()).await.unwrap();
    assert_eq!((r[0].version, r[1].version), (2, 3));
    assert_eq!(r[0].sequences.len() + r[1].sequences.len(), 3);
    assert_eq!(
        r[1].sequences[0].0,
        r[0].sequences[0].0 + 1,
        "one write, in order"
    );
    // Sent again (a lost answer): the original results.
    let again = store.append_multi(both).await.unwrap();
    assert!(again.iter().all(|r| r.duplicate));
    assert_eq!(again[0].sequences, r[0].sequences);
    assert_eq!(again[1].sequences, r[1].sequences);
    // One stale expectation refuses the whole append, naming the aggregate that moved.
    let err = store
        .append_multi(vec![
            Part::new(a.clone(), ExpectedVersion::Exact(2), vec![event("shipped")]),
            Part::new(
                b.clone(),
                ExpectedVersion::Exact(1),
                vec![event("cancelled")],
            ),
        ])
        .await
        .unwrap_err();
    match err.kind() {
        StoreErrorKind::WrongExpectedVersion {
            aggregate_id,
            expected,
            actual,
        } => {
            assert_eq!(aggregate_id, &b);
            assert_eq!((*expected, *actual), (ExpectedVersion::Exact(1), Some(3)));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(store.aggregate_version(&a).await.unwrap(), Some(2));
    // A check on an aggregate read but not written: holds while it has not moved.
    let r = store
        .append_multi(vec![
            Part::new(a.clone(), ExpectedVersion::Exact(2), vec![event("shipped")]),
            Part::check(b.clone(), ExpectedVersion::Exact(3)),
            Part::check(c.clone(), ExpectedVersion::NoStream),
        ])
        .await
        .unwrap();
    assert_eq!(r[0].version, 3);
    assert!(r[1].sequences.is_empty() && r[2].sequences.is_empty());
    assert_eq!((r[1].version, r[2].version), (3, 0));
    let err = store
        .append_multi(vec![
            Part::new(
                a.clone(),
                ExpectedVersion::Exact(3),
                vec![event("returned")],
            ),
            Part::check(b.clone(), ExpectedVersion::Exact(2)),
        ])
        .await
        .unwrap_err();
    assert_eq!(conflict(&err), (ExpectedVersion::Exact(2), Some(3)));
    let err = store
        .append_multi(vec![
            Part::new(
                a.clone(),
                ExpectedVersion::Exact(3),
                vec![event("returned"), event("refunded")],
            ),
            Part::check(c.clone(), ExpectedVersion::Exact(1)),
        ])
        .await
        .unwrap_err();
    assert_eq!(conflict(&err), (ExpectedVersion::Exact(1), None));
    assert_eq!(store.aggregate_version(&a).await.unwrap(), Some(3));
    assert_eq!(store.aggregate_version(&b).await.unwrap(), Some(3));
    // What the reads see: the events, in order, and nothing else.
    let all = store.read_all().await.unwrap();
    assert_eq!(all.len(), 2 + 3 + 1);
    assert!(all.iter().all(|e| e.subject.starts_with("shop.order.")));

    // Refused before anything is sent.
    let twice = store
        .append_multi(vec![
            Part::new(a.clone(), ExpectedVersion::Exact(3), vec![event("x")]),
            Part::new(a.clone(), ExpectedVersion::Exact(3), vec![event("y")]),
        ])
        .await
        .unwrap_err();
    assert!(invalid(&twice).contains("twice"), "{twice}");
    let nothing = store
        .append_multi(vec![Part::check(a.clone(), ExpectedVersion::Exact(3))])
        .await
        .unwrap_err();
    assert!(
        invalid(&nothing).contains("at least one event"),
        "{nothing}"
    );
    let unchecked = store
        .append_multi(vec![
            Part::new(a.clone(), ExpectedVersion::Exact(3), vec![event("x")]),
            Part::check(b.clone(), ExpectedVersion::Any),
        ])
        .await
        .unwrap_err();
    assert!(
        invalid(&unchecked).contains("expected version"),
        "{unchecked}"
    );
    let big = store
        .append_multi(vec![
            Part::new(
                a.clone(),
                ExpectedVersion::Exact(3),
                (0..600).map(|_| event("x")).collect(),
            ),
            Part::new(
                b.clone(),
                ExpectedVersion::Exact(3),
                (0..401).map(|_| event("y")).collect(),
            ),
        ])
        .await
        .unwrap_err();
    assert!(invalid(&big).contains("at most 1000"), "{big}");
    let mut foreign = event("x");
    foreign.routing_subject = "bank.account.opened".into();
    let other = store
        .append_multi(vec![
            Part::new(a.clone(), ExpectedVersion::Exact(3), vec![event("x")]),
            Part::new(b.clone(), ExpectedVersion::Exact(3), vec![foreign]),
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(other.kind(), StoreErrorKind::InvalidAppend(_)),
        "{other}"
    );
    assert_eq!(store.aggregate_version(&a).await.unwrap(), Some(3));
    assert_eq!(store.aggregate_version(&b).await.unwrap(), Some(3));
    assert_eq!(store.read_all().await.unwrap().len(), 6);
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
    appends_to_several_aggregates,
);
