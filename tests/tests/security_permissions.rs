//! A user whose permissions deny what an operation needs gets an error that says so, naming the
//! subject, instead of a hang or a bare timeout. NATS drops a message a user is not permitted
//! and tells only the client's event callback; the framework asks the server for the user's
//! permissions when a request is slow (when the user may ask), and otherwise names the likely
//! cause in the timeout's message. A user with read permissions only can still read.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::ConnectOptions;
use cim_nats::jetstream::subscriber::{DeliverPolicy, EventSubscriberBuilder};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::testing::{NatsServer, NatsServerBuilder};
use cim_nats::{
    AggregateId, EventId, EventStore, ExpectedVersion, FnEventHandler, NewEvent, SetupErrorKind,
    StoreErrorKind, StoredEvent, SubscriberErrorKind,
};

/// A server with an unrestricted `admin` and a user `limited` with these permissions.
fn server(permissions: &str) -> NatsServer {
    NatsServerBuilder::new()
        .config(format!(
            "authorization {{\n  users: [\n    {{ user: admin, password: admin }}\n    \
             {{ user: limited, password: limited, permissions: {permissions} }}\n  ]\n}}"
        ))
        .start()
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn connect(server: &NatsServer, user: &str) -> async_nats::Client {
    ConnectOptions::with_user_and_password(user.into(), user.into())
        .connect(server.url())
        .await
        .unwrap()
}

/// Connects `limited`, recording what the server reports to the event callback.
async fn connect_recording(server: &NatsServer) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&events);
    let client = ConnectOptions::with_user_and_password("limited".into(), "limited".into())
        .event_callback(move |event| {
            let seen = Arc::clone(&seen);
            async move { seen.lock().unwrap().push(event.to_string()) }
        })
        .connect(server.url())
        .await
        .unwrap();
    (client, events)
}

fn event() -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Placed".into(),
        schema_version: 1,
        entity_kind: "order".into(),
        routing_subject: "shop.order.placed".into(),
        payload: b"{}".to_vec().into(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
}

/// The shop's stream, created by the admin, with one event.
async fn shop(server: &NatsServer) -> JetStreamEventStore {
    let store = JetStreamEventStore::new(
        connect(server, "admin").await,
        StoreConfig::for_domain("shop"),
    )
    .await
    .unwrap();
    store
        .append(
            &AggregateId::new("o0").unwrap(),
            ExpectedVersion::NoStream,
            vec![event()],
        )
        .await
        .unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_a_deny_rule_refuses_fails_at_once_with_permission_denied() {
    let server = server(r#"{ publish: { deny: ["shop.>"] } }"#);
    let admin = shop(&server).await;
    let (client, events) = connect_recording(&server).await;
    // Reading needs no publish permission on the domain: the store is created.
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("shop"))
        .await
        .unwrap();
    let started = Instant::now();
    let err = store
        .append(
            &AggregateId::new("o1").unwrap(),
            ExpectedVersion::NoStream,
            vec![event()],
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!("append refused by a deny rule: {took:?}: {err}");
    assert_eq!(
        err.kind(),
        &StoreErrorKind::PermissionDenied {
            subject: "shop.order.placed.o1".to_owned()
        }
    );
    let text = err.to_string();
    for needle in [
        "permission denied",
        "\"shop.order.placed.o1\"",
        "user \"limited\"",
        "may not publish",
        "deny rule \"shop.>\"",
    ] {
        assert!(text.contains(needle), "{needle:?} not in: {text}");
    }
    assert!(took < Duration::from_secs(4), "took {took:?}");
    // The server told the event callback too, and nothing was stored.
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.contains("Permissions Violation")));
    assert_eq!(admin.last_sequence().await.unwrap().0, 1);
    assert_eq!(
        store
            .read_aggregate(&AggregateId::new("o0").unwrap(), 0)
            .await
            .unwrap()
            .len(),
        1
    );
}

/// The user may use the JetStream API but not publish to the domain, and may not ask the server
/// for its permissions either: the append waits out the store's timeout, and its error names
/// the subject and the permissions as the likely cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_an_allow_list_refuses_times_out_naming_permissions_and_subject() {
    let server =
        server(r#"{ publish: { allow: ["$JS.API.>"] }, subscribe: { allow: ["_INBOX.>"] } }"#);
    let admin = shop(&server).await;
    let (client, events) = connect_recording(&server).await;
    let store = JetStreamEventStore::new(client, StoreConfig::for_domain("shop"))
        .await
        .unwrap();
    let started = Instant::now();
    let err = store
        .append(
            &AggregateId::new("o1").unwrap(),
            ExpectedVersion::NoStream,
            vec![event()],
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!("append refused by an allow list: {took:?}: {err}");
    assert_eq!(err.kind(), &StoreErrorKind::TimedOut);
    let text = err.to_string();
    for needle in [
        "\"shop.order.placed.o1\"",
        "not permitted to publish",
        "event callback",
    ] {
        assert!(text.contains(needle), "{needle:?} not in: {text}");
    }
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.contains("Permissions Violation")));
    assert_eq!(admin.last_sequence().await.unwrap().0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_jetstream_api_permission_fails_at_new() {
    let server = server(r#"{ publish: { deny: ["$JS.API.>"] } }"#);
    let started = Instant::now();
    let err = JetStreamEventStore::new(
        connect(&server, "limited").await,
        StoreConfig::for_domain("shop"),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    println!("store set-up refused: {took:?}: {err}");
    assert_eq!(
        *err.kind(),
        SetupErrorKind::PermissionDenied {
            subject: "$JS.API.STREAM.INFO.SHOP_EVENTS".to_owned()
        },
        "{err:?}"
    );
    let text = err.to_string();
    for needle in [
        "permission denied",
        "$JS.API.STREAM.INFO.SHOP_EVENTS",
        "deny rule \"$JS.API.>\"",
    ] {
        assert!(text.contains(needle), "{needle:?} not in: {text}");
    }
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

/// Least privilege works: a reader that may use the JetStream API and acknowledge, but not
/// publish events, loads aggregates, reads the stream and subscribes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_without_permission_to_publish_events_reads_and_subscribes() {
    let server = server(
        r#"{ publish: { allow: ["$JS.API.>", "$JS.ACK.>"] }, subscribe: { allow: ["_INBOX.>"] } }"#,
    );
    let _admin = shop(&server).await;
    let client = connect(&server, "limited").await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("shop"))
        .await
        .unwrap();
    assert_eq!(
        store
            .read_aggregate(&AggregateId::new("o0").unwrap(), 0)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.read_all().await.unwrap().len(), 1);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<StoredEvent>();
    let handle = EventSubscriberBuilder::new()
        .client(client)
        .subject("shop.>")
        .handler(FnEventHandler::new(move |event: StoredEvent| {
            let _ = tx.send(event);
            Ok(())
        }))
        .deliver_policy(DeliverPolicy::All)
        .without_dead_letter()
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.aggregate_id.as_str(), "o0");
    handle.shutdown().await.unwrap();
}

fn subscriber(client: async_nats::Client) -> cim_nats::jetstream::EventSubscriber {
    EventSubscriberBuilder::new()
        .client(client)
        .subject("shop.>")
        .handler(FnEventHandler::new(|_: StoredEvent| Ok(())))
        .deliver_policy(DeliverPolicy::All)
        .build()
        .unwrap()
}

async fn consumer_count(admin: &JetStreamEventStore) -> usize {
    let mut stream = admin.context().get_stream("SHOP_EVENTS").await.unwrap();
    stream.info().await.unwrap().state.consumer_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_a_deny_rule_refuses_fails_at_once() {
    let server = server(r#"{ publish: { deny: ["$JS.API.CONSUMER.>"] } }"#);
    let admin = shop(&server).await;
    let started = Instant::now();
    let err = subscriber(connect(&server, "limited").await)
        .subscribe()
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!("subscription refused by a deny rule: {took:?}: {err}");
    match err.kind() {
        SubscriberErrorKind::PermissionDenied { subject } => {
            assert!(
                subject.starts_with("$JS.API.CONSUMER.CREATE.SHOP_EVENTS"),
                "{subject}"
            );
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("permission denied for subject \"$JS.API.CONSUMER.CREATE.SHOP_EVENTS"),
        "{err}"
    );
    assert!(
        err.to_string().contains("deny rule \"$JS.API.CONSUMER.>\""),
        "{err}"
    );
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(consumer_count(&admin).await, 0);
}

/// The user may make JetStream API requests (their replies come to the client's request inbox,
/// `_INBOX.{id}.*`) but not subscribe to the new inboxes consumers deliver events to: without a
/// check, the subscription would start and never receive anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_whose_deliveries_could_not_arrive_fails_at_once() {
    let server = server(
        r#"{ publish: { allow: ["$JS.API.>", "$JS.ACK.>"] }, subscribe: { allow: ["_INBOX.*.*"] } }"#,
    );
    let admin = shop(&server).await;
    let started = Instant::now();
    let err = subscriber(connect(&server, "limited").await)
        .subscribe()
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!("subscription without a delivery inbox: {took:?}: {err}");
    match err.kind() {
        SubscriberErrorKind::PermissionDenied { subject } => {
            assert!(subject.starts_with("_INBOX."), "{subject}")
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    let text = err.to_string();
    for needle in [
        "permission denied for subject \"_INBOX.",
        "no event would ever arrive",
    ] {
        assert!(text.contains(needle), "{needle:?} not in: {text}");
    }
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(consumer_count(&admin).await, 0);
}

/// Consumers may not be created, and the user may not ask for its permissions: the creation
/// waits out the request timeout, and the error names the subject and the likely cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_an_allow_list_refuses_names_permissions_and_subject() {
    let server = server(
        r#"{ publish: { allow: ["$JS.API.STREAM.>", "$JS.API.INFO"] }, subscribe: { allow: ["_INBOX.>"] } }"#,
    );
    let admin = shop(&server).await;
    let started = Instant::now();
    let err = subscriber(connect(&server, "limited").await)
        .subscribe()
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!("subscription refused by an allow list: {took:?}: {err}");
    match err.kind() {
        SubscriberErrorKind::ConsumerSetup {
            stream,
            description,
        } => {
            assert_eq!(stream, "SHOP_EVENTS");
            for needle in [
                "$JS.API.CONSUMER.CREATE.SHOP_EVENTS",
                "not permitted to publish",
            ] {
                assert!(
                    description.contains(needle),
                    "{needle:?} not in: {description}"
                );
            }
        }
        other => panic!("expected ConsumerSetup, got {other:?}"),
    }
    assert!(took < Duration::from_secs(13), "took {took:?}");
    assert_eq!(consumer_count(&admin).await, 0);
}
