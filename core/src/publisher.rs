//! [`EventPublisher`]: publishes a domain's events, through its event store and nowhere else.
//!
//! Publishing an event *is* appending it to the store: the store's stream is what subscribers
//! and projections read, so there is exactly one copy of every event, written with the
//! aggregate's expected version. Nothing is also sent on core NATS.

use std::fmt;
use std::sync::Arc;

use crate::encode::encode_events;
use crate::event::NatsEvent;
use crate::identity::MessageIdentity;
use crate::store::{AppendResult, EventStore, ExpectedVersion};
use crate::store::{StoreError, StoreErrorKind};
use crate::subject::AggregateId;

/// Publishes typed domain events to an [`EventStore`] with optimistic concurrency.
///
/// [`EventPublisher::publish`] takes the version the event gives its aggregate (its
/// *sequence*: 1 for the aggregate's first event) and appends it only if the aggregate is at the
/// version before. Publishing an event again at the same version (a retry after a lost
/// acknowledgement) succeeds without storing a second copy; a *different* event at a version
/// that is already taken is a [`StoreErrorKind::WrongExpectedVersion`] conflict.
///
/// Retries are recognised by event id: every event gets the id [`crate::encode_events`]
/// derives from its cause (the identity it carries, or the one given), the aggregate, the
/// version and what it says, so the same event at the same version always gets the same id.
///
/// # Examples
///
/// ```no_run
/// # async fn run<E: cim_nats::NatsEvent + Clone>(events: Vec<E>) -> Result<(), Box<dyn std::error::Error>> {
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
    pub async fn publish<E: NatsEvent + Clone>(
        &self,
        event: &E,
        aggregate_id: AggregateId,
        sequence: u64,
    ) -> Result<AppendResult, StoreError> {
        self.publish_one(event, &aggregate_id, sequence, None).await
    }

    /// Publishes one event as version `sequence` of the aggregate, with correlation, causation
    /// and actor taken from `identity` (the identity of the command that caused it) unless the
    /// event carries its own.
    ///
    /// # Errors
    ///
    /// As [`EventPublisher::publish`].
    pub async fn publish_with_identity<E: NatsEvent + Clone>(
        &self,
        event: &E,
        aggregate_id: AggregateId,
        sequence: u64,
        identity: &MessageIdentity,
    ) -> Result<AppendResult, StoreError> {
        self.publish_one(event, &aggregate_id, sequence, Some(identity))
            .await
    }

    async fn publish_one<E: NatsEvent + Clone>(
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
        let mut events = [event.clone()];
        let new = encode_events(aggregate_id, expected, &mut events, identity)?;
        self.store.append(aggregate_id, expected, new).await
    }

    /// Publishes the events of one command atomically (all are stored or none) if the
    /// aggregate is at `expected`, with correlation, causation and actor from the command's
    /// `identity` (for events that do not carry their own). They get consecutive versions after
    /// the current one, and ids derived from the command ([`crate::encode_events`]), so
    /// publishing the same command's events again (a retry) is recognised and stores nothing
    /// new.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::WrongExpectedVersion`] on a conflict; [`StoreErrorKind::InvalidAppend`]
    /// for no events, too many, or an event that names another aggregate; the store's other
    /// errors.
    pub async fn publish_events<E: NatsEvent + Clone>(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: &[E],
        identity: &MessageIdentity,
    ) -> Result<AppendResult, StoreError> {
        let mut events = events.to_vec();
        let new = encode_events(aggregate_id, expected, &mut events, Some(identity))?;
        self.store.append(aggregate_id, expected, new).await
    }
}
