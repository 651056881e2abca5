//! The dead letter: after the last failed delivery, on a permanent error, and for messages that
//! are not readable events; the consumer goes on with the next events.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use cim_nats::jetstream::subscriber::dead_letter as dl;
use cim_nats::jetstream::subscriber::DeliverPolicy;
use cim_nats::{AggregateId, Delivery, EventStore, ExpectedVersion, HandlerError};
use support::subscriber::{self as fx, Envelopes, Seen};

fn header<'a>(m: &'a StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

async fn wait_for_dead_letters(client: &async_nats::Client, n: usize) -> Vec<StreamMessage> {
    support::wait_until(Duration::from_secs(10), "dead letters", || {
        let client = client.clone();
        async move { fx::stream_messages(&client, "DLQ").await.len() >= n }
    })
    .await;
    fx::stream_messages(client, "DLQ").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_failing_every_delivery_goes_to_the_dead_letter_and_the_consumer_goes_on() {
    let (_server, client) = support::server().await;
    let (store, publisher) = fx::shop(&client).await;
    let doomed = AggregateId::new("doomed").unwrap();
    let fine = AggregateId::new("fine").unwrap();

    let seen = Seen::default();
    let attempts: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let handler = seen.handler_with({
        let (attempts, doomed) = (attempts.clone(), doomed.clone());
        move |delivery: &Delivery| {
            *attempts
                .lock()
                .unwrap()
                .entry(delivery.event.stream_sequence.0)
                .or_default() += 1;
            if delivery.event.aggregate_id == doomed && delivery.event.aggregate_version == 1 {
                return Err(HandlerError::from(std::io::Error::other(
                    "inventory service\nunreachable",
                )));
            }
            Ok(())
        }
    });
    let handle = fx::subscribe(&client, fx::CART_WILDCARD, handler, |b| {
        b.durable("dl-test")
            .deliver_policy(DeliverPolicy::All)
            .max_deliveries(3)
            .backoff(fx::fast_backoff())
    })
    .await;
    assert_eq!(
        handle.consumers()[0].dead_letter_subject.as_deref(),
        Some("dlq.SHOP_EVENTS.dl-test")
    );
    fx::publish_in_turn(&publisher, &[&doomed, &fine], 1..=2).await;
    let letters = wait_for_dead_letters(&client, 1).await;
    // The consumer goes on: the doomed cart's next event and the other cart's events.
    seen.wait_for(3, Duration::from_secs(10)).await;
    fx::wait_acknowledged(
        &client,
        "SHOP_EVENTS",
        "dl-test",
        4,
        Duration::from_secs(10),
    )
    .await;
    handle.shutdown().await.unwrap();

    let original = store.read_aggregate(&doomed, 0).await.unwrap().remove(0);
    assert_eq!(attempts.lock().unwrap()[&original.stream_sequence.0], 3);
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.subject.as_str(), "dlq.SHOP_EVENTS.dl-test");
    assert_eq!(letter.payload, original.payload);
    assert_eq!(
        header(letter, dl::ORIGINAL_SUBJECT),
        Some(original.subject.as_str())
    );
    assert_eq!(header(letter, dl::ORIGINAL_STREAM), Some("SHOP_EVENTS"));
    assert_eq!(
        header(letter, dl::ORIGINAL_SEQUENCE),
        Some(original.stream_sequence.to_string().as_str())
    );
    assert_eq!(
        header(letter, dl::ORIGINAL_MSG_ID),
        Some(original.event_id.to_string().as_str())
    );
    assert_eq!(header(letter, dl::CONSUMER), Some("dl-test"));
    assert_eq!(header(letter, dl::DELIVERY_COUNT), Some("3"));
    assert_eq!(
        header(letter, dl::REASON),
        Some(dl::REASON_DELIVERIES_EXHAUSTED)
    );
    assert_eq!(
        header(letter, dl::ERROR),
        Some("inventory service unreachable")
    );
    assert!(header(letter, dl::TIME).is_some());
    // The event's own headers come along; JetStream's concurrency headers do not.
    assert_eq!(header(letter, "Cim-Event-Type"), Some("Created"));
    assert_eq!(header(letter, "Cim-Aggregate-Id"), Some("doomed"));
    assert!(letter
        .headers
        .iter()
        .all(|(name, _)| !name.to_string().starts_with("Nats-Expected")));
    // Never under the domain's subjects: the domain's stream holds only the 4 events.
    assert_eq!(fx::stream_messages(&client, "SHOP_EVENTS").await.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_messages_and_permanent_errors_go_to_the_dead_letter_at_once() {
    let (_server, client) = support::server().await;
    let (store, publisher) = fx::shop(&client).await;
    let seen = Seen::default();
    let handler = seen.handler_with(|delivery: &Delivery| {
        if delivery.event.aggregate_id.as_str() == "rejected" {
            return Err(HandlerError::msg("cart rejected by policy").permanent());
        }
        Ok(())
    });
    let handle = fx::subscribe(&client, fx::CART_WILDCARD, handler, |b| {
        b.max_deliveries(5).backoff([Duration::from_secs(60)])
    })
    .await;
    let consumer = handle.consumers()[0].name.clone();

    // Not an event: no cim-nats headers. A long backoff: only "at once" finishes in time.
    let js = async_nats::jetstream::new(client.clone());
    js.publish("shop.cart.created.junk", "not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publisher
        .publish(&fx::cart_event(1), AggregateId::new("rejected").unwrap(), 1)
        .await
        .unwrap();
    publisher
        .publish(&fx::cart_event(1), AggregateId::new("ok").unwrap(), 1)
        .await
        .unwrap();

    let letters = wait_for_dead_letters(&client, 2).await;
    seen.wait_for(1, Duration::from_secs(10)).await;
    handle.shutdown().await.unwrap();

    assert_eq!(letters.len(), 2);
    // Different aggregates are handled in parallel: find each letter by its subject.
    let by_subject = |subject: &str| {
        letters
            .iter()
            .find(|m| header(m, dl::ORIGINAL_SUBJECT) == Some(subject))
            .unwrap_or_else(|| panic!("no dead letter for {subject}"))
    };
    let junk = by_subject("shop.cart.created.junk");
    assert_eq!(junk.subject.as_str(), format!("dlq.SHOP_EVENTS.{consumer}"));
    assert_eq!(header(junk, dl::REASON), Some(dl::REASON_UNDECODABLE));
    assert_eq!(header(junk, dl::DELIVERY_COUNT), Some("1"));
    assert_eq!(
        header(junk, dl::ORIGINAL_SUBJECT),
        Some("shop.cart.created.junk")
    );
    assert!(header(junk, dl::ERROR).unwrap().contains("Cim-Event-Type"));
    assert_eq!(&junk.payload[..], b"not json");
    let rejected = by_subject("shop.cart.created.rejected");
    assert_eq!(
        header(rejected, dl::REASON),
        Some(dl::REASON_PERMANENT_ERROR)
    );
    assert_eq!(header(rejected, dl::DELIVERY_COUNT), Some("1"));
    assert_eq!(header(rejected, dl::ERROR), Some("cart rejected by policy"));
    assert_eq!(seen.events()[0].aggregate_id.as_str(), "ok");
    // Ephemeral consumer: deleted; the store is untouched.
    assert_eq!(fx::consumer_count(&client, "SHOP_EVENTS").await, 0);
    assert_eq!(store.last_sequence().await.unwrap().0, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_type_the_typed_handler_does_not_know_goes_to_the_dead_letter_at_once() {
    let (_server, client) = support::server().await;
    let (store, publisher) = fx::shop(&client).await;
    let got = Envelopes::default();
    let handle = fx::subscribe(&client, fx::CART_WILDCARD, got.handler(), |b| {
        b.backoff([Duration::from_secs(60)])
    })
    .await;
    // A readable event of a type CartEvent does not have.
    let mut mystery = fx::raw_event("shop", 1);
    mystery.event_type = "Abandoned".into();
    mystery.entity_kind = "cart".into();
    mystery.routing_subject = "shop.cart.abandoned".into();
    let cart = AggregateId::new("m").unwrap();
    store
        .append(&cart, ExpectedVersion::NoStream, vec![mystery])
        .await
        .unwrap();
    publisher
        .publish(&fx::cart_event(2), cart.clone(), 2)
        .await
        .unwrap();
    let letters = wait_for_dead_letters(&client, 1).await;
    got.wait_for(1, Duration::from_secs(10)).await;
    handle.shutdown().await.unwrap();
    assert_eq!(
        header(&letters[0], dl::REASON),
        Some(dl::REASON_UNDECODABLE)
    );
    assert!(header(&letters[0], dl::ERROR)
        .unwrap()
        .contains("unknown event type"));
    assert_eq!(got.all()[0].version(), 2);
}
