//! Retries: a failing handler's event is delivered again after a backoff, and the later events
//! of its aggregate wait for it.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_nats::jetstream::subscriber::DeliverPolicy;
use cim_nats::{AggregateId, AsyncFnHandler, Delivery, HandlerError};
use support::subscriber::{self as fx, Seen};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_failing_twice_then_succeeding_handles_the_event_on_delivery_three() {
    let (_server, client) = support::server().await;
    let (_store, publisher) = fx::shop(&client).await;
    let flaky = AggregateId::new("flaky").unwrap();
    let steady = AggregateId::new("steady").unwrap();

    let seen = Seen::default();
    let attempts: Arc<Mutex<HashMap<u64, Vec<u64>>>> = Arc::default();
    let handler = seen.handler_with({
        let (attempts, flaky) = (attempts.clone(), flaky.clone());
        move |delivery: &Delivery| {
            let event = &delivery.event;
            attempts
                .lock()
                .unwrap()
                .entry(event.stream_sequence.0)
                .or_default()
                .push(delivery.delivery_count);
            if event.aggregate_id == flaky
                && event.aggregate_version == 1
                && delivery.delivery_count < 3
            {
                return Err(HandlerError::msg(format!(
                    "flaky failure {}",
                    delivery.delivery_count
                )));
            }
            Ok(())
        }
    });
    let handle = fx::subscribe(&client, fx::CART_WILDCARD, handler, |b| {
        b.deliver_policy(DeliverPolicy::All)
            .max_deliveries(5)
            .backoff([Duration::from_millis(30), Duration::from_millis(60)])
    })
    .await;
    let consumer = handle.consumers()[0].clone();
    fx::publish_in_turn(&publisher, &[&flaky, &steady], 1..=3).await;
    seen.wait_for(6, Duration::from_secs(10)).await;
    fx::wait_acknowledged(
        &client,
        "SHOP_EVENTS",
        &consumer.name,
        6,
        Duration::from_secs(10),
    )
    .await;
    handle.shutdown().await.unwrap();

    let deliveries = seen.deliveries();
    let flaky_seen: Vec<(u64, u64)> = deliveries
        .iter()
        .filter(|(e, _)| e.aggregate_id == flaky)
        .map(|(e, n)| (e.aggregate_version, *n))
        .collect();
    // Version 1 on its third delivery, and versions 2 and 3 only after it.
    assert_eq!(flaky_seen, vec![(1, 3), (2, 1), (3, 1)]);
    let first = deliveries
        .iter()
        .find(|(e, _)| e.aggregate_id == flaky)
        .unwrap();
    assert_eq!(
        attempts.lock().unwrap()[&first.0.stream_sequence.0],
        vec![1, 2, 3]
    );
    seen.assert_per_aggregate_order();
    seen.assert_no_duplicates();
    // The other cart was not held up by the retries: each of its events on delivery 1.
    assert!(deliveries
        .iter()
        .filter(|(e, _)| e.aggregate_id == steady)
        .all(|(_, n)| *n == 1));
    // Nothing went to the dead letter.
    assert!(fx::stream_messages(&client, "DLQ").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_retried_and_a_requested_delay_is_honoured() {
    let (_server, client) = support::server().await;
    let (_store, publisher) = fx::shop(&client).await;
    let seen = Seen::default();
    let handler = seen.handler_with(|delivery: &Delivery| match delivery.delivery_count {
        1 => panic!("handler bug"),
        2 => Err(HandlerError::msg("not yet").retry_after(Duration::from_millis(10))),
        _ => Ok(()),
    });
    // A long backoff: only the handler's own retry_after can make the test finish fast.
    let handle = fx::subscribe(&client, fx::CART_WILDCARD, handler, |b| {
        b.backoff([Duration::from_millis(20), Duration::from_secs(60)])
    })
    .await;
    publisher
        .publish(&fx::cart_event(1), AggregateId::new("p").unwrap(), 1)
        .await
        .unwrap();
    seen.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(seen.deliveries()[0].1, 3);
    handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_slower_than_the_ack_wait_keeps_its_events_to_itself() {
    let (_server, client) = support::server().await;
    let (_store, publisher) = fx::shop(&client).await;
    let seen = Seen::default();
    let handler = {
        let seen = seen.clone();
        AsyncFnHandler::with_delivery(move |delivery: Delivery| {
            let seen = seen.clone();
            async move {
                if delivery.event.aggregate_version == 1 {
                    // Three times the ack wait: the subscriber reports progress meanwhile.
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                }
                seen.push(delivery.event, delivery.delivery_count);
                Ok(())
            }
        })
    };
    let handle = fx::subscribe(&client, fx::CART_WILDCARD, handler, |b| {
        b.ack_wait(Duration::from_millis(500))
    })
    .await;
    let consumer = handle.consumers()[0].name.clone();
    let cart = AggregateId::new("slow").unwrap();
    // Version 2 waits behind version 1 the whole time, and must not time out either.
    fx::publish_in_turn(&publisher, &[&cart], 1..=2).await;
    seen.wait_for(2, Duration::from_secs(10)).await;
    let info = fx::consumer_info(&client, "SHOP_EVENTS", &consumer).await;
    handle.shutdown().await.unwrap();
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(
        seen.deliveries()
            .iter()
            .map(|(e, n)| (e.aggregate_version, *n))
            .collect::<Vec<_>>(),
        vec![(1, 1), (2, 1)]
    );
}
