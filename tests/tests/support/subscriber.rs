//! Shared fixtures of the publisher and subscriber tests: a small event enum with a
//! hand-written `NatsEvent`, stores, a recording handler, and readers of consumer and
//! dead-letter state.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, message::StreamMessage};
use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
use cim_nats::{
    AggregateId, DecodeError, EventDescriptor, EventId, EventPublisher, EventStore, InvalidSubject,
    NatsEvent, NewEvent, Schema, StoredEvent,
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

/// The one consumer of `stream` (panics if there is not exactly one).
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
