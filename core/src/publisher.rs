//! [`EventPublisher`]: publishes a domain's events, through its event store and nowhere else.
//!
//! Publishing an event *is* appending it to the store: the store's stream is what subscribers
//! and projections read, so there is exactly one copy of every event, written with the
//! aggregate's expected version. Nothing is also sent on core NATS.

use std::fmt;
use std::sync::Arc;

use crate::error::{StoreError, StoreErrorKind};
use crate::event::{EventId, NatsEvent};
use crate::identity::MessageIdentity;
use crate::store::{AppendResult, EventStore, ExpectedVersion, NewEvent};
use crate::subject::AggregateId;

/// Publishes typed domain events to an [`EventStore`] with optimistic concurrency.
///
/// [`EventPublisher::publish`] takes the version the event gives its aggregate (its
/// *sequence*: 1 for the aggregate's first event) and appends it only if the aggregate is at the
/// version before. Publishing an event again at the same version (a retry after a lost
/// acknowledgement) succeeds without storing a second copy; a *different* event at a version
/// that is already taken is a [`StoreErrorKind::WrongExpectedVersion`] conflict.
///
/// Retries are recognised by event id: the event's own id (the field marked
/// `#[nats_event(event_id)]`) or, for an enum without one, an id derived from the aggregate id,
/// the version, the event type and the payload, so the same event at the same version always
/// gets the same id.
///
/// # Examples
///
/// ```no_run
/// # async fn run<E: cim_nats::NatsEvent>(events: Vec<E>) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use cim_nats::jetstream::{JetStreamEventStore, StoreConfig};
/// use cim_nats::{AggregateId, EventPublisher, EventStore};
///
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let store = Arc::new(JetStreamEventStore::new(client.clone(), StoreConfig::for_domain("inventory")).await?);
/// let publisher = EventPublisher::new(client, Arc::clone(&store) as Arc<dyn EventStore>);
///
/// let id = AggregateId::new("item-1")?;
/// for (seq, event) in events.iter().enumerate() {
///     publisher.publish(event, id.clone(), (seq + 1) as u64).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EventPublisher {
    store: Arc<dyn EventStore>,
    #[cfg(feature = "jetstream")]
    client: Option<async_nats::Client>,
}

impl fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPublisher")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl EventPublisher {
    /// A publisher writing to `store`.
    ///
    /// The client is kept (see [`EventPublisher::client`]) but never used to publish: events
    /// are written only through the store.
    #[cfg(feature = "jetstream")]
    pub fn new(client: async_nats::Client, store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            client: Some(client),
        }
    }

    /// A publisher writing to `store`, without a NATS client (e.g. over an
    /// [`InMemoryEventStore`](crate::memory::InMemoryEventStore)).
    pub fn from_store(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            #[cfg(feature = "jetstream")]
            client: None,
        }
    }

    /// The store events are written to.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The NATS client given to [`EventPublisher::new`].
    #[cfg(feature = "jetstream")]
    pub fn client(&self) -> Option<&async_nats::Client> {
        self.client.as_ref()
    }

    /// Publishes one event as version `sequence` of the aggregate (1 for its first event).
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::WrongExpectedVersion`] if the aggregate is not at `sequence - 1` (and
    /// the event is not already stored at `sequence`); [`StoreErrorKind::InvalidAppend`] for a
    /// `sequence` of 0 or an event that names another aggregate; the store's other errors.
    pub async fn publish<E: NatsEvent>(
        &self,
        event: &E,
        aggregate_id: AggregateId,
        sequence: u64,
    ) -> Result<AppendResult, StoreError> {
        self.publish_one(event, &aggregate_id, sequence, None).await
    }

    /// Publishes one event as version `sequence` of the aggregate, with correlation, causation
    /// and actor taken from `identity` (the identity of the command that caused it).
    ///
    /// # Errors
    ///
    /// As [`EventPublisher::publish`].
    pub async fn publish_with_identity<E: NatsEvent>(
        &self,
        event: &E,
        aggregate_id: AggregateId,
        sequence: u64,
        identity: &MessageIdentity,
    ) -> Result<AppendResult, StoreError> {
        self.publish_one(event, &aggregate_id, sequence, Some(identity))
            .await
    }

    async fn publish_one<E: NatsEvent>(
        &self,
        event: &E,
        aggregate_id: &AggregateId,
        sequence: u64,
        identity: Option<&MessageIdentity>,
    ) -> Result<AppendResult, StoreError> {
        if sequence == 0 {
            return Err(StoreError::new(StoreErrorKind::InvalidAppend(
                "sequence 0: aggregate versions start at 1".to_owned(),
            )));
        }
        let expected = ExpectedVersion::from_loaded(sequence - 1);
        let new = new_event(event, aggregate_id, Some(sequence), identity)?;
        self.store.append(aggregate_id, expected, vec![new]).await
    }

    /// Publishes the events of one command atomically (all are stored or none) if the
    /// aggregate is at `expected`, with correlation, causation and actor from the command's
    /// `identity`. They get consecutive versions after the current one.
    ///
    /// Events without their own id get [`EventId::for_command`] of the command's message id and
    /// their index, so publishing the same command's events again (a retry) is recognised and
    /// stores nothing new.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::WrongExpectedVersion`] on a conflict; [`StoreErrorKind::InvalidAppend`]
    /// for no events, too many, or an event that names another aggregate; the store's other
    /// errors.
    pub async fn publish_events<E: NatsEvent>(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: &[E],
        identity: &MessageIdentity,
    ) -> Result<AppendResult, StoreError> {
        let mut new = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let mut encoded = new_event(event, aggregate_id, None, Some(identity))?;
            if event.event_id().is_none() {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                encoded.event_id = EventId::for_command(&identity.message_id, index);
            }
            new.push(encoded);
        }
        self.store.append(aggregate_id, expected, new).await
    }
}

/// Encodes `event` for `aggregate_id`, checking that the event does not name another aggregate,
/// and gives it an id derived from its content when it has none of its own and its version is
/// known.
fn new_event<E: NatsEvent>(
    event: &E,
    aggregate_id: &AggregateId,
    version: Option<u64>,
    identity: Option<&MessageIdentity>,
) -> Result<NewEvent, StoreError> {
    match event.aggregate_id() {
        Ok(Some(own)) if own != *aggregate_id => {
            return Err(StoreError::new(StoreErrorKind::InvalidAppend(format!(
                "event {} names aggregate {own}, but it is published to aggregate {aggregate_id}",
                event.event_type()
            ))))
        }
        Ok(_) => {}
        Err(e) => return Err(StoreError::with_source(StoreErrorKind::InvalidSubject, e)),
    }
    let mut new = NewEvent::from_event(event)?;
    if event.event_id().is_none() {
        if let Some(version) = version {
            new.event_id = derived_event_id(aggregate_id, version, &new.event_type, &new.payload);
        }
    }
    Ok(match identity {
        Some(identity) => new.with_identity(identity),
        None => new,
    })
}

/// A stable id for an event without its own: FNV-1a (128 bits) of the aggregate id, version,
/// event type and payload, as a version 8 UUID. Stable across processes and compiler versions,
/// so a retry from a restarted process is still recognised.
fn derived_event_id(
    aggregate_id: &AggregateId,
    version: u64,
    event_type: &str,
    payload: &[u8],
) -> EventId {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u128::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    feed(b"cim-nats event id\0");
    feed(aggregate_id.as_str().as_bytes());
    feed(b"\0");
    feed(&version.to_be_bytes());
    feed(event_type.as_bytes());
    feed(b"\0");
    feed(payload);
    EventId::from_uuid(uuid::Builder::from_custom_bytes(hash.to_be_bytes()).into_uuid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = AggregateId::new("a-1").unwrap();
        let b = AggregateId::new("a-2").unwrap();
        let id = derived_event_id(&a, 1, "Opened", b"{}");
        assert_eq!(id, derived_event_id(&a, 1, "Opened", b"{}"));
        assert_ne!(id, derived_event_id(&a, 2, "Opened", b"{}"));
        assert_ne!(id, derived_event_id(&b, 1, "Opened", b"{}"));
        assert_ne!(id, derived_event_id(&a, 1, "Closed", b"{}"));
        assert_ne!(id, derived_event_id(&a, 1, "Opened", b"{\"x\":1}"));
        assert_eq!(id.as_uuid().get_version_num(), 8);
    }
}
