//! Durable consumers and graceful shutdown: a restarted durable subscriber resumes where it
//! stopped; a shutdown finishes and acknowledges running handlers.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_nats::jetstream::subscriber::{DeliverPolicy, ShutdownTrigger};
use cim_nats::jetstream::SubscriptionHandle;
use cim_nats::{
    AggregateId, AsyncFnHandler, Delivery, EventId, EventStore, StoredEvent, SubscriberErrorKind,
};
use support::subscriber::{self as fx, Seen};
use tokio::sync::watch;

/// The durable subscriber "resumer", recording what it sees; with `stop_after`, it shuts
/// itself down from inside its handler once it has seen that many events.
async fn subscribe_recording(
    client: &async_nats::Client,
    seen: &Seen,
    stop_after: Option<(usize, Arc<Mutex<Option<ShutdownTrigger>>>)>,
) -> SubscriptionHandle {
    let handler = {
        let seen = seen.clone();
        AsyncFnHandler::with_delivery(move |delivery: Delivery| {
            let seen = seen.clone();
            let stop_after = stop_after.clone();
            async move {
                seen.push(delivery.event, delivery.delivery_count);
                if let Some((n, trigger)) = stop_after {
                    if seen.len() >= n {
                        if let Some(trigger) = trigger.lock().unwrap().as_ref() {
                            trigger.shutdown();
                        }
                    }
                }
                Ok(())
            }
        })
    };
    fx::subscribe(client, fx::CART_WILDCARD, handler, |b| {
        b.durable("resumer")
            .deliver_policy(DeliverPolicy::All)
            .max_in_flight(16)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_durable_subscriber_gets_what_was_published_while_it_was_down() {
    let (_server, client) = support::server().await;
    let (store, publisher) = fx::shop(&client).await;

    // First run: stops itself from inside a handler after 60 of 200 events, mid-stream.
    let first = Seen::default();
    let trigger = Arc::new(Mutex::new(None));
    let handle = subscribe_recording(&client, &first, Some((60, trigger.clone()))).await;
    *trigger.lock().unwrap() = Some(handle.shutdown_trigger());
    fx::publish_carts(&publisher, "r", 10, 1..=20).await;
    handle.await.unwrap();
    let handled_first = first.len();
    assert!(
        (60..200).contains(&handled_first),
        "stopped mid-stream, after {handled_first} events"
    );

    // While it is down: 100 more events.
    fx::publish_carts(&publisher, "r", 10, 21..=30).await;
    assert_eq!(store.last_sequence().await.unwrap().0, 300);

    // Second run: the rest, and nothing it had acknowledged.
    let second = Seen::default();
    let handle = subscribe_recording(&client, &second, None).await;
    support::wait_until(Duration::from_secs(20), "all 300 events", || {
        let total = first.len() + second.len();
        async move { total >= 300 }
    })
    .await;
    fx::wait_acknowledged(
        &client,
        "SHOP_EVENTS",
        "resumer",
        300,
        Duration::from_secs(10),
    )
    .await;
    handle.shutdown().await.unwrap();

    first.assert_no_duplicates();
    second.assert_no_duplicates();
    let a: HashSet<EventId> = first.events().iter().map(|e| e.event_id).collect();
    let b: HashSet<EventId> = second.events().iter().map(|e| e.event_id).collect();
    assert!(
        a.is_disjoint(&b),
        "an acknowledged event was delivered again"
    );
    assert_eq!(a.len() + b.len(), 300);
    // Across both runs, each cart's events in order.
    let both = Seen::default();
    for e in first.events().into_iter().chain(second.events()) {
        both.push(e, 1);
    }
    both.assert_per_aggregate_order();
    // The durable consumer stays for the next run.
    assert_eq!(fx::consumer_count(&client, "SHOP_EVENTS").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_fifty_handlers_in_flight_completes_and_acknowledges_them() {
    shutdown_with_fifty_in_flight(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_fifty_parallel_handlers_in_flight() {
    shutdown_with_fifty_in_flight(true).await;
}

async fn shutdown_with_fifty_in_flight(parallel: bool) {
    let (_server, client) = support::server().await;
    let (_store, publisher) = fx::shop(&client).await;

    let started = Arc::new(AtomicUsize::new(0));
    let finished = Seen::default();
    let (release, released) = watch::channel(false);
    let handler = {
        let (started, finished) = (started.clone(), finished.clone());
        AsyncFnHandler::new(move |event: StoredEvent| {
            let (started, finished) = (started.clone(), finished.clone());
            let mut released = released.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                released.wait_for(|r| *r).await.expect("released");
                // Some work after the shutdown began.
                tokio::time::sleep(Duration::from_millis(50)).await;
                finished.push(event, 1);
                Ok(())
            }
        })
    };
    let handle = fx::subscribe(&client, fx::CART_WILDCARD, handler, |b| {
        b.durable("inflight")
            .max_in_flight(64)
            .parallel_handlers(parallel)
    })
    .await;
    // 50 carts, one event each: 50 handlers at once.
    fx::publish_carts(&publisher, "f", 50, 1..=1).await;
    support::wait_until(Duration::from_secs(10), "50 handlers running", || {
        let n = started.load(Ordering::SeqCst);
        async move { n == 50 }
    })
    .await;

    handle.shutdown_trigger().shutdown();
    release.send_replace(true);
    handle.await.unwrap();
    assert_eq!(finished.len(), 50, "every running handler completed");
    let info = fx::consumer_info(&client, "SHOP_EVENTS", "inflight").await;
    assert_eq!(info.ack_floor.stream_sequence, 50, "and was acknowledged");
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(info.num_redelivered, 0);

    // Restarted: none of the 50 comes back; a new event does.
    let (handle, again) = fx::record(&client, fx::CART_WILDCARD, |b| b.durable("inflight")).await;
    publisher
        .publish(&fx::cart_event(1), AggregateId::new("marker").unwrap(), 1)
        .await
        .unwrap();
    again.wait_for_at_least(1, Duration::from_secs(10)).await;
    handle.shutdown().await.unwrap();
    let again = again.events();
    assert_eq!(again.len(), 1, "nothing redelivered: {again:?}");
    assert_eq!(again[0].aggregate_id.as_str(), "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_outliving_the_shutdown_timeout_is_stopped_and_its_event_delivered_again() {
    let (_server, client) = support::server().await;
    let (_store, publisher) = fx::shop(&client).await;
    let started = Arc::new(AtomicUsize::new(0));
    let handler = {
        let started = started.clone();
        AsyncFnHandler::new(move |_event: StoredEvent| {
            let started = started.clone();
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok(())
            }
        })
    };
    let handle = fx::subscribe(&client, fx::CART_WILDCARD, handler, |b| {
        b.durable("stuck")
            .shutdown_timeout(Duration::from_millis(200))
    })
    .await;
    publisher
        .publish(&fx::cart_event(1), AggregateId::new("s").unwrap(), 1)
        .await
        .unwrap();
    support::wait_until(Duration::from_secs(10), "the handler started", || {
        let n = started.load(Ordering::SeqCst);
        async move { n == 1 }
    })
    .await;
    let err = handle.shutdown().await.unwrap_err();
    assert_eq!(
        *err.kind(),
        SubscriberErrorKind::ShutdownTimedOut { unfinished: 1 }
    );

    // The event was given back: the next run gets it at once, as a second delivery.
    let (handle, seen) = fx::record(&client, fx::CART_WILDCARD, |b| b.durable("stuck")).await;
    seen.wait_for(1, Duration::from_secs(10)).await;
    handle.shutdown().await.unwrap();
    assert_eq!(seen.deliveries()[0].1, 2);
}
