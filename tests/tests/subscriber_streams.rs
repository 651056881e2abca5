//! Streams and consumers: subjects of two domains behind one handle, subjects no stream
//! captures, consumer hygiene, and the builder's checks.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cim_nats::jetstream::subscriber::{DeadLetterConfig, EventSubscriberBuilder};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{AggregateId, ExpectedVersion, FnEventHandler, StoredEvent, SubscriberErrorKind};
use support::subscriber::{self as fx, Seen};

async fn domain_store(client: &async_nats::Client, domain: &str) -> JetStreamEventStore {
    JetStreamEventStore::new(client.clone(), StoreConfig::for_domain(domain))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handle_consumes_the_streams_of_two_domains() {
    let (_server, client) = support::server().await;
    let alpha = domain_store(&client, "alpha").await;
    let beta = domain_store(&client, "beta").await;
    // A subject of each domain, on one subscriber.
    let (handle, seen) = fx::record(&client, "alpha.>", |b| b.subject("beta.note.>")).await;
    let mut consumers: Vec<(String, Vec<String>)> = handle
        .consumers()
        .iter()
        .map(|c| (c.stream.clone(), c.subjects.clone()))
        .collect();
    consumers.sort();
    assert_eq!(
        consumers,
        vec![
            ("ALPHA_EVENTS".to_owned(), vec!["alpha.>".to_owned()]),
            ("BETA_EVENTS".to_owned(), vec!["beta.note.>".to_owned()]),
        ]
    );
    let id = AggregateId::new("n-1").unwrap();
    alpha
        .append(
            &id,
            ExpectedVersion::NoStream,
            vec![fx::raw_event("alpha", 1)],
        )
        .await
        .unwrap();
    beta.append(
        &id,
        ExpectedVersion::NoStream,
        vec![fx::raw_event("beta", 2)],
    )
    .await
    .unwrap();
    seen.wait_for(2, Duration::from_secs(10)).await;
    let mut subjects: Vec<String> = seen.events().into_iter().map(|e| e.subject).collect();
    subjects.sort();
    assert_eq!(subjects, ["alpha.note.noted.n-1", "beta.note.noted.n-1"]);

    handle.shutdown().await.unwrap();
    // Every ephemeral consumer is deleted.
    assert_eq!(fx::consumer_count(&client, "ALPHA_EVENTS").await, 0);
    assert_eq!(fx::consumer_count(&client, "BETA_EVENTS").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_no_stream_captures_are_a_clear_error_and_leave_nothing_behind() {
    let (_server, client) = support::server().await;
    let _alpha = domain_store(&client, "alpha").await;
    let seen = Seen::default();
    let err = fx::subscriber(&client, "gamma.>", seen.handler(), |b| b)
        .subscribe()
        .await
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        SubscriberErrorKind::NoStream {
            subject: "gamma.>".to_owned()
        }
    );
    assert!(err
        .to_string()
        .contains("no JetStream stream captures subject \"gamma.>\""));

    // One good subject and one bad: nothing is created.
    let err = fx::subscriber(&client, "alpha.>", seen.handler(), |b| b.subject("gamma.>"))
        .subscribe()
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), SubscriberErrorKind::NoStream { .. }));
    assert_eq!(fx::consumer_count(&client, "ALPHA_EVENTS").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_handle_stops_and_deletes_its_ephemeral_consumer() {
    let (_server, client) = support::server().await;
    let _alpha = domain_store(&client, "alpha").await;
    let (handle, _seen) = fx::record(&client, "alpha.>", |b| b).await;
    assert_eq!(fx::consumer_count(&client, "ALPHA_EVENTS").await, 1);
    drop(handle);
    support::wait_until(Duration::from_secs(10), "the consumer deleted", || {
        let client = client.clone();
        async move { fx::consumer_count(&client, "ALPHA_EVENTS").await == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_stream_with_other_subjects_is_refused() {
    let (_server, client) = support::server().await;
    let _alpha = domain_store(&client, "alpha").await;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "DLQ".to_owned(),
        subjects: vec!["elsewhere.>".to_owned()],
        ..Default::default()
    })
    .await
    .unwrap();
    let ignore = || FnEventHandler::new(|_event: StoredEvent| Ok(()));
    let err = fx::subscriber(&client, "alpha.>", ignore(), |b| b)
        .subscribe()
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), SubscriberErrorKind::DeadLetterSetup { stream, .. } if stream == "DLQ"),
        "{err}"
    );
    // Another dead-letter stream works.
    let handle = fx::subscribe(&client, "alpha.>", ignore(), |b| {
        b.dead_letter(DeadLetterConfig {
            stream: "ALPHA_DLQ".to_owned(),
            subject_prefix: "alpha_dlq".to_owned(),
            ..DeadLetterConfig::default()
        })
    })
    .await;
    assert_eq!(
        handle.consumers()[0].dead_letter_subject.as_deref(),
        Some(format!("alpha_dlq.ALPHA_EVENTS.{}", handle.consumers()[0].name).as_str())
    );
    handle.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_builder_checks_its_options() {
    let handler = || Arc::new(FnEventHandler::new(|_event: StoredEvent| Ok(())));
    let kind = |b: EventSubscriberBuilder| b.build().unwrap_err().into_kind();
    assert_eq!(
        kind(
            EventSubscriberBuilder::new()
                .subject("a.>")
                .handler(handler())
        ),
        SubscriberErrorKind::MissingClient
    );
    // A client that never connects is enough to check the other options.
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect("nats://127.0.0.1:1")
        .await
        .unwrap();
    let base = || EventSubscriberBuilder::new().client(client.clone());
    assert_eq!(
        kind(base().subject("a.>")),
        SubscriberErrorKind::MissingHandler
    );
    assert_eq!(
        kind(base().handler(handler())),
        SubscriberErrorKind::NoSubjects
    );
    for (builder, what) in [
        (base().handler(handler()).subject("a..b"), "subject"),
        (base().handler(handler()).subject("a.>.b"), "subject"),
        (
            base().handler(handler()).subject("a.>").durable("has.dot"),
            "durable name",
        ),
        (
            base().handler(handler()).subject("a.>").max_in_flight(0),
            "max_in_flight",
        ),
        (
            base().handler(handler()).subject("a.>").max_deliveries(0),
            "max_deliveries",
        ),
        (
            base()
                .handler(handler())
                .subject("a.>")
                .max_deliveries(1)
                .redelivery_backoff([Duration::from_secs(1), Duration::from_secs(2)]),
            "redelivery_backoff",
        ),
    ] {
        match kind(builder) {
            SubscriberErrorKind::InvalidConfig(why) => assert!(why.contains(what), "{why}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    let ok = base()
        .handler(handler())
        .subjects(["a.>", "a.>", "b.*.c"])
        .durable("reader")
        .build()
        .unwrap();
    assert_eq!(ok.subjects(), ["a.>", "b.*.c"]);
    assert_eq!(ok.durable_name(), Some("reader"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_from_outside_ends_the_subscription_with_a_clear_error() {
    let (_server, client) = support::server().await;
    let _alpha = domain_store(&client, "alpha").await;
    let (handle, _seen) = fx::record(&client, "alpha.>", |b| b.durable("doomed")).await;
    let js = async_nats::jetstream::new(client.clone());
    js.delete_consumer_from_stream("doomed", "ALPHA_EVENTS")
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(15), handle)
        .await
        .expect("the subscription ends")
        .unwrap_err();
    assert_eq!(
        *err.kind(),
        SubscriberErrorKind::ConsumerDeleted {
            stream: "ALPHA_EVENTS".to_owned(),
            consumer: "doomed".to_owned()
        }
    );
}
