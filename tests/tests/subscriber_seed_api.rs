//! The seed's "Event Subscription" program, compiled against this API as written (only the
//! crate path of its imports and the server URL differ) and run against a test server.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{AggregateId, EventId, ExpectedVersion, NewEvent};
use futures::TryStreamExt;

/// The seed imports `subscriber::{EventSubscriberBuilder, FnEventHandler}` from
/// `cim_infrastructure_nats`, which re-exports them from `cim_nats`; the subjects and
/// `StoredEvent` come from that crate as they are.
mod seed_facade {
    pub(crate) mod subscriber {
        pub(crate) use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
        pub(crate) use cim_nats::subscriber::FnEventHandler;
    }
    pub(crate) use cim_infrastructure_nats::{subjects, StoredEvent};
}

/// The seed program's `main`, verbatim but for the URL.
async fn seed_main(url: String) -> Result<(), Box<dyn std::error::Error>> {
    use seed_facade::{
        subjects::subjects,
        subscriber::{EventSubscriberBuilder, FnEventHandler},
        StoredEvent,
    };
    use std::sync::Arc;

    let client = async_nats::connect(url).await?;

    // Create event handler
    let handler = Arc::new(FnEventHandler::new(|event: StoredEvent| {
        println!("Received: {} at {}", event.event_type, event.timestamp);
        Ok(())
    }));

    // Subscribe to all compute events
    let subscriber = EventSubscriberBuilder::new()
        .client(client)
        .subject(subjects::all_compute_events())
        .handler(handler)
        .build()?;

    let handle = subscriber.subscribe().await?;

    // Wait for events...
    handle.await?;

    Ok(())
}

fn compute_registered() -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "ComputeRegistered".into(),
        schema_version: 1,
        entity_kind: "compute".into(),
        routing_subject: "infrastructure.compute.registered".into(),
        payload: br#"{"hostname":"server01"}"#.to_vec().into(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: Some("my-service".to_owned()),
    }
}

async fn consumers(client: &async_nats::Client) -> Vec<jetstream::consumer::Info> {
    let js = jetstream::new(client.clone());
    let stream = js.get_stream("INFRASTRUCTURE_EVENTS").await.unwrap();
    stream.consumers().try_collect().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_subscription_program_receives_and_acknowledges_events() {
    let (server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("infrastructure"))
        .await
        .unwrap();

    let check = async {
        support::wait_until(Duration::from_secs(10), "the seed's consumer", || async {
            consumers(&client).await.len() == 1
        })
        .await;
        let id = AggregateId::from(uuid::Uuid::now_v7());
        let appended = store
            .append(&id, ExpectedVersion::NoStream, vec![compute_registered()])
            .await
            .unwrap();
        let sequence = appended.sequences[0].0;
        // Acknowledged only after the handler returned Ok.
        support::wait_until(Duration::from_secs(10), "the handler ran", || async {
            consumers(&client)
                .await
                .iter()
                .any(|c| c.ack_floor.stream_sequence >= sequence && c.num_ack_pending == 0)
        })
        .await;
    };
    tokio::select! {
        result = seed_main(server.url()) => panic!("the seed program ended: {result:?}"),
        () = check => {}
    }
    // The program was stopped by dropping its future: its ephemeral consumer goes away.
    support::wait_until(Duration::from_secs(10), "the consumer deleted", || async {
        consumers(&client).await.is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awaited_handle_returns_ok_after_a_shutdown_from_elsewhere() {
    use cim_nats::jetstream::subscriber::EventSubscriberBuilder;
    use cim_nats::subscriber::FnEventHandler;
    use cim_nats::StoredEvent;

    let (_server, client) = support::server().await;
    let store = JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("infrastructure"))
        .await
        .unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let handler = {
        let received = received.clone();
        Arc::new(FnEventHandler::new(move |event: StoredEvent| {
            assert_eq!(event.event_type, "ComputeRegistered");
            received.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }))
    };
    let handle = EventSubscriberBuilder::new()
        .client(client.clone())
        .subject("infrastructure.compute.>")
        .handler(handler)
        .build()
        .unwrap()
        .subscribe()
        .await
        .unwrap();
    let trigger = handle.shutdown_trigger();
    let running = tokio::spawn(async move { handle.await });
    store
        .append(
            &AggregateId::new("host-1").unwrap(),
            ExpectedVersion::NoStream,
            vec![compute_registered()],
        )
        .await
        .unwrap();
    support::wait_until(Duration::from_secs(10), "the event", || {
        let n = received.load(Ordering::SeqCst);
        async move { n == 1 }
    })
    .await;
    trigger.shutdown();
    running.await.unwrap().unwrap();
    assert!(consumers(&client).await.is_empty());
}
