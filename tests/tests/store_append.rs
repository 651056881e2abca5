//! Appends on a real JetStream server: concurrency, atomic batches, idempotent retries.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{AggregateId, EventId, EventStore, ExpectedVersion, NewEvent, StoreErrorKind};

fn event(kind: &'static str, n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: kind.into(),
        schema_version: 1,
        entity_kind: "account".into(),
        routing_subject: match kind {
            "Opened" => "bank.account.opened".into(),
            "Deposited" => "bank.account.deposited".into(),
            _ => "bank.account.withdrawn".into(),
        },
        payload: format!("{{\"n\":{n}}}").into_bytes().into(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
}

async fn store() -> (cim_nats::testing::NatsServer, JetStreamEventStore) {
    let (server, client) = support::server().await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("bank"))
        .await
        .unwrap();
    (server, store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_one_aggregate_get_distinct_gap_free_versions() {
    let (_server, store) = store().await;
    let store = Arc::new(store);
    let id = AggregateId::new("acc-1").unwrap();
    store
        .append(&id, ExpectedVersion::NoStream, vec![event("Opened", 0)])
        .await
        .unwrap();

    // 32 writers, each: read the version, append with Exact(version), retry on conflict,
    // until it has stored 5 events.
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let store = Arc::clone(&store);
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut stored = Vec::new();
            let mut conflicts = 0u64;
            while stored.len() < 5 {
                let version = store.aggregate_version(&id).await.unwrap().unwrap_or(0);
                let e = event("Deposited", w * 100 + stored.len() as u64);
                let event_id = e.event_id;
                match store
                    .append(&id, ExpectedVersion::Exact(version), vec![e])
                    .await
                {
                    Ok(r) => {
                        assert_eq!(r.version, version + 1);
                        stored.push((r.version, event_id));
                    }
                    Err(err) => match err.kind() {
                        StoreErrorKind::WrongExpectedVersion {
                            expected, actual, ..
                        } => {
                            assert_eq!(*expected, ExpectedVersion::Exact(version));
                            assert!(actual.unwrap() > version, "{err}");
                            conflicts += 1;
                        }
                        other => panic!("unexpected error {other:?}"),
                    },
                }
            }
            (stored, conflicts)
        }));
    }
    let mut successes = Vec::new();
    let mut conflicts = 0;
    for t in tasks {
        let (s, c) = t.await.unwrap();
        successes.extend(s);
        conflicts += c;
    }
    assert_eq!(successes.len(), 32 * 5);
    let versions: HashSet<u64> = successes.iter().map(|(v, _)| *v).collect();
    assert_eq!(
        versions.len(),
        successes.len(),
        "every success has its own version"
    );

    let events = store.read_aggregate(&id, 0).await.unwrap();
    assert_eq!(events.len(), 1 + 32 * 5, "nothing lost, nothing doubled");
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.aggregate_version, i as u64 + 1, "versions are gap-free");
    }
    // Each success is stored at the version it was told.
    for (version, event_id) in &successes {
        assert_eq!(events[*version as usize - 1].event_id, *event_id);
    }
    println!(
        "32 writers: {} appends, {conflicts} conflicts",
        successes.len()
    );
    assert!(
        conflicts > 0,
        "32 writers on one aggregate must have collided"
    );
}

#[tokio::test]
async fn several_events_are_stored_atomically_in_order() {
    let (_server, store) = store().await;
    let id = AggregateId::new("acc-2").unwrap();
    let batch = vec![
        event("Opened", 0),
        event("Deposited", 1),
        event("Withdrawn", 2),
    ];
    let ids: Vec<EventId> = batch.iter().map(|e| e.event_id).collect();
    let r = store
        .append(&id, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    assert_eq!(r.version, 3);
    assert_eq!(r.sequences.len(), 3);
    let events = store.read_aggregate(&id, 0).await.unwrap();
    assert_eq!(events.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
    assert_eq!(
        events
            .iter()
            .map(|e| e.aggregate_version)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        events.iter().map(|e| e.stream_sequence).collect::<Vec<_>>(),
        r.sequences
    );
    // And a second batch on top.
    let r2 = store
        .append(
            &id,
            ExpectedVersion::Exact(3),
            vec![event("Deposited", 3), event("Deposited", 4)],
        )
        .await
        .unwrap();
    assert_eq!(r2.version, 5);
}

#[tokio::test]
async fn a_batch_with_a_wrong_expected_version_writes_nothing() {
    let (_server, store) = store().await;
    let id = AggregateId::new("acc-3").unwrap();
    store
        .append(&id, ExpectedVersion::NoStream, vec![event("Opened", 0)])
        .await
        .unwrap();
    let before = store.last_sequence().await.unwrap();
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Exact(2),
    ] {
        let err = store
            .append(
                &id,
                expected,
                vec![event("Deposited", 1), event("Deposited", 2)],
            )
            .await
            .unwrap_err();
        assert_eq!(
            *err.kind(),
            StoreErrorKind::WrongExpectedVersion {
                aggregate_id: id.clone(),
                expected,
                actual: Some(1)
            }
        );
    }
    assert_eq!(store.last_sequence().await.unwrap(), before);
    assert_eq!(store.read_aggregate(&id, 0).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_retried_append_returns_the_original_result_and_stores_one_copy() {
    let (_server, store) = store().await;
    let id = AggregateId::new("acc-4").unwrap();
    let single = vec![event("Opened", 0)];
    let first = store
        .append(&id, ExpectedVersion::NoStream, single.clone())
        .await
        .unwrap();
    let again = store
        .append(&id, ExpectedVersion::NoStream, single.clone())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequences, first.sequences);
    assert_eq!(again.version, first.version);

    let batch = vec![event("Deposited", 1), event("Deposited", 2)];
    let first = store
        .append(&id, ExpectedVersion::Exact(1), batch.clone())
        .await
        .unwrap();
    let again = store
        .append(&id, ExpectedVersion::Exact(1), batch.clone())
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequences, first.sequences);
    assert_eq!(again.version, 3);
    // Also with Any: the server recognises the ids.
    let again = store
        .append(&id, ExpectedVersion::Any, single)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.version, 1);

    assert_eq!(store.read_aggregate(&id, 0).await.unwrap().len(), 3);
    assert_eq!(
        store.last_sequence().await.unwrap().0,
        3,
        "one copy of each"
    );
}

#[tokio::test]
async fn a_retry_after_the_dedupe_window_still_returns_the_original_result() {
    let (_server, client) = support::server().await;
    let config = StoreConfig {
        duplicate_window: std::time::Duration::from_millis(200),
        ..StoreConfig::for_domain("bank")
    };
    let store = JetStreamEventStore::new(client.clone(), config)
        .await
        .unwrap();
    let id = AggregateId::new("late").unwrap();
    let single = vec![event("Opened", 0)];
    let batch = vec![event("Deposited", 1), event("Deposited", 2)];
    let first = store
        .append(&id, ExpectedVersion::NoStream, single.clone())
        .await
        .unwrap();
    let second = store
        .append(&id, ExpectedVersion::Exact(1), batch.clone())
        .await
        .unwrap();

    // Wait until the server has forgotten the ids: a probe published with one message id
    // stops being recognised as a duplicate.
    let js = async_nats::jetstream::new(client);
    let probe_id = EventId::new().to_string();
    let probe = || {
        let js = js.clone();
        let probe_id = probe_id.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", probe_id.as_str());
            h.insert("Cim-Event-Type", "Probe");
            h.insert("Cim-Aggregate-Version", "1");
            js.publish_with_headers("bank.probe.sent.probe", h, "{}".into())
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };
    assert!(!probe().await.duplicate);
    support::wait_until(
        std::time::Duration::from_secs(20),
        "the dedupe window to pass",
        || async { !probe().await.duplicate },
    )
    .await;

    let again = store
        .append(&id, ExpectedVersion::NoStream, single)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequences, first.sequences);
    let again = store
        .append(&id, ExpectedVersion::Exact(1), batch)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.sequences, second.sequences);
    assert_eq!(
        store.read_aggregate(&id, 0).await.unwrap().len(),
        3,
        "one copy of each"
    );
}
