//! The [`EventStore`] trait: append with optimistic concurrency, read one aggregate, read all.

use std::borrow::Cow;
use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::BoxStream;

use crate::envelope::{Envelope, StoredEvent, StreamSequence};
use crate::error::{StoreError, StoreErrorKind};
use crate::event::{EventId, NatsEvent};
use crate::identity::{CausationId, CorrelationId, MessageIdentity};
use crate::subject::AggregateId;

/// The version an append expects the aggregate to be at.
///
/// The check is made by the store atomically with the write (on JetStream by the server), never
/// by reading first and writing after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the current version (the events still get gap-free versions).
    Any,
    /// The aggregate must have no events yet.
    NoStream,
    /// The aggregate must be at exactly this version (its number of events).
    Exact(u64),
}

impl ExpectedVersion {
    /// The expected version for an aggregate loaded at `version` (0 = no events).
    pub fn from_loaded(version: u64) -> Self {
        if version == 0 {
            Self::NoStream
        } else {
            Self::Exact(version)
        }
    }

    /// Does an aggregate at `actual` (`None`: no events) satisfy this expectation?
    pub fn accepts(&self, actual: Option<u64>) -> bool {
        match (self, actual) {
            (Self::Any, _) => true,
            (Self::NoStream, None | Some(0)) => true,
            (Self::NoStream, Some(_)) => false,
            (Self::Exact(0), None) => true,
            (Self::Exact(n), Some(v)) => *n == v,
            (Self::Exact(_), None) => false,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => write!(f, "any version"),
            Self::NoStream => write!(f, "no stream"),
            Self::Exact(n) => write!(f, "version {n}"),
        }
    }
}

/// An event ready to be appended: encoded payload and metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The event's id; the store sends it as `Nats-Msg-Id`.
    pub event_id: EventId,
    /// The event type.
    pub event_type: Cow<'static, str>,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The entity kind (second subject token).
    pub aggregate_type: Cow<'static, str>,
    /// The routing subject `{domain}.{aggregate}.{operation}`; the store appends the aggregate id.
    pub routing_subject: Cow<'static, str>,
    /// The event's JSON.
    pub payload: Bytes,
    /// When the event happened.
    pub timestamp: DateTime<Utc>,
    /// The conversation.
    pub correlation_id: Option<CorrelationId>,
    /// The causing message.
    pub causation_id: Option<CausationId>,
    /// Who acted.
    pub actor: Option<String>,
}

impl NewEvent {
    /// Encodes one domain event as it is, for hand-made appends and tests: its id is the
    /// event's own (the field marked `#[nats_event(event_id)]`) or, if it has none or it is
    /// [unassigned](EventId::unassigned), a new UUID v7. Its correlation, causation and actor
    /// are those of the identity the event carries (the field marked
    /// `#[nats_event(identity)]`, see [`NatsEvent::message_identity`]), if any.
    ///
    /// The typed appends (the repository, the publisher, [`EventStoreExt::append_events`]) use
    /// [`crate::encode_events`] instead, which derives the ids from the command.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Encode`] if serialisation fails.
    pub fn from_event<E: NatsEvent>(event: &E) -> Result<Self, StoreError> {
        let payload = event
            .encode()
            .map_err(|e| StoreError::with_source(StoreErrorKind::Encode, e))?;
        let d = event.descriptor();
        let identity = event.message_identity();
        Ok(Self {
            event_id: event
                .event_id()
                .filter(|id| !id.is_unassigned())
                .unwrap_or_default(),
            event_type: Cow::Borrowed(d.event_type),
            schema_version: d.version,
            aggregate_type: Cow::Borrowed(d.aggregate),
            routing_subject: Cow::Borrowed(d.subject),
            payload: Bytes::from(payload),
            timestamp: Utc::now(),
            correlation_id: identity.map(|id| id.correlation_id),
            causation_id: identity.map(|id| id.causation_id),
            actor: identity.map(|id| id.actor.clone()),
        })
    }

    /// Sets correlation, causation and actor from the identity of the message that caused the
    /// event (the command).
    #[must_use]
    pub fn with_identity(mut self, identity: &MessageIdentity) -> Self {
        self.correlation_id = Some(identity.correlation_id);
        self.causation_id = Some(CausationId::from(identity.message_id));
        self.actor = Some(identity.actor.clone());
        self
    }

    /// Sets the event id (e.g. a deterministic one, so that a retry is recognised).
    #[must_use]
    pub fn with_event_id(mut self, id: EventId) -> Self {
        self.event_id = id;
        self
    }

    /// Sets the time the event happened.
    #[must_use]
    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = timestamp;
        self
    }
}

/// What an append stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream sequence of each appended event, in order.
    pub sequences: Vec<StreamSequence>,
    /// The aggregate's version after the append.
    pub version: u64,
    /// The events were already stored (a retried append): nothing new was written and the
    /// original sequences are returned.
    pub duplicate: bool,
}

impl AppendResult {
    /// The sequence of the last appended event.
    pub fn last_sequence(&self) -> Option<StreamSequence> {
        self.sequences.last().copied()
    }
}

/// Where a read of the whole stream starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// From the first event.
    #[default]
    Start,
    /// From this stream sequence (inclusive).
    Sequence(StreamSequence),
    /// From the first event stored at or after this time.
    Time(DateTime<Utc>),
}

/// A stream of stored events; a message that cannot be read as an event is an `Err` item that
/// names its sequence, and the stream goes on after it: the caller chooses to skip or stop.
pub type EventStream<'a> = BoxStream<'a, Result<StoredEvent, StoreError>>;

/// An event store: the source of truth of event-sourced aggregates.
///
/// Object-safe: use it as `Arc<dyn EventStore>`. Implementations: the JetStream store
/// (`cim_nats::jetstream::JetStreamEventStore`) and [`crate::memory::InMemoryEventStore`].
#[async_trait]
pub trait EventStore: Send + Sync + fmt::Debug {
    /// Appends the events of one aggregate, all or nothing, if the aggregate is at `expected`.
    ///
    /// Events get consecutive versions after the current one. Appending events that are already
    /// stored (same ids at the same versions, e.g. a retry after a lost acknowledgement) succeeds
    /// with the original sequences and `duplicate: true`.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::WrongExpectedVersion`] on a concurrency conflict; others for invalid
    /// input, a full stream, or the server.
    async fn append(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Reads the events of one aggregate whose version is greater than `after_version`
    /// (0 = all), in order.
    ///
    /// # Errors
    ///
    /// A [`StoreErrorKind::Decode`] naming the sequence of a stored message that is not a
    /// readable event; others from the server.
    async fn read_aggregate(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Reads the events of one aggregate with a version greater than `after_version`, knowing
    /// that they are all stored after `after_sequence` (e.g. the sequence of a snapshot), which
    /// lets an implementation skip what comes before.
    ///
    /// # Errors
    ///
    /// As [`EventStore::read_aggregate`].
    async fn read_aggregate_after(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut events = self.read_aggregate(aggregate_id, after_version).await?;
        events.retain(|e| e.stream_sequence > after_sequence);
        Ok(events)
    }

    /// Reads one aggregate's events knowing the routing subjects its events can be on (a domain
    /// enum's [`NatsEvent::SUBJECTS`]), which lets an implementation skip discovering them.
    /// Events on other subjects are still found (by a slower path), never skipped.
    ///
    /// # Errors
    ///
    /// As [`EventStore::read_aggregate`].
    async fn read_aggregate_routed(
        &self,
        aggregate_id: &AggregateId,
        routing_subjects: &[&str],
        after_version: u64,
        after_sequence: StreamSequence,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let _ = routing_subjects;
        self.read_aggregate_after(aggregate_id, after_version, after_sequence)
            .await
    }

    /// The aggregate's current version (`None` if it has no events).
    ///
    /// # Errors
    ///
    /// From the server.
    async fn aggregate_version(
        &self,
        aggregate_id: &AggregateId,
    ) -> Result<Option<u64>, StoreError>;

    /// Reads every event of the store in stream order, from `from`, with bounded memory.
    fn stream(&self, from: ReadFrom) -> EventStream<'_>;

    /// The sequence of the last message in the store (0 if empty).
    ///
    /// # Errors
    ///
    /// From the server.
    async fn last_sequence(&self) -> Result<StreamSequence, StoreError>;

    /// Reads every event into memory, in stream order. Prefer [`EventStore::stream`] for large
    /// stores.
    ///
    /// # Errors
    ///
    /// The first error of the stream.
    async fn read_all(&self) -> Result<Vec<StoredEvent>, StoreError> {
        use futures::TryStreamExt;
        self.stream(ReadFrom::Start).try_collect().await
    }
}

fn decode_error(event: &StoredEvent, e: &crate::event::DecodeError) -> StoreError {
    StoreError::new(StoreErrorKind::Decode {
        sequence: event.stream_sequence.0,
        reason: e.to_string(),
    })
}

/// Decodes a stored event into an envelope of `E`; a failure is a [`StoreErrorKind::Decode`]
/// naming the event's stream sequence.
///
/// # Errors
///
/// [`StoreErrorKind::Decode`].
pub fn decode_envelope<E: NatsEvent>(event: StoredEvent) -> Result<Envelope<E>, StoreError> {
    match event.decode::<E>() {
        Ok(decoded) => Ok(Envelope {
            event: decoded,
            stored: event,
        }),
        Err(e) => Err(decode_error(&event, &e)),
    }
}

/// Typed operations on any [`EventStore`], for a domain event enum `E`.
#[async_trait]
pub trait EventStoreExt: EventStore {
    /// Encodes and appends the events of one command ([`crate::encode_events`]: ids derived
    /// from the command, the aggregate and what was decided; the command's identity as
    /// correlation, causation and actor for events that do not carry their own).
    ///
    /// # Errors
    ///
    /// As [`EventStore::append`]; [`StoreErrorKind::InvalidAppend`] for an event that names
    /// another aggregate; [`StoreErrorKind::Encode`].
    async fn append_events<E: NatsEvent + Clone>(
        &self,
        aggregate_id: &AggregateId,
        expected: ExpectedVersion,
        events: &[E],
        identity: Option<&MessageIdentity>,
    ) -> Result<AppendResult, StoreError> {
        let mut events = events.to_vec();
        let new = crate::encode::encode_events(aggregate_id, expected, &mut events, identity)?;
        self.append(aggregate_id, expected, new).await
    }

    /// Reads and decodes one aggregate's events after `after_version`.
    ///
    /// # Errors
    ///
    /// As [`EventStore::read_aggregate`]; a [`StoreErrorKind::Decode`] naming the sequence of an
    /// event `E` cannot decode.
    async fn load_events<E: NatsEvent>(
        &self,
        aggregate_id: &AggregateId,
        after_version: u64,
    ) -> Result<Vec<Envelope<E>>, StoreError> {
        self.read_aggregate_routed(aggregate_id, E::SUBJECTS, after_version, StreamSequence(0))
            .await?
            .into_iter()
            .map(decode_envelope)
            .collect()
    }

    /// Every event of the store decoded as `E`, in order; an event that cannot be read or decoded
    /// is an `Err` item naming its sequence, and the stream goes on after it.
    fn stream_events<E: NatsEvent>(
        &self,
        from: ReadFrom,
    ) -> BoxStream<'_, Result<Envelope<E>, StoreError>> {
        use futures::StreamExt;
        self.stream(from)
            .map(|item| item.and_then(decode_envelope))
            .boxed()
    }
}

impl<T: EventStore + ?Sized> EventStoreExt for T {}
