//! Delivery through a JetStream consumer: every event exactly once (when nothing fails), in
//! per-aggregate order with different aggregates in parallel; deliver policies; the async and
//! typed handlers.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cim_nats::jetstream::subscriber::DeliverPolicy;
use cim_nats::{AggregateId, AsyncFnHandler, Delivery, StoredEvent, StreamSequence};
use support::subscriber::{self as fx, CartEvent, Envelopes, Seen};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_are_each_handled_once_in_per_aggregate_order() {
    thousand_events(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_events_with_parallel_handlers() {
    thousand_events(true).await;
}

async fn thousand_events(parallel: bool) {
    let (_server, client) = support::server().await;
    let (_store, publisher) = fx::shop(&client).await;

    let seen = Seen::default();
    let busy: Arc<Mutex<HashSet<AggregateId>>> = Arc::default();
    let overlapped = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicUsize::new(0));
    let most_running = Arc::new(AtomicUsize::new(0));
    let handler = {
        let (seen, busy, overlapped) = (seen.clone(), busy.clone(), overlapped.clone());
        let (running, most_running) = (running.clone(), most_running.clone());
        AsyncFnHandler::with_delivery(move |delivery: Delivery| {
            let (seen, busy, overlapped) = (seen.clone(), busy.clone(), overlapped.clone());
            let (running, most_running) = (running.clone(), most_running.clone());
            async move {
                let id = delivery.event.aggregate_id.clone();
                if !busy.lock().unwrap().insert(id.clone()) {
                    overlapped.store(true, Ordering::SeqCst);
                }
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most_running.fetch_max(now, Ordering::SeqCst);
                // A little work, so that handlers of different carts overlap.
                tokio::time::sleep(Duration::from_millis(1)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                busy.lock().unwrap().remove(&id);
                seen.push(delivery.event, delivery.delivery_count);
                Ok(())
            }
        })
    };

    // Half of the events before the subscription, half while it runs: 20 carts x 50 events.
    fx::publish_carts(&publisher, "cart", 20, 1..=25).await;
    let started = Instant::now();
    let handle = fx::subscribe(&client, "shop.>", handler, |b| {
        b.durable("thousand")
            .deliver_policy(DeliverPolicy::All)
            .max_in_flight(64)
            .parallel_handlers(parallel)
    })
    .await;
    fx::publish_carts(&publisher, "cart", 20, 26..=50).await;

    seen.wait_for_at_least(1000, Duration::from_secs(30)).await;
    let elapsed = started.elapsed();
    // Every acknowledgement is confirmed, nothing is pending or redelivered.
    fx::wait_acknowledged(
        &client,
        "SHOP_EVENTS",
        "thousand",
        1000,
        Duration::from_secs(10),
    )
    .await;
    let info = fx::consumer_info(&client, "SHOP_EVENTS", "thousand").await;
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(info.num_pending, 0);
    handle.shutdown().await.unwrap();

    assert_eq!(seen.len(), 1000, "each event exactly once");
    seen.assert_no_duplicates();
    seen.assert_per_aggregate_order();
    assert!(seen.deliveries().iter().all(|(_, n)| *n == 1));
    assert!(
        !overlapped.load(Ordering::SeqCst),
        "two events of one aggregate were handled at once"
    );
    let parallel = most_running.load(Ordering::SeqCst);
    assert!(parallel > 1, "different aggregates should run in parallel");
    println!(
        "1000 events handled in {elapsed:?} ({:.0} events/s, up to {parallel} handlers at once)",
        1000.0 / elapsed.as_secs_f64()
    );
}

/// Handlers that block their thread: with parallel handlers, two aggregates' handlers run at
/// the same time on two threads; by default they share the consumer's task, one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn parallel_handlers_use_several_threads() {
    let (_server, client) = support::server().await;
    let (_store, publisher) = fx::shop(&client).await;
    fx::publish_carts(&publisher, "blocking", 2, 1..=3).await;
    for (parallel, durable) in [(true, "parallel"), (false, "in-task")] {
        let seen = Seen::default();
        let running = Arc::new(AtomicUsize::new(0));
        let most_running = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (seen, running, most_running) =
                (seen.clone(), running.clone(), most_running.clone());
            cim_nats::FnEventHandler::new(move |event: StoredEvent| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most_running.fetch_max(now, Ordering::SeqCst);
                // Work that never yields to the runtime.
                std::thread::sleep(Duration::from_millis(30));
                running.fetch_sub(1, Ordering::SeqCst);
                seen.push(event, 1);
                Ok(())
            })
        };
        let handle = fx::subscribe(&client, "shop.>", handler, |b| {
            b.durable(durable)
                .deliver_policy(DeliverPolicy::All)
                .parallel_handlers(parallel)
        })
        .await;
        seen.wait_for_at_least(6, Duration::from_secs(10)).await;
        handle.shutdown().await.unwrap();
        seen.assert_per_aggregate_order();
        let most = most_running.load(Ordering::SeqCst);
        if parallel {
            assert_eq!(most, 2, "both carts' handlers at once");
        } else {
            assert_eq!(most, 1, "one thread-blocking handler at a time");
        }
    }
}

/// An ephemeral subscriber of every cart event that starts at `policy`, and what it saw.
async fn subscribe_and_collect(
    client: &async_nats::Client,
    policy: DeliverPolicy,
) -> (cim_nats::jetstream::SubscriptionHandle, Seen) {
    fx::record(client, fx::CART_WILDCARD, |b| b.deliver_policy(policy)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliver_policies_start_where_they_say() {
    let (_server, client) = support::server().await;
    let (_store, publisher) = fx::shop(&client).await;
    let cart = AggregateId::new("c-1").unwrap();
    fx::publish_in_turn(&publisher, &[&cart], 1..=3).await;
    let between = chrono::Utc::now();
    fx::publish_in_turn(&publisher, &[&cart], 4..=5).await;

    let (all, seen_all) = subscribe_and_collect(&client, DeliverPolicy::All).await;
    let (new, seen_new) = subscribe_and_collect(&client, DeliverPolicy::New).await;
    let (from_seq, seen_seq) =
        subscribe_and_collect(&client, DeliverPolicy::FromSequence(StreamSequence(4))).await;
    let (from_time, seen_time) =
        subscribe_and_collect(&client, DeliverPolicy::FromTime(between)).await;
    publisher
        .publish(&fx::cart_event(6), cart.clone(), 6)
        .await
        .unwrap();

    for (what, seen, expected) in [
        ("all", &seen_all, vec![1, 2, 3, 4, 5, 6]),
        ("new", &seen_new, vec![6]),
        ("from sequence 4", &seen_seq, vec![4, 5, 6]),
        ("from time", &seen_time, vec![4, 5, 6]),
    ] {
        support::wait_until(Duration::from_secs(10), what, || {
            let seen = seen.clone();
            async move { seen.sequences().contains(&6) }
        })
        .await;
        assert_eq!(seen.sequences(), expected, "{what}");
    }
    for handle in [all, new, from_seq, from_time] {
        handle.shutdown().await.unwrap();
    }
    // Ephemeral consumers are gone with their subscriptions.
    assert_eq!(fx::consumer_count(&client, "SHOP_EVENTS").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_handler_receives_decoded_envelopes() {
    let (_server, client) = support::server().await;
    let (_store, publisher) = fx::shop(&client).await;
    let got = Envelopes::default();
    let handle = fx::subscribe(&client, fx::CART_WILDCARD, got.handler(), |b| b).await;
    let cart = AggregateId::new("typed").unwrap();
    fx::publish_in_turn(&publisher, &[&cart], 1..=3).await;
    got.wait_for(3, Duration::from_secs(10)).await;
    handle.shutdown().await.unwrap();
    let got = got.all();
    let events: Vec<CartEvent> = got.iter().map(|e| e.event.clone()).collect();
    assert_eq!(
        events,
        vec![fx::cart_event(1), fx::cart_event(2), fx::cart_event(3)]
    );
    assert_eq!(got[2].version(), 3);
    assert_eq!(got[2].aggregate_id(), &cart);
}
