//! Shared fixtures of the publisher and subscriber tests: a small event enum with a
//! hand-written `NatsEvent`, stores, subscribing a handler ([`subscribe`], [`record`]),
//! recording handlers ([`Seen`], [`Envelopes`]) and waiting for what they saw, and readers of
//! consumer and dead-letter state.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, message::StreamMessage};
use cim_nats::jetstream::subscriber::{EventSubscriber, EventSubscriberBuilder};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig, SubscriptionHandle};
use cim_nats::{
    AggregateId, AsyncFnHandler, DecodeError, Delivery, Envelope, EventDescriptor, EventHandler,
    EventId, EventPublisher, EventStore, HandlerError, InvalidSubject, NatsEvent, NewEvent, Schema,
    StoredEvent, TypedHandler,
};
use serde::{Deserialize, Serialize};

/// The events of a shopping cart: no event-id field, so the publisher derives ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CartEvent {
    Created { n: u64 },
    ItemAdded { n: u64, sku: String },
}

const CART_EVENTS: &[EventDescriptor] = &[
    EventDescriptor {
        event_type: "Created",
        entity_kind: "cart",
        operation: "created",
        version: 1,
        upcasts_from: &[],
        subject: "shop.cart.created",
    },
    EventDescriptor {
        event_type: "ItemAdded",
        entity_kind: "cart",
        operation: "item_added",
        version: 1,
        upcasts_from: &[],
        subject: "shop.cart.item_added",
    },
];

impl NatsEvent for CartEvent {
    const SCHEMA: Schema = Schema {
        domain: "shop",
        events: CART_EVENTS,
        event_types: &["Created", "ItemAdded"],
        subjects: &["shop.cart.created", "shop.cart.item_added"],
        entity_wildcards: &[("cart", "shop.cart.>")],
        domain_wildcard: "shop.>",
    };

    fn descriptor(&self) -> &'static EventDescriptor {
        match self {
            Self::Created { .. } => &CART_EVENTS[0],
            Self::ItemAdded { .. } => &CART_EVENTS[1],
        }
    }

    fn event_id(&self) -> Option<EventId> {
        None
    }

    fn aggregate_id(&self) -> Result<Option<AggregateId>, InvalidSubject> {
        Ok(None)
    }

    fn upcast(
        event_type: &str,
        from: u32,
        _json: serde_json::Value,
    ) -> Result<serde_json::Value, DecodeError> {
        Err(DecodeError::UnknownVersion {
            event_type: event_type.to_owned(),
            version: from,
            current: Self::descriptor_for(event_type).map_or(0, |d| d.version),
            upcasts_from: &[],
        })
    }
}

/// The `n`-th event of a cart: `Created` first, then items.
pub fn cart_event(version: u64) -> CartEvent {
    if version == 1 {
        CartEvent::Created { n: version }
    } else {
        CartEvent::ItemAdded {
            n: version,
            sku: format!("sku-{version}"),
        }
    }
}

/// A raw event of any domain, for stores of other domains.
pub fn raw_event(domain: &str, n: u64) -> NewEvent {
    NewEvent {
        event_id: EventId::new(),
        event_type: "Noted".into(),
        schema_version: 1,
        entity_kind: "note".into(),
        routing_subject: format!("{domain}.note.noted").into(),
        payload: format!("{{\"n\":{n}}}").into_bytes().into(),
        timestamp: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: None,
    }
}

/// The `shop` store and a publisher writing to it.
pub async fn shop(client: &async_nats::Client) -> (Arc<JetStreamEventStore>, EventPublisher) {
    let store = Arc::new(
        JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("shop"))
            .await
            .expect("shop store"),
    );
    let publisher = EventPublisher::new(client.clone(), Arc::clone(&store) as Arc<dyn EventStore>);
    (store, publisher)
}

/// Publishes the events of `versions` to each of `carts` carts (`{prefix}-{i}`); returns the
/// cart ids.
pub async fn publish_carts(
    publisher: &EventPublisher,
    prefix: &str,
    carts: usize,
    versions: std::ops::RangeInclusive<u64>,
) -> Vec<AggregateId> {
    let ids: Vec<AggregateId> = (0..carts)
        .map(|i| AggregateId::new(format!("{prefix}-{i}")).unwrap())
        .collect();
    // Carts in parallel, each cart's events in order: the stream interleaves them.
    futures::future::join_all(ids.iter().map(|id| {
        let versions = versions.clone();
        async move {
            for version in versions {
                publisher
                    .publish(&cart_event(version), id.clone(), version)
                    .await
                    .expect("publish");
            }
        }
    }))
    .await;
    ids
}

/// Publishes the events of `versions` to `carts`, one at a time and in turn: version 1 of each
/// cart, then version 2 of each, and so on.
pub async fn publish_in_turn(
    publisher: &EventPublisher,
    carts: &[&AggregateId],
    versions: std::ops::RangeInclusive<u64>,
) {
    for version in versions {
        for cart in carts {
            publisher
                .publish(&cart_event(version), (*cart).clone(), version)
                .await
                .expect("publish");
        }
    }
}

/// Events a handler saw, in the order it saw them, with their delivery counts.
#[derive(Debug, Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<(StoredEvent, u64)>>>);

impl Seen {
    pub fn push(&self, event: StoredEvent, delivery_count: u64) {
        self.0.lock().unwrap().push((event, delivery_count));
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// A handler that records every delivery here, with its delivery count.
    pub fn handler(&self) -> impl EventHandler + 'static {
        self.handler_with(|_| Ok(()))
    }

    /// A handler that gives each delivery to `check` first: on `Ok` the delivery is recorded
    /// here (and acknowledged), an error fails it unrecorded. `check` runs inside the handler's
    /// future, so a panic in it is a panicking handler.
    pub fn handler_with(
        &self,
        check: impl Fn(&Delivery) -> Result<(), HandlerError> + Send + Sync + 'static,
    ) -> impl EventHandler + 'static {
        let seen = self.clone();
        let check = Arc::new(check);
        AsyncFnHandler::with_delivery(move |delivery: Delivery| {
            let (seen, check) = (seen.clone(), Arc::clone(&check));
            async move {
                check(&delivery)?;
                seen.push(delivery.event, delivery.delivery_count);
                Ok(())
            }
        })
    }

    /// Waits up to `within` until `n` events were seen; fails if more were.
    pub async fn wait_for(&self, n: usize, within: Duration) {
        wait_for_count(n, within, true, || self.len()).await;
    }

    /// Waits up to `within` until `n` events or more were seen.
    pub async fn wait_for_at_least(&self, n: usize, within: Duration) {
        wait_for_count(n, within, false, || self.len()).await;
    }

    pub fn events(&self) -> Vec<StoredEvent> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.clone())
            .collect()
    }

    pub fn deliveries(&self) -> Vec<(StoredEvent, u64)> {
        self.0.lock().unwrap().clone()
    }

    /// The stream sequences seen, in order.
    pub fn sequences(&self) -> Vec<u64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.stream_sequence.0)
            .collect()
    }

    /// Asserts that no event was seen twice.
    #[track_caller]
    pub fn assert_no_duplicates(&self) {
        let mut count: HashMap<EventId, usize> = HashMap::new();
        for e in self.events() {
            *count.entry(e.event_id).or_default() += 1;
        }
        let twice: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "events handled more than once: {twice:?}");
    }

    /// Asserts that each aggregate's events were seen in version order 1, 2, 3, ...
    #[track_caller]
    pub fn assert_per_aggregate_order(&self) {
        let mut next: HashMap<AggregateId, u64> = HashMap::new();
        for e in self.events() {
            let expected = next.entry(e.aggregate_id.clone()).or_insert(1);
            assert_eq!(
                e.aggregate_version, *expected,
                "aggregate {} out of order",
                e.aggregate_id
            );
            *expected += 1;
        }
    }
}

/// The state of the consumer `name` of `stream`.
pub async fn consumer_info(
    client: &async_nats::Client,
    stream: &str,
    name: &str,
) -> consumer::Info {
    let js = jetstream::new(client.clone());
    js.get_stream(stream)
        .await
        .unwrap()
        .consumer_info(name)
        .await
        .unwrap()
}

/// Waits up to `within` until the consumer `name` of `stream` has acknowledged everything up
/// to `sequence` and has no acknowledgement pending.
pub async fn wait_acknowledged(
    client: &async_nats::Client,
    stream: &str,
    name: &str,
    sequence: u64,
    within: Duration,
) {
    let what = format!("{name} to acknowledge everything up to {sequence}");
    super::wait_until(within, &what, || async move {
        let info = consumer_info(client, stream, name).await;
        info.ack_floor.stream_sequence == sequence && info.num_ack_pending == 0
    })
    .await;
}

/// How many consumers `stream` has.
pub async fn consumer_count(client: &async_nats::Client, stream: &str) -> usize {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(stream).await.unwrap();
    stream.info().await.unwrap().state.consumer_count
}

/// Every message of a stream, by direct reads (no consumer is created).
pub async fn stream_messages(client: &async_nats::Client, stream: &str) -> Vec<StreamMessage> {
    let js = jetstream::new(client.clone());
    let mut stream = match js.get_stream(stream).await {
        Ok(s) => s,
        Err(_) => return Vec::new(),
    };
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence.max(1)..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

/// A short backoff for tests.
pub fn fast_backoff() -> [Duration; 1] {
    [Duration::from_millis(20)]
}

/// Every cart event.
pub const CART_WILDCARD: &str = "shop.cart.>";

/// Envelopes a typed handler of cart events received, in the order it received them.
#[derive(Debug, Clone, Default)]
pub struct Envelopes(Arc<Mutex<Vec<Envelope<CartEvent>>>>);

impl Envelopes {
    /// A [`TypedHandler`] of [`CartEvent`]s that records every envelope here.
    pub fn handler(&self) -> impl EventHandler + 'static {
        let got = self.clone();
        TypedHandler::<CartEvent, _>::new(move |envelope: Envelope<CartEvent>| {
            let got = got.clone();
            async move {
                got.0.lock().unwrap().push(envelope);
                Ok::<_, HandlerError>(())
            }
        })
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// The envelopes received so far.
    pub fn all(&self) -> Vec<Envelope<CartEvent>> {
        self.0.lock().unwrap().clone()
    }

    /// Waits up to `within` until `n` envelopes were received; fails if more were.
    pub async fn wait_for(&self, n: usize, within: Duration) {
        wait_for_count(n, within, true, || self.len()).await;
    }
}

/// Waits up to `within` until `count` reaches `n`; with `exactly`, fails if the count it reached
/// is above `n`. (A count only grows: this is waiting until it equals `n`, failing early.)
async fn wait_for_count(n: usize, within: Duration, exactly: bool, count: impl Fn() -> usize) {
    let mut reached = 0;
    super::wait_until(within, &format!("{n} events handled"), || {
        reached = count();
        let reached = reached;
        async move { reached >= n }
    })
    .await;
    if exactly {
        assert_eq!(reached, n, "{n} events expected, {reached} handled");
    }
}

/// A subscriber of `subject` on `client` delivering to `handler`, built with what `options`
/// sets on the builder (durable name, deliver policy, backoff, max deliveries, dead letter, more
/// subjects, ...; `|b| b` for the defaults). Not subscribed yet: for tests of what subscribing
/// answers.
pub fn subscriber(
    client: &async_nats::Client,
    subject: &str,
    handler: impl EventHandler + 'static,
    options: impl FnOnce(EventSubscriberBuilder) -> EventSubscriberBuilder,
) -> EventSubscriber {
    options(
        EventSubscriberBuilder::new()
            .client(client.clone())
            .subject(subject)
            .handler(handler),
    )
    .build()
    .unwrap_or_else(|e| panic!("build a subscriber of {subject}: {e}"))
}

/// [`subscriber`], subscribed: the running subscription.
pub async fn subscribe(
    client: &async_nats::Client,
    subject: &str,
    handler: impl EventHandler + 'static,
    options: impl FnOnce(EventSubscriberBuilder) -> EventSubscriberBuilder,
) -> SubscriptionHandle {
    subscriber(client, subject, handler, options)
        .subscribe()
        .await
        .unwrap_or_else(|e| panic!("subscribe to {subject}: {e}"))
}

/// Subscribes a handler that records every delivery ([`Seen::handler`]): the running
/// subscription and what its handler saw.
pub async fn record(
    client: &async_nats::Client,
    subject: &str,
    options: impl FnOnce(EventSubscriberBuilder) -> EventSubscriberBuilder,
) -> (SubscriptionHandle, Seen) {
    let seen = Seen::default();
    let handle = subscribe(client, subject, seen.handler(), options).await;
    (handle, seen)
}
